"""GGUF import (sft_jax.hf.gguf).

The SmolLM2 asset (our HF directory, converted from the packaged GGUF) against transformers'
own GGUF loader on the same file; tiny GGUF files written here with `gguf.GGUFWriter` from a
random HF Llama, for an exact round trip through llama.cpp's layout and for the errors."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
)

from sft_jax import assets
from sft_jax.errors import UserInputError
from sft_jax.hf.gguf import gguf_to_hf_dir, gguf_to_hf_state_dict, read_gguf_config

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
ANSWER = "The capital of France is Paris."  # DATA.md


# ------------------------------------------------------------------------ SmolLM2 asset


@pytest.fixture(scope="module")
def smol_dir() -> Path:
    return assets.fetch("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def gguf_only_dir(smol_dir, tmp_path_factory) -> Path:
    """A directory with nothing but the asset's GGUF file: transformers' GGUF loaders also
    read config/tokenizer files next to it, and the reference must not see ours."""
    alone = tmp_path_factory.mktemp("gguf_only")
    (alone / assets.SMOLLM2_GGUF).symlink_to(smol_dir / assets.SMOLLM2_GGUF)
    return alone


@pytest.fixture(scope="module")
def torch_models(smol_dir, gguf_only_dir):
    """(ours: from config.json + model.safetensors, reference: transformers from the GGUF)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the CPUs are shared; one thread avoids spin contention
    ours = AutoModelForCausalLM.from_pretrained(smol_dir).eval()
    ref = AutoModelForCausalLM.from_pretrained(gguf_only_dir, gguf_file=assets.SMOLLM2_GGUF)
    yield ours, ref.eval()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizers(smol_dir, gguf_only_dir):
    """(ours: saved tokenizer files, reference: transformers' tokenizer from the GGUF)."""
    ours = AutoTokenizer.from_pretrained(smol_dir)
    ref = AutoTokenizer.from_pretrained(gguf_only_dir, gguf_file=assets.SMOLLM2_GGUF)
    return ours, ref


def test_config_matches_transformers_gguf_config(torch_models):
    ours, ref = (m.config for m in torch_models)
    assert (ours.num_hidden_layers, ours.hidden_size, ours.num_attention_heads,
            ours.num_key_value_heads, ours.intermediate_size, ours.vocab_size) == (
            30, 576, 9, 3, 1536, 49152)
    for key in ("num_hidden_layers", "hidden_size", "num_attention_heads", "head_dim",
                "num_key_value_heads", "intermediate_size", "vocab_size", "hidden_act",
                "max_position_embeddings", "tie_word_embeddings", "bos_token_id",
                "eos_token_id", "pad_token_id", "attention_bias", "mlp_bias"):
        assert getattr(ours, key) == getattr(ref, key), key
    assert ours.rope_parameters == ref.rope_parameters == {"rope_theta": 1e5,
                                                          "rope_type": "default"}
    assert ours.rms_norm_eps == 1e-5 == pytest.approx(ref.rms_norm_eps, rel=1e-7)
    assert ours.tie_word_embeddings and ours.model_type == "llama"


def test_weights_and_logits_match_transformers_gguf_loader(torch_models, tokenizers):
    ours, ref = torch_models
    ours_sd, ref_sd = ours.state_dict(), ref.state_dict()
    assert set(ours_sd) == set(ref_sd)
    for name, value in ours_sd.items():
        assert torch.equal(value, ref_sd[name]), name
    ids = tokenizers[0].apply_chat_template(QUESTION, add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)
    with torch.no_grad():
        a, b = ours(**ids).logits, ref(**ids).logits
    assert a.shape == (1, ids["input_ids"].shape[1], 49152)
    diff = (a - b).abs().max().item()
    print(f"max |logit diff| ours vs transformers' GGUF loader: {diff:.3g}")
    assert diff < 1e-3


def test_greedy_answer_is_paris_in_both(torch_models, tokenizers):
    tok = tokenizers[0]
    ids = tok.apply_chat_template(QUESTION, add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)
    n = ids["input_ids"].shape[1]
    with torch.no_grad():
        outs = [m.generate(**ids, max_new_tokens=10, do_sample=False)[0, n:].tolist()
                for m in torch_models]
    assert outs[0] == outs[1]
    assert outs[0][-1] == tok.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.decode(outs[0], skip_special_tokens=True) == ANSWER


