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


def test_malformed_jsonl_names_file_and_line(tmp_path, tiny):
    bad = write_lines(tmp_path / "train.jsonl", [json.dumps({"text": "good", "label": "pos"}),
                                                 json.dumps({"text": "bad", "label": "neg"}),
                                                 '{"text": "oops", "label": '])
    proc = run_cli(tmp_path / "run", {**tiny, "data.train": bad})
    assert_user_error(proc, f"{bad}:3", "malformed JSON")


def test_malformed_csv_names_file_and_line(tmp_path, tiny):
    bad = write_lines(tmp_path / "train.csv", ["text,label", "good film,pos", "bad,film,neg"])
    proc = run_cli(tmp_path / "run", {**tiny, "data.train": bad})
    assert_user_error(proc, f"{bad}:3")


def test_missing_field_names_record_and_config_key(tmp_path, tiny):
    bad = write_lines(tmp_path / "train.jsonl", [json.dumps({"text": "good", "label": "pos"}),
                                                 json.dumps({"review": "bad", "label": "neg"})])
    proc = run_cli(tmp_path / "run", {**tiny, "data.train": bad})
    assert_user_error(proc, f"{bad}:2", "missing field 'text'", "data.text_field")


def test_empty_split(tmp_path, tiny):
    empty = write_lines(tmp_path / "validation.jsonl", [""])
    proc = run_cli(tmp_path / "run", {**tiny, "data.validation": empty})
    assert_user_error(proc, "data.validation", "no records")


def test_label_never_seen_in_training(tmp_path, tiny):
    test = write_lines(tmp_path / "test.jsonl", [json.dumps({"text": "good", "label": "pos"}),
                                                 json.dumps({"text": "meh", "label": "mixed"})])
    proc = run_cli(tmp_path / "run", {**tiny, "data.test": test})
    assert_user_error(proc, f"{test}:2", "'mixed'", "never seen in training")


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
