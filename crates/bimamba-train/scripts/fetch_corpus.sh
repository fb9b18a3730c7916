#!/usr/bin/env bash
# Fetch plain English text for the CPU examples from registry packages (no web downloads):
# five Jane Austen novels from Debian's r-cran-janeaustenr (decoded with PyPI's `rdata`).
# usage: fetch_corpus.sh OUTDIR        (run `apt-get update` once before)
set -euo pipefail
OUT=$(realpath -m "${1:?usage: fetch_corpus.sh OUTDIR}")
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
mkdir -p "$OUT"; cd "$W"
apt-get download r-cran-janeaustenr >/dev/null
dpkg-deb -x r-cran-janeaustenr_*.deb x
python3 -m pip install -q --target "$W/py" rdata >/dev/null
PYTHONPATH="$W/py" python3 - "$OUT" <<'PY'
import gzip, sys, zlib
from rdata.conversion import convert
from rdata.parser import parse_data
out, d = sys.argv[1], 'x/usr/lib/R/site-library/janeaustenr/data'
idx = convert(parse_data(gzip.decompress(open(d + '/Rdata.rdx', 'rb').read())))
rdb = open(d + '/Rdata.rdb', 'rb').read()
for name, (off, ln) in idx['variables'].items():
    blob = rdb[int(off):int(off) + int(ln)]
    lines = convert(parse_data(zlib.decompress(blob[4:])))
    open(f'{out}/austen_{name}.txt', 'w').write('\n'.join(map(str, lines)) + '\n')
PY
ls -la "$OUT"
