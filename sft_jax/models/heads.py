"""Task heads over an encoder.

`SequenceClassifier` pools the encoder output into one vector per example and applies
dropout and a linear layer:

- `'pooler'`: the encoder's pooler, tanh(dense([CLS])) — exactly Hugging Face's
  `BertForSequenceClassification` (and, in eval mode, `RobertaForSequenceClassification`).
- `'cls'`: the [CLS] (first token) hidden state.
- `'mean'`: the mean of hidden states over real tokens (attention_mask), as
  sentence-transformers does.
- `'last'`: the hidden state of the last real token of each row (the rightmost with
  attention_mask / segment_ids != 0, so left and right padding both work) — decoder-only
  models, as Hugging Face's `LlamaForSequenceClassification` / `GPT2ForSequenceClassification`
  (which find that token by `pad_token_id` instead of a mask).

Decoder encoders (modules with `is_decoder = True`, e.g. `LlamaModel`) are built without
their LM head and called with the decoder batch contract (`decoder.py`): `segment_ids`
default to the attention_mask and `positions` restart at 0 with each segment
(`layers.positions_from_segments`), so left-padded rows count real tokens from 0;
`token_type_ids` are ignored. Both can be passed explicitly as keyword arguments.

Parameters: `{'encoder': <encoder params>, 'classifier': {'kernel' D C ('embed',
'classes'), 'bias' C ('classes',) unless `classifier_bias=False`}}` (decoders: no bias,
as HF's `score`). A BERT encoder always keeps its pooler so that its parameters mirror
the checkpoint whatever the pooling (unused under 'cls'/'mean'/'last').
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sft_jax.models import axes, layers

Array = jax.Array

POOLINGS = ("pooler", "cls", "mean", "last")


def masked_mean(hidden: Array, attention_mask: Array | None) -> Array:
    """[B,T,D], [B,T] -> [B,D] mean over positions with mask 1 (sentence-transformers)."""
    if attention_mask is None:
        return hidden.mean(axis=1)
    m = attention_mask.astype(jnp.float32)[:, :, None]  # B T 1
    total = (hidden.astype(jnp.float32) * m).sum(axis=1)  # B D
    return (total / jnp.maximum(m.sum(axis=1), 1e-9)).astype(hidden.dtype)


def last_token(hidden: Array, token_mask: Array | None) -> Array:
    """[B,T,D], [B,T] -> [B,D]: the rightmost position with mask != 0 (position 0 for a
    row without any; the last position without a mask)."""
    if token_mask is None:
        return hidden[:, -1]
    t = jnp.arange(hidden.shape[1], dtype=jnp.int32)
    last = jnp.argmax(t[None, :] * (token_mask != 0), axis=1)  # B
    return jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]


class SequenceClassifier(nn.Module):
    """Encoder + pooling + dropout + linear classifier.

    Attributes:
      config: the encoder's config (e.g. `BertConfig`); gives width, dropout and dtypes.
      num_labels: number of classes C.
      pooling: 'pooler' | 'cls' | 'mean' | 'last' (see the module docstring).
      classifier_dropout: dropout before the classifier; None -> `config.classifier_dropout`
        or, if that is None too, `config.hidden_dropout_prob` (as Hugging Face does).
      encoder_cls: the encoder module class, called as `encoder_cls(config, name='encoder')`
        (decoders: `encoder_cls(config, with_lm_head=False, name='encoder')`); None: the
        module of the config's family (`registry.family_of(config).module_cls`).
      classifier_bias: whether the classifier has a bias (HF decoders' `score` has none).

    Call: `(input_ids, attention_mask=None, token_type_ids=None, *, deterministic=True)` ->
    `{'last_hidden_state' [B,T,D], 'pooler_output' [B,D] (the pooled vector fed to the
    classifier, before dropout), 'logits' [B,C] float32}`.
    """

    config: Any
    num_labels: int
    pooling: str = "pooler"
    classifier_dropout: float | None = None
    encoder_cls: type[nn.Module] | None = None
    classifier_bias: bool = True

    @property
    def dropout_rate(self) -> float:
        if self.classifier_dropout is not None:
            return self.classifier_dropout
        configured = getattr(self.config, "classifier_dropout", None)
        return self.config.hidden_dropout_prob if configured is None else configured

    @nn.compact
    def __call__(
        self, input_ids: Array, attention_mask: Array | None = None,
        token_type_ids: Array | None = None, *, deterministic: bool = True, **encoder_kwargs: Any,
    ) -> dict[str, Array]:
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling {self.pooling!r} is not one of {POOLINGS}")
        cfg = self.config
        encoder_cls = self.encoder_cls
        if encoder_cls is None:
            from sft_jax.models import registry  # the registry builds classifiers itself

            encoder_cls = registry.family_of(cfg).module_cls
        token_mask = attention_mask
        if getattr(encoder_cls, "is_decoder", False):
            if self.pooling == "pooler":
                raise ValueError("pooling 'pooler' needs an encoder with a pooler")
            segment_ids = encoder_kwargs.pop("segment_ids", None)
            if segment_ids is None:
                segment_ids = (
                    jnp.ones(input_ids.shape, jnp.int32)
                    if attention_mask is None
                    else jnp.asarray(attention_mask, jnp.int32)
                )
            positions = encoder_kwargs.pop("positions", None)
            if positions is None:
                positions = layers.positions_from_segments(segment_ids)
            out = encoder_cls(cfg, with_lm_head=False, name="encoder")(
                input_ids,
                positions=positions,
                segment_ids=segment_ids,
                deterministic=deterministic,
                **encoder_kwargs,
            )
            hidden = out["hidden_states"]  # B T D
            token_mask = (segment_ids != 0).astype(jnp.int32)  # B T
        else:
            out = encoder_cls(cfg, name="encoder")(
                input_ids,
                attention_mask,
                token_type_ids,
                deterministic=deterministic,
                **encoder_kwargs,
            )
            hidden = out["last_hidden_state"]  # B T D
        if self.pooling == "pooler":
            pooled = out["pooler_output"]
        elif self.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.pooling == "last":
            pooled = last_token(hidden, token_mask)  # B D
        else:
            pooled = masked_mean(hidden, token_mask)  # B D
        x = nn.Dropout(self.dropout_rate)(pooled, deterministic=deterministic)
        logits = layers.DenseGeneral(
            features=self.num_labels,
            kernel_axes=(axes.EMBED, axes.CLASSES),
            use_bias=self.classifier_bias,
            dtype=jnp.dtype(cfg.dtype),
            param_dtype=jnp.dtype(cfg.param_dtype),
            kernel_init=nn.initializers.normal(cfg.initializer_range),
            name="classifier",
        )(x)  # B C
        return {
            "last_hidden_state": hidden,
            "pooler_output": pooled,
            "logits": logits.astype(jnp.float32),
        }
