"""Pieces every model family uses: config checks, dtypes, token-id fields, remat.

Rematerialisation (`remat_policy`, every family through `remat_layer`): 'none' keeps every
layer activation for the backward pass; 'full' wraps each layer in `nn.remat` and
recomputes all of it; 'dots' (`jax.checkpoint_policies.dots_with_no_batch_dims_saveable`)
keeps the projection/MLP matmul outputs and recomputes the rest (norms, activations,
attention). The parameter tree does not change.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from sft_jax.errors import UserInputError
from sft_jax.models.attention import DEFAULT_BLOCK
from sft_jax.models.layers import ACTIVATIONS


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


def check_activation(act: Any, *, key: str, where: str) -> str:
    """`act` (the HF config's `key`) if it names one of `layers.ACTIVATIONS`."""
    if act not in ACTIVATIONS:
        raise UserInputError(
            f"{where}: {key} {act!r} is not supported "
            f"(supported: {', '.join(sorted(ACTIVATIONS))})"
        )
    return act


REMAT_POLICIES = ("none", "full", "dots")


def check_remat_policy(policy: str) -> None:
    if policy not in REMAT_POLICIES:
        raise UserInputError(
            f"model.remat: unknown policy {policy!r} ({', '.join(REMAT_POLICIES)})"
        )


def remat_layer(layer_cls: type[nn.Module], policy: str):
    """`layer_cls`, or it wrapped in `nn.remat` with `policy` (see the module docstring).

    The layer names its non-array `__call__` arguments (Python bools, functions, None
    defaults) in a class attribute `static_args`; their positions (self = 0) are derived
    from the signature, so the wrapped layer must be called positionally.
    """
    check_remat_policy(policy)
    if policy == "none":
        return layer_cls
    params = list(inspect.signature(layer_cls.__call__).parameters)
    static = getattr(layer_cls, "static_args", ())
    unknown = [name for name in static if name not in params]
    if unknown:
        raise TypeError(f"{layer_cls.__name__}.static_args: no argument(s) {unknown}")
    static_argnums = tuple(params.index(name) for name in static)
    saveable = {"full": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}
    return nn.remat(layer_cls, policy=saveable[policy], static_argnums=static_argnums)


def canonical_dtype(name: Any, *, where: str = "dtype") -> str:
    """'bf16' / jnp.bfloat16 / 'bfloat16' -> 'bfloat16'; rejects non-float dtypes."""
    aliases = {"bf16": "bfloat16", "fp32": "float32", "f32": "float32", "fp16": "float16"}
    name = aliases.get(name, name) if isinstance(name, str) else name
    try:
        dtype = jnp.dtype(name)
    except TypeError as err:
        raise UserInputError(f"{where}: unknown dtype {name!r}") from err
    if not jnp.issubdtype(dtype, jnp.floating):
        raise UserInputError(f"{where}: dtype {dtype.name!r} is not a floating-point dtype")
    return dtype.name


def hf_token_ids(value: Any) -> int | tuple[int, ...] | None:
    """A config's bos/eos id(s), hashable (a list becomes a tuple)."""
    return tuple(value) if isinstance(value, list | tuple) else value


def token_ids_to_hf(value: Any) -> Any:
    """Inverse of `hf_token_ids` (a tuple goes back to a JSON list)."""
    return list(value) if isinstance(value, tuple) else value


# `ModelConfig`'s own fields: none of them is a Hugging Face config field.
OURS = ("dtype", "param_dtype", "remat_policy", "neftune_alpha", "attention",
        "attention_block")


def fields_to_hf(config: Any, *, skip: Sequence[str] = ()) -> dict[str, Any]:
    """The dataclass fields of `config` that are HF config fields of the same name: all but
    `skip` and `ModelConfig`'s own (`OURS`);
    tuples (layer types, token ids) become JSON lists."""
    ours = {*OURS, *skip}
    out = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items() if k not in ours}


@dataclasses.dataclass(frozen=True)
class HfChecks:
    """What `ModelConfig.from_hf` checks first: the model_type (`default` when absent) is
    one of `supported` (a `family` description names them in the error), and no `required`
    field is missing."""

    default: str
    supported: tuple[str, ...]
    family: str
    required: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Base of every family config: our dtype names ('float32', 'bfloat16'; `dtype` for
    activations and matmuls, `param_dtype` for storage), `remat_policy` (see the module
    docstring) and `neftune_alpha` (`layers.neftune`: noise on the input token embeddings
    in non-deterministic calls; 0 = none), `attention` and `attention_block` (how the
    shared attention computes its scores: `sft_jax.models.attention`; 'xla' is today's
    einsum + softmax), keyword-only after the family's own fields, and `from_hf`.

    A family sets `hf_checks` (an `HfChecks`) and implements
    `fields_from_hf(hf, model_type, *, where) -> dict` (its own fields, checked, one
    `UserInputError` naming `where` for a bad one).
    """

    hf_checks: ClassVar[HfChecks]
    _: dataclasses.KW_ONLY
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat_policy: str = "none"
    neftune_alpha: float = 0.0
    attention: str = "xla"
    attention_block: int = DEFAULT_BLOCK

    def __post_init__(self) -> None:
        check_remat_policy(self.remat_policy)

    @property
    def attention_options(self) -> dict[str, Any]:
        """`attention` and `attention_block` as `layers.Attention` takes them."""
        return {"implementation": self.attention, "block": self.attention_block}

    @property
    def dtypes(self) -> dict[str, Any]:
        """`dtype` and `param_dtype` as flax modules take them (`nn.Dense(..., **dtypes)`)."""
        return {"dtype": jnp.dtype(self.dtype), "param_dtype": jnp.dtype(self.param_dtype)}

    @classmethod
    def fields_from_hf(
        cls, hf: Mapping[str, Any], model_type: str, *, where: str
    ) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_hf(
        cls,
        hf: Mapping[str, Any],
        *,
        dtype: Any = "float32",
        param_dtype: Any = "float32",
        where: str = "config.json",
    ) -> Any:
        """Build from a Hugging Face `config.json` dict; `where` names it in errors."""
        checks = cls.hf_checks
        model_type = check_model_type_and_fields(
            hf, default=checks.default, supported=checks.supported, family=checks.family,
            required=checks.required, where=where,
        )
        return cls(
            **cls.fields_from_hf(hf, model_type, where=where),
            model_type=model_type,
            dtype=canonical_dtype(dtype),
            param_dtype=canonical_dtype(param_dtype, where="param_dtype"),
        )
