#!/usr/bin/env bash
# The evaluation of RESULTS.md: post-training baselines of the full-precision student, then perplexity on the
# held-out texts and the zero-shot tasks for the teacher, both students and every baseline.
#
# usage: scripts/evaluate_students.sh FP_DIR BI_DIR TEACHER.gguf HELDOUT_DIR TRAIN_TEXT OUT_DIR
#   env: EVAL_DATA (default data/eval, from scripts/fetch_eval.sh), LIMIT (documents per task, default 500;
#        0 = all), THREADS (default 2), CALIB_SAMPLES (32), CALIB_LEN (1024), BIMAMBA (the binary)
# Writes OUT_DIR/models/<name>/ (quantized and q8-packed models), OUT_DIR/<name>.ppl.<text>.json,
# OUT_DIR/<name>.tasks.json and OUT_DIR/timings.tsv.
set -euo pipefail
[ $# -eq 6 ] || { echo "usage: $0 FP_DIR BI_DIR TEACHER.gguf HELDOUT_DIR TRAIN_TEXT OUT_DIR" >&2; exit 2; }
FP=$1 BI=$2 TEACHER=$3 HELDOUT=$4 CALIB=$5 OUT=$6
B=${BIMAMBA:-target/release/bimamba}
EVAL_DATA=${EVAL_DATA:-data/eval} LIMIT=${LIMIT:-500} T=${THREADS:-2}
CS=${CALIB_SAMPLES:-32} CL=${CALIB_LEN:-1024}
mkdir -p "$OUT/models"
timed() { local name=$1; shift; local t0; t0=$(date +%s.%N); "$@"; printf '%s\t%.1f\n' "$name" "$(echo "$(date +%s.%N) - $t0" | bc)" >> "$OUT/timings.tsv"; }

# 1. Baselines on the full-precision student (calibrated on training text, layers in model order).
Q="$OUT/models"
[ -d "$Q/xnor" ] || timed quantize-xnor $B quantize --method xnor --model "$FP" --out "$Q/xnor" --threads $T
for bits in 2 3; do
  [ -d "$Q/gptq$bits" ] || timed quantize-gptq$bits $B quantize --method gptq --bits $bits --model "$FP" --out "$Q/gptq$bits" \
      --calib "$CALIB" --calib-samples $CS --calib-seq-len $CL --threads $T
done
for m in billm pbllm; do
  [ -d "$Q/$m" ] || timed quantize-$m $B quantize --method $m --model "$FP" --out "$Q/$m" \
      --calib "$CALIB" --calib-samples $CS --calib-seq-len $CL --threads $T
done
# The Bi-Mamba student with its tied embedding/LM head in 8 bits (the shipped form).
[ -d "$Q/bi-q8" ] || timed pack-bi-q8 $B pack --model "$BI" --out "$Q/bi-q8" --embed q8

# 2. Perplexity on each held-out text, and 3. the zero-shot tasks.
declare -A M=([teacher]="$TEACHER" [fp]="$FP" [bi]="$BI" [bi-q8]="$Q/bi-q8" [xnor]="$Q/xnor" [gptq2]="$Q/gptq2" \
              [gptq3]="$Q/gptq3" [billm]="$Q/billm" [pbllm]="$Q/pbllm")
ORDER="fp bi bi-q8 xnor gptq2 gptq3 billm pbllm teacher"
for name in $ORDER; do
  for text in "$HELDOUT"/*.txt; do
    t=$(basename "$text" .txt)
    [ -s "$OUT/$name.ppl.$t.json" ] || timed "ppl-$name-$t" $B eval ppl --model "${M[$name]}" --text "$text" \
        --seq-len 2048 --threads $T --json > "$OUT/$name.ppl.$t.json"
  done
done
LIM=(); [ "$LIMIT" = 0 ] || LIM=(--limit "$LIMIT")
for name in $ORDER; do
  [ -s "$OUT/$name.tasks.json" ] || timed "tasks-$name" $B eval tasks --model "${M[$name]}" --data-dir "$EVAL_DATA" \
      "${LIM[@]}" --threads $T --json > "$OUT/$name.tasks.json"
done
echo "done: $OUT"
