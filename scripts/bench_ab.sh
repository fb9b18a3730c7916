#!/usr/bin/env bash
# Two bimamba binaries side by side, alternating, in one run (the figures to compare on a shared
# machine): the old binary with its defaults and with the options that are now the defaults,
# the new binary with its defaults and with --exact. One line per run: configuration, decode
# and prefill tok/s, peak RSS MiB, 1-bit activations, state dtype, head storage, prefill ms per
# token per section.
#
# usage: scripts/bench_ab.sh OLD_BIMAMBA NEW_BIMAMBA       env: SHAPE (2.7b), THREADS (2),
#        PREFILL (512), DECODE (32), ROUNDS (2)
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 OLD_BIMAMBA NEW_BIMAMBA" >&2; exit 2; }
OLD=$1 NEW=$2
SHAPE=${SHAPE:-2.7b} T=${THREADS:-2} PF=${PREFILL:-512} DEC=${DECODE:-32} ROUNDS=${ROUNDS:-2}
run() { # tag binary [options]
  local tag=$1 bin=$2
  shift 2
  "$bin" bench --shape "$SHAPE" --threads "$T" --decode-tokens "$DEC" --prefill-tokens "$PF" --no-dense --json --profile "$@" |
    python3 -c "import json, sys
v = json.load(sys.stdin)
p = v['profile_ms_per_token']['prefill']
print('$tag', '%.1f' % v['decode_tok_s'], '%.1f' % v['prefill_tok_s'], '%.0f' % v['peak_rss_mb'], v['binary_act'],
      v['state_dtype'], v['embedding'], ' '.join('%s=%.2f' % (k, x) for k, x in p.items()))"
}
for _ in $(seq "$ROUNDS"); do
  run old-default "$OLD"
  run old-fast "$OLD" --binary-act int8 --state-dtype bf16 --embed q8
  run new-default "$NEW"
  run new-exact "$NEW" --exact
done
