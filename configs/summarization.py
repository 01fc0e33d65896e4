"""Summarization: one-sentence summaries of ACL papers by aspect (`aclsum`).

Default: SmolLM2-135M-Instruct (`smollm2-135m-instruct`) prompted with "Summarize the
{aspect} of this paper in one sentence." and the paper (abstract, introduction and
conclusion, cut to its first 384 tokens), fine-tuned with the loss on the summary only;
ROUGE-1/2/L/Lsum of greedy summaries of the first test examples.

    python -m sft_jax.main --config=configs/summarization.py --workdir=/tmp/aclsum
    python -m sft_jax.main --config=configs/summarization.py --workdir=/tmp/aclsum-base \
        --config.train.steps=0          # ROUGE of the model before fine-tuning
    python -m sft_jax.main --config=configs/summarization.py:runlocal --workdir=/tmp/as-tiny
    python -m sft_jax.main --config=configs/summarization.py:gemma --workdir=/tmp/aclsum-gemma
    python -m sft_jax.main --config=configs/summarization.py:t5 --workdir=/tmp/aclsum-t5
    python -m sft_jax.main --config=configs/summarization.py:t5 --workdir=/tmp/aclsum-t5 \
        --config.model.checkpoint=path/to/t5-small   # a local T5 checkpoint instead

`arg` is a comma-separated list of variants: `runlocal` (a tiny run for a laptop or CI),
`t5` (a small T5 encoder-decoder from scratch with a unigram tokenizer trained on the
training split, "summarize {aspect}: " as the source prefix), `gemma` (Gemma-3-270M base
prompted in plain text with no chat template: the instruction, the paper, then
"Summary of the {aspect}:" and the summary on its own line; a reply ends at EOS or at
its first newline). `model.checkpoint`, when
set, takes precedence over `model.from_scratch`.
"""

import ml_collections

from sft_jax import config as config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variants = config_lib.parse_variants(arg, {"runlocal", "t5", "gemma"},
                                         "configs/summarization.py")
    config = config_lib.seq2seq_keys(config_lib.base_config())

    config.model.checkpoint = "smollm2-135m-instruct"

    config.data.train = "aclsum:train"
    config.data.validation = "aclsum:validation"
    config.data.test = "aclsum:test"
    config.data.source_field = "document"
    config.data.target_field = "summary"
    # Decoder-only: the user turn, a str.format template over {source} and record fields.
    config.data.prompt_template = ("Summarize the {aspect} of this paper in one sentence.\n\n"
                                   "{source}")
    config.data.max_source_length = 384  # document tokens kept
    config.data.max_target_length = 64  # summaries are at most ~25 words
    config.data.max_length = 512  # decoder-only rows: prompt + summary
    config.data.limit_eval = 48

    config.optim.learning_rate = 5e-5
    config.optim.warmup_ratio = 0.1
    config.optim.weight_decay = 0.0

    config.train.steps = 16
    config.train.batch_size = 4
    config.train.eval_every = 0
    config.train.log_every = 2
    config.train.label_smoothing = 0.0

    config.eval.batch_size = 8
    config.eval.splits = ("test",)
    config.eval.periodic_split = ""
    config.eval.metrics = ("rouge",)  # and/or "bleu", "chrf"
    config.eval.num_beams = 1
    config.eval.max_new_tokens = 48
    config.eval.generation_batch_size = 8
    config.eval.stop_tokens = ("<|im_end|>",)

    config.checkpoint.every = 8
    config.checkpoint.best_metric = ""
    config.checkpoint.use_best_for_final = False

    if "t5" in variants:
        config.model.checkpoint = ""
        config.model.from_scratch = ml_collections.ConfigDict({
            "model_type": "t5",
            "d_model": 256,
            "d_kv": 64,
            "d_ff": 1024,
            "num_layers": 3,
            "num_decoder_layers": 3,
            "num_heads": 4,
            "feed_forward_proj": "gated-gelu",
            "dropout_rate": 0.1,
            "tie_word_embeddings": True,
        })
        config.data.source_prefix = "summarize {aspect}: "
        config.data.vocab_size = 4000
        config.data.limit_eval = 0
        config.optim.learning_rate = 1e-3
        config.optim.schedule = "cosine"
        config.train.steps = 300
        config.train.batch_size = 8
        config.train.log_every = 20
        config.train.label_smoothing = 0.1
        config.eval.batch_size = 32
        config.eval.num_beams = 4
        config.eval.generation_batch_size = 16
        config.eval.stop_tokens = ()
        config.checkpoint.every = 100

    if "gemma" in variants:
        config.model.checkpoint = "gemma3-270m"
        config.data.prompt_template = ("Summarize the {aspect} of this paper in one sentence."
                                       "\n\nPaper:\n{source}\n\nSummary of the {aspect}:\n")
        config.eval.stop_tokens = ("\n", "\n\n")

    if "runlocal" in variants:
        config.data.limit_train = 8
        config.data.limit_eval = 2
        config.data.max_source_length = 48
        config.data.max_target_length = 24
        config.data.max_length = 128
        config.data.vocab_size = 300
        if not config.model.checkpoint:
            config.model.from_scratch.update({"d_model": 32, "d_kv": 8, "d_ff": 64,
                                              "num_layers": 1, "num_decoder_layers": 1,
                                              "num_heads": 4})
        config.train.steps = 1
        config.train.batch_size = 2
        config.train.log_every = 1
        config.eval.batch_size = 2
        config.eval.max_new_tokens = 4
        config.eval.generation_batch_size = 2
        config.checkpoint.every = 1
    return config
