#!/bin/bash
# On the GPU machine, from the repository root (carry runs/gpu/bin with bimamba-train.xz and, if
# there is one, cache.tar.xz of compiled kernels): the kernel checks, then the 130M-class training
# step (bf16 products, chunk 128) under each variant of flags, one `bench` each, in one process
# after another on the same card, and a table of tokens/s and forward / backward / optimizer ms.
# Writes check-kernels.json, bench-<variant>.json, step_variants.txt and cache.tar.xz to $OUT.
# Usage: [BATCH=4] [CHECK_FLAGS="--f32-matmul-kernel simple_unit"] [SKIP_CHECKS=1]
#        bash scripts/gpu/step_variants.sh "" "--ssd-node" "--ssd-bf16" ...   (each argument one variant)
BATCH=${BATCH:-4}
. "$(dirname "$0")/prepare.sh"
[ -n "$SKIP_CHECKS" ] || { el "checks $CHECK_FLAGS"
  timeout 240 $B check-kernels --backend cuda $CHECK_FLAGS --json $OUT/check-kernels.json 2>&1 | grep -E "^FAIL|ssd_scan|col_sum|conv" | head -60; }
for v in "$@"; do
  tag=b$BATCH${v:+$(echo "$v" | tr -d ' -')}
  el "bench $tag"
  timeout 200 $B bench --backend cuda --bf16 --batch $BATCH --chunk-size 128 --steps 3 --warmup 1 $v \
    --matmul-size 256 --json $OUT/bench-$tag.json 2>&1 | grep -v "^step" | tail -4
done
python3 - "$OUT" > $OUT/step_variants.txt <<'PY'
import json, os, sys
out = sys.argv[1]
print(f"{'variant':32}{'tokens/s':>10}{'fw ms':>8}{'bw ms':>8}{'opt ms':>8}{'held GB':>9}")
for f in sorted(os.listdir(out)):
    if f.startswith("bench-") and f.endswith(".json"):
        r = json.load(open(os.path.join(out, f)))
        ms = lambda k: 1e3 * r.get(k, 0.0)
        print(f"{f[6:-5]:32}{r['tokens_per_s']:>10.0f}{ms('forward_s'):>8.1f}{ms('backward_s'):>8.1f}{ms('optimizer_s'):>8.1f}{r.get('memory_reserved_gb', 0):>9.1f}")
PY
cat $OUT/step_variants.txt
tar cJf $OUT/cache.tar.xz --exclude=./bin --exclude=./bimamba-train --exclude=./cubecl.toml --exclude=./.cache-unpacked \
  --exclude=./kernels.log --exclude=./peer . 
el done
