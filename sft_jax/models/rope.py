"""Rotary position embeddings (RoPE) and the `rope_scaling` variants of Llama-family configs.

Hugging Face layout ("rotate half"): the head dim H is split in two halves x1, x2 and

    rope(x, p) = x * cos(p·f) + rotate_half(x) * sin(p·f),   rotate_half(x) = [-x2, x1]

with inverse frequencies `f_i = theta^(-2i/H)` for i < H/2, duplicated over both halves.
The scaling variants only change the frequencies (and, for 'yarn', scale cos/sin):

| rope_type | what it does                                                          |
|-----------|-----------------------------------------------------------------------|
| default   | the frequencies above                                                 |
| linear    | f / factor (position interpolation)                                   |
| llama3    | Llama 3.1: low frequencies / factor, high kept, a smooth ramp between |
| yarn      | YaRN: ramp between interpolated and extrapolated frequencies, and     |
|           | cos/sin scaled by an attention factor                                 |

'dynamic' (NTK) and 'longrope' rescale with the sequence length at run time and are not
supported. Config formats: transformers 5 writes `rope_parameters: {rope_type, rope_theta,
...}`; older files have `rope_theta` and `rope_scaling: {type | rope_type, factor, ...}`.
Both are read; `Rope.to_hf` writes both (they agree).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sft_jax.errors import UserInputError

Array = jax.Array

ROPE_TYPES = ("default", "linear", "llama3", "yarn")

# Fields each scaled type reads from the HF dict (besides rope_type / rope_theta).
_FIELDS: dict[str, tuple[str, ...]] = {
    "default": (),
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
    "yarn": (
        "factor",
        "original_max_position_embeddings",
        "attention_factor",
        "beta_fast",
        "beta_slow",
        "mscale",
        "mscale_all_dim",
        "truncate",
    ),
}
_REQUIRED: dict[str, tuple[str, ...]] = {
    "default": (),
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor"),
    "yarn": ("factor",),
}


@dataclasses.dataclass(frozen=True)
class Rope:
    """RoPE settings of one model (hashable). `params` holds the type's extra fields
    (`factor`, ...) as sorted (name, value) pairs."""

    theta: float = 10_000.0
    type: str = "default"
    params: tuple[tuple[str, Any], ...] = ()

    def get(self, name: str, default: Any = None) -> Any:
        return dict(self.params).get(name, default)

    @classmethod
    def from_hf(
        cls,
        hf: Mapping[str, Any],
        *,
        max_position_embeddings: int,
        where: str = "config.json",
    ) -> Rope:
        """From an HF config dict (`rope_parameters`, or `rope_theta` + `rope_scaling`)."""
        scaling = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
        if not isinstance(scaling, Mapping):
            raise UserInputError(f"{where}: rope_scaling must be an object, got {scaling!r}")
        key = "rope_scaling" if hf.get("rope_scaling") else "rope_parameters"
        if any(isinstance(v, Mapping) for v in scaling.values()):
            raise UserInputError(f"{where}: {key} per layer type is not supported")
        theta = scaling.get("rope_theta", hf.get("rope_theta", 10_000.0))
        rope_type = scaling.get("rope_type", scaling.get("type", "default"))
        if rope_type not in ROPE_TYPES:
            raise UserInputError(
                f"{where}: {key} type {rope_type!r} is not supported "
                f"(supported: {', '.join(ROPE_TYPES)})"
            )
        missing = [k for k in _REQUIRED[rope_type] if scaling.get(k) is None]
        if missing:
            raise UserInputError(f"{where}: {key} ({rope_type}) lacks {', '.join(missing)}")
        partial = scaling.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
        if partial not in (None, 1, 1.0):
            raise UserInputError(f"{where}: partial_rotary_factor {partial} is not supported")
        params = {k: scaling[k] for k in _FIELDS[rope_type] if scaling.get(k) is not None}
        if rope_type in ("llama3", "yarn"):
            params.setdefault("original_max_position_embeddings", max_position_embeddings)
        if not isinstance(theta, int | float) or theta <= 0:
            raise UserInputError(f"{where}: rope_theta must be a positive number, got {theta!r}")
        return cls(theta=float(theta), type=rope_type, params=tuple(sorted(params.items())))

    def to_hf(self) -> dict[str, Any]:
        """`rope_theta`, `rope_scaling` (None for 'default') and `rope_parameters`."""
        parameters = {"rope_type": self.type, "rope_theta": self.theta, **dict(self.params)}
        scaling = None if self.type == "default" else {**parameters, "type": self.type}
        if scaling is not None:
            del scaling["rope_theta"]
        return {"rope_theta": self.theta, "rope_scaling": scaling, "rope_parameters": parameters}


def inverse_frequencies(rope: Rope, head_dim: int) -> tuple[np.ndarray, float]:
    """(float32 [H/2] inverse frequencies, attention scaling of cos/sin), as transformers'
    `ROPE_INIT_FUNCTIONS` compute them."""
    dim = head_dim
    exponents = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
    base = np.float32(rope.theta)
    inv_freq = (1.0 / base**exponents).astype(np.float32)
    factor = rope.get("factor", 1.0)
    if rope.type == "default":
        return inv_freq, 1.0
    if rope.type == "linear":
        return (inv_freq / np.float32(factor)).astype(np.float32), 1.0
    if rope.type == "llama3":
        old = rope.get("original_max_position_embeddings")
        low, high = rope.get("low_freq_factor"), rope.get("high_freq_factor")
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > old / low, inv_freq / factor, inv_freq)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old / high) & ~(wavelen > old / low)
        return np.where(medium, smoothed, scaled).astype(np.float32), 1.0
    if rope.type == "yarn":
        return _yarn(rope, dim)
    raise ValueError(f"rope type {rope.type!r}")


def _yarn(rope: Rope, dim: int) -> tuple[np.ndarray, float]:
    factor = rope.get("factor")
    original = rope.get("original_max_position_embeddings")
    mscale, mscale_all_dim = rope.get("mscale"), rope.get("mscale_all_dim")

    def get_mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = rope.get("attention_factor")
    if attention_factor is None:
        if mscale and mscale_all_dim:
            attention_factor = get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim)
        else:
            attention_factor = get_mscale(factor)
    beta_fast, beta_slow = rope.get("beta_fast") or 32, rope.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(rope.theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if rope.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
    extrapolation = (1 - ramp).astype(np.float32)
    pos_freqs = np.float32(rope.theta) ** (np.arange(0, dim, 2, dtype=np.float32) / dim)
    interpolation = 1.0 / (factor * pos_freqs)
    inv_freq = interpolation * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation
    return inv_freq.astype(np.float32), float(attention_factor)


def apply_rope(
    x: Array,  # B T N H
    positions: Array,  # B T int
    inv_freq: np.ndarray,  # H/2
    attention_scaling: float = 1.0,
) -> Array:  # B T N H, x's dtype
    """Rotate `x` by its positions (angles in float32, cast to x's dtype as HF does)."""
    freqs = positions.astype(jnp.float32)[:, :, None] * jnp.asarray(inv_freq)  # B T H/2
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]  # B T 1 H
    cos = (jnp.cos(emb) * attention_scaling).astype(x.dtype)
    sin = (jnp.sin(emb) * attention_scaling).astype(x.dtype)
    x1, x2 = jnp.split(x, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return x * cos + rotated * sin


def rotation(
    rope: Rope, head_dim: int, positions: Array  # positions: B T int
) -> Callable[[Array, Array], tuple[Array, Array]]:
    """The `qk_transform` of `layers.Attention` that rotates queries [B, T, N, H] and keys
    [B, T, K, H] by `rope` at `positions`."""
    inv_freq, scaling = inverse_frequencies(rope, head_dim)

    def rotate(q: Array, k: Array) -> tuple[Array, Array]:
        return (
            apply_rope(q, positions, inv_freq, scaling),
            apply_rope(k, positions, inv_freq, scaling),
        )

    return rotate
