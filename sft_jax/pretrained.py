"""Load a pretrained model (module, params, tokenizer) from a local HF directory or an asset.

    from sft_jax import load_pretrained
    pre = load_pretrained("minilm-l6", num_labels=2)
    out = pre.module.apply({"params": pre.params}, ids, mask)  # out["logits"]: B C

    lm = load_pretrained("path/to/llama_dir")  # a decoder directory: the causal LM
    out = lm.module.apply({"params": lm.params}, ids, segment_ids=mask)  # logits: B T V

For the training engine, which initialises (sharded) params itself: `pretrained_params`
gives the checkpoint's params as numpy, and `merge_params` writes them over the
freshly initialised tree, keeping fresh values for whatever the checkpoint lacks (a new
classifier head, a pooler absent from the checkpoint).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from sft_jax import storage
from sft_jax.errors import UserInputError
from sft_jax.hf.checkpoint_dir import (
    CONFIG_FILE,
    load_state_dict,
    model_dir_path,
    read_config,
    refuse_remote_code,
    weight_files,
)
from sft_jax.hf.export import HEAD_CONFIG_FILE, HEAD_WEIGHTS_FILE
from sft_jax.models import registry

log = logging.getLogger(__name__)

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json")


class Pretrained(NamedTuple):
    """What `load_pretrained` returns."""

    module: nn.Module  # BertModel / LlamaModel / Gpt2Model, or SequenceClassifier
    params: dict[str, Any]  # unboxed jax arrays in config.param_dtype
    config: Any  # e.g. BertConfig, LlamaConfig
    tokenizer: Any  # transformers tokenizer, or None if the directory has none
    hf_config: dict[str, Any]  # the directory's config.json


def resolve_model_dir(path_or_asset: str | Path) -> Path:
    """A local directory as is, a remote one (`gs://...`) as its local copy
    (`storage.local_copy`); otherwise an asset name fetched by `sft_jax.assets`.
    Any is refused if it names its own Python code (`refuse_remote_code`)."""
    path = Path(path_or_asset).expanduser()
    if not storage.is_local(path_or_asset) or path.exists():
        root = model_dir_path(path_or_asset)
    else:
        from sft_jax import assets

        name = str(path_or_asset)
        if not assets.is_asset(name):
            raise UserInputError(
                f"{path_or_asset}: neither a model directory nor a known asset name")
        root = Path(assets.fetch(name))
    refuse_remote_code(root)
    return root


def has_tokenizer(model_dir: str | Path) -> bool:
    """Whether `model_dir` holds any tokenizer file."""
    return any((Path(model_dir) / name).is_file() for name in _TOKENIZER_FILES)


def check_model_files(model_dir: str | Path, *, tokenizer: bool = True) -> None:
    """Raise one `UserInputError` naming what `model_dir` lacks: its weights (see
    `weight_files`) and, with `tokenizer`, its tokenizer files (both, when both are gone)."""
    root = Path(model_dir)
    no_tokenizer = tokenizer and not has_tokenizer(root)
    missing = f"no tokenizer files ({', '.join(_TOKENIZER_FILES)})"
    try:
        weight_files(root)
    except UserInputError as err:
        if no_tokenizer:
            raise UserInputError(f"{err}; and {missing}") from None
        raise
    if no_tokenizer:
        raise UserInputError(f"{root}: {missing} in model directory")


def load_tokenizer(model_dir: str | Path) -> Any:
    """`AutoTokenizer.from_pretrained(model_dir)` (local files only, never the directory's
    own code: see `refuse_remote_code`); None if no tokenizer files are there."""
    root = Path(model_dir)
    if not has_tokenizer(root):
        log.warning("%s: no tokenizer files; tokenizer is None", root)
        return None
    refuse_remote_code(root)
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(root), local_files_only=True,
                                             trust_remote_code=False)
    except (OSError, ValueError) as err:
        message = " ".join(str(err).split())
        raise UserInputError(f"{root}: cannot load the tokenizer: {message}") from err


def _head_from_sidecar(root: Path, num_labels: int, pooling: str, dtype: Any) -> dict | None:
    """The head an sft_jax export wrote beside a 'cls'/'mean' encoder, if it fits."""
    spec_path, weights = root / HEAD_CONFIG_FILE, root / HEAD_WEIGHTS_FILE
    if not (spec_path.is_file() and weights.is_file()):
        return None
    spec = json.loads(spec_path.read_text())
    if spec.get("pooling") != pooling or spec.get("num_labels") != num_labels:
        log.warning(
            "%s: head for pooling %r / %s labels not used",
            spec_path,
            spec.get("pooling"),
            spec.get("num_labels"),
        )
        return None
    from safetensors.numpy import load_file

    return {k: v.astype(dtype) for k, v in load_file(str(weights)).items()}


def pretrained_params(
    model_dir: str | Path,
    module_config: Any,
    *,
    with_head: bool,
    num_labels: int | None = None,
    pooling: str | None = None,
    hf_config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The checkpoint's params as a numpy tree (in `module_config.param_dtype`).

    `with_head=False`: the bare module's tree (`BertModel`; for a decoder, the causal LM
    `LlamaModel` / `Gpt2Model`; for an encoder-decoder, e.g. `T5Model`, the only choice).
    `with_head=True`: the `SequenceClassifier` tree
    `{'encoder': ...}`, plus `'classifier'` when the directory holds a head that fits
    `num_labels` and `pooling` (a `...ForSequenceClassification` checkpoint for the
    family's HF pooling — 'pooler' for BERT, 'last' for decoders, the default when
    `pooling` is None — or an sft_jax export's sidecar head for any other pooling).
    Leaves absent here (new head, missing pooler, missing untied LM head) are to be kept
    from a fresh init: see `merge_params`.
    """
    root = model_dir_path(model_dir)
    hf_config = read_config(root) if hf_config is None else hf_config
    family = registry.get_family(hf_config, where=str(root / CONFIG_FILE))
    converter = registry.converter_for(hf_config, where=str(root / CONFIG_FILE))
    state = load_state_dict(root)
    if family.kind == "encoder-decoder":
        if with_head:
            raise UserInputError(
                f"{root}: a classification head needs an encoder or decoder model, "
                f"not encoder-decoder {hf_config['model_type']!r}"
            )
        return converter.params_from_hf(state, module_config, where=str(root))
    params = converter.params_from_hf(state, module_config, with_head=with_head, where=str(root))
    if not with_head:
        return params
    head = params.pop("classifier", None)
    pooling = family.hf_pooling if pooling is None else pooling
    if pooling != family.hf_pooling:
        dtype = np.dtype(module_config.param_dtype)
        head = _head_from_sidecar(root, num_labels, pooling, dtype) if num_labels else None
    if head is not None and head["kernel"].shape[-1] != num_labels:
        log.warning(
            "%s: checkpoint head has %d labels, not %s; initialising a new head",
            root,
            head["kernel"].shape[-1],
            num_labels,
        )
        head = None
    if head is not None:
        params["classifier"] = head
    return params


