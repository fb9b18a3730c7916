#!/usr/bin/env python3
"""The scaling part of load_test.py (8 greedy streams against 1 on models/default) for two
`bimamba` binaries, alternating, ROUNDS rounds each (the order flips every round): prints each
round's figures and, per binary, the medians and the range of the 8-to-1 ratio. On a shared
machine the ratio moves with the load from minute to minute, so only alternating rounds compare
two builds."""
import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load_test  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    bins = [a.old, a.new]
    res = {b: [] for b in bins}
    prompt = "The history of the county begins with"
    for r in range(a.rounds):
        for b in bins if r % 2 == 0 else bins[::-1]:
            x = load_test.scaling_part(b, a.threads, b, [], 128, prompt)
            res[b].append((x["one_stream_tok_s"], x["eight_streams_tok_s"], x["speedup"]))
    for b in bins:
        one, eight, sp = zip(*res[b])
        print(f"{b}: 1 stream {statistics.median(one):.0f} tok/s, 8 streams {statistics.median(eight):.0f} tok/s "
              f"(medians); speedup median {statistics.median(sp):.2f}x, {min(sp):.2f}-{max(sp):.2f}")


if __name__ == "__main__":
    main()
