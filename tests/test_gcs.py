"""A run, a resume and a report with everything on `gs://`, under a fake GCS.

What is faked: GCS itself. Every `etils.epath` call on a `gs://bucket/...` path (ours,
orbax's, the TensorBoard event files') goes to `tmp_path/gcs/bucket/...` through
`epath.testing.mock_epath`; orbax's TensorStore kvstore spec for a `gs://` path
(`gcs_utils.get_kvstore_for_gcs`, the one place orbax builds it) is redirected to the
`file` driver under the same root, and its bucket query for hierarchical namespaces
answers "no". So the code paths taken for a remote path (the epath calls, orbax's GCS
commit protocol, our copies, rewrites and remote lock) are exercised; TensorStore's own
GCS driver and real object-store semantics are not.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
from conftest import REPO, apply_overrides, load_config, tiny_overrides


@pytest.fixture()
def fake_gcs(tmp_path, monkeypatch):
    """`gs://bucket/x` is `tmp_path/gcs/bucket/x` for epath and orbax; yields that root."""
    from etils.epath import testing
    from orbax.checkpoint._src.path import gcs_utils

    root = tmp_path / "gcs"
    root.mkdir()

    def local(p) -> str:
        p = os.fspath(p)
        return str(root / p[len("gs://"):]) if p.startswith("gs://") else p

    def remote(p) -> str:
        p = os.fspath(p)
        return "gs://" + p[len(str(root)) + 1:] if p.startswith(f"{root}/") else p

    def one(fn, path, *args, **kwargs):
        return fn(local(path), *args, **kwargs)

    def write(fn, path, mode):  # an object store has no directories to create first
        if mode[0] in "wa":
            os.makedirs(os.path.dirname(local(path)), exist_ok=True)
        return fn(local(path), mode)

    def two(fn, path, dst, *args, **kwargs):
        return fn(local(path), local(dst), *args, **kwargs)

    def glob(fn, path):
        return [remote(p) for p in fn(local(path))]

    def walk(fn, top, **kwargs):
        for here, dirs, files in fn(local(top), **kwargs):
            yield remote(here), dirs, files

    monkeypatch.setattr(gcs_utils, "get_kvstore_for_gcs",
                        lambda path: {"driver": "file", "path": local(path)})
    monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False)
    with testing.mock_epath(
            open=write, exists=one, isdir=one, listdir=one, makedirs=one, mkdir=one,
            remove=one, rmtree=one, stat=one, rename=two, replace=two, copy=two, glob=glob,
            walk=walk):
        yield root


def test_a_run_a_resume_and_a_report_on_gcs(tmp_path, monkeypatch, fake_gcs, tiny_bert_dir,
                                            tiny_corpus_dir):
    import sft_jax
    from sft_jax import reporting, workdir
    from sft_jax.errors import UserInputError

    bucket = fake_gcs / "bucket"
    shutil.copytree(tiny_bert_dir, bucket / "models" / "bert")
    shutil.copytree(tiny_corpus_dir, bucket / "data")
    monkeypatch.setenv("SFT_JAX_CACHE", str(tmp_path / "cache"))
    cwd = tmp_path / "cwd"  # a relative "gs:/..." written by mistake would land here
    cwd.mkdir()
    monkeypatch.chdir(cwd)

    overrides = {**tiny_overrides(tiny_bert_dir, tiny_corpus_dir),
                 "model.checkpoint": "gs://bucket/models/bert",
                 **{f"data.{split}": f"gs://bucket/data/{split}.jsonl"
                    for split in ("train", "validation", "test")},
                 "train.steps": 2, "train.log_every": 1, "checkpoint.every": 1,
                 "train.eval_every": 2, "data.buckets": (16,), "data.max_length": 16}
    run = "gs://bucket/sweep/run"
    sft_jax.train(apply_overrides(  # the first run: no final evaluation, no export
        load_config(), {**overrides, "eval.splits": (), "checkpoint.export": False}), run)
    results = sft_jax.train(
        apply_overrides(load_config(), {**overrides, "train.steps": 4}), run)
    assert set(results) == {"validation", "test"}

    out = bucket / "sweep" / "run"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3, 4]  # resumed
    assert [r["start_step"] for r in records if r["split"] == "session"] == [0, 2]
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.isdigit()) \
        == ["3", "4"]
    assert (out / "best").is_dir() and (out / "results.json").is_file()
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in (out / "export").iterdir()}
    assert (out / "predictions" / "test.jsonl").is_file()
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert json.loads((out / "labels.json").read_text()) == ["neg", "pos"]
    assert not (out / ".lock").exists()  # released

    held = workdir.lock(run)
    with pytest.raises(UserInputError, match="in use by another run"):
        workdir.lock(run)
    held.release()

    report = reporting.write_report("gs://bucket/sweep", plots=False)
    assert {p.name for p in report.paths} == {"summary.csv", "groups.csv", "summary.md"}
    assert "run" in (bucket / "sweep" / "summary.md").read_text()

    assert list(cwd.iterdir()) == []
    assert not list(tmp_path.rglob("gs:*")) and not (REPO / "gs:").exists()
    assert list((tmp_path / "cache" / "remote").glob("*/bert/config.json"))