def test_our_flax_model_matches_transformers_gguf_model(smol_dir, torch_models, tokenizers):
    """The GGUF-loaded SmolLM2 in our flax Llama: same logits as transformers' own GGUF
    PyTorch model (1e-3) and the same greedy tokens through our KV-cache decoder."""
    from sft_jax.generation import Sampling, load_chat_model

    ref = torch_models[1]
    chat = load_chat_model(str(smol_dir))
    ids = chat.prompt_ids(QUESTION)
    assert ids == tokenizers[1].apply_chat_template(QUESTION, add_generation_prompt=True,
                                                    tokenize=True, return_dict=False)
    ours = chat.module.apply({"params": chat.params}, np.asarray([ids], np.int32))["logits"]
    with torch.no_grad():
        theirs = ref(torch.tensor([ids])).logits.numpy()
    diff = float(np.abs(np.asarray(ours) - theirs).max())
    print(f"max |logit diff| flax vs transformers' GGUF model: {diff:.3g}")
    assert diff < 1e-3

    reply = chat.respond([QUESTION], Sampling(max_new_tokens=10, stop_tokens=("<|im_end|>",)))
    with torch.no_grad():
        prompt = torch.tensor([ids])
        out = ref.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=10,
                           do_sample=False)[0, len(ids):]
    assert reply == [tokenizers[0].decode(out, skip_special_tokens=True).strip()] == [ANSWER]


def test_tokenizer_and_chat_template_match_gguf(smol_dir, tokenizers):
    ours, ref = tokenizers
    assert (smol_dir / "chat_template.jinja").is_file()
    assert ours.chat_template == ref.chat_template and "<|im_start|>" in ours.chat_template
    for text in ("Hello world!", "  leading spaces and\ttabs\n\nnewlines",
                 "Ünïcödé — 東京 🙂", "<|im_start|>user\nHi<|im_end|>", "x = f(3) ** 2  # ok"):
        assert ours(text).input_ids == ref(text).input_ids, text
        assert ours.decode(ours(text).input_ids) == text
    chat = [*QUESTION, {"role": "assistant", "content": ANSWER}]
    for conv, gen in ((QUESTION, True), (chat, False)):
        assert (ours.apply_chat_template(conv, add_generation_prompt=gen, tokenize=False)
                == ref.apply_chat_template(conv, add_generation_prompt=gen, tokenize=False))
    assert ours.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
        "Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        "<|im_start|>assistant\n")
    assert (ours.bos_token, ours.eos_token, ours.pad_token) == ("<|im_start|>", "<|im_end|>",
                                                                "<|im_end|>")
    assert ours.model_max_length == 8192
    generation = json.loads((smol_dir / "generation_config.json").read_text())
    assert generation == {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}


# --------------------------------------------------------------- tiny generated GGUF files

TINY = dict(vocab_size=40, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
            rms_norm_eps=1e-6, rope_theta=5e4, bos_token_id=1, eos_token_id=2)
