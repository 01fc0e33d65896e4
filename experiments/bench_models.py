"""Model sizes, batches, losses, FLOP counts and the PyTorch side of `benchmark.py`.

Sizes are Hugging Face `config.json` dicts (so one dict builds both our module, through
`sft_jax.models.registry.build_model`, and, after our init is exported with
`sft_jax.hf.export.export_pretrained`, the transformers model). Dropout is 0 everywhere:
both sides then compute the same function and the same-loss check is exact up to
rounding.

What is trained (the product's objective for each family):
- encoder (BERT): `SequenceClassifier` with the family's HF pooling, 2 classes, the loss
  of `sft_jax/tasks/classification.py` (cross-entropy summed over `example_mask`) vs
  `BertForSequenceClassification` with `labels`.
- decoder (Llama, GPT-2): next-token cross-entropy over `packing.next_token_targets`, the
  loss of `sft_jax/tasks/dialogue.py`, vs `...ForCausalLM` with `labels` (-100 on
  padding).

Model FLOPs per token (training, forward + backward, as in PaLM, Chowdhery et al. 2022,
appendix B): `6 * N + 12 * L * T * N_heads * H`, N = the parameters used in matmuls (all
parameters except embedding tables, plus V*D for a decoder's tied LM head), L layers,
T the row length (padded tokens count: the hardware computes them), N_heads * H the
attention width. Decoding one token costs `2 * N + 4 * L * S * N_heads * H` with S the
number of cached keys it attends to.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from sft_jax.data import packing
from sft_jax.models import registry

# ---------------------------------------------------------------------------- sizes

# sentence-transformers/all-MiniLM-L6-v2 (the `minilm-l6` asset's config.json).
MINILM = {
    "model_type": "bert", "vocab_size": 30522, "hidden_size": 384, "num_hidden_layers": 6,
    "num_attention_heads": 12, "intermediate_size": 1536, "max_position_embeddings": 512,
    "type_vocab_size": 2, "hidden_act": "gelu", "layer_norm_eps": 1e-12, "pad_token_id": 0,
}
# HuggingFaceTB/SmolLM2-135M(-Instruct) config.json.
SMOLLM2_135M = {
    "model_type": "llama", "vocab_size": 49152, "hidden_size": 576, "num_hidden_layers": 30,
    "num_attention_heads": 9, "num_key_value_heads": 3, "intermediate_size": 1536,
    "max_position_embeddings": 8192, "rope_theta": 100000.0, "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2,
}
# openai-community/gpt2 config.json (124M).
GPT2_SMALL = {
    "model_type": "gpt2", "vocab_size": 50257, "n_embd": 768, "n_layer": 12, "n_head": 12,
    "n_positions": 1024, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
    "bos_token_id": 50256, "eos_token_id": 50256,
}
# meta-llama/Llama-3.2-1B config.json shapes (1.24B parameters), random init.
LLAMA_1B = {
    "model_type": "llama", "vocab_size": 128256, "hidden_size": 2048, "num_hidden_layers": 16,
    "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 8192,
    "max_position_embeddings": 8192, "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2,
}
# google-t5/t5-small config.json (60M).
T5_SMALL = {
    "model_type": "t5", "vocab_size": 32128, "d_model": 512, "d_kv": 64, "d_ff": 2048,
    "num_layers": 6, "num_decoder_layers": 6, "num_heads": 8,
    "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
    "feed_forward_proj": "relu", "tie_word_embeddings": True, "layer_norm_epsilon": 1e-6,
    "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0,
}
# Tiny random configs of the same families (the smoke suite).
TINY = {
    "bert": {**MINILM, "vocab_size": 128, "hidden_size": 32, "num_hidden_layers": 2,
             "num_attention_heads": 4, "intermediate_size": 64},
    "llama": {**SMOLLM2_135M, "vocab_size": 128, "hidden_size": 32, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 64},
    "gpt2": {**GPT2_SMALL, "vocab_size": 128, "n_embd": 32, "n_layer": 2, "n_head": 4,
             "bos_token_id": 1, "eos_token_id": 2},
    "t5": {**T5_SMALL, "vocab_size": 128, "d_model": 32, "d_kv": 8, "d_ff": 64,
           "num_layers": 2, "num_decoder_layers": 2, "num_heads": 4},
}
PAD_ID = 0
NUM_LABELS = 2


def family(hf: dict) -> str:
    return {"bert": "bert", "roberta": "bert", "gpt2": "gpt2", "t5": "t5"}.get(
        hf["model_type"], "llama")


def is_encoder(hf: dict) -> bool:
    return family(hf) == "bert"


def without_dropout(hf: dict) -> dict:
    return registry.with_dropout(hf, 0.0)


def tokens_per_row(hf: dict, seq: int) -> int:
    """Positions a row computes: T5 rows hold `seq` source and `seq` target tokens."""
    return 2 * seq if family(hf) == "t5" else seq


def with_layers(hf: dict, n: int) -> dict:
    if family(hf) == "t5":
        return {**hf, "num_layers": n, "num_decoder_layers": n}
    key = "n_layer" if family(hf) == "gpt2" else "num_hidden_layers"
    return {**hf, key: n}


# ---------------------------------------------------------------------------- batches


def make_batch(hf: dict, batch: int, seq: int, seed: int, min_fill: float = 0.5) -> dict:
    """Random rows of `seq` tokens; row lengths uniform in [min_fill*seq, seq], right
    padded with PAD_ID. Decoders: the `packing` contract (one segment per row); encoders:
    input_ids / attention_mask / token_type_ids / label / example_mask; T5: the
    encoder-decoder contract (`models/t5/model.py`) with `seq` source and `seq` target tokens
    and `decoder_target_ids`, as `tasks/encdec.py` feeds it."""
    rng = np.random.default_rng(seed)
    if family(hf) == "t5":
        src, tgt = (make_batch({**hf, "model_type": "llama"}, batch, seq, seed + k, min_fill)
                    for k in (0, 10**6))
        start = np.full((batch, 1), hf["decoder_start_token_id"], np.int32)
        return {"encoder_input_ids": src["input_ids"], "encoder_segment_ids": src["segment_ids"],
                "encoder_positions": src["positions"],
                "decoder_input_ids": np.concatenate([start, tgt["input_ids"][:, :-1]], 1),
                "decoder_segment_ids": tgt["segment_ids"], "decoder_positions": tgt["positions"],
                "decoder_target_ids": tgt["input_ids"]}
    lengths = rng.integers(max(1, math.ceil(min_fill * seq)), seq + 1, batch)
    real = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int32)  # B T
    ids = np.where(real, rng.integers(3, hf["vocab_size"], (batch, seq)), PAD_ID)
    ids = ids.astype(np.int32)
    if is_encoder(hf):
        return {"input_ids": ids, "attention_mask": real, "token_type_ids": np.zeros_like(ids),
                "label": rng.integers(0, NUM_LABELS, batch).astype(np.int32),
                "example_mask": np.ones(batch, np.float32)}
    positions = np.where(real, np.arange(seq)[None, :], 0).astype(np.int32)
    return {"input_ids": ids, "positions": positions, "segment_ids": real, "loss_mask": real}


def real_tokens(batch: dict) -> int:
    keys = [k for k in ("attention_mask", "segment_ids", "encoder_segment_ids",
                        "decoder_segment_ids") if k in batch]
    return sum(int(np.count_nonzero(batch[k])) for k in keys)


def init_batch(hf: dict) -> dict:
    b = make_batch(hf, 1, 8, 0)
    if family(hf) == "t5":
        return {k: b[k] for k in ("encoder_input_ids", "decoder_input_ids")}
    if is_encoder(hf):
        return {k: b[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    return {k: b[k] for k in ("input_ids", "positions", "segment_ids")}


# ------------------------------------------------------------------------ our losses


def loss_fn(module: Any, hf: dict):
    """`loss_fn(params, batch, rng, deterministic) -> (loss_sum, {"weight"})` for
    `steps.make_train_step`, as the classification / dialogue task computes it."""
    if is_encoder(hf):

        def classification(params, batch, rng, deterministic):
            out = module.apply(
                {"params": params}, input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"], token_type_ids=batch["token_type_ids"],
                deterministic=deterministic, rngs=None if deterministic else {"dropout": rng})
            logits = out["logits"].astype(jnp.float32)  # B C
            losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
            mask = batch["example_mask"]
            return jnp.sum(losses * mask), {"weight": jnp.sum(mask)}

        return classification

    if family(hf) == "t5":

        def seq2seq(params, batch, rng, deterministic):
            out = module.apply(
                {"params": params}, batch["encoder_input_ids"], batch["decoder_input_ids"],
                encoder_segment_ids=batch["encoder_segment_ids"],
                encoder_positions=batch["encoder_positions"],
                decoder_segment_ids=batch["decoder_segment_ids"],
                decoder_positions=batch["decoder_positions"],
                deterministic=deterministic, rngs=None if deterministic else {"dropout": rng})
            weights = (batch["decoder_segment_ids"] != 0).astype(jnp.float32)  # B T
            nll = optax.softmax_cross_entropy_with_integer_labels(
                out["logits"].astype(jnp.float32), batch["decoder_target_ids"])
            return jnp.sum(nll * weights), {"weight": jnp.sum(weights)}

        return seq2seq

    def next_token(params, batch, rng, deterministic):
        out = module.apply(
            {"params": params}, batch["input_ids"], positions=batch["positions"],
            segment_ids=batch["segment_ids"], deterministic=deterministic,
            rngs=None if deterministic else {"dropout": rng})
        targets, weights = packing.next_token_targets(
            batch["input_ids"], batch["segment_ids"], batch["loss_mask"])
        nll = optax.softmax_cross_entropy_with_integer_labels(
            out["logits"].astype(jnp.float32), targets)  # B T
        return jnp.sum(nll * weights), {"weight": jnp.sum(weights)}

    return next_token


# ----------------------------------------------------------------------------- FLOPs


def matmul_params(params: Any, hf: dict) -> int:
    """N of the FLOP formula: every parameter except embedding tables, plus V*D for a
    decoder whose LM head is the (tied) embedding table."""
    flat = jax.tree_util.tree_flatten_with_path(nn.meta.unbox(params))[0]
    n = 0
    for path, leaf in flat:
        if str(getattr(path[-1], "key", "")) != "embedding":
            n += int(np.prod(leaf.shape))
    if not is_encoder(hf) and hf.get("tie_word_embeddings", family(hf) == "gpt2"):
        n += hf["vocab_size"] * _width(hf)
    return n


def _width(hf: dict) -> int:
    return hf[{"gpt2": "n_embd", "t5": "d_model"}.get(family(hf), "hidden_size")]


def _layers_and_attention_width(hf: dict) -> tuple[int, int]:
    if family(hf) == "gpt2":
        return hf["n_layer"], hf["n_embd"]
    heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
    return hf["num_hidden_layers"], heads * head_dim


def train_flops_per_token(n_matmul: int, hf: dict, seq: int) -> float:
    if family(hf) == "t5":  # per position of seq source + seq target ones: each pair of
        # positions runs the encoder once and the decoder once (N = both stacks); attention:
        # encoder self, decoder self and decoder cross, each over seq keys.
        width = hf["num_heads"] * hf["d_kv"]
        dec_layers = hf.get("num_decoder_layers") or hf["num_layers"]
        return (6.0 * n_matmul + 12.0 * (hf["num_layers"] + 2 * dec_layers) * seq * width) / 2
    layers, width = _layers_and_attention_width(hf)
    return 6.0 * n_matmul + 12.0 * layers * seq * width


def decode_flops_per_token(n_matmul: int, hf: dict, keys: float) -> float:
    layers, width = _layers_and_attention_width(hf)
    return 2.0 * n_matmul + 4.0 * layers * keys * width


# ------------------------------------------------------------------ the PyTorch side


def torch_model(model_dir: str, hf: dict, device: str):
    import transformers

    auto = (transformers.AutoModelForSequenceClassification if is_encoder(hf)
            else transformers.AutoModelForSeq2SeqLM if family(hf) == "t5"
            else transformers.AutoModelForCausalLM)
    model = auto.from_pretrained(model_dir, dtype="float32").to(device)
    model.train()
    return model


def torch_optimizer(model, optim: dict):
    """torch AdamW with our settings and our decay mask (matrices only, `optim.decay_mask`)."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": optim["wd"]},
              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=optim["lr"], betas=(optim["b1"], optim["b2"]),
                             eps=optim["eps"])


