"""Bible text from Debian-packaged SWORD zText modules: unpack, read, strip, align.

- `deb_files(deb, prefix)`: the files under `prefix` inside a `.deb` (an `ar` archive whose
  `data.tar.*` member holds the installed tree), read in memory.
- `read_ztext(files, testament)`: every index entry of one testament (`ot`, `nt`) of a
  zText module, in index order. Per testament, `.bzs` holds 12-byte little-endian records
  (offset, compressed size, uncompressed size; uint32) of the zlib blocks in `.bzz`, and
  `.bzv` 10-byte records (block uint32, offset uint32, size uint16) of each entry inside
  its uncompressed block.
- `osis_to_text(osis)`: the plain text of one entry.
- `aligned_verses(en, es, min_overlap=...)`: verse pairs of two modules in KJV
  versification, with references, checked against the KJV layout.

Index layout (KJV versification, SWORD ≥ 1.6): per testament, entry 0 is the module
heading, 1 the testament heading, then per book one book heading and per chapter one
chapter heading (these modules put `<chapter osisID="Gen.1" sID=...>` there) followed by
the chapter's verses. Verse entry i of two modules in the same versification is the same
verse by number, but a translation that numbers verses differently is forced into that
index by shifting or merging text, so number alone does not guarantee the same content;
the Strong's numbers tagged on the words (both modules carry them) are used to check.
"""

from __future__ import annotations

import html
import io
import re
import struct
import tarfile
import zlib
from collections import Counter
from pathlib import Path

KJV_BOOKS = (  # OSIS ids in KJV order: (Old Testament, New Testament)
    ("Gen", "Exod", "Lev", "Num", "Deut", "Josh", "Judg", "Ruth", "1Sam", "2Sam", "1Kgs",
     "2Kgs", "1Chr", "2Chr", "Ezra", "Neh", "Esth", "Job", "Ps", "Prov", "Eccl", "Song", "Isa",
     "Jer", "Lam", "Ezek", "Dan", "Hos", "Joel", "Amos", "Obad", "Jonah", "Mic", "Nah", "Hab",
     "Zeph", "Hag", "Zech", "Mal"),
    ("Matt", "Mark", "Luke", "John", "Acts", "Rom", "1Cor", "2Cor", "Gal", "Eph", "Phil", "Col",
     "1Thess", "2Thess", "1Tim", "2Tim", "Titus", "Phlm", "Heb", "Jas", "1Pet", "2Pet", "1John",
     "2John", "3John", "Jude", "Rev"),
)
KJV_VERSES = (23_145, 7_957)  # verses of the Old and the New Testament
KJV_CHAPTERS = (929, 260)
TESTAMENTS = ("ot", "nt")


def deb_files(deb: Path, prefix: str) -> dict[str, bytes]:
    """`{path below prefix: bytes}` for the regular files under `prefix` in the package."""
    raw = Path(deb).read_bytes()
    if not raw.startswith(b"!<arch>\n"):
        raise ValueError(f"{Path(deb).name}: not a Debian package (no ar header)")
    pos, data = 8, None
    while pos + 60 <= len(raw):  # 60-byte member header: name at 0 (16), size at 48 (10)
        name, size = raw[pos:pos + 16].decode().strip(), int(raw[pos + 48:pos + 58])
        if name.rstrip("/").startswith("data.tar"):
            data = raw[pos + 60:pos + 60 + size]
        pos += 60 + size + size % 2  # members are 2-byte aligned
    if data is None:
        raise ValueError(f"{Path(deb).name}: no data.tar member")
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
        for member in tar:
            name = member.name.removeprefix("./")
            if member.isfile() and name.startswith(prefix):
                out[name[len(prefix):]] = tar.extractfile(member).read()
    return out


def read_ztext(files: dict[str, bytes], testament: str) -> list[str]:
    """All entries of `testament` (`ot`/`nt`), UTF-8 decoded; empty entries are ""."""
    bzs, bzv, bzz = (files[f"{testament}.{ext}"] for ext in ("bzs", "bzv", "bzz"))
    blocks: dict[int, bytes] = {}
    entries = []
    for block, offset, size in struct.iter_unpack("<IIH", bzv):
        if size == 0:
            entries.append("")
            continue
        if block not in blocks:
            start, csize, usize = struct.unpack_from("<III", bzs, 12 * block)
            blocks[block] = zlib.decompress(bzz[start:start + csize])
            if len(blocks[block]) != usize:
                raise ValueError(f"{testament}.bzz block {block}: {len(blocks[block])} bytes, "
                                 f"index says {usize}")
        entries.append(blocks[block][offset:offset + size].decode("utf-8"))
    return entries


