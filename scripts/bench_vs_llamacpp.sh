#!/usr/bin/env bash
# bimamba against llama.cpp on the CPU, same machine, same run: decode and prefill tokens/s of
# random-weight models of the Bi-Mamba shapes (Mamba-2, vocab 32000). llama.cpp runs them as its
# `mamba2` architecture quantized to TQ1_0 and TQ2_0 (its ternary types, the lowest-bit ones it
# has) and Q4_0; bimamba runs `bench --shape` with its defaults (1-bit projections, int8
# activations, bf16 state, 8-bit head). Every configuration runs ROUNDS times, alternating, and
# one table with both runs and the ratios is printed (and written to OUT/table.md).
#
# usage: scripts/bench_vs_llamacpp.sh [OUT_DIR]        (default runs/bench-vs-llamacpp)
#   env: SHAPES ("780m 1.3b 2.7b"), THREADS (2), ROUNDS (2), PROMPT (128), GEN (64),
#        REPS (llama-bench -r, 3), LLAMA_CPP_PYTHON (the sdist version, 0.3.36), BIMAMBA (the
#        binary; default target/release/bimamba, built if missing), JOBS (build jobs, THREADS),
#        TABLE_ONLY=1 (print the table of an earlier OUT/results.tsv, run nothing)
# Needs a C/C++ compiler, curl, Python 3 and the PyPI registry (pip installs cmake, numpy, gguf
# into OUT/venv; the llama-cpp-python sdist, which vendors llama.cpp, comes from PyPI). Building llama.cpp
# takes a while on two cores; the build and the GGUFs are kept in OUT for the next run. Disk: the
# F16 intermediate of 2.7b is 5.4 GB (deleted once quantized).
set -euo pipefail
OUT=${1:-runs/bench-vs-llamacpp}
SHAPES=${SHAPES:-"780m 1.3b 2.7b"} T=${THREADS:-2} ROUNDS=${ROUNDS:-2}
PP=${PROMPT:-128} TG=${GEN:-64} REPS=${REPS:-3} VER=${LLAMA_CPP_PYTHON:-0.3.36} JOBS=${JOBS:-$T}
B=${BIMAMBA:-target/release/bimamba}
TYPES="TQ1_0 TQ2_0 Q4_0"
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

RES=$OUT/results.tsv
PY=$OUT/venv/bin/python
SRC=$OUT/llama_cpp_python-$VER/vendor/llama.cpp
if [ -z "${TABLE_ONLY:-}" ]; then
# 1. Tools: a venv with cmake, numpy and gguf; llama.cpp from the sdist.
if [ ! -x "$OUT/venv/bin/python" ]; then
  python3 -m venv "$OUT/venv"
  "$OUT/venv/bin/pip" install -q cmake numpy gguf
fi
if [ ! -d "$SRC" ]; then
  # The sdist from PyPI's simple index, checked against the index's sha256 (`pip download` of an
  # sdist would first build its metadata, i.e. install its whole build backend).
  TGZ=$OUT/llama_cpp_python-$VER.tar.gz
  url=$(curl -fsSL https://pypi.org/simple/llama-cpp-python/ |
        grep -o "https://[^\"#]*llama_cpp_python-${VER//./\\.}\.tar\.gz#sha256=[0-9a-f]*" | head -1)
  [ -n "$url" ] || { echo "llama-cpp-python $VER: no sdist on PyPI" >&2; exit 1; }
  curl -fsSL "${url%%#*}" -o "$TGZ"
  echo "${url##*=}  $TGZ" | sha256sum -c --quiet
  tar -xzf "$TGZ" -C "$OUT"
fi
LB=$SRC/build/bin
if [ ! -x "$LB/llama-bench" ] || [ ! -x "$LB/llama-quantize" ]; then
  "$OUT/venv/bin/cmake" -S "$SRC" -B "$SRC/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DBUILD_SHARED_LIBS=OFF > "$OUT/cmake.log" 2>&1
  "$OUT/venv/bin/cmake" --build "$SRC/build" --target llama-bench llama-quantize -j "$JOBS" > "$OUT/build.log" 2>&1
fi
[ -x "$B" ] || cargo build --release -p bimamba-cli

