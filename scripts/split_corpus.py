#!/usr/bin/env python3
"""Split the corpus (scripts/fetch_corpus.sh) into training text and held-out perplexity text.

Held out, never trained on: the whole of Pride and Prejudice, and the last 10% of the Wikipedia
vital articles (whole articles, cut at a ` = Title = ` line). Everything else is training text.

usage: split_corpus.py CORPUS_DIR OUT_DIR      -> OUT_DIR/train/*.txt, OUT_DIR/heldout/*.txt
"""
import os
import shutil
import sys

HELDOUT_NOVEL = "austen_prideprejudice.txt"
WIKI = "wiki_vital_en.txt"
WIKI_HELDOUT_FRACTION = 0.10


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: split_corpus.py CORPUS_DIR OUT_DIR")
    src, out = sys.argv[1], sys.argv[2]
    names = sorted(n for n in os.listdir(src) if n.endswith(".txt"))
    for need in (HELDOUT_NOVEL, WIKI):
        if need not in names:
            sys.exit(f"{src}: {need} is missing (run scripts/fetch_corpus.sh first)")
    os.makedirs(f"{out}/train", exist_ok=True)
    os.makedirs(f"{out}/heldout", exist_ok=True)
    for n in names:
        if n == HELDOUT_NOVEL:
            shutil.copy(f"{src}/{n}", f"{out}/heldout/{n}")
        elif n != WIKI:
            shutil.copy(f"{src}/{n}", f"{out}/train/{n}")
    lines = open(f"{src}/{WIKI}", encoding="utf-8").read().split("\n")
    starts = [i for i, l in enumerate(lines) if l.startswith(" = ") and l.rstrip().endswith(" =")]
    cut = next(i for i in starts if i >= len(lines) * (1 - WIKI_HELDOUT_FRACTION))
    open(f"{out}/train/wiki_vital_en_train.txt", "w", encoding="utf-8").write("\n".join(lines[:cut]))
    open(f"{out}/heldout/wiki_vital_en_heldout.txt", "w", encoding="utf-8").write("\n".join(lines[cut:]))
    print(f"{out}: train {sorted(os.listdir(out + '/train'))}, held out {sorted(os.listdir(out + '/heldout'))};"
          f" wiki articles {len(starts)}, held out from line {cut}")


if __name__ == "__main__":
    main()
