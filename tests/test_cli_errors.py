"""Bad input through the CLI: one line naming the problem and the place, exit status 2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, cli_args, tiny_overrides


def run_cli(workdir: Path, overrides: dict, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "sft_jax.main", "--config=configs/classification.py:runlocal",
           f"--workdir={workdir}", *cli_args(overrides), *extra]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})


def assert_user_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: "), line
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line


@pytest.fixture()
def tiny(tiny_bert_dir, tiny_corpus_dir) -> dict:
    return tiny_overrides(tiny_bert_dir, tiny_corpus_dir)


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def _jsonl(*records: dict) -> list[str]:
    return [json.dumps(r) for r in records]


# (data key, file name, its lines, fragments of the error line; "{file}" is the file's path)
BAD_RECORD_FILES = {
    "malformed JSON": ("data.train", "train.jsonl",
                       [*_jsonl({"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"}),
                        '{"text": "oops", "label": '],
                       ("{file}:3", "malformed JSON")),
    "malformed CSV": ("data.train", "train.csv", ["text,label", "good film,pos", "bad,film,neg"],
                      ("{file}:3",)),
    "missing field": ("data.train", "train.jsonl",
                      _jsonl({"text": "good", "label": "pos"}, {"review": "bad", "label": "neg"}),
                      ("{file}:2", "missing field 'text'", "data.text_field")),
    "empty split": ("data.validation", "validation.jsonl", [""],
                    ("data.validation", "no records")),
    "label never seen in training": (
        "data.test", "test.jsonl",
        _jsonl({"text": "good", "label": "pos"}, {"text": "meh", "label": "mixed"}),
        ("{file}:2", "'mixed'", "never seen in training")),
}


@pytest.mark.parametrize("case", BAD_RECORD_FILES)
def test_bad_record_file_names_file_line_and_key(tmp_path, tiny, case):
    key, name, lines, fragments = BAD_RECORD_FILES[case]
    bad = write_lines(tmp_path / name, lines)
    proc = run_cli(tmp_path / "run", {**tiny, key: bad})
    assert_user_error(proc, *(f.format(file=bad) for f in fragments))


def test_unknown_config_key(tmp_path, tiny):
    proc = run_cli(tmp_path / "run", tiny, "--config.train.stepz=3")
    assert_user_error(proc, "train.stepz")


def test_model_directory_without_weights(tmp_path, tiny, tiny_bert_dir):
    model = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, model)
    (model / "model.safetensors").unlink()
    proc = run_cli(tmp_path / "run", {**tiny, "model.checkpoint": model})
    assert_user_error(proc, str(model), "model.safetensors")


def test_pickle_checkpoint_is_refused(tmp_path, tiny, tiny_bert_dir):
    model = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, model)
    (model / "model.safetensors").unlink()
    (model / "pytorch_model.bin").write_bytes(b"not unpickled")
    proc = run_cli(tmp_path / "run", {**tiny, "model.checkpoint": model})
    assert_user_error(proc, "pytorch_model.bin", "safetensors only")


def test_unknown_architecture(tmp_path, tiny, tiny_bert_dir):
    model = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, model)
    config = json.loads((model / "config.json").read_text())
    config["model_type"] = "mamba9"
    (model / "config.json").write_text(json.dumps(config))
    proc = run_cli(tmp_path / "run", {**tiny, "model.checkpoint": model})
    assert_user_error(proc, f"{model}/config.json", "'mamba9'", "not supported")


def test_missing_data_file_and_unknown_asset(tmp_path, tiny):
    proc = run_cli(tmp_path / "run", {**tiny, "data.train": tmp_path / "nope.jsonl"})
    assert_user_error(proc, "data.train", "nope.jsonl")
    proc = run_cli(tmp_path / "run2", {**tiny, "model.checkpoint": "no-such-model"})
    assert_user_error(proc, "model.checkpoint", "no-such-model")