def merge_params(
    init_params: Mapping[str, Any], loaded: Mapping[str, Any], *, where: str = "checkpoint"
) -> tuple[dict[str, Any], list[str]]:
    """Overwrite freshly initialised params with loaded ones.

    `init_params` may hold arrays (placed/sharded: loaded values are `device_put` with the
    same sharding), `jax.ShapeDtypeStruct`s, or `nn.Partitioned` boxes of either (boxes
    are kept). Every loaded leaf must exist in `init_params` with the same shape. Returns
    (merged params, '/'-joined paths of leaves that kept their fresh value).
    """
    fresh = traverse_util.flatten_dict(dict(init_params))
    new = traverse_util.flatten_dict(dict(loaded))
    extra = sorted("/".join(k) for k in new if k not in fresh)
    if extra:
        raise ValueError(f"{where}: loaded params not in the model: {', '.join(extra[:3])}")
    merged = {}
    for key, target in fresh.items():
        if key not in new:
            merged[key] = target
            continue
        boxed = isinstance(target, nn.meta.AxisMetadata)
        ref = target.unbox(apply_constraint=False) if boxed else target
        value = np.asarray(new[key])
        if tuple(value.shape) != tuple(ref.shape):
            raise ValueError(
                f"{where}: {'/'.join(key)} has shape {value.shape}, model wants {ref.shape}"
            )
        value = value.astype(ref.dtype)
        if isinstance(ref, jax.Array):
            value = jax.device_put(value, ref.sharding)
        merged[key] = target.replace_boxed(value) if boxed else value
    kept = ["/".join(k) for k in fresh if k not in new]
    return traverse_util.unflatten_dict(merged), kept


