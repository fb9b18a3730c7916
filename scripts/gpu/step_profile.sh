#!/bin/bash
# On the GPU machine, from the repository root (carry runs/gpu/bin with bimamba-train.xz; optionally
# runs/gpu/cache.tar.xz from an earlier run, so no kernel is compiled twice):
# the fused-kernel checks, then `bench` of the 130M-class Bi-Mamba with the fused kernels and with
# the op-by-op reference paths, and the per-section profile of the fused step.
# Usage: bash scripts/gpu/step_profile.sh [BATCHES]   (default "4 8")
BATCHES=${1:-"4 8"}
cd runs/gpu || exit 1
[ -x bimamba-train ] || { xz -dc bin/bimamba-train.xz > bimamba-train && chmod +x bimamba-train; }
[ -f bin/cache.tar.xz ] && tar xJf bin/cache.tar.xz
printf '[compilation]\ncache = "local"\n[autotune]\ncache = "local"\nlevel = "minimal"\n' > cubecl.toml
T0=$(date +%s)
el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
B=./bimamba-train
el checks; $B check-kernels --backend cuda --json $OUT/check-kernels.json 2>&1 | tail -25
for b in $BATCHES; do
  el "batch $b fused"; timeout 150 $B bench --backend cuda --bf16 --batch $b --steps 3 --warmup 1 --json $OUT/bench-b$b.json 2>&1 | grep -v "^step" | tail -6
  el "batch $b fused, profiled"; timeout 120 $B bench --backend cuda --bf16 --batch $b --steps 2 --warmup 1 --profile --matmul-size 1024 2>&1 | grep -A20 "ms per step"
  el "batch $b reference"; timeout 150 $B bench --backend cuda --bf16 --batch $b --steps 3 --warmup 1 --reference --json $OUT/bench-b$b-reference.json 2>&1 | grep -v "^step" | tail -4
done
tar cJf $OUT/cache.tar.xz --exclude=./bin --exclude=./bimamba-train --exclude=./cubecl.toml . ; ls -la $OUT
el done
