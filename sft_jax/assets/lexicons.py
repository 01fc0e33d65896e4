"""Builders of the lexicon assets: word lists and thesauri read by data augmentation.

- `wordnet`: Princeton WordNet 3.0 from Debian `wordnet-base=1:3.0-37` (bookworm), the
  database files of `usr/share/wordnet/` (`index.*`, `data.*`, `*.exc`, ...) copied as they
  are, plus the two files `nltk.corpus.reader.WordNetCorpusReader` also opens that the
  package lacks: `lexnames` (the 45 lexicographer file numbers and names; Debian ships the
  table only inside the man page lexnames(5WN), from which it is rebuilt here) and
  `LICENSE` (the package's copyright file, which carries the WordNet 3.0 license).
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

from sft_jax.assets import sword
from sft_jax.assets.base import Asset

_WN_DIR = "usr/share/wordnet/"
_WN_LEXNAMES_MAN = "usr/share/man/man5/lexnames.5WN.gz"
_WN_COPYRIGHT = "usr/share/doc/wordnet-base/copyright"
_WN_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}  # lexnames(5WN) field 3
WN_LEXNAMES = 45  # lexicographer files of WordNet 3.0


def lexnames_from_man(man_page: str) -> str:
    """The `lexnames` file (lines `NN<TAB>name<TAB>category`) from the table rows of the
    lexnames(5WN) man page; ValueError unless they are files 00..44 in order."""
    rows = re.findall(r"^(\d\d)\t(\w+\.\w+)\s*\t", man_page, re.M)
    if [int(n) for n, _ in rows] != list(range(WN_LEXNAMES)):
        raise ValueError(f"lexnames(5WN): {len(rows)} table rows, expected 00..{WN_LEXNAMES - 1}")
    return "".join(f"{n}\t{name}\t{_WN_CATEGORY[name.split('.')[0]]}\n" for n, name in rows)


def build_wordnet(debs: dict[str, Path], out: Path) -> None:
    deb = debs["wordnet-base"]
    files = sword.deb_files(deb, _WN_DIR)
    for name in ("index.noun", "data.noun", "index.verb", "data.verb", "noun.exc"):
        if name not in files:
            raise ValueError(f"{deb.name}: no {_WN_DIR}{name}")
    for name, raw in files.items():
        (out / name).write_bytes(raw)
    docs = sword.deb_files(deb, "usr/share/")
    man = gzip.decompress(docs[_WN_LEXNAMES_MAN.removeprefix("usr/share/")]).decode()
    (out / "lexnames").write_text(lexnames_from_man(man), encoding="utf-8")
    (out / "LICENSE").write_bytes(docs[_WN_COPYRIGHT.removeprefix("usr/share/")])


WORDNET = Asset("wordnet", "lexicon", "wordnet-base", "1:3.0-37", "WordNet 3.0 license",
                "Princeton WordNet 3.0 database files, packaged by Debian",
                "English synonym sets for EDA synonym replacement/insertion",
                build=build_wordnet, registry="debian")
LEXICONS = (WORDNET,)
