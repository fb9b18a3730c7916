#!/bin/bash
# Part 1 of the GPU recipe (run from the repository root): unpack, benchmark (small, the 19.5 M-parameter student of RESULTS.md, the 130M class). Teacher part A rides along.
cd runs/gpu || exit 1
xz -dc bin/bimamba-train.xz > bimamba-train && xz -dc bin/bimamba.xz > bimamba && chmod +x bimamba-train bimamba
tar xJf bin/data7.tar.xz
printf '[compilation]\ncache = "local"\n[compilation.logger]\nlevel = "basic"\nfile = "compile.log"\n[autotune]\ncache = "local"\nlevel = "minimal"\n' > cubecl.toml
T0=$(date +%s)
el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
B=./bimamba-train
el small; timeout 75 $B bench --backend cuda --bf16 --n-layer 2 --d-model 256 --vocab 49152 --seq-len 1024 --batch 16 --steps 2 --warmup 1 --matmul-size 4096 --json bench-small.json 2>&1 | tail -12; el "rc=${PIPESTATUS[0]} kernels=$(grep -c . compile.log 2>/dev/null)"
el student-bi; timeout 60 $B bench --backend cuda --bf16 --n-layer 16 --d-model 256 --d-state 64 --vocab 49152 --seq-len 1024 --batch 16 --steps 3 --warmup 1 --json bench-student-bi.json 2>&1 | tail -12; el "rc=${PIPESTATUS[0]} kernels=$(grep -c . compile.log)"
el 130m-bi; timeout 75 $B bench --backend cuda --bf16 --steps 3 --warmup 1 --json bench-130m-bi.json 2>&1 | tail -12; el "rc=${PIPESTATUS[0]} kernels=$(grep -c . compile.log)"
cp bench-*.json $OUT/ 2>/dev/null; xz -c compile.log > $OUT/compile.log.xz
ls -la tA; el done
