#!/bin/bash
# On the GPU machine, from the repository root (carry runs/gpu/bin with bimamba-train.xz and, if
# there is one, cache.tar.xz of compiled kernels): data-parallel training of the 130M-class
# Bi-Mamba (configs/gpu-130m.toml with the head widened to SmolLM2's 49,152 rows).
#  - Every machine: `--nproc 1` against a plain run, same config (one rank exchanges nothing, so
#    the losses should agree bit for bit where the GPU's kernels are deterministic).
#  - N GPUs: tokens/s at 1, 2, ..., N ranks with the per-GPU batch fixed; scaling efficiency =
#    tokens/s at N / (N × tokens/s at 1); the gradient exchange's time per step and its bus
#    bandwidth as NCCL's tests define it (2(N−1)/N × gradient bytes / time); and the loss curve of
#    2 ranks against 1 rank with twice the batch (same global batch).
# NCCL is loaded from PyTorch's nvidia-nccl pip package when it is installed.
# Writes data-parallel.json and each run's metrics to $OUT.
# Usage: bash scripts/gpu/data_parallel.sh [STEPS] [BATCH]   (default 20 steps, batch 4 per GPU)
STEPS=${1:-20}
BATCH=${2:-4}
ROOT=$PWD
cd runs/gpu || exit 1
[ -x bimamba-train ] || { xz -dc bin/bimamba-train.xz > bimamba-train && chmod +x bimamba-train; }
[ -f bin/cache.tar.xz ] && [ ! -f .cache-unpacked ] && tar xJf bin/cache.tar.xz && touch .cache-unpacked
printf '[compilation]\ncache = "local"\n[autotune]\ncache = "local"\nlevel = "minimal"\n' > cubecl.toml
NCCL_LIB=$(python3 -c "import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], 'lib'))" 2>/dev/null)
[ -n "$NCCL_LIB" ] && export LD_LIBRARY_PATH="$NCCL_LIB:$LD_LIBRARY_PATH"
NGPU=$(nvidia-smi -L | wc -l)
T0=$(date +%s)
el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
B=./bimamba-train

# Data: the repository's texts, paragraphs shuffled and repeated into a few MB.
python3 - "$ROOT/fixtures/text" <<'PY'
import glob, os, random, sys
random.seed(0)
paras = [p for f in sorted(glob.glob(os.path.join(sys.argv[1], "*.txt"))) for p in open(f).read().split("\n\n") if p.strip()]
with open("dp-corpus.txt", "w") as out:
    for _ in range(200):
        random.shuffle(paras)
        out.write("\n\n".join(paras) + "\n\n")
PY
[ -d dp-data ] || $B data prepare --tokenizer "$ROOT/fixtures/ss-bimamba-col/tokenizer.json" --out dp-data dp-corpus.txt || exit 1

cfg() { # name batch
  sed -e 's|^dir = .*|dir = "dp-data"|' -e "s|^batch_size = .*|batch_size = $2|" -e "s|^steps = .*|steps = $STEPS|" \
      -e 's|^eval_every = .*|eval_every = 0|' -e 's|^checkpoint_every = .*|checkpoint_every = 0|' \
      -e "s|^out = .*|out = \"dp-$1\"|" -e 's|^n_layer = 24|n_layer = 24\nvocab_size = 49152|' \
      "$ROOT/configs/gpu-130m.toml" > dp-$1.toml
  rm -rf dp-$1
}
run() { # name extra-args...
  local name=$1; shift
  el "train $name $*"
  timeout 280 $B train --config dp-$name.toml --backend cuda --quiet "$@" 2>&1 | tail -3
  cp dp-$name/metrics.jsonl $OUT/metrics-$name.jsonl 2>/dev/null
}
cfg solo $BATCH; run solo
cfg n1 $BATCH; run n1 --nproc 1
if [ "$NGPU" -ge 2 ]; then
  cfg b2x $((2 * BATCH)); run b2x
  n=2
  while [ $n -le "$NGPU" ]; do cfg n$n $BATCH; run n$n --nproc $n; n=$((n * 2)); done
fi
python3 - "$OUT" "$NGPU" "$BATCH" <<'PY'
import json, os, sys
out, ngpu, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def steps(name):
    p = os.path.join(out, f"metrics-{name}.jsonl")
    if not os.path.exists(p): return None
    return [l for l in map(json.loads, open(p)) if "train_loss" in l]
def tps(rows):  # steady state: the median of the steps after the first three
    v = sorted(r["tokens_per_s"] for r in rows[3:]) or [0]
    return v[len(v) // 2]
res = {"gpus": ngpu, "batch_per_gpu": batch}
solo, n1 = steps("solo"), steps("n1")
if solo and n1:
    d = max(abs(a["train_loss"] - b["train_loss"]) for a, b in zip(solo, n1))
    res["nproc1_vs_plain_max_loss_diff"] = d
    print(f"--nproc 1 against a plain run: {len(n1)} steps, largest loss difference {d:.3e}")
base = tps(n1) if n1 else None
res["scaling"] = []
n = 2
while n <= ngpu:
    r = steps(f"n{n}")
    if r:
        t = tps(r); ex = sorted(x.get("exchange_s", 0) for x in r[3:]) or [0]; ex = ex[len(ex) // 2]
        grad_bytes = 4 * json.load(open(f"dp-n{n}/run.json"))["params"]  # f32 gradients
        row = {"ranks": n, "tokens_per_s": t, "efficiency": t / (n * base) if base else None,
               "exchange_s": ex, "bus_bandwidth_GBps": 2 * (n - 1) / n * grad_bytes / ex / 1e9 if ex else None}
        res["scaling"].append(row); print(row)
    n *= 2
b2x, n2 = steps("b2x"), steps("n2")
if b2x and n2:
    d = max(abs(a["train_loss"] - b["train_loss"]) / abs(a["train_loss"]) for a, b in zip(b2x, n2))
    res["two_ranks_vs_double_batch_max_rel_loss_diff"] = d
    print(f"2 ranks against 1 rank with twice the batch: largest relative loss difference {d:.3e}")
json.dump(res, open(os.path.join(out, "data-parallel.json"), "w"), indent=1)
PY
tar cJf $OUT/cache.tar.xz --exclude=./bin --exclude=./bimamba-train --exclude=./cubecl.toml --exclude=./.cache-unpacked \
  --exclude='./dp-*' --exclude=./kernels.log --exclude=./peer --exclude='./*.sh' --exclude='./*.py' . 2>/dev/null
el done
