#!/bin/bash
# Ours against the peer in one run on one GPU: `bimamba-train bench` and PyTorch + mamba_ssm's fully
# fused training path (the stack the official Bi-Mamba code uses), same shape (130M class: d_model
# 768, 24 layers, vocab 50280, d_state 128, headdim 64, chunk 256, seq 2048, bf16 products, random
# tokens, next-token CE), Bi-Mamba and full precision, batches 4, 8 and 16. Writes
# $OUT/peer_bench.json (both sides and the ratio per configuration) and prints a table.
#
# On the GPU machine, from the repository root, with runs/gpu/bin/bimamba-train.xz and the peer
# harness (bench_mamba_ssm.py, run_fused.sh, mamba_ssm/, causal_conv1d_src/, prebuilt/, the einops
# wheel) in $PEER_DIR (default runs/gpu/peer); optional runs/gpu/bin/cache.tar.xz (CubeCL caches).
# OURS_FLAGS adds flags to our side (e.g. "--chunk-size 128": the SSD's chunk length is a choice
# of the algorithm, the model and its outputs are the same; the peer keeps mamba_ssm's 256).
# Usage: [VARIANTS="bi fp"] [OURS_FLAGS=...] bash scripts/gpu/peer_bench.sh [BATCHES]   (default "4 8 16")
set -u
BATCHES=${1:-"4 8 16"}
VARIANTS=${VARIANTS:-"bi fp"}
OURS_FLAGS=${OURS_FLAGS:-}
ROOT=$PWD
PEER_DIR=$(cd "${PEER_DIR:-runs/gpu/peer}" && pwd) || exit 1
WORK=$(mktemp -d)
cd runs/gpu || exit 1
[ -x bimamba-train ] || { xz -dc bin/bimamba-train.xz > bimamba-train && chmod +x bimamba-train; }
[ -f bin/cache.tar.xz ] && [ ! -d cuda ] && tar xJf bin/cache.tar.xz
printf '[compilation]\ncache = "local"\n[autotune]\ncache = "local"\nlevel = "minimal"\n' > cubecl.toml
T0=$(date +%s)
el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
CFGS=
for v in $VARIANTS; do
  for b in $BATCHES; do
    FP=; [ $v = fp ] && FP=--full-precision
    el "ours $v batch $b"
    timeout 240 ./bimamba-train bench --backend cuda --bf16 $FP --batch $b --steps 5 --warmup 2 $OURS_FLAGS \
      --json $WORK/ours-$v-$b.json 2>&1 | grep -E "^(tokens/step|throughput|peak)"
    CFGS="$CFGS${CFGS:+,}$v:$b:0"
  done
done
el "peer $CFGS"
(cd "$PEER_DIR" && OUT=$WORK bash run_fused.sh "$CFGS" 2>&1 | grep -v Warning | tail -8)
el "combine"
python3 - "$WORK" "$OUT/peer_bench.json" "$OURS_FLAGS" <<'PY'
import json, os, sys, subprocess
work, dest, ours_flags = sys.argv[1], sys.argv[2], sys.argv[3]
peer = {(r["variant"], r["batch"]): r for r in json.load(open(os.path.join(work, "mamba_ssm_bench.json"))) if "tokens_per_s" in r}
rows = []
for f in sorted(os.listdir(work)):
    if not f.startswith("ours-"):
        continue
    _, v, b = f[:-5].split("-")
    o = json.load(open(os.path.join(work, f)))
    p = peer.get((v, int(b)))
    rows.append(dict(variant=v, batch=int(b), ours_tokens_per_s=o["tokens_per_s"], ours_step_s=o["step_s"],
                     ours_mfu_790=o["tokens_per_s"] * o["flops_per_token"] / 790e12,
                     peer_tokens_per_s=p and p["tokens_per_s"], peer_step_s=p and p["step_s"], peer_peak_mem_gb=p and p["peak_mem_gb"],
                     ratio=p and o["tokens_per_s"] / p["tokens_per_s"], ours=o, peer=p))
gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
json.dump(dict(gpu=gpu, shape="d_model 768, 24 layers, vocab 50280, d_state 128, headdim 64, seq 2048; peer chunk 256", ours_flags=ours_flags, rows=rows), open(dest, "w"), indent=1)
print(f"{'variant':8}{'batch':>6}{'ours tok/s':>12}{'peer tok/s':>12}{'ratio':>8}")
for r in sorted(rows, key=lambda r: (r["variant"], r["batch"])):
    print(f"{r['variant']:8}{r['batch']:>6}{r['ours_tokens_per_s']:>12.0f}{(r['peer_tokens_per_s'] or 0):>12.0f}{(r['ratio'] or 0):>8.2f}")
PY
rm -rf "$WORK"
el done
