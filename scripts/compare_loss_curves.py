#!/usr/bin/env python3
"""Compares two training runs' validation losses at every evaluation step.

usage: compare_loss_curves.py A/metrics.jsonl B/metrics.jsonl [--tolerance 0.02] [--json OUT]
Prints one line per evaluation step (both losses and the relative difference) and exits 1 when
any step differs by more than the tolerance (relative to A) or the runs evaluated different steps.
"""
import argparse, json, sys

def val_losses(path):
    out = {}
    for line in open(path):
        r = json.loads(line)
        if "val_loss" in r:
            out[r["step"]] = r["val_loss"]
    return out

ap = argparse.ArgumentParser()
ap.add_argument("a"); ap.add_argument("b")
ap.add_argument("--tolerance", type=float, default=0.02)
ap.add_argument("--json")
args = ap.parse_args()
a, b = val_losses(args.a), val_losses(args.b)
if sorted(a) != sorted(b):
    sys.exit(f"the runs evaluated different steps: {sorted(a)} vs {sorted(b)}")
rows, worst = [], 0.0
print(f"{'step':>6} {'A val':>9} {'B val':>9} {'rel diff':>9}")
for s in sorted(a):
    d = abs(b[s] - a[s]) / abs(a[s])
    worst = max(worst, d)
    rows.append(dict(step=s, a=a[s], b=b[s], rel_diff=d))
    print(f"{s:>6} {a[s]:>9.4f} {b[s]:>9.4f} {100 * d:>8.2f}%")
ok = worst <= args.tolerance
print(f"largest difference {100 * worst:.2f}% (tolerance {100 * args.tolerance:.1f}%): {'ok' if ok else 'FAIL'}")
if args.json:
    json.dump(dict(a=args.a, b=args.b, tolerance=args.tolerance, worst=worst, ok=ok, steps=rows), open(args.json, "w"), indent=1)
sys.exit(0 if ok else 1)