def torch_inputs(batch: dict, hf: dict, device: str) -> dict:
    import torch

    def t(x):
        return torch.as_tensor(np.asarray(x), device=device)

    if family(hf) == "t5":  # HF shifts the labels right itself (start token, -100 -> pad)
        targets = t(batch["decoder_target_ids"]).long()
        return {"input_ids": t(batch["encoder_input_ids"]).long(),
                "attention_mask": t(batch["encoder_segment_ids"]).long(),
                "labels": torch.where(t(batch["decoder_segment_ids"]) != 0, targets,
                                      torch.full_like(targets, -100))}
    if is_encoder(hf):
        return {"input_ids": t(batch["input_ids"]).long(),
                "attention_mask": t(batch["attention_mask"]).long(),
                "token_type_ids": t(batch["token_type_ids"]).long(),
                "labels": t(batch["label"]).long()}
    ids = t(batch["input_ids"]).long()
    mask = t(batch["segment_ids"]).long()
    labels = torch.where(t(batch["loss_mask"]) != 0, ids, torch.full_like(ids, -100))
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def torch_train_step(model, opt, max_grad_norm: float, autocast_dtype=None):
    """One AdamW update on a dict of inputs; returns the loss tensor (before the update)."""
    import torch

    device_type = next(model.parameters()).device.type

    def step(inputs: dict):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type, dtype=autocast_dtype,
                            enabled=autocast_dtype is not None):
            loss = model(**inputs).loss
        loss.backward()
        if max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        opt.step()
        return loss.detach()

    return step