# 2. The models: F16 from random weights, then each type with llama-quantize.
for s in $SHAPES; do
  for ty in $TYPES; do
    q=$OUT/mamba2-$s-$ty.gguf
    [ -s "$q" ] && continue
    f=$OUT/mamba2-$s-f16.gguf
    [ -s "$f" ] || "$PY" "$HERE/random_mamba2_gguf.py" "$s" "$f"
    "$LB/llama-quantize" "$f" "$q" "$ty" "$T" > "$OUT/quantize-$s-$ty.log" 2>&1
  done
  rm -f "$OUT/mamba2-$s-f16.gguf"
done

# 3. Alternating runs: per round and shape, each llama.cpp type, then bimamba.
: > "$RES"
llama() { # shape type round -> "decode prefill"
  "$LB/llama-bench" -m "$OUT/mamba2-$1-$2.gguf" -p "$PP" -n "$TG" -r "$REPS" -t "$T" -o json 2> "$OUT/llama-bench.log" |
    "$PY" -c 'import json,sys
r = json.load(sys.stdin)
tg = [x["avg_ts"] for x in r if x["n_gen"] > 0][0]
pp = [x["avg_ts"] for x in r if x["n_prompt"] > 0][0]
print("%.2f %.2f" % (tg, pp))'
}
bimamba() { # shape -> "decode prefill peak_rss_mb"
  "$B" bench --shape "$1" --threads "$T" --prefill-tokens "$PP" --decode-tokens "$TG" --no-dense --json |
    "$PY" -c 'import json,sys
v = json.load(sys.stdin)
print("%.2f %.2f %.0f" % (v["decode_tok_s"], v["prefill_tok_s"], v["peak_rss_mb"]))'
}
for r in $(seq "$ROUNDS"); do
  for s in $SHAPES; do
    for ty in $TYPES; do
      got=$(llama "$s" "$ty")
      printf '%s\t%s\t%s\t%s\n' "$r" "$s" "llama.cpp $ty" "${got// /$'\t'}" >> "$RES"
    done
    got=$(bimamba "$s")
    printf '%s\t%s\t%s\t%s\n' "$r" "$s" "bimamba" "${got// /$'\t'}" >> "$RES"
  done
done
fi
LLAMA_COMMIT=$(grep -o '"[0-9a-f]\{7,\}"' "$SRC/build/common/build-info.cpp" 2>/dev/null | head -1 | tr -d '"' || true)

# 4. One table: both rounds per configuration, bimamba's ratio to llama.cpp TQ2_0 (decode) and
# to llama.cpp's best prefill type, per round.
"$PY" - "$RES" "$T" "$PP" "$TG" "$REPS" "${LLAMA_COMMIT:-unknown}" "$VER" > "$OUT/table.md" <<'EOF'
import collections, sys, datetime
res, t, pp, tg, reps, commit, ver = sys.argv[1:]
rows = collections.defaultdict(dict)  # (shape, config) -> round -> (decode, prefill)
for line in open(res):
    r, shape, cfg, dec, pre, *_ = line.rstrip("\n").split("\t")
    rows[(shape, cfg)][int(r)] = (float(dec), float(pre))
fmt = lambda xs: ", ".join(f"{x:.1f}" for x in xs)
print(f"{datetime.date.today()}, {t} threads; llama.cpp {commit} (llama-cpp-python {ver} sdist), "
      f"`llama-bench -p {pp} -n {tg} -r {reps} -t {t}`; bimamba `bench --shape S --threads {t} "
      f"--prefill-tokens {pp} --decode-tokens {tg}` (defaults); alternating runs, one value per round.\n")
print("| shape | engine | decode tok/s | prefill tok/s | decode vs llama.cpp TQ2_0 | prefill vs llama.cpp's best |")
print("|---|---|---|---|---|---|")
for shape in dict.fromkeys(s for s, _ in rows):
    cfgs = [c for s, c in rows if s == shape]
    rounds = sorted(rows[(shape, "bimamba")])
    for c in cfgs:
        d = [rows[(shape, c)][r][0] for r in rounds]
        p = [rows[(shape, c)][r][1] for r in rounds]
        if c == "bimamba":
            tq2 = [rows[(shape, "llama.cpp TQ2_0")][r][0] for r in rounds]
            best = [max(rows[(shape, x)][r][1] for x in cfgs if x != c) for r in rounds]
            rd = fmt(a / b for a, b in zip(d, tq2)) + " x"
            rp = fmt(a / b for a, b in zip(p, best)) + " x"
        else:
            rd = rp = ""
        print(f"| {shape} | {c} | {fmt(d)} | {fmt(p)} | {rd} | {rp} |")
EOF
cat "$OUT/table.md"
