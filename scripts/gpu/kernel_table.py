#!/usr/bin/env python3
"""Summarize a CubeCL profiling log (`[profiling.logger] level = "basic"`, as written by
scripts/gpu/kernel_profile.sh): CubeCL prints one table of kernel time per device sync; `bench`
syncs before the step and after its forward, backward and optimizer, so the measured step's
phases are tables too (with one warm-up step: tables 2-4 warm-up, 6-8 measured, counting from 1).
Prints every table with at least 1 ms of kernel time: its total, its launches and its top
kernels by time with their launch counts.

Usage: kernel_table.py kernels.log [--top 15]
"""
import re
import sys


def tables(path):
    """Each table as (total_ms, total_count, [(name, ms, count)])."""
    out, rows = [], None
    for line in open(path, encoding="utf-8", errors="replace"):
        # Table rows end with a ratio ("12 %"); kernel names may contain "|" themselves.
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 4 or not cells[-1].endswith("%") and cells[-1] != "Ratio":
            continue
        name, dur, num = " | ".join(cells[:-3]), cells[-3], cells[-2]
        if name == "Name":
            rows = []
            continue
        if rows is None:
            continue
        ms = duration_ms(dur)
        if name == "Total":
            out.append((ms, int(num), rows))
            rows = None
        elif ms is not None:
            rows.append((name, ms, int(num)))
    return out


def duration_ms(text):
    m = re.fullmatch(r"([0-9.]+)(ns|µs|us|ms|s)", text)
    if not m:
        return None
    scale = {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
    return float(m.group(1)) * scale


def main():
    args = sys.argv[1:]
    top = int(args[args.index("--top") + 1]) if "--top" in args else 15
    ts = tables(args[0])
    print(f"{len(ts)} tables in the log")
    for i, (total, count, rows) in enumerate(ts, 1):
        if total < 1.0:
            continue
        print(f"\n== table {i}: {total:.1f} ms of kernels, {count} launches")
        for name, ms, n in sorted(rows, key=lambda r: -r[1])[:top]:
            print(f"{ms:9.2f} ms {n:6d}x  {name[:110]}")


if __name__ == "__main__":
    main()
