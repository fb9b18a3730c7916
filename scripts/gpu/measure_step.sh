#!/bin/bash
# A batch of training-step measurements that fits one command on the GPU machine, from the repository
# root (carry runs/gpu with bin/bimamba-train.xz and, if there is one, bin/cache.tar.xz): the
# kernel checks once, then `step_variants.sh` at each batch of BATCHES with the variants given
# (one argument each, "" for the defaults), then, with PROFILE set, the per-kernel device profile
# of one step at batch 4 under the flags PROFILE holds ("default" for none). Everything lands in
# $OUT as two files, whatever the number of runs (a call brings back at most eight):
# measure.tar.xz (the JSON, tables and logs, one folder per batch) and cache.tar.xz (the compiled
# kernels, for bin/cache.tar.xz next time).
# With KEEP=DIR the results also stay unpacked in DIR on the machine, for a later command on the
# same warm machine (scripts/gpu/best_flags.sh reads them).
# Usage: [BATCHES="4 16"] [SKIP_CHECKS=1] [PROFILE="--ssd-products blocked"] [KEEP=/tmp/measure]
#        bash scripts/gpu/measure_step.sh "" "--ssd-products blocked" ...
# Example (about 3 minutes on an H100 with a warm kernel cache):
#   BATCHES=4 PROFILE="--ssd-products blocked" bash scripts/gpu/measure_step.sh "" "--ssd-products blocked"
set -u
BATCHES=${BATCHES:-"4 16"}
HERE=$(cd "$(dirname "$0")" && pwd)
W=$(mktemp -d)
FINAL=$OUT
checks=${SKIP_CHECKS:-}
for b in $BATCHES; do
  mkdir -p "$W/b$b"
  OUT=$W/b$b BATCH=$b SKIP_CHECKS=$checks bash "$HERE/step_variants.sh" "$@" 2>&1 | tee "$W/b$b/log.txt"
  checks=1
done
if [ -n "${PROFILE:-}" ]; then
  flags=$PROFILE
  [ "$flags" = default ] && flags=
  mkdir -p "$W/profile"
  OUT=$W/profile FLAGS=$flags SKIP_CHECKS=1 SKIP_BENCH=1 SKIP_PARTS=1 bash "$HERE/kernel_profile.sh" 4 128 2>&1 |
    tail -60 | tee "$W/profile/log.txt"
fi
# The newest cache comes back once; the results without it.
newest=$(ls -t "$W"/*/cache.tar.xz 2>/dev/null | head -1)
[ -n "$newest" ] && cp "$newest" "$FINAL/cache.tar.xz"
rm -f "$W"/*/cache.tar.xz
tar cJf "$FINAL/measure.tar.xz" -C "$W" .
[ -n "${KEEP:-}" ] && mkdir -p "$KEEP" && cp -r "$W"/. "$KEEP"/
rm -rf "$W"
ls -la "$FINAL"
