"""A model directory never runs its own Python; incomplete model directories and corrupt
run files are one-line errors; exported files get the ordinary file mode."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, tiny_overrides
from test_cli_errors import assert_user_error, run_cli

# Importing either module would leave the marker file: the proof that code ran.
_EVIL = "from pathlib import Path\nPath({marker!r}).write_text('ran')\n"
_AUTO_MAP = {
    "AutoConfig": "configuration_evil.EvilConfig",
    "AutoTokenizer": ["tokenization_evil.EvilTokenizer", None],
}


def _evil_copy(model_dir: Path, out: Path) -> tuple[Path, Path]:
    """`model_dir` copied to `out`, with `auto_map` in both configs pointing at modules
    that write a marker file when imported, and nothing transformers knows in their place
    (so transformers would ask to run them); returns (dir, marker)."""
    shutil.copytree(model_dir, out)
    marker = out.parent / f"{out.name}-code-ran"
    for module in ("configuration_evil.py", "tokenization_evil.py"):
        (out / module).write_text(_EVIL.format(marker=str(marker)))
    for name, custom in (("config.json", {"model_type": "evil"}),
                         ("tokenizer_config.json", {"tokenizer_class": None})):
        data = {**json.loads((out / name).read_text()), **custom, "auto_map": _AUTO_MAP}
        (out / name).write_text(json.dumps({k: v for k, v in data.items() if v is not None}))
    return out, marker


def _run(args: list[str], home: Path, stdin: str = "") -> subprocess.CompletedProcess:
    """A CLI module with answers waiting on stdin; HF module caches under `home`."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "HF_HOME": str(home),
           "HF_MODULES_CACHE": str(home / "modules")}
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, input=stdin, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def evil(tiny_bert_dir, tmp_path_factory) -> tuple[Path, Path]:
    return _evil_copy(tiny_bert_dir, tmp_path_factory.mktemp("evil") / "model")


def test_train_cli_refuses_auto_map_unprompted(evil, tiny_corpus_dir, tmp_path):
    model, marker = evil
    overrides = tiny_overrides(model, tiny_corpus_dir)
    proc = _run(["sft_jax.main", "--config=configs/classification.py:runlocal",
                 f"--workdir={tmp_path / 'wd'}",
                 *[f"--config.{k}={v}" for k, v in overrides.items()]], tmp_path, "y\n" * 5)
    assert_user_error(proc, "auto_map", str(model))
    assert "[y/N]" not in proc.stdout + proc.stderr
    assert not marker.exists()


def test_predict_cli_refuses_auto_map_unprompted(evil, tmp_path):
    model, marker = evil
    proc = _run(["sft_jax.predict", f"--model={model}", "--prompt=hi"], tmp_path, "y\n" * 5)
    assert_user_error(proc, "auto_map", str(model))
    assert not marker.exists()


def test_custom_tokenizer_class_refused(tiny_bert_dir, tmp_path):
    from sft_jax.errors import UserInputError
    from sft_jax.pretrained import load_tokenizer

    model = shutil.copytree(tiny_bert_dir, tmp_path / "model")
    path = model / "tokenizer_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()),
                                "tokenizer_class": "EvilTokenizer"}))
    assert load_tokenizer(model) is not None  # transformers' generic tokenizer; no code
    (model / "tokenization_evil.py").write_text("raise SystemExit('ran')\n")
    with pytest.raises(UserInputError,
                       match=r"tokenizer_config\.json: .*'EvilTokenizer'.*tokenization_evil\.py"):
        load_tokenizer(model)


def test_model_dir_without_tokenizer_or_weights(tiny_bert_dir, tiny_corpus_dir, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(tiny_bert_dir / "config.json", bare / "config.json")
    proc = run_cli(tmp_path / "wd", tiny_overrides(bare, tiny_corpus_dir))
    assert_user_error(proc, str(bare), "model.safetensors", "tokenizer")
    shutil.copy(tiny_bert_dir / "model.safetensors", bare / "model.safetensors")
    proc = _run(["sft_jax.predict", f"--model={bare}", "--prompt=hi"], tmp_path)
    assert_user_error(proc, str(bare), "tokenizer")


def test_corrupt_labels_json(tiny_bert_dir, tiny_corpus_dir, tmp_path):
    workdir = tmp_path / "wd"
    workdir.mkdir()
    (workdir / "labels.json").write_text('["neg", "pos"')
    proc = run_cli(workdir, tiny_overrides(tiny_bert_dir, tiny_corpus_dir))
    assert_user_error(proc, f"{workdir / 'labels.json'}: corrupt label vocabulary")


def test_export_is_clean_and_0644(tiny_bert_dir, tmp_path):
    from sft_jax import load_pretrained
    from sft_jax.hf.export import export_pretrained

    pre = load_pretrained(tiny_bert_dir)
    source = {**pre.hf_config, "auto_map": _AUTO_MAP, "trust_remote_code": True,
              "custom_pipelines": {"x": {"impl": "evil.Pipe"}}}
    mask = os.umask(0o022)
    try:
        out = export_pretrained(tmp_path / "export", module_config=pre.config, params=pre.params,
                                tokenizer=pre.tokenizer, hf_config=source)
    finally:
        os.umask(mask)
    config = json.loads((out / "config.json").read_text())
    assert not {"auto_map", "trust_remote_code", "custom_pipelines"} & set(config)
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert set(modes.values()) == {0o644}, modes
