"""A decoder-only LM and its tokenizer's chat template as one thing that replies.

`ChatModel(module, config, params, tokenizer, chat_template)` renders conversations
(`[{"role", "content"}, ...]`) up to the assistant's turn header with the template (the
tokenizer's own, or `chat_template`; without either, the contents joined by newlines),
generates with `generation.loop.generate` (the module's KV cache from
`models.registry.init_cache`) and decodes the new tokens without special tokens. Stop
tokens are the tokenizer's EOS and `Sampling.stop_tokens`; padding is the tokenizer's pad
token, or EOS. `params` given to a call replace the ones held (a task holds none).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax

from sft_jax.errors import UserInputError
from sft_jax.generation import loop
from sft_jax.generation.sampling import Sampling, stop_token_ids
from sft_jax.models import registry


class ChatModel:
    """A decoder LM + its tokenizer's chat template -> replies, with the KV-cache decoder."""

    def __init__(self, module, module_config, params, tokenizer, chat_template: str | None = None):
        self.module, self.config, self.params = module, module_config, params
        self.tokenizer, self.template = tokenizer, chat_template
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else tokenizer.eos_token_id)

    def step(self, params, input_ids, positions, segment_ids, cache):
        """The float32 logits of the last position [B, 1, V] and the updated cache. The
        LM head runs on that position only: a prompt's other positions need no logits,
        and with a large vocabulary (Gemma 3: 262k) their head would cost the prefill as
        much as the rest of the model."""
        out = self.module.apply({"params": params}, input_ids, positions=positions,
                                segment_ids=segment_ids, cache=cache, lm_head=True)
        return out["lm_head"](out["hidden_states"][:, -1:]), out["cache"]

    def init_cache(self, batch: int, max_length: int):
        return registry.init_cache(self.config, batch, max_length)

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """The conversation rendered up to and including the assistant's turn header."""
        if self.template is None and not getattr(self.tokenizer, "chat_template", None):
            text = "\n".join(m["content"] for m in messages)
            return list(self.tokenizer(text)["input_ids"])
        return list(self.tokenizer.apply_chat_template(
            messages, chat_template=self.template, add_generation_prompt=True, tokenize=True,
            return_dict=False))

    def generate_text(self, prompts: Sequence[Sequence[int]], sampling: Sampling,
                      params: Any = None, **search: Any) -> list[str]:
        """The decoded continuation of each prompt (token ids), `sampling.batch_size`
        prompts per call; `search`: `generation.loop.generate`'s beam-search keywords."""
        generated = loop.generate(
            self.step, self.params if params is None else params, self.init_cache, prompts,
            max_new_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
            top_k=sampling.top_k, top_p=sampling.top_p,
            stop_token_ids=stop_token_ids(self.tokenizer, sampling.stop_tokens),
            pad_id=self.pad_id, rng=jax.random.key(sampling.seed),
            batch_size=sampling.batch_size, **search)
        return [self.tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in generated]

    def respond(self, conversations: Sequence[list[dict]], sampling: Sampling,
                params: Any = None) -> list[str]:
        """The reply to each conversation."""
        batch = min(sampling.batch_size, max(len(conversations), 1))
        return self.generate_text([self.prompt_ids(m) for m in conversations],
                                  dataclasses.replace(sampling, batch_size=batch), params)


def load_chat_model(path_or_asset: str, chat_template: str | None = None) -> ChatModel:
    """The ChatModel of a decoder-only HF directory or asset (weights included); missing
    weights or tokenizer files are one error naming the directory."""
    from sft_jax.pretrained import check_model_files, load_pretrained, resolve_model_dir

    check_model_files(resolve_model_dir(path_or_asset))
    model = load_pretrained(path_or_asset)
    if registry.family_of(model.config).kind != "decoder":
        raise UserInputError(f"--model: {path_or_asset} is not a decoder-only model")
    return ChatModel(model.module, model.config, model.params, model.tokenizer, chat_template)
