"""Translation: English → Spanish Bible verses (`bible-en-es`, King James / Reina-Valera).

Default: a small T5-shaped encoder-decoder trained from scratch (d_model 128, 2 + 2
layers, 4 heads, gated-GELU MLP 512, 1.7M parameters) with a 4k unigram vocabulary shared
by both languages, trained on the training split into workdir/tokenizer; several verse pairs per
row (packing); BLEU and chrF of beam-search translations of the first
`eval.generate_limit` test verses.

    python -m sft_jax.main --config=configs/translation.py --workdir=/tmp/bible
    python -m sft_jax.main --config=configs/translation.py:runlocal --workdir=/tmp/bible-tiny
    python -m sft_jax.main --config=configs/translation.py:decoder --workdir=/tmp/bible-lm
    python -m sft_jax.main --config=configs/translation.py:gemma --workdir=/tmp/bible-gemma
    python -m sft_jax.main --config=configs/translation.py:gemma --workdir=/tmp/bible-gemma0 \
        --config.train.steps=0          # the same model before fine-tuning
    python -m sft_jax.main --config=configs/translation.py --workdir=/tmp/bible \
        --config.model.checkpoint=path/to/t5-small \
        --config.data.source_prefix="translate English to Spanish: "
                                        # fine-tune a local T5 checkpoint (its tokenizer)

`arg` is a comma-separated list of variants: `runlocal` (a tiny run for a laptop or CI),
`decoder` (SmolLM2-135M-Instruct prompted to translate, loss on the Spanish only),
`gemma` (Gemma-3-270M base, multilingual, prompted in plain text with no chat template:
"English:" and the verse, then "Spanish:" and the translation on its own line; loss on the
Spanish only; a reply ends at EOS or at its first newline).
`model.checkpoint`, when set, takes precedence over `model.from_scratch`.
"""

import ml_collections

from sft_jax import config as config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variants = config_lib.parse_variants(arg, {"runlocal", "decoder", "gemma"},
                                         "configs/translation.py")
    config = config_lib.seq2seq_keys(config_lib.base_config())

    config.model.from_scratch = ml_collections.ConfigDict({
        "model_type": "t5",
        "d_model": 128,
        "d_kv": 32,
        "d_ff": 512,
        "num_layers": 2,
        "num_decoder_layers": 2,
        "num_heads": 4,
        "feed_forward_proj": "gated-gelu",
        "dropout_rate": 0.1,
        "tie_word_embeddings": True,
    })
    config.data.train = "bible-en-es:train"
    config.data.validation = "bible-en-es:validation"
    config.data.test = "bible-en-es:test"
    config.data.source_field = "en"
    config.data.target_field = "es"
    config.data.max_source_length = 128
    config.data.max_target_length = 128
    config.data.vocab_size = 4000

    config.optim.learning_rate = 2e-3
    config.optim.warmup_ratio = 0.05
    config.optim.schedule = "cosine"
    config.optim.weight_decay = 0.01

    config.train.steps = 1000
    config.train.batch_size = 16  # packed rows of 128 + 128 tokens (~3.5 verse pairs each)
    config.train.eval_every = 0  # > 0: loss and BLEU on validation every N steps
    config.train.log_every = 50

    config.eval.batch_size = 64
    config.eval.splits = ("test",)  # add "validation" (or set train.eval_every) to watch it
    config.eval.periodic_split = "validation"
    config.eval.generate_limit = 200
    config.eval.num_beams = 4
    config.eval.max_new_tokens = 96

    config.checkpoint.every = 250
    config.checkpoint.best_metric = ""
    config.checkpoint.use_best_for_final = False

    if "decoder" in variants:
        config.model.from_scratch = ml_collections.ConfigDict()
        config.model.checkpoint = "smollm2-135m-instruct"
        config.data.prompt_template = "Translate this English text to Spanish:\n{source}"
        config.data.max_source_length = 96
        config.data.max_target_length = 96
        config.data.max_length = 256
        config.train.label_smoothing = 0.0
        config.optim.learning_rate = 5e-5
        config.optim.schedule = "linear"
        config.optim.warmup_ratio = 0.1
        config.optim.weight_decay = 0.0
        config.train.steps = 40
        config.train.batch_size = 4  # packed rows of 256 tokens
        config.train.log_every = 5
        config.eval.batch_size = 8
        config.eval.num_beams = 1
        config.eval.max_new_tokens = 96
        config.eval.generation_batch_size = 8
        config.eval.generate_limit = 40
        config.eval.stop_tokens = ("<|im_end|>",)
        config.data.limit_eval = 100
        config.checkpoint.every = 20

    if "gemma" in variants:
        config.model.from_scratch = ml_collections.ConfigDict()
        config.model.checkpoint = "gemma3-270m"
        config.data.prompt_template = ("Translate the English text to Spanish.\n\n"
                                       "English:\n{source}\n\nSpanish:\n")
        config.data.max_source_length = 96  # Gemma tokens: a verse averages ~35
        config.data.max_target_length = 96
        config.data.max_length = 256  # packed rows of prompt + translation (~3 pairs)
        config.train.label_smoothing = 0.0
        config.optim.learning_rate = 5e-5
        config.optim.schedule = "linear"
        config.optim.warmup_ratio = 0.1
        config.optim.weight_decay = 0.0
        config.train.steps = 60
        config.train.batch_size = 4
        config.train.log_every = 5
        config.eval.batch_size = 8
        config.eval.num_beams = 1
        config.eval.max_new_tokens = 96
        config.eval.generation_batch_size = 8
        config.eval.stop_tokens = ("\n", "\n\n")
        config.data.limit_eval = 200
        config.checkpoint.every = 20

    if "runlocal" in variants:
        config.data.limit_train = 48
        config.data.limit_eval = 6
        config.data.max_source_length = 32
        config.data.max_target_length = 32
        config.data.max_length = 96
        config.data.vocab_size = 200
        if not config.model.checkpoint:
            config.model.from_scratch.update({"d_model": 32, "d_kv": 8, "d_ff": 64,
                                              "num_layers": 1, "num_decoder_layers": 1,
                                              "num_heads": 4})
        config.train.steps = 2
        config.train.batch_size = 4
        config.train.log_every = 1
        config.eval.batch_size = 4
        config.eval.num_beams = 2
        config.eval.max_new_tokens = 8
        config.eval.generation_batch_size = 4
        config.eval.generate_limit = 4
        config.checkpoint.every = 1
    return config
