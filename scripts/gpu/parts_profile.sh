#!/bin/bash
# On the GPU machine, from the repository root (carry runs/gpu/bin with bimamba-train.xz and, if
# there is one, cache.tar.xz of compiled kernels): the fused-kernel checks, then `bench --parts`
# of the 130M-class Bi-Mamba (bf16 products) for each SSD chunk length and each SSD variant in
# MODES: "default" or "node" (the SSD as one autodiff node on its kernels), "op" (differentiated
# op by op, f32 products), "bf16" (op by op with bf16 SSD products), "node-bf16" (the node with
# --ssd-bf16, which its kernels ignore). With PROFILE=1 also the forward's
# per-section profile of the default step. JSON per run in $OUT.
# Usage: [MODES="node op"] [PROFILE=1] bash scripts/gpu/parts_profile.sh [BATCH] [CHUNKS]   (default 4, "256")
BATCH=${1:-4}
CHUNKS=${2:-"256"}
. "$(dirname "$0")/prepare.sh"
[ -n "$SKIP_CHECKS" ] || { el checks; $B check-kernels --backend cuda --json $OUT/check-kernels.json 2>&1 | tail -30; }
for c in $CHUNKS; do
  if [ -n "$PROFILE" ]; then
    el "batch $BATCH chunk $c profiled"
    timeout 120 $B bench --backend cuda --bf16 --batch $BATCH --chunk-size $c --steps 2 --warmup 1 --profile --matmul-size 1024 2>&1 | grep -A30 "ms per step"
  fi
  for mode in ${MODES:-node op bf16}; do
    case $mode in
      default|node) flags="" ;;
      op) flags="--ssd-op-by-op" ;;
      bf16) flags="--ssd-op-by-op --ssd-bf16" ;;
      node-bf16) flags="--ssd-bf16" ;;
    esac
    el "batch $BATCH chunk $c $mode"
    timeout 200 $B bench --backend cuda --bf16 --batch $BATCH --chunk-size $c --steps 3 --warmup 1 --parts $flags \
      --matmul-size 4096 --json $OUT/parts-b$BATCH-c$c-$mode.json 2>&1 | grep -v "^step" | tail -18
  done
done
tar cJf $OUT/cache.tar.xz --exclude=./bin --exclude=./bimamba-train --exclude=./cubecl.toml --exclude=./.cache-unpacked . ; ls -la $OUT
el done