_GGUF_NAMES = {
    "model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output",
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def llama_cpp_permute(w: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py, LlamaModel.permute (HF rotate-half → GGML pairs)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def gguf_name(hf_name: str) -> str:
    base = hf_name.removesuffix(".weight")
    if base.startswith("model.layers."):
        _, _, i, rest = base.split(".", 3)
        return f"blk.{i}.{_GGUF_NAMES[rest]}.weight"
    return f"{_GGUF_NAMES[base]}.weight"


def write_gguf(path: Path, tensors: dict, *, arch: str = "llama", config: dict = TINY) -> Path:
    """A GGUF file with `arch` metadata from `config`; `tensors`: GGUF name → (array, type)."""
    writer = gguf.GGUFWriter(str(path), arch=arch)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_rope_dimension_count(config["hidden_size"] // config["num_attention_heads"])
    writer.add_rope_freq_base(config["rope_theta"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_bos_token_id(config["bos_token_id"])
    writer.add_eos_token_id(config["eos_token_id"])
    if "sliding_window" in config:  # gemma3
        writer.add_key_length(config["head_dim"])
        writer.add_value_length(config["head_dim"])
        writer.add_sliding_window(config["sliding_window"])
        writer.add_vocab_size(config["vocab_size"])  # transformers' loader needs it here
    for name, (array, qtype) in tensors.items():  # uint8 arrays: already quantized bytes
        data = array if array.dtype == np.uint8 else gguf.quants.quantize(array, qtype)
        writer.add_tensor(name, data, raw_dtype=None if qtype in (Q.F32, Q.F16) else qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_llama():
    """A random HF Llama, untied, with GQA (4 query / 2 KV heads)."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**TINY, tie_word_embeddings=False)).eval()
    return model, {k: v.numpy().copy() for k, v in model.state_dict().items()}


def to_gguf_tensors(state: dict, types: dict) -> dict:
    """HF state → GGUF tensors as llama.cpp's converter writes them (q/k rows permuted)."""
    heads, kv_heads = TINY["num_attention_heads"], TINY["num_key_value_heads"]
    out = {}
    for hf_name, w in state.items():
        if hf_name.endswith("q_proj.weight"):
            w = llama_cpp_permute(w, heads, heads)
        elif hf_name.endswith("k_proj.weight"):
            w = llama_cpp_permute(w, heads, kv_heads)
        name = gguf_name(hf_name)
        kind = name.split(".")[-2]
        out[name] = (w, types.get(kind, Q.F32) if w.ndim == 2 else Q.F32)
    return out


def test_round_trip_through_llama_cpp_layout_is_exact(tiny_llama, tmp_path):
    """Quantized q/k rows, permuted by llama.cpp's rule, come back in HF order exactly."""
    _, state = tiny_llama
    types = {"token_embd": Q.Q8_0, "attn_q": Q.Q4_1, "attn_k": Q.Q8_0, "attn_v": Q.F16,
             "ffn_down": Q.Q4_1, "output": Q.F16}
    path = write_gguf(tmp_path / "tiny.gguf", to_gguf_tensors(state, types))
    config, loaded = gguf_to_hf_state_dict(path)
    assert read_gguf_config(path) == config
    assert set(loaded) == set(state)
    for hf_name, w in state.items():
        kind = gguf_name(hf_name).split(".")[-2]
        qtype = types.get(kind, Q.F32) if w.ndim == 2 else Q.F32
        # quantization works along rows, so it commutes with the row permutation
        want = gguf.quants.dequantize(gguf.quants.quantize(w, qtype), qtype)
        assert loaded[hf_name].dtype == np.float32
        np.testing.assert_array_equal(loaded[hf_name], want.reshape(w.shape), err_msg=hf_name)
    assert not config["tie_word_embeddings"]
    assert config["num_key_value_heads"] == 2 and config["head_dim"] == 16
    assert (config["rms_norm_eps"], config["rope_theta"]) == (1e-6, 5e4)


def test_hf_dir_from_float32_gguf_reproduces_the_model(tiny_llama, tmp_path):
    """A float32 GGUF → our directory → LlamaForCausalLM gives the original logits; a GGUF
    without `output.weight` gives a tied model; no tokenizer metadata, no tokenizer files."""
    model, state = tiny_llama
    out = gguf_to_hf_dir(write_gguf(tmp_path / "f32.gguf", to_gguf_tensors(state, {})),
                         tmp_path / "hf")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "generation_config.json",
                                                     "model.safetensors"]
    ids = torch.tensor([[1, 5, 9, 33, 2, 17, 4, 4, 30]])
    with torch.no_grad():
        want = model(ids).logits
        got = LlamaForCausalLM.from_pretrained(out).eval()(ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)

    tied = {k: v for k, v in to_gguf_tensors(state, {}).items() if k != "output.weight"}
    tied_dir = gguf_to_hf_dir(write_gguf(tmp_path / "tied.gguf", tied), tmp_path / "tied")
    assert json.loads((tied_dir / "config.json").read_text())["tie_word_embeddings"] is True
    with open(tied_dir / "model.safetensors", "rb") as f:  # u64 size + JSON header
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    assert "lm_head.weight" not in header
    assert header["model.embed_tokens.weight"] == {**header["model.embed_tokens.weight"],
                                                   "dtype": "F32", "shape": [40, 64]}


TINY_GEMMA3 = dict(TINY, num_hidden_layers=6, head_dim=16, sliding_window=4, rope_theta=1e6,
                   query_pre_attn_scalar=16, bos_token_id=2, eos_token_id=1)
_GEMMA3_NAMES = {"post_attention_layernorm": "post_attention_norm",
                 "pre_feedforward_layernorm": "ffn_norm",
                 "post_feedforward_layernorm": "post_ffw_norm",
                 "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm"}


def test_gemma3_round_trip_matches_transformers_gguf_loader(tmp_path):
    """A random tiny Gemma 3 (5 sliding layers, 1 global; tied) written as llama.cpp's
    converter does (norm weights stored as 1 + w, q/k rows not permuted): our state dict
    equals transformers' GGUF loader's, and our directory gives the original logits."""
    torch.manual_seed(0)
    hf_config = {k: v for k, v in TINY_GEMMA3.items() if k != "rope_theta"}
    model = Gemma3ForCausalLM(Gemma3TextConfig(**hf_config, pad_token_id=0)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # Gemma inits them to 0 (scale 1); make the offset matter
                p.normal_(0, 0.3)
    tensors = {}
    for hf_name, w in model.state_dict().items():
        if hf_name == "lm_head.weight":
            continue
        base = hf_name.removesuffix(".weight")
        rest = base.split(".", 3)[-1]
        if rest in _GEMMA3_NAMES:
            name = f"blk.{base.split('.')[2]}.{_GEMMA3_NAMES[rest]}.weight"
        else:
            name = gguf_name(hf_name)
        w = w.numpy()
        tensors[name] = (w + 1 if "norm" in name else w, Q.F32)
    path = write_gguf(tmp_path / "gemma3.gguf", tensors, arch="gemma3", config=TINY_GEMMA3)
    config, state = gguf_to_hf_state_dict(path)
    assert config["model_type"] == "gemma3_text" and config["tie_word_embeddings"]
    assert config["layer_types"] == model.config.layer_types
    assert config["layer_types"].count("full_attention") == 1
    ref = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="gemma3.gguf").state_dict()
    assert set(state) | {"lm_head.weight"} == set(ref)
    for name, w in state.items():
        assert torch.equal(torch.from_numpy(w), ref[name]), name

    out = gguf_to_hf_dir(path, tmp_path / "hf")
    ids = torch.tensor([[1, 5, 9, 33, 2, 17, 4, 4, 30]])  # longer than the window
    with torch.no_grad():
        got = Gemma3ForCausalLM.from_pretrained(out).eval()(ids).logits
        want = model(ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------- errors


def _tiny_tensors(state: dict) -> dict:
    return to_gguf_tensors(state, {})


def raises_at(path: Path, message: str):
    """UserInputError whose one-line message is `<path>: <message regex>`."""
    return pytest.raises(UserInputError, match=rf"^{re.escape(str(path))}: {message}")


def test_unsupported_architecture(tiny_llama, tmp_path):
    path = write_gguf(tmp_path / "g.gguf", _tiny_tensors(tiny_llama[1]), arch="gpt2")
    with raises_at(path, r"GGUF architecture 'gpt2' is not supported "
                   r"\(supported: gemma3, llama\)$"):
        gguf_to_hf_dir(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unsupported_tensor_type_names_file_and_tensor(tiny_llama, tmp_path):
    tensors = _tiny_tensors(tiny_llama[1])
    # Q8_K (llama.cpp's intermediate type) has no dequantizer in gguf-py: 32 rows of 256
    tensors["blk.1.attn_v.weight"] = (np.zeros((32, gguf.GGML_QUANT_SIZES[Q.Q8_K][1]),
                                               np.uint8), Q.Q8_K)
    path = write_gguf(tmp_path / "q8k.gguf", tensors)
    with raises_at(path, r"tensor 'blk\.1\.attn_v\.weight': GGUF type Q8_K cannot be "
                   r"dequantized by gguf-py$"):
        gguf_to_hf_state_dict(path)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda t: {**t, "rope_freqs.weight": (np.ones(8, np.float32), Q.F32)},
     r"tensor 'rope_freqs\.weight' has no counterpart in a Hugging Face Llama model$"),
    (lambda t: {k: v for k, v in t.items() if k != "blk.1.ffn_up.weight"},
     r"missing tensor 'blk\.1\.ffn_up\.weight'$"),
    (lambda t: {**t, "blk.2.attn_norm.weight": (np.ones(64, np.float32), Q.F32)},
     r"tensor 'blk\.2\.attn_norm\.weight' does not fit the metadata \(block_count=2,"),
    (lambda t: {**t, "blk.0.attn_k.weight": (np.ones((64, 64), np.float32), Q.F32)},
     r"tensor 'blk\.0\.attn_k\.weight' has shape \(64, 64\), the metadata implies \(32, 64\)$"),
])
def test_malformed_llama_files(tiny_llama, tmp_path, edit, message):
    path = write_gguf(tmp_path / "m.gguf", edit(_tiny_tensors(tiny_llama[1])))
    with raises_at(path, message):
        gguf_to_hf_state_dict(path)


def test_not_a_gguf_file(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 not a gguf file")
    with raises_at(bad, "not a readable GGUF file: "):
        gguf_to_hf_dir(bad, tmp_path / "out")
    with raises_at(tmp_path / "nope.gguf", "GGUF file does not exist$"):
        read_gguf_config(tmp_path / "nope.gguf")
