#!/bin/bash
# On the GPU machine, from the repository root (carry runs/gpu/bin with bimamba-train.xz and, if
# there is one, cache.tar.xz of compiled kernels): the time of every GPU kernel of one training
# step of the 130M-class Bi-Mamba (bf16 products), summed by kernel name, from CubeCL's own
# profiler (`[profiling.logger] level = "basic"`: each launch waits for the device and is timed
# there, so the sums are device time without overlap). CubeCL prints one table per device sync;
# `bench` syncs after the forward, the backward and the optimizer, so the step comes out as three
# tables. Also the plain step rate and `bench --parts` of the same build, and the kernel checks.
# Writes kernels-*.log, bench-*.json, parts-*.json and check-kernels.json to $OUT.
# Usage: [FLAGS="--ssd-node"] [SKIP_CHECKS=1] [SKIP_BENCH=1] [SKIP_PARTS=1] bash scripts/gpu/kernel_profile.sh [BATCH] [CHUNK]   (default 4 128)
BATCH=${1:-4}
CHUNK=${2:-128}
FLAGS=${FLAGS:-}
cd runs/gpu || exit 1
[ -x bimamba-train ] || { xz -dc bin/bimamba-train.xz > bimamba-train && chmod +x bimamba-train; }
[ -f bin/cache.tar.xz ] && [ ! -f .cache-unpacked ] && tar xJf bin/cache.tar.xz && touch .cache-unpacked
CACHE='[compilation]\ncache = "local"\n[autotune]\ncache = "local"\nlevel = "minimal"\n'
printf "$CACHE" > cubecl.toml
T0=$(date +%s)
el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
B=./bimamba-train
TAG=b$BATCH-c$CHUNK${FLAGS:+$(echo "$FLAGS" | tr -d ' -')}
[ -n "$SKIP_CHECKS" ] || { el checks; $B check-kernels --backend cuda --json $OUT/check-kernels.json 2>&1 | tail -30; }
[ -n "$SKIP_BENCH" ] || { el "bench $TAG"
timeout 200 $B bench --backend cuda --bf16 --batch $BATCH --chunk-size $CHUNK --steps 3 --warmup 1 $FLAGS \
  --matmul-size 8192 --json $OUT/bench-$TAG.json 2>&1 | grep -v "^step" | tail -8; }
el "kernel profile $TAG"
printf "$CACHE"'[profiling.logger]\nlevel = "basic"\nfile = "kernels.log"\nappend = false\n' > cubecl.toml
rm -f kernels.log
timeout 300 $B bench --backend cuda --bf16 --batch $BATCH --chunk-size $CHUNK --steps 1 --warmup 1 $FLAGS \
  --matmul-size 256 2>&1 | grep -v "^step" | tail -3
cp kernels.log $OUT/kernels-$TAG.log; python3 ../../scripts/gpu/kernel_table.py kernels.log --top 12
printf "$CACHE" > cubecl.toml
[ -n "$SKIP_PARTS" ] || { el "parts $TAG"
timeout 200 $B bench --backend cuda --bf16 --batch $BATCH --chunk-size $CHUNK --steps 3 --warmup 1 --parts $FLAGS \
  --matmul-size 256 --json $OUT/parts-$TAG.json 2>&1 | grep -A40 "by part"; }
tar cJf $OUT/cache.tar.xz --exclude=./bin --exclude=./bimamba-train --exclude=./cubecl.toml --exclude=./.cache-unpacked \
  --exclude=./kernels.log --exclude=./peer . ; ls -la $OUT
el done