def _init_inputs(module: nn.Module, config: Any) -> tuple[jax.Array, ...]:
    """Example inputs for `module.init`: (ids, mask), (ids,) for a bare decoder, or
    (source ids, target ids) for an encoder-decoder."""
    max_positions = getattr(config, "max_position_embeddings", 8)
    length = min(8, max_positions - getattr(config, "position_offset", 0))
    ids = jnp.zeros((1, length), jnp.int32)
    if registry.family_of(config).kind == "encoder-decoder":
        return ids, ids
    return (ids,) if getattr(module, "is_decoder", False) else (ids, jnp.ones_like(ids))


def load_pretrained(
    path_or_asset: str | Path,
    *,
    num_labels: int | None = None,
    pooling: str | None = None,
    classifier_dropout: float | None = None,
    dtype: Any = "float32",
    seed: int = 0,
) -> Pretrained:
    """Module, params and tokenizer from a local HF directory or an asset name.

    Without `num_labels`: the bare encoder, or for a decoder directory (Llama, Mistral,
    Qwen2, GPT-2) the causal LM. With it: a `SequenceClassifier` whose encoder comes from
    the checkpoint and whose head is initialised from `seed` (or loaded, when the
    checkpoint holds a fitting head, see `pretrained_params`). `pooling=None` is the
    family's Hugging Face pooling ('pooler' for BERT, 'last' for decoders). `dtype` is the
    compute dtype; params stay float32.
    """
    root = resolve_model_dir(path_or_asset)
    hf_config = read_config(root)
    if pooling is None:
        pooling = registry.get_family(hf_config, where=str(root / CONFIG_FILE)).hf_pooling
    module, config = registry.build_model(
        hf_config,
        num_labels=num_labels,
        pooling=pooling,
        classifier_dropout=classifier_dropout,
        dtype=dtype,
        where=str(root / CONFIG_FILE),
    )
    loaded = pretrained_params(
        root,
        config,
        with_head=num_labels is not None,
        num_labels=num_labels,
        pooling=pooling,
        hf_config=hf_config,
    )
    inputs = _init_inputs(module, config)
    abstract = nn.meta.unbox(jax.eval_shape(module.init, jax.random.key(seed), *inputs))
    params, kept = merge_params(abstract["params"], loaded, where=str(root))
    if kept:
        # Only the missing leaves are returned, so XLA drops the rest of the init.
        def init_missing(rng: jax.Array) -> dict[tuple[str, ...], jax.Array]:
            full = traverse_util.flatten_dict(nn.meta.unbox(module.init(rng, *inputs))["params"])
            return {k: full[k] for k in full if "/".join(k) in kept}

        fresh = jax.jit(init_missing)(jax.random.key(seed))
        flat = traverse_util.flatten_dict(params)
        flat.update(fresh)
        params = traverse_util.unflatten_dict(flat)
        _log_fresh(root, kept, pooling)
    params = jax.tree_util.tree_map(jnp.asarray, params)
    return Pretrained(module, params, config, load_tokenizer(root), hf_config)


def _log_fresh(root: Path, kept: list[str], pooling: str) -> None:
    pooler = [k for k in kept if "pooler" in k.split("/")]
    others = [k for k in kept if k not in pooler]
    if others:
        log.info("%s: newly initialised: %s", root, ", ".join(others))
    if pooler:
        level = logging.WARNING if pooling == "pooler" else logging.INFO
        log.log(level, "%s: checkpoint has no pooler; newly initialised", root)
