"""Reading a local Hugging Face model directory: config.json and safetensors weights.

Only safetensors are read. Pickle checkpoints (`pytorch_model.bin`, `*.pt`) can run
arbitrary code when loaded, so they are refused with a hint on how to convert them.
Likewise a directory that names its own Python code (`auto_map`, `custom_pipelines`, a
tokenizer class transformers lacks) is refused by `refuse_remote_code` before transformers
reads it: no code from a model directory is ever run, and nothing is asked on stdin.
Nothing here touches the network. Written files get the ordinary mode (0666 less umask).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import safetensors
from safetensors import SafetensorError

from sft_jax import storage
from sft_jax.errors import UserInputError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
# Fields naming Python files of the directory (or the hub) for transformers to import.
REMOTE_CODE_FIELDS = ("auto_map", "custom_pipelines")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")

# safetensors dtype codes numpy lacks natively (the numpy loader raises on them).
_RAW_DTYPES = {
    "BF16": ml_dtypes.bfloat16,
    "F8_E4M3": ml_dtypes.float8_e4m3fn,
    "F8_E5M2": ml_dtypes.float8_e5m2,
}


def model_dir_path(model_dir: str | Path) -> Path:
    """`model_dir` as a local Path, checked to be an existing directory; a remote one
    (`gs://...`) is checked there, then read from its local copy (`storage.local_copy`)."""
    path = storage.path(model_dir).expanduser()
    if not path.exists():
        raise UserInputError(f"{path}: model directory does not exist")
    if not path.is_dir():
        raise UserInputError(f"{path}: not a directory (expected a Hugging Face model directory)")
    return storage.local_copy(path)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserInputError(f"{path}:{err.lineno}: invalid JSON: {err.msg}") from err


def read_config(model_dir: str | Path) -> dict[str, Any]:
    """The model's `config.json` as a dict."""
    path = model_dir_path(model_dir) / CONFIG_FILE
    if not path.is_file():
        raise UserInputError(f"{path}: missing (not a Hugging Face model directory?)")
    config = _read_json(path)
    if not isinstance(config, dict):
        raise UserInputError(f"{path}: expected a JSON object")
    return config


def refuse_remote_code(model_dir: str | Path) -> None:
    """Raise `UserInputError` naming the file and field if `config.json` or
    `tokenizer_config.json` asks for code from the directory: `auto_map`,
    `custom_pipelines`, or, in a directory holding Python files, a `tokenizer_class` that
    transformers does not define. (Without Python files such a name is one transformers
    dropped, e.g. `MT5Tokenizer`, and it loads its generic fast tokenizer for it.)"""
    root = Path(model_dir)
    code = sorted(p.name for p in root.glob("*.py"))
    for name in (CONFIG_FILE, TOKENIZER_CONFIG_FILE):
        path = root / name
        data = _read_json(path) if path.is_file() else None
        if not isinstance(data, dict):
            continue
        for field in REMOTE_CODE_FIELDS:
            if data.get(field):
                raise UserInputError(
                    f"{path}: field {field!r} names the directory's own Python code, which is "
                    "never run; remove the field to load the model with transformers' classes"
                )
        tokenizer_class = data.get("tokenizer_class")
        if code and tokenizer_class is not None and not _known_tokenizer_class(tokenizer_class):
            raise UserInputError(
                f"{path}: field 'tokenizer_class' names {tokenizer_class!r}, which transformers "
                f"does not define; the directory's own code ({code[0]}) is never run"
            )


def _known_tokenizer_class(name: Any) -> bool:
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    return isinstance(name, str) and tokenizer_class_from_name(name) is not None


def weight_files(model_dir: str | Path) -> list[Path]:
    """The safetensors files holding the weights (one file, or the shards of an index)."""
    root = model_dir_path(model_dir)
    single, index = root / WEIGHTS_FILE, root / INDEX_FILE
    if single.is_file():
        return [single]
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise UserInputError(f"{index}: no 'weight_map' object")
        shards = [root / name for name in sorted(set(weight_map.values()))]
        for shard in shards:
            if not shard.is_file():
                raise UserInputError(f"{shard}: missing (listed in {INDEX_FILE})")
        return shards
    pickles = sorted(p for p in root.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    if pickles:
        raise UserInputError(
            f"{pickles[0]}: pickle checkpoints are not loaded (safetensors only); convert it "
            "with transformers where you trust the file: "
            f"AutoModel.from_pretrained('{root}').save_pretrained('{root}', "
            "safe_serialization=True)"
        )
    raise UserInputError(f"{root}: no {WEIGHTS_FILE} (or index) in model directory")


def _read_raw(path: Path, names: list[str]) -> dict[str, np.ndarray]:
    """Read tensors of dtypes numpy lacks (bfloat16, fp8) straight from the file layout:
    u64 header size, JSON header {name: {dtype, shape, data_offsets}}, then the data."""
    with path.open("rb") as f:
        (header_size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_size))
        start = 8 + header_size
        out = {}
        for name in names:
            info = header[name]
            begin, end = info["data_offsets"]
            dtype = np.dtype(_RAW_DTYPES[info["dtype"]])
            f.seek(start + begin)
            data = np.frombuffer(f.read(end - begin), dtype=dtype)
            out[name] = data.reshape(info["shape"]).copy()
    return out


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    try:
        with safetensors.safe_open(str(path), framework="np") as f:
            tensors, raw = {}, []
            for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                if f.get_slice(name).get_dtype() in _RAW_DTYPES:
                    raw.append(name)
                else:
                    tensors[name] = f.get_tensor(name)
    except (SafetensorError, OSError) as err:
        raise UserInputError(f"{path}: cannot read safetensors file: {err}") from err
    if raw:
        tensors.update(_read_raw(path, raw))
    return tensors


def load_state_dict(model_dir: str | Path) -> dict[str, np.ndarray]:
    """All tensors of the checkpoint, by Hugging Face name, as numpy arrays.

    bfloat16 / fp8 tensors come back as `ml_dtypes` arrays (cast them with `.astype`).
    """
    state: dict[str, np.ndarray] = {}
    for path in weight_files(model_dir):
        state.update(_read_safetensors(path))
    return state


def save_state_dict(
    state: dict[str, np.ndarray], path: str | Path, metadata: dict[str, str] | None = None
) -> None:
    """Write `state` as one safetensors file (arrays made contiguous first), mode 0666
    less the umask like any other written file."""
    from safetensors.numpy import save_file

    arrays = {k: np.ascontiguousarray(v) for k, v in state.items()}
    save_file(arrays, str(path), metadata={"format": "pt", **(metadata or {})})
    # safetensors writes a private temporary file (0600) and renames it into place.
    Path(path).chmod(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
