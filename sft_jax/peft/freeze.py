"""Which parameters train in full: the head, the last N layers, biases (BitFit), patterns.

A parameter is named by its '/'-joined path in the param tree, e.g.
`encoder/layer_5/mlp/wo/bias` (a classifier) or `layer_3/attention/query/kernel` (a causal
LM). Patterns are Python regular expressions matched anywhere in that path (`re.search`).

Under `peft.method` 'freeze' or 'lora' these parameters train in full, everything else
stays at its pretrained value:

- the task head (the `classifier/` subtree of a `SequenceClassifier`), always — PEFT's
  `modules_to_save` for sequence classification;
- parameters the checkpoint did not provide (a new head, a missing pooler or LM head):
  a frozen random parameter would be useless, and a Hugging Face base model would not
  hold the same values;
- `peft.last_n_layers`: every parameter under `layer_{i}/` with i >= L - N (L layers;
  norms, poolers and heads outside the layer stack are not included — add them with
  `peft.train_patterns`, e.g. `final_norm|pooler`);
- `peft.bitfit`: every bias (BitFit, Ben Zaken et al. 2022);
- `peft.train_patterns`: every parameter whose path matches one of the patterns.

'freeze' needs at least one of `peft.head_only`, `last_n_layers`, `bitfit`,
`train_patterns`; `head_only` (the head, and nothing else) excludes the other three.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import ml_collections

from sft_jax.errors import UserInputError

Path = tuple[str, ...]

HEAD = "classifier"  # top-level name of the task head in a SequenceClassifier's params
_LAYER = re.compile(r"(?:^|/)layer_(\d+)/")


def path_str(path: Path) -> str:
    return "/".join(path)


def compile_patterns(patterns: Sequence[str] | str, key: str) -> list[re.Pattern]:
    """Regexes from a config tuple; a bad one is a UserInputError naming `key`."""
    if isinstance(patterns, str):
        patterns = (patterns,)
    out = []
    for p in patterns:
        try:
            out.append(re.compile(str(p)))
        except re.error as err:
            raise UserInputError(f"{key}: invalid regular expression {p!r}: {err}") from None
    return out


def matches(path: Path, patterns: Iterable[re.Pattern]) -> bool:
    text = path_str(path)
    return any(p.search(text) for p in patterns)


def layer_index(path: Path) -> int | None:
    """i for a parameter under `layer_{i}/`, else None."""
    m = _LAYER.search(path_str(path))
    return int(m.group(1)) if m else None


def trained_in_full(
    paths: Sequence[Path], peft: ml_collections.ConfigDict, fresh: Iterable[Path] = ()
) -> set[Path]:
    """The params (of `paths`) that train in full under `peft.method` 'lora' or 'freeze'.

    `fresh`: params the checkpoint did not provide (they always train).
    """
    head_only = bool(peft.head_only)
    last_n = int(peft.last_n_layers)
    bitfit = bool(peft.bitfit)
    patterns = compile_patterns(peft.train_patterns, "peft.train_patterns")
    others = last_n > 0 or bitfit or bool(patterns)
    if head_only and others:
        raise UserInputError(
            "peft.head_only: trains the head alone; unset peft.last_n_layers, peft.bitfit "
            "and peft.train_patterns, or set peft.head_only=False"
        )
    if peft.method == "freeze" and not (head_only or others):
        raise UserInputError(
            "peft.method=freeze: choose what trains (peft.head_only, peft.last_n_layers, "
            "peft.bitfit or peft.train_patterns)"
        )
    if last_n < 0:
        raise UserInputError(f"peft.last_n_layers: must be >= 0, got {last_n}")

    head = {p for p in paths if p[0] == HEAD}
    if head_only and not head:
        raise UserInputError("peft.head_only: this model has no classifier head")
    trained = head | (set(fresh) & set(paths))
    if last_n > 0:
        indices = [i for i in map(layer_index, paths) if i is not None]
        if not indices:
            raise UserInputError("peft.last_n_layers: the model has no layer_{i} parameters")
        num_layers = max(indices) + 1
        if last_n > num_layers:
            raise UserInputError(
                f"peft.last_n_layers: {last_n} but the model has {num_layers} layers"
            )
        first = num_layers - last_n
        trained |= {p for p in paths if (i := layer_index(p)) is not None and i >= first}
    if bitfit:
        trained |= {p for p in paths if p[-1] == "bias"}
    if patterns:
        matched = {p for p in paths if matches(p, patterns)}
        if not matched:
            raise UserInputError(
                f"peft.train_patterns: {list(peft.train_patterns)} match no parameter "
                f"(paths look like {path_str(paths[-1])!r})"
            )
        trained |= matched
    return trained
