#!/bin/bash
# Prints whichever of the candidate flag sets trained fastest at batch B in the results of
# `step_variants.sh` in DIR (bench-<tag>.json, the tag as step_variants.sh forms it), the
# defaults ("") included; prints nothing when the defaults won or no result was found. For a
# command on a warm GPU machine that continues an earlier one's measurements (measure_step.sh
# with KEEP=DIR) without a round trip through this machine.
# Usage: bash scripts/gpu/best_flags.sh DIR B "--ssd-products blocked" "--ssd-keep" ...
set -u
DIR=$1
B=$2
shift 2
best=""
best_tps=0
for v in "" "$@"; do
  tag=b$B${v:+$(echo "$v" | tr -d ' -')}
  tps=$(python3 -c "import json,sys; print(int(json.load(open(sys.argv[1]))['tokens_per_s']))" "$DIR/bench-$tag.json" 2>/dev/null) || continue
  echo "  $tag: $tps tokens/s" >&2
  if [ "$tps" -gt "$best_tps" ]; then
    best_tps=$tps
    best=$v
  fi
done
echo "$best"
