"""The plan of a run's partial training: which params train in full, which kernels carry
a LoRA adapter, and how the trainable and frozen trees join back into the model's params.

Trees. The model's params split into

    trainable  {'params': <subtree that trains in full>, 'lora': {<kernel path>:
               {'lora_a', 'lora_b'}}}   (a key is left out when its subtree is empty)
    frozen     <subtree of every other param>, the pretrained base

`combine(trainable, frozen)` rebuilds the full tree (base + LoRA deltas) the task's loss
and eval functions take. The optimizer is built over `trainable` only, so neither the
frozen base nor its gradients nor its moments are ever held by optax: the state of a
LoRA run is the adapter, the head and their Adam moments. Gradients are taken with
respect to `trainable` only; the frozen tree is an ordinary (non-differentiated, not
donated) input of the step.

`peft.method = 'none'` builds no plan (`build` returns None): full fine-tuning keeps the
plain tree and the same code path as always.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
from flax import linen as nn
from flax import traverse_util
from jax.sharding import Mesh

from sft_jax import parallel
from sft_jax.errors import UserInputError
from sft_jax.peft import freeze, lora
from sft_jax.peft.freeze import Path, path_str

METHODS = ("none", "lora", "freeze")


def _flat(tree: Mapping) -> dict[Path, Any]:
    return traverse_util.flatten_dict(dict(tree)) if tree else {}


def _nest(flat: Mapping[Path, Any]) -> dict:
    return traverse_util.unflatten_dict(dict(flat)) if flat else {}


class Plan:
    """What trains and how, from `config.peft` and the model's abstract params.

    Args:
      peft: the `config.peft` section.
      abstract: the model's params as `jax.eval_shape(module.init)` gives them (boxed with
        logical axis names, or plain ShapeDtypeStructs).
      loaded: the checkpoint's (nested) params; leaves missing there train in full.
    """

    def __init__(self, peft: ml_collections.ConfigDict, abstract: Mapping,
                 loaded: Mapping | None = None):
        if peft.method not in METHODS:
            raise UserInputError(f"peft.method: {peft.method!r} is not one of {METHODS}")
        self.method = str(peft.method)
        flat = _flat(abstract)
        self.shapes = {p: tuple(nn.meta.unbox(x).shape) for p, x in flat.items()}
        self.dtypes = {p: nn.meta.unbox(x).dtype for p, x in flat.items()}
        names = {p: tuple(x.names) if isinstance(x, nn.Partitioned) else None
                 for p, x in flat.items()}
        paths = sorted(self.shapes)
        fresh = set(paths) - set(_flat(loaded)) if loaded else set()
        self.trained = freeze.trained_in_full(paths, peft, fresh)
        self.targets: list[lora.Target] = []
        self.rank, self.alpha, self.scale = 0, 0.0, 0.0
        if self.method == "lora":
            self.rank, self.alpha = int(peft.lora_rank), float(peft.lora_alpha)
            if self.rank < 1:
                raise UserInputError(f"peft.lora_rank: must be >= 1, got {self.rank}")
            if float(peft.lora_dropout) != 0.0:
                raise UserInputError(
                    "peft.lora_dropout: only 0 is supported (LoRA is applied as a weight "
                    "delta W + (alpha/r)·A·B, which has no input to drop; see "
                    "sft_jax/peft/lora.py)"
                )
            patterns = freeze.compile_patterns(peft.lora_targets, "peft.lora_targets")
            self.targets = lora.find_targets(self.shapes, names, patterns, self.trained)
            if not self.targets:
                kernels = [path_str(p) for p in paths if p[-1] == "kernel"]
                raise UserInputError(
                    f"peft.lora_targets: {list(peft.lora_targets)} match no kernel that does "
                    f"not already train in full (kernels look like {kernels[:1]})"
                )
            self.scale = self.alpha / self.rank
        self.frozen_paths = set(paths) - self.trained

    # Trees -----------------------------------------------------------------------------

    def partition(self, tree: Mapping) -> tuple[dict, dict]:
        """(subtree that trains in full, frozen subtree) of any tree shaped like the params."""
        flat = _flat(tree)
        trained = {p: v for p, v in flat.items() if p in self.trained}
        frozen = {p: v for p, v in flat.items() if p not in self.trained}
        return _nest(trained), _nest(frozen)

    def init_adapters(self, rng: jax.Array) -> dict:
        """Fresh LoRA factors ({} without LoRA); B = 0, so the model is unchanged."""
        if not self.targets:
            return {}
        dtype = self.dtypes[self.targets[0].path]
        return lora.init(self.targets, self.rank, rng, dtype)

    def split(self, params: Mapping, adapters: Mapping) -> tuple[dict, dict]:
        """(trainable, frozen) from the full params and the adapters."""
        trained, frozen = self.partition(params)
        trainable = {k: v for k, v in (("params", trained), ("lora", dict(adapters))) if v}
        return trainable, frozen

    def combine(self, trainable: Mapping, frozen: Mapping) -> dict:
        """The model's full params: frozen base, trained params, plus every LoRA delta."""
        flat = _flat(frozen)
        flat.update(_flat(trainable.get("params", {})))
        if self.targets:
            lora.apply(flat, trainable["lora"], self.targets, self.scale)
        return _nest(flat)

    def shardings(self, p_shardings: Mapping, mesh: Mesh) -> tuple[dict, dict]:
        """(trainable, frozen) shardings: params keep theirs; LoRA factors (small) are
        replicated."""
        trained, frozen = self.partition(p_shardings)
        adapters = jax.tree.map(lambda _: parallel.replicated(mesh),
                                jax.eval_shape(self.init_adapters, jax.random.key(0)))
        trainable = {k: v for k, v in (("params", trained), ("lora", adapters)) if v}
        return trainable, frozen

    def abstract_trainable(self, abstract_params: Mapping) -> dict:
        """ShapeDtypeStructs of the trainable tree (nothing is computed)."""
        params = nn.meta.unbox(abstract_params)
        return jax.eval_shape(
            lambda p, r: self.split(p, self.init_adapters(r))[0], params, jax.random.key(0))

    @property
    def num_params(self) -> int:
        """Parameters of the model (base and head; adapters not counted)."""
        return sum(_size(s) for s in self.shapes.values())

    def describe(self) -> str:
        full = sum(_size(self.shapes[p]) for p in self.trained)
        adapter = sum(t.d_in * self.rank + self.rank * t.d_out for t in self.targets)
        total = self.num_params
        text = f"peft {self.method}: {full} params train in full"
        if self.targets:
            text += (f", LoRA r={self.rank} alpha={self.alpha:g} on {len(self.targets)} "
                     f"kernels ({adapter} adapter params)")
        return text + f"; {total - full} of {total} model params frozen"


