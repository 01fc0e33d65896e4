"""GGUF import: a llama.cpp GGUF file → a Hugging Face model directory (Llama, Gemma 3).

    from sft_jax.hf.gguf import gguf_to_hf_dir
    gguf_to_hf_dir("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2/")
    # smollm2/: config.json, model.safetensors (float32, HF tensor names), tokenizer.json,
    #           tokenizer_config.json, chat_template.jinja, generation_config.json

The result is an ordinary HF directory: `LlamaForCausalLM` / `Gemma3ForCausalLM`
`.from_pretrained(dir)` and our own converters read it like any other. Each supported GGUF
architecture is one `_ARCHS` entry (its layer tensors, config fields, storage conventions);
no other place here names an architecture. What the conversion does:
- Metadata → config.json, with the keys transformers' own GGUF loader uses
  (`transformers.integrations.ggml.GGUF_CONFIG_MAPPING[arch]`): block_count →
  num_hidden_layers, embedding_length → hidden_size, feed_forward_length →
  intermediate_size, attention.head_count(_kv) → num_attention_heads / num_key_value_heads,
  rope.freq_base → rope_theta, attention.layer_norm_rms_epsilon → rms_norm_eps,
  context_length → max_position_embeddings; bos/eos/pad token ids from `tokenizer.ggml.*`.
  GGUF stores floats as float32; they are written as the shortest decimal that rounds to
  that float32 (9.999999747e-06 → 1e-05, the value of the original HF config).
  Gemma 3 (`gemma3` → `gemma3_text`, Gemma3ForCausalLM) adds attention.sliding_window →
  sliding_window, rope.freq_base → rope_theta (global layers), and what llama.cpp itself
  hard-codes: every 6th layer global (`layer_types`), local rope theta 1e4
  (`rope_local_base_freq`), query_pre_attn_scalar = head_dim; gelu_pytorch_tanh, no
  softcapping. These equal the defaults transformers' loader falls back on.
  `tie_word_embeddings` is true exactly when the file has no `output.weight` (as in
  transformers); the tied model then has no `lm_head.weight`, as HF saves tied models.
- Tensors are dequantized to float32 by `gguf.quants.dequantize`, so every type gguf-py
  implements is read (F32, F16, BF16, Q4_0/1, Q5_0/1, Q8_0, the K- and IQ-quants, ...);
  others raise UserInputError naming the file and the tensor. GGUF lists shapes in ggml
  order (ne0 = input features first); the numpy array is (out, in), torch's Linear layout.
- Rotary layout: llama.cpp's `convert_hf_to_gguf.py` (`LlamaModel.permute`) reorders the
  rows of q_proj and k_proj per head from HF's rotate-half order to GGML's interleaved pairs,
  rows (head, 2, half) → (head, half, 2). It is undone here exactly as transformers'
  `modeling_gguf_pytorch_utils.LlamaTensorProcessor` does: q with the query head count,
  k with the key/value head count. Gemma 3's converter does not permute (its rotary
  layout is NeoX-style, as HF's), so nothing is undone there.
- Gemma norms: llama.cpp stores each Gemma RMSNorm weight as 1 + w (HF computes
  x · (1 + w)); 1 is subtracted from every `*norm.weight` tensor in float32, exactly as
  transformers' `Gemma2TensorProcessor` (used for gemma3 too) does.
- Tokenizer and chat template: transformers builds them from the GGUF metadata
  (`AutoTokenizer.from_pretrained(dir, gguf_file=name)`) and `save_pretrained` writes them.

Supported: `llama` (Llama 1/2-style checkpoints, SmolLM) and `gemma3` (text), with full
rotary and no rope scaling; anything else is refused with a UserInputError.
Nothing here touches the network.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sft_jax.errors import UserInputError
from sft_jax.hf.checkpoint_dir import CONFIG_FILE, WEIGHTS_FILE, save_state_dict
from sft_jax.models import registry

log = logging.getLogger(__name__)

GENERATION_CONFIG_FILE = "generation_config.json"
_GLOBAL_TENSORS = {  # GGUF name → (HF name, shape in the symbols of `_expected`)
    "token_embd.weight": ("model.embed_tokens.weight", ("v", "d")),
    "output_norm.weight": ("model.norm.weight", ("d",)),
    "output.weight": ("lm_head.weight", ("v", "d")),
}
_ATTENTION_AND_MLP = {  # per layer, `blk.{i}.<key>.weight` → `model.layers.{i}.<name>.weight`
    "attn_q": ("self_attn.q_proj", ("q", "d")),
    "attn_k": ("self_attn.k_proj", ("kv", "d")),
    "attn_v": ("self_attn.v_proj", ("kv", "d")),
    "attn_output": ("self_attn.o_proj", ("d", "q")),
    "ffn_gate": ("mlp.gate_proj", ("f", "d")),
    "ffn_up": ("mlp.up_proj", ("f", "d")),
    "ffn_down": ("mlp.down_proj", ("d", "f")),
}


@dataclass(frozen=True)
class _Arch:
    """How one GGUF architecture becomes its Hugging Face model.

    `config(get, base)` returns config.json from the fields every architecture shares
    (`base`) and `get(key, default)`, the architecture's own metadata. `permuted_qk`: the
    converter permuted q/k rows for GGML's rotary layout (undone here). `norm_plus_one`:
    RMSNorm weights are stored as 1 + w (all `*norm.weight` tensors; 1 is subtracted).
    """

    name: str  # for messages
    layer_tensors: dict[str, tuple[str, tuple[str, ...]]]
    config: Callable[[Callable[..., Any], dict[str, Any]], dict[str, Any]]
    permuted_qk: bool = False
    norm_plus_one: bool = False


def _causal_lm(model_type: str) -> dict[str, Any]:
    """The `architectures` (the family's causal LM class, from the registry) and
    `model_type` fields of config.json."""
    arch = registry.FAMILIES[model_type].architectures[model_type].causal_lm
    return {"architectures": [arch], "model_type": model_type}


def _llama_config(get: Callable[..., Any], base: dict[str, Any]) -> dict[str, Any]:
    return {**_causal_lm("llama"), **base,
            "hidden_act": "silu", "rope_theta": get("rope.freq_base", 10000.0),
            "rope_scaling": None, "mlp_bias": False}


def _gemma3_config(get: Callable[..., Any], base: dict[str, Any]) -> dict[str, Any]:
    """Gemma 3 text fields. llama.cpp hard-codes what the GGUF does not store, and so does
    this: every 6th layer global, the others sliding-window (`set_swa_pattern(6)`), local
    rope theta 1e4 unless `rope.freq_base_swa` says otherwise, query scale 1/sqrt(head_dim)
    (1/sqrt(hidden/heads) for the 62-layer 27B)."""
    layers, head_dim = base["num_hidden_layers"], base["head_dim"]
    scalar = base["hidden_size"] // base["num_attention_heads"] if layers == 62 else head_dim
    return {**_causal_lm("gemma3_text"), **base,
            "hidden_activation": "gelu_pytorch_tanh",
            "rope_theta": get("rope.freq_base", 1000000.0),
            "rope_local_base_freq": get("rope.freq_base_swa", 10000.0), "rope_scaling": None,
            "sliding_window": get("attention.sliding_window"),
            "layer_types": ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention"
                            for i in range(layers)],
            "query_pre_attn_scalar": scalar,
            "final_logit_softcapping": get("final_logit_softcapping", None),
            "attn_logit_softcapping": get("attn_logit_softcapping", None),
            "use_bidirectional_attention": False}


_ARCHS = {
    "llama": _Arch("Llama", {"attn_norm": ("input_layernorm", ("d",)),
                             "ffn_norm": ("post_attention_layernorm", ("d",)),
                             **_ATTENTION_AND_MLP}, _llama_config, permuted_qk=True),
    "gemma3": _Arch("Gemma 3", {"attn_norm": ("input_layernorm", ("d",)),
                                "post_attention_norm": ("post_attention_layernorm", ("d",)),
                                "ffn_norm": ("pre_feedforward_layernorm", ("d",)),
                                "post_ffw_norm": ("post_feedforward_layernorm", ("d",)),
                                "attn_q_norm": ("self_attn.q_norm", ("h",)),
                                "attn_k_norm": ("self_attn.k_norm", ("h",)),
                                **_ATTENTION_AND_MLP}, _gemma3_config, norm_plus_one=True),
}
SUPPORTED_ARCHITECTURES = tuple(sorted(_ARCHS))
_LAYER_NAME = re.compile(r"blk\.(\d+)\.(\w+)\.weight")
_MISSING = object()


def _open(path: str | Path) -> tuple[Path, Any]:
    """`(path, gguf.GGUFReader)`, or UserInputError when it is not a readable GGUF file."""
    import gguf

    path = Path(path).expanduser()
    if not path.is_file():
        raise UserInputError(f"{path}: GGUF file does not exist")
    try:
        return path, gguf.GGUFReader(path)
    except (ValueError, KeyError, OSError, IndexError) as err:
        raise UserInputError(f"{path}: not a readable GGUF file: {err}") from err


def _value(reader: Any, key: str, where: Path, default: Any = _MISSING) -> Any:
    """One scalar or string metadata value."""
    from gguf import GGUFValueType

    field = reader.fields.get(key)
    if field is None:
        if default is _MISSING:
            raise UserInputError(f"{where}: GGUF metadata has no {key!r}")
        return default
    kind = field.types[0]
    if kind == GGUFValueType.ARRAY:
        raise UserInputError(f"{where}: GGUF metadata {key!r} is an array (per-layer "
                             "values are not supported), expected one value")
    part = field.parts[field.data[0]]
    if kind == GGUFValueType.STRING:
        return bytes(part).decode("utf-8")
    value = part[0].item()
    if kind in (GGUFValueType.FLOAT32, GGUFValueType.FLOAT64):
        return float(str(np.float32(value)))  # shortest decimal of the stored float32
    return value


def _ggml_shape(reader: Any, name: str) -> tuple[int, ...] | None:
    """The tensor's numpy shape (reversed ggml order), or None when absent."""
    for t in reader.tensors:
        if t.name == name:
            return tuple(int(n) for n in reversed(t.shape.tolist()))
    return None


def _hf_config(reader: Any, where: Path) -> tuple[_Arch, dict[str, Any]]:
    """The file's architecture entry and its config.json dict."""
    arch_name = _value(reader, "general.architecture", where)
    if arch_name not in _ARCHS:
        raise UserInputError(f"{where}: GGUF architecture {arch_name!r} is not supported "
                             f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
    get = lambda key, default=_MISSING: _value(reader, f"{arch_name}.{key}", where, default)
    hidden, heads = get("embedding_length"), get("attention.head_count")
    kv_heads = get("attention.head_count_kv", heads)
    head_dim = get("attention.key_length", hidden // heads)
    if get("attention.value_length", head_dim) != head_dim:
        raise UserInputError(f"{where}: {arch_name}.attention.value_length differs from "
                             "key_length (not supported)")
    rotary = get("rope.dimension_count", head_dim)
    if rotary != head_dim:
        raise UserInputError(f"{where}: {arch_name}.rope.dimension_count={rotary} but head "
                             f"size is {head_dim}: partial rotary embeddings are not supported")
    scaling = get("rope.scaling.type", "none")
    if scaling != "none":
        raise UserInputError(f"{where}: {arch_name}.rope.scaling.type={scaling!r}: rope "
                             "scaling is not supported")
    embed = _ggml_shape(reader, "token_embd.weight")
    if embed is None:
        raise UserInputError(f"{where}: missing tensor 'token_embd.weight'")
    vocab = get("vocab_size", embed[0])
    if vocab != embed[0]:
        raise UserInputError(f"{where}: {arch_name}.vocab_size={vocab} but tensor "
                             f"'token_embd.weight' has {embed[0]} rows")
    base: dict[str, Any] = {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": get("feed_forward_length"),
        "num_hidden_layers": get("block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "max_position_embeddings": get("context_length"),
        "rms_norm_eps": get("attention.layer_norm_rms_epsilon"),
        "attention_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": _ggml_shape(reader, "output.weight") is None,
        "initializer_range": 0.02,
        "use_cache": True,
        "torch_dtype": "float32",
    }
    for ours, theirs in (("bos", "bos"), ("eos", "eos"), ("pad", "padding"), ("unk", "unknown")):
        token_id = _value(reader, f"tokenizer.ggml.{theirs}_token_id", where, None)
        if token_id is not None:
            base[f"{ours}_token_id"] = token_id
    return _ARCHS[arch_name], _ARCHS[arch_name].config(get, base)


def _expected(arch: _Arch, config: dict[str, Any]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """GGUF tensor name → (HF name, numpy shape that the config implies)."""
    size = {"d": config["hidden_size"], "f": config["intermediate_size"],
            "v": config["vocab_size"], "h": config["head_dim"],
            "q": config["num_attention_heads"] * config["head_dim"],
            "kv": config["num_key_value_heads"] * config["head_dim"]}
    shape = lambda symbols: tuple(size[s] for s in symbols)
    out = {name: (hf, shape(dims)) for name, (hf, dims) in _GLOBAL_TENSORS.items()
           if name != "output.weight" or not config["tie_word_embeddings"]}
    for i in range(config["num_hidden_layers"]):
        for key, (hf, dims) in arch.layer_tensors.items():
            out[f"blk.{i}.{key}.weight"] = (f"model.layers.{i}.{hf}.weight", shape(dims))
    return out


def _known(arch: _Arch, name: str) -> bool:
    """Whether `name` is a tensor of the architecture at all (in range or not)."""
    match = _LAYER_NAME.fullmatch(name)
    return name in _GLOBAL_TENSORS or bool(match and match.group(2) in arch.layer_tensors)


def reverse_rotary_permute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation: rows (head, half, 2) → (head, 2, half).

    Same as transformers' `LlamaTensorProcessor._reverse_permute_weights`; `n_head` is the
    query head count for q_proj and the key/value head count for k_proj.
    """
    half = weight.shape[0] // n_head // 2
    w = weight.reshape(n_head, half, 2, *weight.shape[1:])
    return w.swapaxes(2, 1).reshape(weight.shape)


def _dequantize(tensor: Any, where: Path) -> np.ndarray:
    from gguf.quants import dequantize

    try:
        w = dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError as err:
        raise UserInputError(f"{where}: tensor {tensor.name!r}: GGUF type "
                             f"{tensor.tensor_type.name} cannot be dequantized by gguf-py") from err
    shape = tuple(int(n) for n in reversed(tensor.shape.tolist()))
    return np.array(w, dtype=np.float32).reshape(shape)  # a copy: no view into the file


def read_gguf_config(gguf_path: str | Path) -> dict[str, Any]:
    """The HF `config.json` dict for a GGUF file (metadata only; no tensor is read)."""
    path, reader = _open(gguf_path)
    return _hf_config(reader, path)[1]


def gguf_to_hf_state_dict(
    gguf_path: str | Path,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """`(config.json dict, HF-named float32 state dict)` from a GGUF file."""
    path, reader = _open(gguf_path)
    return _convert(reader, path)


def _convert(reader: Any, path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    arch, config = _hf_config(reader, path)
    expected = _expected(arch, config)
    heads = {"attn_q": config["num_attention_heads"], "attn_k": config["num_key_value_heads"]}
    state: dict[str, np.ndarray] = {}
    for tensor in reader.tensors:
        name = tensor.name
        if name not in expected:
            if not _known(arch, name):
                raise UserInputError(f"{path}: tensor {name!r} has no counterpart in a "
                                     f"Hugging Face {arch.name} model")
            raise UserInputError(f"{path}: tensor {name!r} does not fit the metadata "
                                 f"(block_count={config['num_hidden_layers']}, "
                                 f"tie_word_embeddings={config['tie_word_embeddings']})")
        hf_name, shape = expected[name]
        weight = _dequantize(tensor, path)
        if weight.shape != shape:
            raise UserInputError(f"{path}: tensor {name!r} has shape {weight.shape}, the "
                                 f"metadata implies {shape}")
        kind = name.split(".")[-2]
        if arch.permuted_qk and kind in heads:
            weight = reverse_rotary_permute(weight, heads[kind])
        if arch.norm_plus_one and name.endswith("norm.weight"):
            weight -= 1.0  # float32, as transformers' Gemma2TensorProcessor (weights - 1)
        state[hf_name] = weight
    missing = [name for name, (hf_name, _) in expected.items() if hf_name not in state]
    if missing:
        raise UserInputError(f"{path}: missing tensor {missing[0]!r}"
                             + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return config, state


def _save_tokenizer(path: Path, out: Path, max_length: int) -> None:
    """transformers' tokenizer from the GGUF metadata, saved into `out`.

    transformers also reads tokenizer files lying next to the GGUF file, so it is given a
    directory holding nothing but (a link to) the GGUF file.
    """
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="sft_jax-gguf-") as alone:
        link = Path(alone) / path.name
        try:
            link.symlink_to(path.resolve())
        except OSError:  # no symlinks here (some Windows set-ups): copy instead
            shutil.copyfile(path, link)
        try:
            tokenizer = AutoTokenizer.from_pretrained(
                alone, gguf_file=path.name, local_files_only=True, trust_remote_code=False,
                model_max_length=max_length)
        except (OSError, ValueError, KeyError, NotImplementedError) as err:
            raise UserInputError(f"{path}: cannot build the tokenizer from the GGUF metadata: "
                                 f"{err}") from err
    tokenizer.save_pretrained(str(out))


def gguf_to_hf_dir(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Write a Hugging Face model directory for a GGUF file into `out_dir`; returns it.

    Files: config.json, model.safetensors (float32), the tokenizer files with the chat
    template (when the GGUF has one), generation_config.json (bos/eos/pad token ids).
    Existing files of those names are overwritten; others in `out_dir` are left alone.
    A GGUF without tokenizer metadata gives a directory without tokenizer (logged).
    """
    path, reader = _open(gguf_path)
    config, state = _convert(reader, path)
    has_tokenizer = "tokenizer.ggml.model" in reader.fields
    del reader
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    save_state_dict(state, out / WEIGHTS_FILE)
    del state
    # safetensors creates the file 0600; give it the mode of the files written normally.
    (out / WEIGHTS_FILE).chmod((out / CONFIG_FILE).stat().st_mode & 0o777)
    generation = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")
                  if k in config}
    if "eos_token_id" in generation:
        (out / GENERATION_CONFIG_FILE).write_text(json.dumps(generation, indent=2) + "\n")
    if has_tokenizer:
        _save_tokenizer(path, out, config["max_position_embeddings"])
    else:
        log.warning("%s: no tokenizer in the GGUF metadata; %s has none", path, out)
    return out
