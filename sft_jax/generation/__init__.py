"""Generation: sampling, beam search, the decoder and encoder-decoder loops, stop tokens.

    sampling.py     `Sampling` (the one settings type), logit filters, forced and stop tokens
    beam_search.py  beam bookkeeping on arrays, as Hugging Face transformers does it
    loop.py         `generate` / `generate_seq2seq`: prefill + a jitted `lax.while_loop`
                    over the step_fn/cache contract
    encdec.py       `generate_ids`: the loop over an encoder-decoder family module
    chat.py         `ChatModel`: a decoder LM + chat template -> replies
    backtranslation.py  paraphrases of training text through a pivot language (a
                    prompted decoder LM), cached as JSONL (`data.augment=backtranslation`)

Models reach the loop only through `models.registry` (modules, `init_cache`); nothing
here imports a task or a CLI module.
"""

from sft_jax.generation.chat import ChatModel, load_chat_model
from sft_jax.generation.encdec import generate_ids
from sft_jax.generation.loop import generate, generate_seq2seq
from sft_jax.generation.sampling import Sampling, filter_logits, stop_token_ids

__all__ = ["ChatModel", "Sampling", "filter_logits", "generate", "generate_ids",
           "generate_seq2seq", "load_chat_model", "stop_token_ids"]