def _size(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def build(config: ml_collections.ConfigDict, abstract: Mapping,
          loaded: Mapping | None) -> Plan | None:
    """The run's plan, or None for full fine-tuning (`peft.method = 'none'`)."""
    if config.peft.method == "none":
        return None
    return Plan(config.peft, abstract, loaded)


# The base a partial run trains on -------------------------------------------------------


def base_fingerprint(checkpoint: str) -> dict[str, Any]:
    """`model.checkpoint`, its directory, and size + sha256 of each of its weight files:
    checkpoints of a partial run hold no base weights, only this pointer to them."""
    from sft_jax.hf.checkpoint_dir import weight_files
    from sft_jax.pretrained import resolve_model_dir

    root = resolve_model_dir(checkpoint)
    files = {}
    for path in weight_files(root):
        with path.open("rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        files[path.name] = {"bytes": path.stat().st_size, "sha256": digest}
    return {"checkpoint": str(checkpoint), "path": str(root.absolute()), "files": files}


def check_base(saved: Mapping[str, Any], current: Mapping[str, Any], where: str) -> None:
    """Resuming needs the very base weights the checkpoint's adapter was trained on."""
    if dict(saved.get("files", {})) != dict(current["files"]):
        raise UserInputError(
            f"{where}: trained on the base weights of {saved.get('path')} "
            f"({_describe(saved)}); model.checkpoint={current['checkpoint']!r} now has "
            f"{_describe(current)}: resume with the same base model"
        )


def _describe(fingerprint: Mapping[str, Any]) -> str:
    files = fingerprint.get("files", {})
    return ", ".join(f"{name} {v['bytes']} bytes sha256 {v['sha256'][:12]}"
                     for name, v in sorted(files.items())) or "no weight files"
