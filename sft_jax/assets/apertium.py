"""The `apertium-eng-spa` tool: Apertium's rule-based English → Spanish translator, fetched
from Debian and run without root, and `translate(lines)`, which runs it line by line.

Asset. The Debian bookworm packages of `APERTIUM` are fetched by name with `apt-get
download` (apt checks each .deb against the signed package lists, as for `bible-en-es`)
and each is unpacked with `dpkg-deb -x` (which writes files only: no root, no maintainer
scripts) into the asset directory, which then holds the installed tree under `usr/`
(`bin/`, `lib/x86_64-linux-gnu/`, `share/apertium/`, each package's
`share/doc/<package>/copyright`) and `asset.json`: the pins, each .deb's name, size and
sha256, and the size of every unpacked file. Every `fetch` checks that `asset.json` holds
the asset's current pins and that every unpacked file is there with its size
(`verify_tree`). Building fails with one line when `ldd` finds a shared library of the
programs a translation runs nowhere (`missing_libraries`; `irstlm-ranker`, which needs
libirstlm, is unpacked but never run).

Why these packages: the eng-spa mode (`usr/share/apertium/modes/eng-spa.mode`) is a
pipeline of `lt-proc` (lttoolbox), `apertium-tagger`, `-pretransfer`, `-transfer`,
`-interchunk`, `-postchunk` (apertium) and `lrx-proc` (apertium-lex-tools), linked
against libapertium3, liblttoolbox3 and libapertium-lex-tools1; the `apertium` script
that runs it (deformatting, `apertium-wblank-mode`, reformatting) needs gawk, and gawk
libsigsegv2. The mode calls no `cg-proc`, so cg3 is not fetched. ICU 72, libxml2, zlib
and liblzma come from the system (Debian bookworm images, python:3.11 among them, have
them).

Running. The mode file names its data by absolute `/usr/share/apertium/` paths; each
`translate` writes a copy with those paths pointing into the asset into a temporary
directory and passes it as `apertium -d`, with the asset's `usr/bin` first on PATH (and as
`APERTIUM_PATH`, which the script prepends) and its libraries on LD_LIBRARY_PATH. The
command is `apertium -u -f txt -d DIR eng-spa` (`-u`: no `*` before unknown words, which
stay in English). Lines are sent as paragraphs, separated by an empty line: Apertium
translates sentences, not lines, and with single newlines it moves words across lines
that end without punctuation ("big red" / "dog runs" came out as "carreras de" /
"perro rojas grandes"); a paragraph break ends a sentence, so no word moves between
lines (the transfer rules still carry some state from one sentence to the next:
`translate` says how much).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from sft_jax.assets.base import Asset
from sft_jax.errors import UserInputError

NAME = "apertium-eng-spa"
PAIR = "eng-spa"
LIB_DIR = "usr/lib/x86_64-linux-gnu"
MODE_DIR = "usr/share/apertium/modes"
PINS = {  # Debian bookworm (amd64)
    "apertium-eng-spa": "0.8.1-2",
    "apertium": "3.8.3-1+b2",
    "libapertium3": "3.8.3-1+b2",
    "lttoolbox": "3.7.1-1+b2",
    "liblttoolbox3": "3.7.1-1+b2",
    "apertium-lex-tools": "0.4.2-2",
    "libapertium-lex-tools1": "0.4.2-2",
    "gawk": "1:5.2.1-2",
    "libsigsegv2": "2.14-1",
}
# run by `apertium -f txt` around the mode's pipeline (`apertium-wblank-mode` writes it)
_WRAPPER_PROGRAMS = ("apertium-destxt", "apertium-retxt", "apertium-wblank-mode",
                     "apertium-wblank-attach", "apertium-wblank-detach", "gawk")
_FETCH_HINT = f"fetch it with `sft-jax assets fetch {NAME}`"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(root: Path) -> dict[str, int]:
    """`{path relative to root: size}` of the regular files (not links) under `root/usr`."""
    return {p.relative_to(root).as_posix(): p.stat().st_size
            for p in sorted((root / "usr").rglob("*")) if p.is_file() and not p.is_symlink()}


def programs(root: Path) -> list[str]:
    """The programs a translation runs: each stage of the mode's pipeline, and what the
    `apertium` script adds around it for `-f txt` (sorted)."""
    mode = (root / MODE_DIR / f"{PAIR}.mode").read_text(encoding="utf-8")
    stages = {stage.split()[0] for stage in mode.split("|") if stage.strip()}
    return sorted(stages | set(_WRAPPER_PROGRAMS))


def missing_libraries(root: Path) -> list[str]:
    """The shared libraries `ldd` finds nowhere for `programs(root)` (with the tree's own
    libraries on LD_LIBRARY_PATH), sorted; [] without ldd."""
    if shutil.which("ldd") is None:
        return []
    env = {**os.environ, "LD_LIBRARY_PATH": str(root / LIB_DIR)}
    missing = set()
    for name in programs(root):
        program = root / "usr" / "bin" / name
        if not program.is_file():
            raise UserInputError(f"asset {NAME}: the packages hold no usr/bin/{name}")
        out = subprocess.run(["ldd", str(program)], capture_output=True, text=True,
                             env=env, check=False).stdout
        missing.update(line.split()[0] for line in out.splitlines() if "not found" in line)
    return sorted(missing)


def build_apertium(debs: dict[str, Path], out: Path) -> None:
    """Unpacks every .deb into `out` (`dpkg-deb -x`) and writes `out/asset.json`."""
    if shutil.which("dpkg-deb") is None:
        raise UserInputError(f"asset {NAME}: dpkg-deb not found (a Debian-based system is "
                             "needed to unpack the packages)")
    for package in PINS:
        proc = subprocess.run(["dpkg-deb", "-x", str(debs[package]), str(out)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            reason = (proc.stderr.strip().splitlines() or [f"status {proc.returncode}"])[-1]
            raise UserInputError(f"asset {NAME}: dpkg-deb -x {debs[package].name}: {reason}")
    mode = out / MODE_DIR / f"{PAIR}.mode"
    if not mode.is_file():
        raise UserInputError(f"asset {NAME}: the packages hold no {MODE_DIR}/{PAIR}.mode")
    missing = missing_libraries(out)
    if missing:
        raise UserInputError(f"asset {NAME}: shared libraries missing on this system: "
                             f"{', '.join(missing)} (ldd of the unpacked programs)")
    meta = {
        "pins": ",".join(f"{p}={v}" for p, v in PINS.items()),
        "debs": {p: {"file": debs[p].name, "bytes": debs[p].stat().st_size,
                     "sha256": _sha256(debs[p])} for p in PINS},
        "unpacked": "dpkg-deb -x of each .deb into this directory",
        "files": _files(out),
    }
    (out / "asset.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def verify_tree(root: Path) -> None:
    """UserInputError unless `root/asset.json` holds the current pins and every file it
    lists is there with its size."""
    meta_path = root / "asset.json"
    if not meta_path.is_file():
        raise UserInputError(f"asset {NAME}: {root}: no asset.json (remove the directory "
                             f"and {_FETCH_HINT})")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    pins = ",".join(f"{p}={v}" for p, v in PINS.items())
    if meta.get("pins") != pins:
        raise UserInputError(f"asset {NAME}: {root} was built from other packages "
                             f"({meta.get('pins')}); remove it and {_FETCH_HINT}")
    for name, size in meta["files"].items():
        path = root / name
        if not path.is_file() or path.stat().st_size != size:
            raise UserInputError(f"asset {NAME}: {path}: missing or of the wrong size "
                                 f"(remove {root} and {_FETCH_HINT})")


APERTIUM = Asset(NAME, "tool", ",".join(PINS), ",".join(PINS.values()),
                 "GPL-2+ / GPL-3+ (Apertium, lttoolbox, lex-tools, gawk), GPL-2 (eng-spa)",
                 "Apertium 3.8 with the apertium-eng-spa 0.8.1 language pair, packaged by "
                 "Debian (bookworm)",
                 "rule-based English-Spanish machine translation (apertium -u eng-spa)",
                 build=build_apertium, registry="debian", verify=verify_tree,
                 dirname=f"{NAME}-{PINS[NAME]}")
TOOLS = (APERTIUM,)


def _tool_root(root: str | Path | None) -> Path:
    if root is not None:
        return Path(root)
    from sft_jax.assets.download import fetch  # download imports the registry, which this

    return fetch(NAME)


def translate(lines: Sequence[str], *, root: str | Path | None = None) -> list[str]:
    """Apertium's Spanish for each English line: one output line per input line.

    `root` is the unpacked tree (default: the fetched asset, fetched if needed). Whitespace
    in a line (newlines included) is collapsed to single spaces, in the input and in the
    output (a dropped subject pronoun leaves two); a blank line gives "". The lines are
    one text to Apertium: a line never takes words from another, but state the transfer
    rules carry across sentences can change a word (on the first 200 test verses of
    `bible-en-es`, 185 came out as when translated alone, and corpus BLEU moved by 0.01).
    Raises UserInputError (one line) when the tree lacks the `apertium` script or the
    mode, when apertium fails (its last stderr line), or when its output does not have
    one paragraph per input line.
    """
    if isinstance(lines, str):
        raise UserInputError("apertium translate: lines must be a sequence of strings, "
                             "not a str")
    root = _tool_root(root).resolve()
    mode = root / MODE_DIR / f"{PAIR}.mode"
    bin_dir = root / "usr" / "bin"
    for need in (bin_dir / "apertium", mode):
        if not need.is_file():
            raise UserInputError(f"{NAME}: {need}: not found ({_FETCH_HINT})")
    texts = [" ".join(str(line).split()) for line in lines]
    todo = [t for t in texts if t]
    if not todo:
        return ["" for _ in texts]
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "APERTIUM_PATH": str(bin_dir),
           "LD_LIBRARY_PATH": os.pathsep.join(
               p for p in (str(root / LIB_DIR), os.environ.get("LD_LIBRARY_PATH")) if p)}
    with tempfile.TemporaryDirectory(prefix="sft-jax-apertium-") as data_dir:
        modes = Path(data_dir) / "modes"
        modes.mkdir()
        text = mode.read_text(encoding="utf-8")
        (modes / mode.name).write_text(
            text.replace("/usr/share/apertium/", f"{root}/usr/share/apertium/"),
            encoding="utf-8")
        proc = subprocess.run([str(bin_dir / "apertium"), "-u", "-f", "txt", "-d", data_dir,
                               PAIR], input="\n\n".join(todo) + "\n", env=env,
                              capture_output=True, text=True, encoding="utf-8",
                              errors="replace", check=False)
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise UserInputError(f"{NAME}: apertium {PAIR} failed with exit status "
                             f"{proc.returncode}: {reason}")
    out = proc.stdout.rstrip("\n").split("\n")
    translated = out[::2]
    if len(out) != 2 * len(todo) - 1 or any(s.strip() for s in out[1::2]):
        raise UserInputError(f"{NAME}: apertium {PAIR} gave {proc.stdout.count(chr(10))} "
                             f"output lines for {len(todo)} paragraphs; expected each input "
                             "line back as one line between empty lines")
    it = iter(" ".join(t.split()) for t in translated)
    return [next(it) if t else "" for t in texts]
