r"""Apertium English → Spanish as a baseline run: translates `bible-en-es` sources with the
`apertium-eng-spa` tool and scores them as the translation task scores its models.

    python -m experiments.apertium_baseline --workdir=workdirs/apertium
    python -m experiments.apertium_baseline --split=test --split=validation \
        --workdir=workdirs/apertium
    python -m experiments.apertium_baseline --limit=200 --workdir=workdirs/apertium-200

Splits, fields and metrics come from the translation config (`--config`, default
`configs/translation.py`): the split's `data.<split>` records (`bible-en-es:test`), their
`data.source_field` translated, `data.target_field` the reference, scored with
`sft_jax.metrics.text_metrics` under `eval.metrics` and `eval.bleu_tokenize` (the function
the seq2seq tasks call: sacreBLEU BLEU, tokenizer 13a, and chrF). `--limit=N` keeps the
first N records of each split, as `eval.generate_limit` does for the trained models
(their README rows decode the first 200 test verses); 0 keeps all.

`DIR` becomes a run directory in the format of `sft_jax.runs` (so `sft-jax report DIR`
shows it beside trained runs), rewritten on every call:
  config.json    the translation config's data and eval keys used, `task: "apertium"`,
                 `model.tool` (the asset, its packages, the command), `train.steps: 0`
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
import resource
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sft_jax import metrics as metrics_lib
from sft_jax.assets import apertium
from sft_jax.errors import UserInputError

COMMAND = f"apertium -u -f txt {apertium.PAIR} (one line per paragraph)"
PARAMS_FROM = f"{apertium.NAME} (rule-based, not trained)"


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def run_config(config, splits: Sequence[str], limit: int) -> dict[str, Any]:
    """config.json of a baseline run: what of the translation `config` it used."""
    data, ev = config.data, config.eval
    return {
        "task": "apertium", "seed": 0,
        "model": {"tool": apertium.NAME, "packages": apertium.APERTIUM.spec(),
                  "command": COMMAND},
        "data": {**{s: data[s] for s in splits}, "source_field": data.source_field,
                 "target_field": data.target_field, "limit_eval": limit},
        "eval": {"splits": list(splits), "metrics": list(ev.metrics),
                 "bleu_tokenize": ev.bleu_tokenize, "generate_limit": limit},
        "train": {"steps": 0, "replicas": 1},
    }


def evaluate(records: dict[str, list[dict]], workdir: Path, config_json: dict[str, Any],
             translate: Callable[[list[str]], list[str]]
             ) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    """Translates each split's records with `translate`, scores them, writes the run
    directory `workdir` (the module docstring); returns (results by split, wall seconds
    by split)."""
    started = time.perf_counter()
    data, ev = config_json["data"], config_json["eval"]
    (workdir / "predictions").mkdir(parents=True, exist_ok=True)
    _write_json(workdir / "config.json", config_json)
    lines = [{"step": 0, "split": "data",
              **{f"{s}/examples": len(rs) for s, rs in records.items()}}]
    results: dict[str, dict[str, Any]] = {}
    seconds: dict[str, float] = {}
    for split, rows in records.items():
        split_started = time.perf_counter()
        sources = [r[data["source_field"]] for r in rows]
        references = [r[data["target_field"]] for r in rows]
        predictions = translate(sources)
        scores = metrics_lib.text_metrics(predictions, references, metrics=ev["metrics"],
                                          bleu_tokenize=ev["bleu_tokenize"])
        results[split] = {**scores, "params_from": PARAMS_FROM}
        lines.append({"step": 0, "split": split, "final": 1, **results[split]})
        with open(workdir / "predictions" / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for r, source, reference, prediction in zip(rows, sources, references,
                                                        predictions, strict=True):
                f.write(json.dumps({"where": r.get("_where", ""), "source": source,
                                    "reference": reference, "prediction": prediction},
                                   ensure_ascii=False) + "\n")
        seconds[split] = time.perf_counter() - split_started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB → MiB (Linux)
    lines.append({"step": 0, "split": "session", "seconds": time.perf_counter() - started,
                  "train_seconds": 0.0, "start_step": 0, "peak_rss_mb": peak})
    (workdir / "metrics.jsonl").write_text(
        "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines),
        encoding="utf-8")
    _write_json(workdir / "results.json", results)
    return results, seconds


def summary_line(spec: str, result: dict[str, Any], seconds: float) -> str:
    """`apertium-eng-spa on bible-en-es:test (1,525 examples): BLEU 9.9, chrF 40.1, 6.1 s`."""
    scores = [f"{label} {result[key]:.1f}" for key, label in
              (("bleu", "BLEU"), ("chrf", "chrF"), ("rougeL", "ROUGE-L")) if key in result]
    return (f"{apertium.NAME} on {spec} ({result['generated']:,} examples): "
            f"{', '.join(scores)}, {seconds:.1f} s")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.apertium_baseline",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", action="append", help="test (default), validation, ...")
    parser.add_argument("--workdir", default="workdirs/apertium", help="the run directory")
    parser.add_argument("--limit", type=int, default=0, help="first N records; 0 = all")
    parser.add_argument("--config", default="configs/translation.py",
                        help="translation config giving data and metrics")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    splits = args.split or ["test"]
    try:
        import sft_jax
        from sft_jax.data import sources

        if args.limit < 0:
            raise UserInputError(f"--limit: must be >= 0, got {args.limit}")
        config = sft_jax.load_config(args.config)
        for split in splits:
            if split not in ("train", "validation", "test") or not config.data[split]:
                raise UserInputError(f"--split: {split!r} is not a data split of "
                                     f"{args.config}")
        records = {}
        for split in splits:
            rows = sources.read_records(config.data[split], config_key=f"data.{split}")
            records[split] = rows[:args.limit] if args.limit else rows
        workdir = Path(args.workdir)
        results, seconds = evaluate(records, workdir, run_config(config, splits, args.limit),
                           apertium.translate)
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for split in splits:
        print(summary_line(config.data[split], results[split], seconds[split]))
    print(f"run directory: {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