# footnotes, and titles that are no part of the text (Psalm 119's "א ALEPH.")
_OSIS_DROP = re.compile(
    r"<note\b[^>]*>.*?</note>|<title\b(?![^>]*canonical=\"true\")[^>]*>.*?</title>", re.S)
_OSIS_INLINE = re.compile(r"</?(?:w|transChange|divineName|foreign|seg|q|hi|name)\b[^>]*>")
_USFM_LEFTOVER = re.compile(r"\\[a-z]+\d*\*? ?")  # `\nd ` left in a few KJV verses


def osis_to_text(osis: str) -> str:
    """Plain text: notes and non-canonical titles dropped (canonical psalm titles kept),
    word-level tags removed, other tags read as a space, entities decoded, the pilcrow ¶
    dropped, whitespace collapsed."""
    text = _USFM_LEFTOVER.sub("", _OSIS_DROP.sub(" ", osis))
    text = re.sub(r"<[^>]*>", " ", _OSIS_INLINE.sub("", text))
    return " ".join(html.unescape(text).replace("¶", " ").split())


def strongs(osis: str) -> set[str]:
    """Strong's numbers in the `lemma` attributes, leading zeros dropped (`H430`)."""
    return {f"{n[0]}{int(n[1:])}" for lemma in re.findall(r'lemma="([^"]*)"', osis)
            for n in re.findall(r"\b[HG]\d+", lemma)}


_CHAPTER = re.compile(r'<chapter\b[^>]*\bosisID="([^".]+)\.(\d+)"[^>]*\bsID=')


def aligned_verses(en: dict[str, list[str]], es: dict[str, list[str]], *,
                   min_overlap: float) -> tuple[list[dict], dict[str, int]]:
    """Verse pairs `[{"en", "es", "ref": "Gen 1:1", "chapter": "Gen 1"}]` in canonical order,
    and counts `{"verses", "dropped_empty", "dropped_misaligned", "pairs"}`.

    `en`/`es` map `ot`/`nt` to `read_ztext` entries. Headings are skipped; the layout must
    be the same in both modules and match `KJV_BOOKS`, `KJV_CHAPTERS`, `KJV_VERSES`
    (ValueError otherwise). A verse is kept when both texts are non-empty and the Jaccard
    overlap of its Strong's numbers is ≥ `min_overlap` and no less than the overlap of
    either text with the other language's neighbouring verses (so a verse whose partner is
    shifted by the other numbering is dropped).
    """
    pairs, counts = [], Counter(verses=0, dropped_empty=0, dropped_misaligned=0)
    for testament, books, n_chapters, n_verses in zip(TESTAMENTS, KJV_BOOKS, KJV_CHAPTERS,
                                                      KJV_VERSES, strict=True):
        a, b = en[testament], es[testament]
        if len(a) != len(b):
            raise ValueError(f"{testament}: {len(a)} vs {len(b)} index entries")
        sa, sb = [strongs(x) for x in a], [strongs(x) for x in b]

        def overlap(i: int, j: int, sa=sa, sb=sb) -> float:
            return len(sa[i] & sb[j]) / max(1, len(sa[i] | sb[j]))

        chapters = {i: m for i in range(2, len(a)) if (m := _CHAPTER.search(a[i]))}
        book_heads = {i - 1 for i, m in chapters.items() if m[2] == "1"}
        if [chapters[i + 1][1] for i in sorted(book_heads)] != list(books) or \
                len(chapters) != n_chapters or min(book_heads) != 2:
            raise ValueError(f"{testament}: the index is not in KJV versification")
        start = counts["verses"]
        chapter, verse = "", 0
        for i in range(3, len(a)):
            if i in chapters:
                m = chapters[i]
                if m[0] not in b[i] or (m[2] == "1") != (i - 1 in book_heads):
                    raise ValueError(f"{testament}[{i}]: chapter {m[1]} {m[2]} differs")
                chapter, verse = f"{m[1]} {m[2]}", 0
                continue
            if i in book_heads:
                continue
            verse += 1
            counts["verses"] += 1
            en_text, es_text = osis_to_text(a[i]), osis_to_text(b[i])
            if not (en_text and es_text):
                counts["dropped_empty"] += 1
                continue
            near = [max(overlap(i, j), overlap(j, i)) for j in (i - 1, i + 1) if 1 < j < len(a)]
            if overlap(i, i) < max(min_overlap, *near):
                counts["dropped_misaligned"] += 1
                continue
            pairs.append({"en": en_text, "es": es_text, "ref": f"{chapter}:{verse}",
                          "chapter": chapter})
        if counts["verses"] - start != n_verses:
            raise ValueError(f"{testament}: {counts['verses'] - start} verses, KJV has "
                             f"{n_verses}")
    counts["pairs"] = len(pairs)
    return pairs, dict(counts)
