#!/bin/bash
# On the GPU machine, from the repository root (carry runs/gpu/bin with bimamba-train.xz and, if
# there is one, cache.tar.xz of compiled kernels): `matmul-kernels` (every CubeCL matmul family at
# the 130M-class step's product shapes, timed and checked against Burn's product), then the
# family with the least product time per step (each shape weighted by how often one step runs
# it; only families that ran every shape within 2% of Burn's result) against Burn's default in
# `bench` at each batch. Writes matmul-kernels.json, matmul-choice.txt and bench-*.json to $OUT.
# Usage: [KERNELS=a,b] bash scripts/gpu/matmul_kernels.sh [BATCHES] [CHUNK]   (default "4", 128)
BATCHES=${1:-4}
CHUNK=${2:-128}
. "$(dirname "$0")/prepare.sh"
el "matmul-kernels"
timeout ${PROBE_S:-330} $B matmul-kernels --backend cuda --rows 8192 ${KERNELS:+--kernels $KERNELS} \
  --json $OUT/matmul-kernels.json 2>&1 | grep -v "^\s*$" | tee $OUT/matmul-kernels.txt | tail -250
BEST=$(python3 - "$OUT/matmul-kernels.txt" <<'PY'
import sys, collections
# Products per step of each shape (24 layers): z and x forwards, B|C|dt, out_proj, head; the
# input and weight gradients of every projection.
weight = {"in_proj z|x forward": 48, "in_proj B|C|dt forward": 24, "out_proj forward": 24, "head forward": 1,
          "in_proj input gradient": 96, "in_proj weight gradient": 96, "head weight gradient": 2}
flops = {"in_proj z|x forward": 8192*768*1536, "in_proj B|C|dt forward": 8192*768*280, "out_proj forward": 8192*1536*768,
         "head forward": 8192*768*50288, "in_proj input gradient": 8192*1536*768, "in_proj weight gradient": 1536*8192*768,
         "head weight gradient": 50288*8192*768}
t = collections.defaultdict(float); ok = collections.defaultdict(set)
for line in open(sys.argv[1]):
    for p in weight:
        if p in line and "unavailable" not in line:
            k = line.split()[0]; rest = line.split(p)[1].split()
            tf, err = float(rest[0]), float(rest[1])
            if err < 2e-2 and tf > 0:
                t[k] += weight[p] * 2 * flops[p] / (tf * 1e12); ok[k].add(p)
full = {k: v for k, v in t.items() if len(ok[k]) == len(weight)}
for k, v in sorted(full.items(), key=lambda kv: kv[1])[:8]:
    print(f"  {k}: {1e3*v:.1f} ms of products per step", file=sys.stderr)
print(min(full, key=full.get) if full else "")
PY
)
echo "chosen: ${BEST:-none}" | tee $OUT/matmul-choice.txt
for b in $BATCHES; do
  for k in default $BEST; do
    flag=; [ $k != default ] && flag="--matmul-kernel $k"
    el "bench b$b c$CHUNK $k"
    timeout 200 $B bench --backend cuda --bf16 --batch $b --chunk-size $CHUNK --steps 3 --warmup 1 $flag \
      --matmul-size 8192 --json $OUT/bench-b$b-c$CHUNK-$k.json 2>&1 | grep -E "^(tokens/step|throughput|peak)"
  done
done
tar cJf $OUT/cache.tar.xz --exclude=./bin --exclude=./bimamba-train --exclude=./cubecl.toml --exclude=./.cache-unpacked \
  --exclude=./kernels.log --exclude=./peer --exclude='./*.sh' . ; ls -la $OUT
el done
