"""The `Family` protocol: everything the rest of sft_jax may know about a model family.

A family lives in one package, `sft_jax/models/<family>/`, and exports `FAMILY`, a
`Family`. The registry (`registry.py`) lists the family packages, one line each, and is
the only place that maps an HF `model_type` to a family. Nothing outside a family's
package names its model types, its Hugging Face class names or its weight names.

What a family provides:

- `config_cls`: a frozen dataclass, best derived from `common.ModelConfig` (which holds
    `dtype`, `param_dtype`, `remat_policy`, `neftune_alpha` and `from_hf`; the family
    sets `hf_checks` and `fields_from_hf`), with
    `from_hf(hf: Mapping, *, dtype, param_dtype, where) -> config` (checks the HF
        `config.json` fields, one `UserInputError` naming `where` for a bad one),
    `to_hf() -> dict` (the HF fields it determines, `model_type` included; an unknown
        model_type is a `UserInputError`, never written out as another),
    fields `model_type`, `dtype`, `param_dtype`, `remat_policy` and, for classifier
    backbones, `hidden_size`, `initializer_range`, `hidden_dropout_prob` and
    `classifier_dropout` (properties will do).
- `module_cls`: the flax module built as `module_cls(config)` (decoders also take
    `with_lm_head=False`), following its kind's batch contract: encoder
    (`models/bert`), decoder and KV cache (`models/decoder.py`), encoder-decoder
    (`models/t5`).
- `converter`: an object (usually the family's `convert` module) with
    `params_from_hf(state, config, *, with_head=False, where) -> params` (encoder-decoders:
        no `with_head`),
    `params_to_hf(params, config, *, base_model=False) -> {hf name: array}`: the
        `architectures.causal_lm` (decoders), `.base` (encoders) or `.seq2seq`
        (encoder-decoders, which take no `base_model`) state dict; `base_model=True`: the
        bare `.base` model's names, from LM or classifier-backbone params;
    `classifier_to_hf(params, config) -> {hf name: array}` (encoders and decoders): the
        `architectures.sequence_classification` state dict of `SequenceClassifier`
        params with pooling `hf_pooling`; and
    `adapter_tables(config, num_labels) -> list[AdapterTable]` (encoders and decoders):
        where every tensor of the exported model (`num_labels=None`: the one
        `params_to_hf` writes; else the sequence classifier) lives in our tree (PEFT
        adapter export reads it).
    Converters are declared as tables with the shared engine `sft_jax/hf/tables.py`;
    decoders get all four functions from `sft_jax/hf/decoder_tables.py` and a backbone
    table.
- `architectures`: by model_type, an `Architectures` (the HF class names of the base
    model, causal LM, sequence classifier and seq2seq LM; None where the family has
    none). Its keys are the family's model types.
- `kind`, `hf_pooling` (the pooling of HF's `...ForSequenceClassification`: 'pooler' or
    'last'), `init_cache(config, batch_size, max_length, dtype)` for families with a KV
    cache (`decoder.init_cache` for decoders), and `dropout_keys` (the HF config keys
    `model.dropout` overrides).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn

KINDS = ("encoder", "decoder", "encoder-decoder")


@dataclasses.dataclass(frozen=True)
class Architectures:
    """Hugging Face class names of one model_type (None: the family has no such model)."""

    base: str
    causal_lm: str | None = None
    sequence_classification: str | None = None
    seq2seq: str | None = None


@dataclasses.dataclass(frozen=True)
class AdapterTable:
    """Rows of a converter table as they sit in an exported Hugging Face model: our
    subtree (`ours`, e.g. ('encoder',) inside a classifier) and the HF name prefix of its
    tensors (`hf_prefix`, e.g. 'model.')."""

    ours: tuple[str, ...]
    hf_prefix: str
    entries: list[Any]  # sft_jax.hf.tables.Entry


@dataclasses.dataclass(frozen=True)
class Family:
    """How to build, convert and export one model family (see the module docstring)."""

    name: str
    kind: str  # one of KINDS
    config_cls: type
    module_cls: type[nn.Module]
    converter: Any
    architectures: Mapping[str, Architectures]  # model_type -> HF class names
    hf_pooling: str = "pooler"
    init_cache: Callable[..., dict[str, Any]] | None = None
    dropout_keys: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"family {self.name}: kind {self.kind!r} is not one of {KINDS}")

    @property
    def model_types(self) -> tuple[str, ...]:
        return tuple(self.architectures)
