#!/bin/bash
# On the GPU machine, from the repository root (carry runs/gpu/bin with bimamba-train.xz, and
# runs/data-tiny from `bimamba-train data prepare` as configs/tiny-cpu.toml describes): the tiny
# example trained on CUDA twice in f32, its SSD differentiated op by op (`--ssd-op-by-op`) and as
# the fused node (the default), same seed and data; prints both losses at each evaluation and the largest
# relative gap of the training and validation losses. Writes metrics-op.jsonl, metrics-node.jsonl
# and ssd_node_curve.txt to $OUT.
# Usage: [STEPS=400] bash scripts/gpu/ssd_node_curve.sh
STEPS=${STEPS:-400}
ROOT=$PWD
. "$(dirname "$0")/prepare.sh"
sed -e "s#^dir = .*#dir = \"$ROOT/runs/data-tiny\"#" -e "s#^steps = .*#steps = $STEPS#" -e 's#^backend = .*#backend = "cuda"#' \
  $ROOT/configs/tiny-cpu.toml > tiny-cuda.toml
for v in op node; do
  FLAG=; [ $v = op ] && FLAG=--ssd-op-by-op
  el "train $v"
  rm -rf tiny-$v
  timeout 240 $B train --config tiny-cuda.toml --out tiny-$v --quiet $FLAG 2>&1 | tail -3
  cp tiny-$v/metrics.jsonl $OUT/metrics-$v.jsonl
done
python3 - "$OUT" <<'PY' | tee $OUT/ssd_node_curve.txt
import json, sys
out = sys.argv[1]
runs = {v: {r["step"]: r for r in map(json.loads, open(f"{out}/metrics-{v}.jsonl"))} for v in ("op", "node")}
gap = {"train_loss": 0.0, "val_loss": 0.0}
print(f"{'step':>6}{'train op':>10}{'train node':>12}{'val op':>9}{'val node':>10}")
for s in sorted(set(runs["op"]) & set(runs["node"])):
    a, b = runs["op"][s], runs["node"][s]
    for k in gap:
        if k in a and k in b:
            gap[k] = max(gap[k], abs(a[k] - b[k]) / abs(a[k]))
    if "val_loss" in a:
        f = lambda r, k: f"{r[k]:.4f}" if k in r else "-"
        print(f"{s:>6}{f(a, 'train_loss'):>10}{f(b, 'train_loss'):>12}{f(a, 'val_loss'):>9}{f(b, 'val_loss'):>10}")
print(f"largest relative gap: train {gap['train_loss']:.2e}, val {gap['val_loss']:.2e}")
PY
