"""A LoRA run's adapter in the Hugging Face PEFT layout:

    adapter_config.json        LoraConfig fields (r, lora_alpha, target_modules, ...)
    adapter_model.safetensors  base_model.model.<module>.lora_A.weight  [r, in_features]
                               base_model.model.<module>.lora_B.weight  [out_features, r]
                               base_model.model.<head module>.<weight|bias>  (modules_to_save)

so that `peft.PeftModel.from_pretrained(base, dir)` (base: the Hugging Face model the
run started from, e.g. `BertForSequenceClassification.from_pretrained(model_dir,
num_labels=C)`) computes what the run's merged export computes. `target_modules` lists
full module names, so PEFT adapts exactly the kernels the run adapted.

Where each of our kernels lives in the Hugging Face model comes from the family's
converter tables (`Family.converter.adapter_tables`, the same tables the weight export
writes with). Our kernel seen as a
matrix [in_features, out_features] is the transpose of an `nn.Linear` weight (or, for
GPT-2's `Conv1D`, the weight itself: `fan_in_fan_out`); `write_adapter` checks which, on
a probe, for every target. A module of which anything trains in full is saved whole
(`modules_to_save`; its frozen tensors hold their base values, so the function is the
same), for sequence classification widened to the head PEFT saves itself (`classifier`,
`score`). What PEFT cannot express gives a reason instead of a layout (`adapter_layout`
returns a string): a kernel that is part of a fused tensor (GPT-2's c_attn), a module with
an adapter that also trains in part (its bias under `peft.bitfit`), a classifier pooling
without a Hugging Face class, an encoder-decoder (no tables yet). The merged export (`export/`) is
written in every case.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path as FsPath
from typing import Any

import numpy as np

from sft_jax.hf.checkpoint_dir import save_state_dict
from sft_jax.models import registry
from sft_jax.peft.freeze import HEAD, Path, path_str
from sft_jax.peft.lora import A, B
from sft_jax.peft.plan import Plan

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."
# Heads PEFT itself adds to modules_to_save for task_type SEQ_CLS.
_SEQ_CLS_HEADS = ("classifier", "score")


@dataclasses.dataclass(frozen=True)
class HfTensor:
    """One tensor of the exported Hugging Face model and the leaves of ours it holds."""

    paths: tuple[Path, ...]
    name: str
    to_hf: Callable[..., np.ndarray]

    @property
    def module(self) -> str:
        return self.name.rsplit(".", 1)[0]


@dataclasses.dataclass(frozen=True)
class AdapterLayout:
    targets: dict[Path, HfTensor]  # kernel path -> its HF weight
    saved: tuple[HfTensor, ...]  # tensors of modules_to_save
    modules_to_save: tuple[str, ...]
    task_type: str  # SEQ_CLS | CAUSAL_LM


def hf_tensors(module: Any, config: Any, shapes: Mapping[Path, tuple]) -> list[HfTensor] | str:
    """Every tensor of the model the merged export writes, or why there is no table."""
    family = registry.family_of(config)
    num_labels = getattr(module, "num_labels", None)
    pooling = getattr(module, "pooling", None)
    if num_labels is not None and pooling != family.hf_pooling:
        return f"pooling {pooling!r} has no Hugging Face sequence-classification class"
    if family.kind == "encoder-decoder":
        return f"no Hugging Face adapter layout for model_type {config.model_type!r}"
    out = []
    for table in family.converter.adapter_tables(config, num_labels):
        for e in table.entries:
            paths = tuple((*table.ours, *p) for p in e.paths)
            if all(p in shapes for p in paths):
                out.append(HfTensor(paths, table.hf_prefix + e.hf_name, e.to_hf))
    return out


def adapter_layout(plan: Plan, module: Any, config: Any) -> AdapterLayout | str:
    """Where the plan's adapters and fully trained modules go in PEFT's layout, or why
    PEFT cannot express them."""
    tensors = hf_tensors(module, config, plan.shapes)
    if isinstance(tensors, str):
        return tensors
    by_path = {p: t for t in tensors for p in t.paths}
    targets = {}
    for target in plan.targets:
        tensor = by_path.get(target.path)
        if tensor is None:
            return f"{path_str(target.path)} has no Hugging Face tensor"
        if len(tensor.paths) > 1 or not tensor.name.endswith(".weight"):
            return (f"{path_str(target.path)} is part of the fused Hugging Face tensor "
                    f"{tensor.name}; PEFT adapts whole modules")
        targets[target.path] = tensor
    task_type = "SEQ_CLS" if any(p[0] == HEAD for p in plan.shapes) else "CAUSAL_LM"
    modules: set[str] = set()
    for tensor in tensors:
        if any(p in plan.trained for p in tensor.paths):
            module_name = tensor.module
            if task_type == "SEQ_CLS":
                top = module_name.split(".")[0]
                module_name = top if top in _SEQ_CLS_HEADS else module_name
            modules.add(module_name)
    saved = tuple(t for t in tensors if any(_within(t.name, m) for m in modules))
    adapted = {t.module for t in targets.values()}
    for tensor in saved:
        if tensor.module in adapted:
            return (f"module {tensor.module} has a LoRA adapter and trains in part too "
                    f"(e.g. its bias); PEFT cannot hold both")
    return AdapterLayout(targets, saved, tuple(sorted(modules)), task_type)


def _within(name: str, module: str) -> bool:
    return name.startswith(module + ".")


def _get(tree: Mapping, path: Sequence[str]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _fan_in_fan_out(tensor: HfTensor, shape: tuple[int, ...], d_in: int, d_out: int) -> bool:
    """False when the HF weight is our kernel matrix transposed (nn.Linear), True when it
    is the matrix itself (Conv1D); checked on a probe of distinct values."""
    probe = np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape)
    hf = np.asarray(tensor.to_hf(probe))
    matrix = probe.reshape(d_in, d_out)
    if hf.shape == (d_out, d_in) and np.array_equal(hf, matrix.T):
        return False
    if hf.shape == (d_in, d_out) and np.array_equal(hf, matrix):
        return True
    raise ValueError(f"{tensor.name}: unexpected layout of the Hugging Face weight")


def write_adapter(
    out_dir: str | FsPath,
    plan: Plan,
    layout: AdapterLayout,
    trainable: Mapping,
    params: Mapping,
    base_model: str,
) -> FsPath:
    """Writes adapter_config.json + adapter_model.safetensors; returns the directory.

    `trainable`: the run's trainable tree, `params`: the model's combined params (both
    host numpy); `base_model`: the base model directory, recorded in the config.
    """
    out = FsPath(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state: dict[str, np.ndarray] = {}
    flags = set()
    for target in plan.targets:
        tensor = layout.targets[target.path]
        flags.add(_fan_in_fan_out(tensor, target.shape, target.d_in, target.d_out))
        factors = _get(trainable["lora"], target.path)
        module_name = PREFIX + tensor.module
        state[f"{module_name}.lora_A.weight"] = np.asarray(factors[A], np.float32).T  # r in
        state[f"{module_name}.lora_B.weight"] = np.asarray(factors[B], np.float32).T  # out r
    if len(flags) > 1:
        raise ValueError("adapter targets mix nn.Linear and Conv1D weights")
    for tensor in layout.saved:
        leaves = [np.asarray(_get(params, p), np.float32) for p in tensor.paths]
        state[PREFIX + tensor.name] = np.asarray(tensor.to_hf(*leaves), np.float32)
    save_state_dict(state, out / WEIGHTS_NAME)
    config = {
        "peft_type": "LORA",
        "task_type": layout.task_type,
        "base_model_name_or_path": str(base_model),
        "r": plan.rank,
        "lora_alpha": plan.alpha,
        "lora_dropout": 0.0,
        "target_modules": sorted(t.module for t in layout.targets.values()),
        "modules_to_save": list(layout.modules_to_save) or None,
        "fan_in_fan_out": bool(flags and flags.pop()),
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
    }
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out
