#!/bin/bash
# Sets train.steps of both distillation configs (device copies) from a measured step time:
# usage: probe.sh BUDGET_S   (seconds of training wanted in total, over this call and the next)
BUDGET=${1:?}
cd runs/gpu || exit 1
for S in bi fp; do
  sed -e 's/^steps = .*/steps = 4/; s/^eval_every = .*/eval_every = 0/; s/^eval_windows = .*/eval_windows = 1/' \
      -e "s#^out = .*#out = \"../runs/gpu/probe-$S\"#" ../../configs/distill-$S.toml > ../../configs/probe-$S.toml
  rm -rf probe-$S
  ./bimamba-train train --config ../../configs/probe-$S.toml --backend cuda > probe-$S.log 2>&1 &
done
wait
tail -2 probe-*.log
python3 - "$BUDGET" <<'PY'
import json, sys, re
budget = float(sys.argv[1])
rates = []
for s in ('bi', 'fp'):
    lines = [json.loads(l) for l in open(f'probe-{s}/metrics.jsonl') if '"train_loss"' in l]
    rates.append(lines[-1]['tokens_per_s'])
    print(s, [round(l['tokens_per_s']) for l in lines], 'tok/s per process')
tokens_per_step = 16 * 1024 * 2
step_s = tokens_per_step / min(rates)
steps = max(20, int(budget / (step_s * 1.04)))  # 4% for the validation passes
print(f'step {step_s:.2f} s -> {steps} steps ({steps * tokens_per_step / 1e6:.1f} M tokens per student)')
for s in ('bi', 'fp'):
    p = f'../../configs/distill-{s}.toml'
    t = open(p).read()
    t = re.sub(r'(?m)^steps = .*$', f'steps = {steps}', t)
    t = re.sub(r'(?m)^warmup_steps = .*$', f'warmup_steps = {max(5, steps // 20)}', t)
    t = re.sub(r'(?m)^eval_every = .*$', f'eval_every = {max(5, steps // 12)}', t)
    t = re.sub(r'(?m)^checkpoint_every = .*$', f'checkpoint_every = {max(5, steps // 12)}', t)
    open(p, 'w').write(t)
PY
grep -h "^steps\|^warmup\|^eval_every\|^checkpoint_every" ../../configs/distill-bi.toml
