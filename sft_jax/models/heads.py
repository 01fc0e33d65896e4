"""Task heads over an encoder.

`SequenceClassifier` pools the encoder output into one vector per example and applies
dropout and a linear layer:

- `'pooler'`: the encoder's pooler, tanh(dense([CLS])) — exactly Hugging Face's
  `BertForSequenceClassification` (and, in eval mode, `RobertaForSequenceClassification`).
- `'cls'`: the [CLS] (first token) hidden state.
- `'mean'`: the mean of hidden states over real tokens (attention_mask), as
  sentence-transformers does.

Parameters: `{'encoder': <encoder params>, 'classifier': {'kernel' D C ('embed',
'classes'), 'bias' C ('classes',)}}`. The encoder always keeps its pooler so that its
parameters mirror the checkpoint whatever the pooling (unused under 'cls'/'mean').
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sft_jax.models import axes, layers
from sft_jax.models.bert import BertModel

Array = jax.Array

POOLINGS = ("pooler", "cls", "mean")


def masked_mean(hidden: Array, attention_mask: Array | None) -> Array:
    """[B,T,D], [B,T] -> [B,D] mean over positions with mask 1 (sentence-transformers)."""
    if attention_mask is None:
        return hidden.mean(axis=1)
    m = attention_mask.astype(jnp.float32)[:, :, None]  # B T 1
    total = (hidden.astype(jnp.float32) * m).sum(axis=1)  # B D
    return (total / jnp.maximum(m.sum(axis=1), 1e-9)).astype(hidden.dtype)


class SequenceClassifier(nn.Module):
    """Encoder + pooling + dropout + linear classifier.

    Attributes:
      config: the encoder's config (e.g. `BertConfig`); gives width, dropout and dtypes.
      num_labels: number of classes C.
      pooling: 'pooler' | 'cls' | 'mean' (see the module docstring).
      classifier_dropout: dropout before the classifier; None -> `config.classifier_dropout`
        or, if that is None too, `config.hidden_dropout_prob` (as Hugging Face does).
      encoder_cls: the encoder module class, called as `encoder_cls(config, name='encoder')`.

    Call: `(input_ids, attention_mask=None, token_type_ids=None, *, deterministic=True)` ->
    `{'last_hidden_state' [B,T,D], 'pooler_output' [B,D] (the pooled vector fed to the
    classifier, before dropout), 'logits' [B,C] float32}`.
    """

    config: Any
    num_labels: int
    pooling: str = "pooler"
    classifier_dropout: float | None = None
    encoder_cls: type[nn.Module] = BertModel

    @property
    def dropout_rate(self) -> float:
        if self.classifier_dropout is not None:
            return self.classifier_dropout
        configured = getattr(self.config, "classifier_dropout", None)
        return self.config.hidden_dropout_prob if configured is None else configured

    @nn.compact
    def __call__(
        self,
        input_ids: Array,
        attention_mask: Array | None = None,
        token_type_ids: Array | None = None,
        *,
        deterministic: bool = True,
        **encoder_kwargs: Any,
    ) -> dict[str, Array]:
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling {self.pooling!r} is not one of {POOLINGS}")
        cfg = self.config
        out = self.encoder_cls(cfg, name="encoder")(
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
        else:
            pooled = masked_mean(hidden, attention_mask)  # B D
        x = nn.Dropout(self.dropout_rate)(pooled, deterministic=deterministic)
        logits = layers.DenseGeneral(
            features=self.num_labels,
            kernel_axes=(axes.EMBED, axes.CLASSES),
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
