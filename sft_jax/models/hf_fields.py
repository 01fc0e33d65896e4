"""The checks every family's `Config.from_hf` starts with: the model type and the fields
an HF `config.json` must carry."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sft_jax.errors import UserInputError


def check_model_type_and_fields(
    hf: Mapping[str, Any],
    *,
    default: str,
    supported: Sequence[str],
    family: str,
    required: Sequence[str],
    where: str,
) -> str:
    """The config's `model_type` (`default` when absent), after checking that it is one of
    `supported` and that no `required` field is missing or null."""
    model_type = hf.get("model_type", default)
    if model_type not in supported:
        raise UserInputError(
            f"{where}: model_type {model_type!r} is not {family} "
            f"(supported: {', '.join(supported)})"
        )
    missing = [k for k in required if hf.get(k) is None]
    if missing:
        raise UserInputError(f"{where}: missing field(s) {', '.join(missing)}")
    return model_type
