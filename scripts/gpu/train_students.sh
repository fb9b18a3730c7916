#!/bin/bash
# Parts 2 and 3 of the GPU recipe (run from the repository root): train both students side by side (same data, windows, schedule, teacher),
# for at most MAXS seconds each, then export, pack and send back what was reached.
# usage: train_students.sh MAXS [--resume | --probe BUDGET_S]
MAXS=${1:?}; RESUME=; PROBE=
[ "${2:-}" = --resume ] && RESUME=--resume
[ "${2:-}" = --probe ] && PROBE=${3:?}
cd runs/gpu || exit 1
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
[ -x bimamba-train ] || { echo "COLD: the files unpacked by bench.sh are gone"; exit 3; }
mkdir -p teacher
G=teacher/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -s $G ]; then
  [ -s tA/part.aa ] || { echo "COLD: teacher part A is gone"; exit 3; }
  cat tA/part.aa tB/part.ab tB/part.ac | xz -dc > $G
  (cd teacher && sed 's#  .*#  SmolLM2-135M-Instruct.Q4_1.gguf#' ../tB/gguf.sha256 | sha256sum -c) || exit 4
fi
el teacher ready
if [ -n "$PROBE" ]; then (cd ../.. && bash scripts/gpu/probe.sh $PROBE); el probed; fi
for S in bi fp; do
  ./bimamba-train train --config ../../configs/distill-$S.toml --backend cuda --max-seconds $MAXS $RESUME > log-$S.txt 2>&1 &
done
wait; el trained
for S in bi fp; do tail -4 log-$S.txt; done
rm -rf out && mkdir -p out
./bimamba-train export --run run-bi --out out/bi-latent && ./bimamba pack --model out/bi-latent --out out/bi-packed --dtype f16
./bimamba-train export --run run-fp --out out/fp-f32
python3 - <<'PY'
from safetensors.torch import load_file, save_file
import os, shutil
t = load_file('out/fp-f32/model.safetensors')
os.makedirs('out/fp', exist_ok=True)
save_file({k: v.half().contiguous() for k, v in t.items()}, 'out/fp/model.safetensors', metadata={'format': 'pt'})
for f in ('config.json', 'tokenizer.json'):
    shutil.copy('out/fp-f32/' + f, 'out/fp/' + f)
PY
mkdir -p out/logs && for S in bi fp; do cp run-$S/metrics.jsonl out/logs/metrics-$S.jsonl; cp run-$S/run.json out/logs/run-$S.json; cp run-$S/config.toml out/logs/config-$S.toml; cp log-$S.txt out/logs/; cp run-$S/loss.png out/logs/loss-$S.png 2>/dev/null; done
rm -f out/bi-packed/tokenizer.json out/fp/tokenizer.json
tar cf - -C out bi-packed fp logs | xz -T16 -6 > result.tar.xz && split -b 15000000 result.tar.xz $OUT/result.tar.xz.
ls -la $OUT; el done
