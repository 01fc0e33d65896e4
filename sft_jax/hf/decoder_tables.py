"""The converter shared by the decoder-only families, over a family's backbone table.

A decoder family declares its backbone rows (`backbone(config) -> list[Entry]`, HF names
without the model prefix), the prefix its `...ForCausalLM` / `...ForSequenceClassification`
puts before them (`prefix`, e.g. 'model.'), the tensor that tells a prefixed checkpoint
from a bare one (`probe`), and the checkpoint buffers that are not weights (`ignored`).
`DecoderConverter` then provides the `Family` converter functions (`models/family.py`):

    lm_head   HF weight [V, D] -> lm_head kernel [D, V]       untied models only
    score     HF weight [C, D] -> classifier kernel [D, C]    no bias, as HF's `score`

Tied embeddings: the LM head is the embedding table; `lm_head.weight` is neither read
(a checkpoint may or may not hold a copy) nor written (transformers ties it on load).
The classifier's params are `{'encoder': <backbone>, 'classifier': ...}` as a
`SequenceClassifier` has them.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from sft_jax.hf.tables import (
    Entry,
    Params,
    detect_prefix,
    has_all,
    head_entries,
    log_unused,
    put,
    same,
    take,
    to_numpy,
)
from sft_jax.models.family import AdapterTable

log = logging.getLogger(__name__)

LM_HEAD = "lm_head"
SCORE = "score"


def lm_head_entries(config: Any) -> list[Entry]:
    """The untied LM head `lm_head` [V, D] <-> our `lm_head` kernel [D, V]."""
    return head_entries(LM_HEAD, config.hidden_size, config.vocab_size, (LM_HEAD,))


def score_entries(config: Any, num_labels: int) -> list[Entry]:
    """HF's bias-free `score` [C, D] <-> our classifier kernel [D, C]."""
    return head_entries(SCORE, config.hidden_size, num_labels, ())


def qk_norm_entries(layer: int, head_dim: int) -> list[Entry]:
    """The per-head q/k RMSNorm weights [H] of layer `layer`: HF
    `layers.{layer}.self_attn.{q,k}_norm.weight` <-> our
    `layer_{layer}/attention/{q,k}_norm/scale`."""
    return [
        same((f"layer_{layer}", "attention", name, "scale"),
             f"layers.{layer}.self_attn.{name}.weight", (head_dim,))
        for name in ("q_norm", "k_norm")
    ]


@dataclasses.dataclass(frozen=True)
class DecoderConverter:
    """`params_from_hf` / `params_to_hf` / `classifier_to_hf` / `adapter_tables` of a
    decoder family, from its backbone table (see the module docstring)."""

    backbone: Callable[[Any], list[Entry]]
    prefix: str
    probe: str
    ignored: tuple[str, ...] = ()

    def params_from_hf(
        self,
        state: Mapping[str, np.ndarray],
        config: Any,
        *,
        with_head: bool = False,
        where: str = "checkpoint",
    ) -> Params:
        """Numpy params for the decoder from an HF state dict (cast to `config.param_dtype`).

        Reads `...ForCausalLM`, `...ForSequenceClassification` and bare `...Model`
        checkpoints (prefix `self.prefix` or none). Without `with_head`: the LM's tree,
        with `lm_head` for untied models when the checkpoint has `lm_head.weight` (else
        left out, to be initialised fresh; a warning says so). With `with_head`:
        `{'encoder': <backbone>}`, plus 'classifier' when the checkpoint holds `score`.
        Missing or mis-shaped backbone weights raise `UserInputError` naming `where`.
        """
        prefix = detect_prefix(
            state, self.probe, (self.prefix, ""), where=where, what=config.model_type
        )
        dtype = np.dtype(config.param_dtype)
        backbone = self.backbone(config)
        params = take(state, backbone, prefix, dtype, where=where)
        known = {prefix + e.hf_name for e in backbone} | {f"{LM_HEAD}.weight", f"{SCORE}.weight"}
        log_unused(state, known, self.ignored)
        if with_head:
            out: Params = {"encoder": params}
            if f"{SCORE}.weight" in state:
                num_labels = state[f"{SCORE}.weight"].shape[0]
                out["classifier"] = take(
                    state, score_entries(config, num_labels), "", dtype, where=where
                )
            return out
        if not config.tie_word_embeddings:
            lm_head = lm_head_entries(config)
            if has_all(state, "", lm_head):
                params.update(take(state, lm_head, "", dtype, where=where))
            else:
                log.warning("%s: no lm_head.weight for an untied model; it is initialised", where)
        return params

    def params_to_hf(
        self, params: Params, config: Any, *, base_model: bool = False
    ) -> dict[str, np.ndarray]:
        """HF `...ForCausalLM` state dict (float32, contiguous) from the LM's params.

        `base_model=True`: the bare `...Model` names (no prefix, no LM head), from LM
        params or a classifier's backbone. Accepts boxed, jax or numpy arrays.
        """
        params = to_numpy(params)
        out: dict[str, np.ndarray] = {}
        put(params, self.backbone(config), "" if base_model else self.prefix, out)
        if not base_model and not config.tie_word_embeddings:
            put(params, lm_head_entries(config), "", out)
        return out

    def classifier_to_hf(self, params: Params, config: Any) -> dict[str, np.ndarray]:
        """HF `...ForSequenceClassification` state dict from `SequenceClassifier` params
        (pooling 'last', no classifier bias)."""
        params = to_numpy(params)
        head = params["classifier"]
        if "bias" in head:
            raise ValueError("Hugging Face's score layer has no bias; this classifier has one")
        out: dict[str, np.ndarray] = {}
        put(params["encoder"], self.backbone(config), self.prefix, out)
        put(head, score_entries(config, head["kernel"].shape[-1]), "", out)
        return out

    def adapter_tables(self, config: Any, num_labels: int | None) -> list[AdapterTable]:
        """Where each tensor of the exported causal LM (`num_labels=None`) or sequence
        classifier lives in our tree (see `Family`)."""
        backbone = self.backbone(config)
        if num_labels is None:
            tables = [AdapterTable((), self.prefix, backbone)]
            if not config.tie_word_embeddings:
                tables.append(AdapterTable((), "", lm_head_entries(config)))
            return tables
        return [
            AdapterTable(("encoder",), self.prefix, backbone),
            AdapterTable(("classifier",), "", score_entries(config, num_labels)),
        ]
