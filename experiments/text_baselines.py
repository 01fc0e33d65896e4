r"""Text-to-text baselines that train nothing, scored as the seq2seq task scores its models.

    python -m experiments.text_baselines apertium --workdir=workdirs/apertium
    python -m experiments.text_baselines apertium --split=test --split=validation \
        --workdir=workdirs/apertium
    python -m experiments.text_baselines apertium --limit=200 --workdir=workdirs/apertium-200
    python -m experiments.text_baselines lead --limit=48 --workdir=workdirs/aclsum-lead

Methods (`METHODS`):
  apertium  English → Spanish by the rule-based Apertium (`apertium-eng-spa` asset,
            `sft_jax.assets.apertium`); config `configs/translation.py` (`bible-en-es`).
  lead      Lead-1, the extractive baseline of summarization: the source's first sentence
            (sentences as ROUGE-Lsum cuts them, `metrics.split_sentences_newlines`);
            config `configs/summarization.py` (`aclsum`).

Splits, fields and metrics come from the method's config (`--config` replaces it): the
split's `data.<split>` records, their `data.source_field` turned into the prediction,
`data.target_field` the reference, scored with `sft_jax.metrics.text_metrics` under
`eval.metrics` and `eval.bleu_tokenize` (the function the seq2seq tasks call: sacreBLEU
BLEU and chrF, or ROUGE). `--limit=N` keeps the first N records of each split, as
`data.limit_eval` / `eval.generate_limit` do for the trained models (the README's
translation rows decode the first 200 test verses, the summarization rows the first 48
test papers); 0 keeps all.

`DIR` becomes a run directory in the format of `sft_jax.runs` (so `sft-jax report DIR`
shows it beside trained runs); each call rewrites these files (a prediction file of a split
not asked for again stays):
  config.json    the config's data and eval keys used, `task`: the method, `model`: what
                 produces the predictions (Apertium: the asset, packages, command),
                 `train.steps: 0`
  metrics.jsonl  `data` (examples per split), one final record per split, `session`
                 (`seconds`: wall time, `peak_rss_mb`)
  results.json   {split: {generated, bleu, bleu_signature, ..., chrf, ..., params_from}}
  predictions/<split>.jsonl   {"where", "source", "reference", "prediction"} per record
and one line per split is printed: scores, examples and wall time. Bad input is one
`error:` line and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sft_jax import metrics as metrics_lib
from sft_jax.assets import apertium
from sft_jax.errors import UserInputError
from sft_jax.writers import MetricWriter, peak_rss_mb, to_json


def lead_sentences(sources: list[str], n: int = 1) -> list[str]:
    """Each source's first `n` sentences (`metrics.split_sentences_newlines`), joined by a
    space: Lead-n."""
    return [" ".join(metrics_lib.split_sentences_newlines(s).split("\n")[:n])
            for s in sources]


@dataclass(frozen=True)
class Method:
    """A baseline: its default config, what produces the predictions from the sources,
    and how config.json and results.json name it."""

    name: str
    config: str
    produce: Callable[[list[str]], list[str]]
    model: dict[str, Any]
    params_from: str


METHODS = {
    "apertium": Method("apertium", "configs/translation.py",
                       lambda lines: apertium.translate(lines),
                       {"tool": apertium.NAME, "packages": apertium.APERTIUM.spec(),
                        "command": f"apertium -u -f txt {apertium.PAIR} "
                                   "(one line per paragraph)"},
                       f"{apertium.NAME} (rule-based, not trained)"),
    "lead": Method("lead", "configs/summarization.py", lead_sentences,
                   {"method": "Lead-1: the source's first sentence"},
                   "Lead-1 (extractive, not trained)"),
}


def _write_json(path: Path, value: Any) -> None:
    path.write_text(to_json(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def run_config(method: Method, config, splits: Sequence[str], limit: int) -> dict[str, Any]:
    """config.json of a baseline run: the method and what of its `config` it used."""
    data, ev = config.data, config.eval
    return {
        "task": method.name, "seed": 0,
        "model": method.model,
        "data": {**{s: data[s] for s in splits}, "source_field": data.source_field,
                 "target_field": data.target_field, "limit_eval": limit},
        "eval": {"splits": list(splits), "metrics": list(ev.metrics),
                 "bleu_tokenize": ev.bleu_tokenize, "generate_limit": limit},
        "train": {"steps": 0, "replicas": 1},
    }


def evaluate(records: dict[str, list[dict]], workdir: Path, config_json: dict[str, Any],
             produce: Callable[[list[str]], list[str]], params_from: str
             ) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    """Turns each split's sources into predictions with `produce`, scores them, writes the
    run directory `workdir` (the module docstring); returns (results by split, wall
    seconds by split)."""
    started = time.perf_counter()
    data, ev = config_json["data"], config_json["eval"]
    (workdir / "predictions").mkdir(parents=True, exist_ok=True)
    _write_json(workdir / "config.json", config_json)
    writer = MetricWriter(workdir, tensorboard=False, fresh=True)  # every record at step 0
    writer.write(0, "data", {f"{s}/examples": len(rs) for s, rs in records.items()})
    results: dict[str, dict[str, Any]] = {}
    seconds: dict[str, float] = {}
    for split, rows in records.items():
        split_started = time.perf_counter()
        sources = [r[data["source_field"]] for r in rows]
        references = [r[data["target_field"]] for r in rows]
        predictions = produce(sources)
        scores = metrics_lib.text_metrics(predictions, references, metrics=ev["metrics"],
                                          bleu_tokenize=ev["bleu_tokenize"])
        results[split] = {**scores, "params_from": params_from}
        writer.write(0, split, {"final": 1, **results[split]})
        with open(workdir / "predictions" / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for r, source, reference, prediction in zip(rows, sources, references,
                                                        predictions, strict=True):
                f.write(json.dumps({"where": r.get("_where", ""), "source": source,
                                    "reference": reference, "prediction": prediction},
                                   ensure_ascii=False) + "\n")
        seconds[split] = time.perf_counter() - split_started
    writer.write(0, "session", {"seconds": time.perf_counter() - started,
                                "train_seconds": 0.0, "start_step": 0,
                                "peak_rss_mb": peak_rss_mb()})
    writer.close()
    _write_json(workdir / "results.json", results)
    return results, seconds


def summary_line(name: str, spec: str, result: dict[str, Any], seconds: float) -> str:
    """`apertium on bible-en-es:test (1,525 examples): BLEU 9.9, chrF 40.1, 6.1 s`."""
    scores = [f"{label} {result[key]:.1f}" for key, label in
              (("bleu", "BLEU"), ("chrf", "chrF"), ("rouge1", "ROUGE-1"),
               ("rouge2", "ROUGE-2"), ("rougeL", "ROUGE-L"), ("rougeLsum", "ROUGE-Lsum"))
              if key in result]
    return (f"{name} on {spec} ({result['generated']:,} examples): "
            f"{', '.join(scores)}, {seconds:.1f} s")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.text_baselines",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("method", choices=sorted(METHODS), help="the baseline")
    parser.add_argument("--split", action="append", help="test (default), validation, ...")
    parser.add_argument("--workdir", default="", help="the run directory "
                        "(default workdirs/METHOD)")
    parser.add_argument("--limit", type=int, default=0, help="first N records; 0 = all")
    parser.add_argument("--config", default="", help="the config giving data and metrics "
                        "(default: the method's)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    method = METHODS[args.method]
    config_spec = args.config or method.config
    splits = args.split or ["test"]
    try:
        import sft_jax
        from sft_jax.data import sources

        if args.limit < 0:
            raise UserInputError(f"--limit: must be >= 0, got {args.limit}")
        config = sft_jax.load_config(config_spec)
        for split in splits:
            if split not in ("train", "validation", "test") or not config.data[split]:
                raise UserInputError(f"--split: {split!r} is not a data split of "
                                     f"{config_spec}")
        records = {}
        for split in splits:
            rows = sources.read_records(config.data[split], config_key=f"data.{split}")
            records[split] = rows[:args.limit] if args.limit else rows
        workdir = Path(args.workdir or f"workdirs/{method.name}")
        results, seconds = evaluate(records, workdir,
                                    run_config(method, config, splits, args.limit),
                                    method.produce, method.params_from)
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for split in splits:
        print(summary_line(method.name, config.data[split], results[split], seconds[split]))
    print(f"run directory: {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
