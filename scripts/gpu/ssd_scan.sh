#!/bin/bash
# On the GPU machine, from the repository root (carry runs/gpu/bin with bimamba-train.xz and, if
# there is one, cache.tar.xz of compiled kernels): the SSD scan's CubeCL kernels against the
# op-by-op scan. First `check-kernels` (every fused kernel against its reference on this GPU; the
# ssd_scan lines are printed), then `bench` of the 130M-class Bi-Mamba at one batch, for each chunk
# length, alternately with the scan differentiated op by op (--ssd-op-by-op) and as one node on
# its kernels (the default), in one process each, same card. Writes check-kernels.json,
# bench-b*-c*-{op,node}.json and cache.tar.xz to $OUT.
# Usage: bash scripts/gpu/ssd_scan.sh [BATCH] [CHUNKS]   (default 4 "128 256")
BATCH=${1:-4}
CHUNKS=${2:-"128 256"}
. "$(dirname "$0")/prepare.sh"
el checks
timeout 150 $B check-kernels --backend cuda --json $OUT/check-kernels.json 2>&1 | grep -E "ssd_scan|FAIL|passed|failed" | head -20
for c in $CHUNKS; do
  for mode in op node; do
    flag=--ssd-op-by-op; [ $mode = node ] && flag=
    el "bench b$BATCH c$c $mode"
    timeout 150 $B bench --backend cuda --bf16 --batch $BATCH --chunk-size $c --steps 3 --warmup 1 $flag \
      --matmul-size 256 --json $OUT/bench-b$BATCH-c$c-$mode.json 2>&1 | grep -E "^(throughput|peak)"
  done
done
python3 - "$OUT" <<'PY'
import json, glob, os, sys
for f in sorted(glob.glob(os.path.join(sys.argv[1], "bench-*.json"))):
    r = json.load(open(f))
    print(f"{os.path.basename(f):32} {r.get('tokens_per_s', 0):>10.0f} tok/s  " +
          "  ".join(f"{k} {1e3 * r[k]:.1f} ms" for k in ("forward_s", "backward_s", "optimizer_s") if k in r))
PY
tar cJf $OUT/cache.tar.xz --exclude=./bin --exclude=./bimamba-train --exclude=./cubecl.toml --exclude=./.cache-unpacked \
  --exclude=./kernels.log --exclude=./peer --exclude='./*.sh' --exclude='./*.py' . ; ls -la $OUT
el done
