"""GPT-2: module and config (`model.py`), Hugging Face converter (`convert.py`), and
`FAMILY`, its `Family` declaration."""

from sft_jax.models.decoder import init_cache
from sft_jax.models.family import Architectures, Family
from sft_jax.models.gpt2 import convert
from sft_jax.models.gpt2.model import Gpt2Config, Gpt2Layer, Gpt2Model

_GPT2 = Architectures("GPT2Model", causal_lm="GPT2LMHeadModel",
                      sequence_classification="GPT2ForSequenceClassification")
FAMILY = Family("gpt2", "decoder", Gpt2Config, Gpt2Model, convert, {"gpt2": _GPT2},
                hf_pooling="last", init_cache=init_cache,
                dropout_keys=("resid_pdrop", "embd_pdrop", "attn_pdrop"))

__all__ = ["FAMILY", "Gpt2Config", "Gpt2Layer", "Gpt2Model", "convert", "init_cache"]
