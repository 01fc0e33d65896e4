"""The named assets (`ASSETS`, in `list` order) and lookup by name. Each `Asset` is declared
next to its build function, in `models`, `corpora`, `pang_lee`, `lexicons` or `apertium`."""

from __future__ import annotations

from sft_jax.assets import apertium, corpora, lexicons, models, pang_lee
from sft_jax.assets.base import Asset, cache_dir
from sft_jax.errors import UserInputError

__all__ = ["ASSETS", "Asset", "cache_dir", "get", "is_asset"]

ASSETS: dict[str, Asset] = {a.name: a for a in (*models.MODELS, *corpora.CORPORA,
                                          *pang_lee.CORPORA, *lexicons.LEXICONS,
                                          *apertium.TOOLS)}


def is_asset(name: str) -> bool:
    return name in ASSETS


def get(name: str) -> Asset:
    """The registered asset `name`, or UserInputError listing the known names."""
    if name not in ASSETS:
        raise UserInputError(f"unknown asset {name!r} (known: {', '.join(sorted(ASSETS))})")
    return ASSETS[name]
