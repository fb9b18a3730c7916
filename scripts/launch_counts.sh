#!/bin/bash
# Kernel launches of one training step, per layer and by kernel, counted on the CPU: `bench
# --backend wgpu` (Burn's WGPU backend over Mesa's lavapipe) with CubeCL's profiler on, for a
# small Bi-Mamba of 2 and of 4 layers; the difference divided by 2 is what each layer adds. The
# counts are those of the CUDA step with f32 products (the CUDA step adds the bf16 casts); the
# times lavapipe reports are meaningless. Needs a build with `--features wgpu` and lavapipe
# (`apt-get install mesa-vulkan-drivers`).
# Usage: bash scripts/launch_counts.sh [BINARY]   (default target/release/bimamba-train)
set -eu
BIN=$(realpath "${1:-target/release/bimamba-train}")
ROOT=$(pwd)
WORK=$(mktemp -d)
cd "$WORK"
printf '[profiling.logger]\nlevel = "basic"\nfile = "kernels.log"\nappend = false\n' > cubecl.toml
for nl in 2 4; do
  rm -f kernels.log
  "$BIN" bench --backend wgpu --d-model 64 --n-layer $nl --vocab 512 --d-state 16 --headdim 16 --seq-len 256 \
    --batch 1 --chunk-size 64 --steps 1 --warmup 1 --matmul-size 64 > /dev/null 2>&1
  cp kernels.log k$nl.log
done
python3 - "$ROOT/scripts/gpu" <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
import kernel_table as kt
t2, t4 = kt.tables("k2.log"), kt.tables("k4.log")
# The measured step's forward, backward and optimizer come after the warm-up's: its backward is
# the second table with the RMSNorm's backward kernel, the forward the table before it and the
# optimizer the one after.
def names(t):
    return {n.split(" | ")[0] for n, _, _ in t[2]}
bw = [i for i, t in enumerate(t2) if "RmsNormBackwardKernel" in names(t)][1]
for idx, label in [(bw - 1, "forward"), (bw, "backward"), (bw + 1, "optimizer")]:
    a, b = {}, {}
    for n, _, c in t2[idx][2]:
        a[n.split(" | ")[0]] = a.get(n.split(" | ")[0], 0) + c
    for n, _, c in t4[idx][2]:
        b[n.split(" | ")[0]] = b.get(n.split(" | ")[0], 0) + c
    total = (t4[idx][1] - t2[idx][1]) / 2
    print(f"== {label}: {total:.0f} launches per layer, {t2[idx][1] - 2 * total:.0f} outside the layers")
    for n in sorted(set(a) | set(b), key=lambda n: -b.get(n, 0)):
        per = (b.get(n, 0) - a.get(n, 0)) / 2
        if per:
            print(f"{per:6.0f}  {n}")
PY
rm -rf "$WORK"
