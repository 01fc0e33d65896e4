"""Generation from an encoder-decoder family module (T5, BART, Marian).

`model_fns(module, config)` builds the three functions `generation.loop.generate_seq2seq`
needs from the module's `encode` / `decode` methods (the contract in `models/t5/model.py`) and
the family's KV cache (`models.registry.init_cache(config, batch, max_length)`):
    encode_fn(params, source_ids [B,S'], source_segment_ids [B,S'])
        -> {"encoded": [B,S',D], "encoder_segment_ids": [B,S']}   (added to the cache)
    step_fn(params, input_ids, positions, segment_ids [B,T], cache) -> (logits, cache)
        (calls `decode` with the cache's encoder entries, and passes them on)
    init_cache_fn(batch, max_length) -> the decoder self-attention cache
They are built once per (module, config), so compiled programs are reused.

`generate_ids` is the one call a task needs: token-id sources in, generated token ids out
(without the decoder start token), with the config's special tokens as defaults: decoder
start `decoder_start_token_id`, stop tokens `eos_token_id`, padding `pad_token_id`, and,
as Hugging Face does, `forced_bos_token_id` / `forced_eos_token_id` when the config has them.
A decoder-only model generates with `generation.loop.generate`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from sft_jax.errors import UserInputError
from sft_jax.generation import loop
from sft_jax.models import registry

ENCODER_ENTRIES = ("encoded", "encoder_segment_ids")


@functools.lru_cache(maxsize=16)
def model_fns(module: Any, config: Any) -> tuple[Callable, Callable, Callable]:
    """(encode_fn, step_fn, init_cache_fn) of an encoder-decoder module (see above)."""
    def encode_fn(params, source_ids, source_segment_ids):
        encoded = module.apply({"params": params}, source_ids,
                               encoder_segment_ids=source_segment_ids, method="encode")
        return {"encoded": encoded, "encoder_segment_ids": source_segment_ids}

    def step_fn(params, input_ids, positions, segment_ids, cache):
        decoder_cache = {k: v for k, v in cache.items() if k not in ENCODER_ENTRIES}
        out = module.apply({"params": params}, input_ids, cache["encoded"],
                           encoder_segment_ids=cache["encoder_segment_ids"],
                           decoder_positions=positions, decoder_segment_ids=segment_ids,
                           cache=decoder_cache, method="decode")
        kept = {k: cache[k] for k in ENCODER_ENTRIES}
        return out["logits"], {**out["cache"], **kept}

    def init_cache_fn(batch: int, max_length: int):
        return registry.init_cache(config, batch, max_length)

    return encode_fn, step_fn, init_cache_fn


def _ids(value: Any) -> list[int]:
    """A config's token id field (None, an int or several) as a list."""
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


def generate_ids(
    module: Any,
    config: Any,
    params: Any,
    sources: Sequence[Sequence[int]],
    *,
    stop_token_ids: Sequence[int] | None = None,
    decoder_start_token_id: int | None = None,
    pad_id: int | None = None,
    **settings: Any,
) -> list[list[int]]:
    """The generated token ids of each source; `settings` are `generation.loop.generate`'s
    keywords (max_new_tokens, sampling, beams, rng, batch_size). `stop_token_ids`,
    `decoder_start_token_id` and `pad_id` default to the config's eos, decoder start and
    pad ids."""
    start = config.decoder_start_token_id if decoder_start_token_id is None \
        else decoder_start_token_id
    if start is None:
        raise UserInputError(f"{config.model_type} config: no decoder_start_token_id to "
                             "start generating from")
    stops = _ids(config.eos_token_id) if stop_token_ids is None else list(stop_token_ids)
    if pad_id is None:
        pad_id = config.pad_token_id if config.pad_token_id is not None else (stops or [0])[0]
    encode_fn, step_fn, init_cache_fn = model_fns(module, config)
    return loop.generate_seq2seq(
        encode_fn, step_fn, params, init_cache_fn, sources,
        decoder_start_token_id=int(start), stop_token_ids=stops, pad_id=int(pad_id),
        forced_bos_token_id=getattr(config, "forced_bos_token_id", None),
        forced_eos_token_id=_ids(getattr(config, "forced_eos_token_id", None)),
        **settings)
