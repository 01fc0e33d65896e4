"""Dialogue SFT: fine-tune a decoder-only chat model on conversations.

Default: SmolLM2-135M-Instruct (`smollm2-135m-instruct`, from its GGUF) on `chitchat`
(human-human conversations), loss on the assistant's turns, packed rows.

    python -m sft_jax.main --config=configs/dialogue.py --workdir=/tmp/chat
    python -m sft_jax.main --config=configs/dialogue.py:runlocal --workdir=/tmp/chat-tiny
    python -m sft_jax.main --config=configs/dialogue.py --workdir=/tmp/chat \
        --config.train.steps=0          # perplexity of the starting checkpoint

`arg` is a comma-separated list of variants: `runlocal` (a tiny run for a laptop or CI).
"""

import ml_collections

from sft_jax import config as config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variants = config_lib.parse_variants(arg, {"runlocal"}, "configs/dialogue.py")
    config = config_lib.base_config()
    config.task = "dialogue"

    config.model.checkpoint = "smollm2-135m-instruct"

    config.data.train = "chitchat:train"
    config.data.validation = "chitchat:validation"
    config.data.test = "chitchat:test"
    config.data.max_length = 256
    config.data.chat_template = ""  # "" = the tokenizer's own; else a Jinja template string
    config.data.loss_on = "assistant"  # assistant | all | completion | last_turn
    config.data.packing = True  # several conversations per row (segment ids); else padding
    config.data.limit_eval = 100

    config.optim.learning_rate = 5e-5
    config.optim.warmup_ratio = 0.1
    config.optim.weight_decay = 0.0

    config.train.steps = 40
    config.train.batch_size = 4
    config.train.eval_every = 0
    config.train.log_every = 5

    config.eval.batch_size = 8
    config.eval.num_samples = 4  # sample responses written to predictions/<split>.jsonl
    config.eval.max_new_tokens = 48
    config.eval.temperature = 0.0  # 0 = greedy
    config.eval.top_k = 0
    config.eval.top_p = 1.0
    config.eval.stop_tokens = ("<|im_end|>",)
    config.eval.generation_batch_size = 4

    config.checkpoint.every = 20
    config.checkpoint.best_metric = "loss"
    config.checkpoint.best_mode = "min"

    if "runlocal" in variants:
        config.data.limit_train = 16
        config.data.limit_eval = 4
        config.data.max_length = 64
        config.train.steps = 2
        config.train.batch_size = 2
        config.train.log_every = 1
        config.eval.batch_size = 4
        config.eval.num_samples = 2
        config.eval.max_new_tokens = 4
        config.checkpoint.every = 1
    return config
