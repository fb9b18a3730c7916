#!/usr/bin/env bash
# Two bimamba binaries side by side, alternating, in one run (the figures to compare on a shared
# machine): the old binary with its defaults and with OLD_ALT, the new binary with its defaults
# and with --exact. One line per run: configuration, decode and prefill tok/s, peak RSS MiB,
# 1-bit activations, state dtype, head storage, head activations, minor page faults of the
# prefill (pf=, '-' where the binary does not report them), prefill ms per token per section.
#
# usage: scripts/bench_ab.sh OLD_BIMAMBA NEW_BIMAMBA       env: SHAPE (2.7b), THREADS (2),
#        PREFILL (512), DECODE (32), ROUNDS (2), MODEL (a model directory instead of SHAPE),
#        OLD_ALT (the old binary's second configuration; default: the options that are now the
#        defaults, "--binary-act int8 --state-dtype bf16 --embed q8")
# e.g.   MODEL=models/default OLD_ALT=--exact scripts/bench_ab.sh OLD NEW
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 OLD_BIMAMBA NEW_BIMAMBA" >&2; exit 2; }
OLD=$1 NEW=$2
SHAPE=${SHAPE:-2.7b} T=${THREADS:-2} PF=${PREFILL:-512} DEC=${DECODE:-32} ROUNDS=${ROUNDS:-2}
SUBJECT=(--shape "$SHAPE")
[ -n "${MODEL:-}" ] && SUBJECT=(--model "$MODEL")
read -r -a ALT <<<"${OLD_ALT:---binary-act int8 --state-dtype bf16 --embed q8}"
run() { # tag binary [options]
  local tag=$1 bin=$2
  shift 2
  "$bin" bench "${SUBJECT[@]}" --threads "$T" --decode-tokens "$DEC" --prefill-tokens "$PF" --no-dense --json --profile "$@" |
    python3 -c "import json, sys
v = json.load(sys.stdin)
p = v['profile_ms_per_token']['prefill']
print('$tag', '%.1f' % v['decode_tok_s'], '%.1f' % v['prefill_tok_s'], '%.0f' % v['peak_rss_mb'], v['binary_act'],
      v['state_dtype'], v['embedding'], 'head=' + v.get('head_act', '-'), 'pf=%s' % v.get('prefill_page_faults', '-'), ' '.join('%s=%.2f' % (k, x) for k, x in p.items()))"
}
for _ in $(seq "$ROUNDS"); do
  run old-default "$OLD"
  run old-alt "$OLD" "${ALT[@]}"
  run new-default "$NEW"
  run new-exact "$NEW" --exact
done
