"""sft_jax: supervised fine-tuning of pretrained transformers in JAX/Flax."""

from sft_jax.pretrained import Pretrained, load_pretrained

__all__ = ["Pretrained", "load_pretrained"]
