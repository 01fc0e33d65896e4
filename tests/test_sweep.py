"""Sweeps (`python -m sft_jax.sweep`): sweep files, names, validation before training,
shards, a SIGKILLed sweep that resumes to the results of an uninterrupted one, a failing run.

Training runs go through the CLI in subprocesses, as a user starts them; they share a
persistent XLA compilation cache so that only the first one compiles.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, cli_args, tiny_overrides

from sft_jax import sweep_runner, sweeps
from sft_jax.errors import UserInputError

CONFIG = "configs/classification.py:runlocal"

SWEEP_FILE = '''
def get_sweep(arg=None):
    runs = [{"seed": 0}, {"seed": 1}]
    if arg == "with_failure":  # passes validation, fails when the run starts
        runs.append({"model.checkpoint": "/nonexistent"})
    return runs
'''


@pytest.fixture()
def tiny(tiny_bert_dir, tiny_corpus_dir) -> dict:
    return tiny_overrides(tiny_bert_dir, tiny_corpus_dir)


def sweep_cmd(workdir: Path, sweep: str | Path, overrides: dict, *extra: str) -> list[str]:
    return [sys.executable, "-m", "sft_jax.sweep", f"--config={CONFIG}", f"--sweep={sweep}",
            f"--workdir={workdir}", *cli_args(overrides), *extra]


def sweep_env(cache: Path | None = None) -> dict:
    """The sweep's environment: compilation cache `cache`, else none set (the sweep's own,
    DIR/xla-cache)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    env.pop("JAX_ENABLE_COMPILATION_CACHE", None)
    if cache is not None:
        env["JAX_COMPILATION_CACHE_DIR"] = str(cache)
    return env


def run_sweep(workdir: Path, sweep: str | Path, overrides: dict, *extra: str,
              cache: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(sweep_cmd(workdir, sweep, overrides, *extra), cwd=REPO,
                          env=sweep_env(cache), capture_output=True, text=True, timeout=600)


def assert_user_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def status(workdir: Path) -> dict[str, dict]:
    return {r["name"]: r for r in json.loads((workdir / "sweep.json").read_text())["runs"]}


# Building sweeps, names, values (no training) --------------------------------------------


def test_product_seeds_and_zip():
    assert sweeps.seeds(2, start=5) == [{"seed": 5}, {"seed": 6}]
    grid = sweeps.product({"optim.learning_rate": [5e-5, 1e-4]}, sweeps.seeds(3))
    assert grid == [{"optim.learning_rate": lr, "seed": s} for lr in (5e-5, 1e-4)
                    for s in range(3)]
    assert sweeps.product({"a": [1, 2], "b": [3, 4]}, [{"c": 0}]) == [
        {"a": 1, "b": 3, "c": 0}, {"a": 1, "b": 4, "c": 0},
        {"a": 2, "b": 3, "c": 0}, {"a": 2, "b": 4, "c": 0}]
    assert sweeps.zip_axes({"a": [1, 2], "b": [3, 4]}) == [{"a": 1, "b": 3}, {"a": 2, "b": 4}]
    with pytest.raises(ValueError, match="'seed' is set by two axes"):
        sweeps.product(sweeps.seeds(2), {"seed": [7]})
    with pytest.raises(ValueError, match="must be a list"):
        sweeps.product({"model.checkpoint": "abc"})
    with pytest.raises(ValueError, match="different lengths"):
        sweeps.zip_axes({"a": [1, 2]}, {"b": [1]})


def test_run_names():
    runs = sweeps.product({"optim.learning_rate": [5e-5, 1e-4]}, sweeps.seeds(2),
                          [{"train.steps": 150, "data.buckets": (16, 32)}])
    assert sweeps.run_names(runs) == ["learning_rate=5e-05,seed=0", "learning_rate=5e-05,seed=1",
                                      "learning_rate=0.0001,seed=0", "learning_rate=0.0001,seed=1"]
    # Keys sharing a last component show in full; unsafe characters become "_".
    runs = [{"train.batch_size": 8, "eval.batch_size": 16, "model.checkpoint": "/a b"},
            {"train.batch_size": 16, "eval.batch_size": 32, "model.checkpoint": "/c"}]
    assert sweeps.run_names(runs) == ["train.batch_size=8,eval.batch_size=16,checkpoint=_a_b",
                                      "train.batch_size=16,eval.batch_size=32,checkpoint=_c"]
    assert sweeps.run_name({"data.buckets": (16, 32), "train.steps": 4}) == \
        "buckets=16+32,steps=4"
    assert sweeps.run_names([{"seed": 3}]) == ["seed=3"]
    assert sweeps.run_names([{}, {"seed": 1}]) == ["default", "seed=1"]
    assert len(sweeps.run_name({"model.checkpoint": "x" * 500})) <= 120
    with pytest.raises(UserInputError, match="both named 'checkpoint=a_b'"):
        sweeps.run_names([{"model.checkpoint": "a/b"}, {"model.checkpoint": "a b"}])
    # A label stands for the keys it determines; the others still show.
    full = {"label": "full", "peft.method": "none", "optim.learning_rate": 1e-4}
    lora = {"label": "lora", "peft.method": "lora", "optim.learning_rate": 5e-4}
    runs = sweeps.product([full, lora], {"data.train_size": [100, 0]})
    assert sweeps.run_names(runs) == ["full,train_size=100", "full,train_size=0",
                                      "lora,train_size=100", "lora,train_size=0"]


def test_values_read_back_through_the_cli_parser():
    overrides = {"optim.learning_rate": 5e-5, "seed": 3, "data.buckets": [16, 32],
                 "eval.splits": ("validation",), "train.progress_bar": False,
                 "model.checkpoint": "/some dir/m", "optim.b2": 1}
    run = sweeps.Run(0, "r", overrides, tuple(f"--config.{k}={sweeps.render_value(v)}"
                                              for k, v in overrides.items()))
    sweeps.check_run(CONFIG, ["--config.train.steps=4"], run)  # every value reads back
    config = sweeps.parse_config(CONFIG, run.args)
    assert config.data.buckets == (16, 32) and config.eval.splits == ("validation",)
    assert config.optim.learning_rate == 5e-5 and config.train.progress_bar is False
    wrong = sweeps.Run(0, "r", {"model.checkpoint": 3}, ("--config.model.checkpoint=3",))
    with pytest.raises(UserInputError, match=r"--config\.model\.checkpoint: 3 reads back as '3'"):
        sweeps.check_run(CONFIG, [], wrong)


def test_slots_split_the_cpus_or_the_cuda_devices():
    slots = sweep_runner.make_slots(2, cpus=[0, 1, 2, 3, 4], environ={})
    assert [s.cpus for s in slots] == [(0, 1), (2, 3, 4)]
    assert [s.cpus for s in sweep_runner.make_slots(3, cpus=[0, 1], environ={})] == \
        [(0,), (1,), (0,)]
    assert sweep_runner.make_slots(1, environ={})[0].cpus is None
    gpus = sweep_runner.make_slots(2, environ={"CUDA_VISIBLE_DEVICES": "0,1,2,3"})
    assert [s.env for s in gpus] == [{"CUDA_VISIBLE_DEVICES": "0,1"},
                                     {"CUDA_VISIBLE_DEVICES": "2,3"}]
    assert all(s.cpus is None for s in gpus)
    with pytest.raises(UserInputError, match="lists only 1 device"):
        sweep_runner.make_slots(2, environ={"CUDA_VISIBLE_DEVICES": "5"})
    assert sweep_runner.parse_shard("1/3") == (1, 3)
    for bad in ("3/3", "x", "-1/2", "1/0"):
        with pytest.raises(UserInputError, match="--shard"):
            sweep_runner.parse_shard(bad)


def test_runs_share_the_sweeps_compilation_cache_unless_one_is_set(tmp_path):
    cache = sweep_runner.compilation_cache_env(tmp_path / "sweep", environ={})
    assert cache == {"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "sweep" / "xla-cache")}
    for mine in ("/mine", ""):  # another cache, or none
        assert sweep_runner.compilation_cache_env(
            tmp_path / "sweep", environ={"JAX_COMPILATION_CACHE_DIR": mine}) == {}


def test_error_line_is_the_last_error_of_the_attempt(tmp_path):
    log = tmp_path / "sweep.log"
    log.write_text("error: an old attempt\n=== start\n")
    offset = log.stat().st_size
    with log.open("a") as f:
        f.write("INFO loading\nerror: data.train: no records\nINFO shutting down\n\n")
    assert sweep_runner.error_line(log, offset) == "data.train: no records"
    with log.open("a") as f:
        f.write("Traceback ...\nRuntimeError: boom\n")
    assert sweep_runner.error_line(log, log.stat().st_size - 19) == "RuntimeError: boom"


# Bad input through the CLI: exit 2, one line, nothing trained -------------------------


@pytest.mark.parametrize("text, fragments", [
    ("def get_sweep(arg=None):\n    return [{'seed': 1}\n", [":2: syntax error"]),
    ("RUNS = [{'seed': 1}]\n", ["no get_sweep"]),
    ("def get_sweep(arg=None):\n    return []\n", ["empty list"]),
    ("def get_sweep(arg=None):\n    return [1, 2]\n", ["run 0 is int", "not a dict"]),
    ("def get_sweep(arg=None):\n    raise ValueError('boom')\n", [":2:", "ValueError: boom"]),
])
def test_malformed_sweep_file(tmp_path, tiny, text, fragments):
    path = tmp_path / "bad_sweep.py"
    path.write_text(text)
    proc = run_sweep(tmp_path / "sweep", path, tiny)
    assert_user_error(proc, str(path), *fragments)
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("run, fragments", [
    ({"seed": 1, "optim.learning_rte": 1e-4},
     ["sweep run 'seed=1,learning_rte=0.0001'", "--config.optim.learning_rte: no such config key",
      "learning_rate"]),
    ({"seed": 1, "train.steps": "many"},
     ["sweep run 'seed=1,steps=many'", "--config.train.steps: bad value many"]),
])
def test_bad_override_in_one_run_trains_nothing(tmp_path, tiny, run, fragments):
    path = tmp_path / "sweep.py"
    path.write_text(f"def get_sweep(arg=None):\n    return [{{'seed': 0}}, {run!r}]\n")
    proc = run_sweep(tmp_path / "sweep", path, tiny)
    assert_user_error(proc, *fragments)
    assert not (tmp_path / "sweep").exists()


def test_bad_common_override_and_bad_shard(tmp_path, tiny):
    sweep = "experiments/sweeps/lr_seeds.py:tiny"
    proc = run_sweep(tmp_path / "sweep", sweep, {**tiny, "train.stepz": 3})
    assert_user_error(proc, "--config.train.stepz: no such config key")
    assert_user_error(run_sweep(tmp_path / "sweep", sweep, tiny, "--shard=2/2"), "--shard=2/2")


def test_shards_cover_every_run_once(tmp_path, tiny):
    names = []
    for shard in ("0/2", "1/2"):
        proc = run_sweep(tmp_path / "sweep", "experiments/sweeps/lr_seeds.py:tiny",
                         {**tiny, "train.steps": 2}, f"--shard={shard}", "--dry_run")
        assert proc.returncode == 0, proc.stderr[-3000:]
        names += [line.split("] ", 1)[1].split(":", 1)[0]
                  for line in proc.stdout.splitlines() if line.startswith("[")]
    assert sorted(names) == sorted(sweeps.run_names(sweeps.load_sweep(
        str(REPO / "experiments/sweeps/lr_seeds.py:tiny"))))
    assert len(names) == 4
    assert not (tmp_path / "sweep").exists()  # a dry run writes nothing


# Real runs: kill and resume, a failing run ----------------------------------------------


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def results(workdir: Path) -> dict:
    return json.loads((workdir / "results.json").read_text())


def test_a_killed_sweep_resumes_to_the_results_of_an_uninterrupted_one(tmp_path, tiny):
    sweep_file = tmp_path / "seeds.py"
    sweep_file.write_text(SWEEP_FILE)
    overrides = {**tiny, "train.steps": 12, "checkpoint.every": 2, "checkpoint.export": False}

    # Uninterrupted, with a run that fails when it starts: recorded, the others finish.
    ref = tmp_path / "reference"
    proc = run_sweep(ref, f"{sweep_file}:with_failure", overrides)
    assert proc.returncode == 1, proc.stderr[-3000:]
    # Its runs compiled into the sweep's own cache (the seeds share every program).
    assert list((ref / "xla-cache").glob("jit_train_step*")), "no shared compilation cache"
    assert "3 runs: 2 done, 1 failed" in proc.stdout
    failed = status(ref)["checkpoint=_nonexistent"]
    assert failed["state"] == "failed" and failed["returncode"] == 2
    assert "/nonexistent" in failed["error"] and "\n" not in failed["error"]
    assert [status(ref)[f"seed={s}"]["state"] for s in (0, 1)] == ["done", "done"]

    # SIGKILL the sweep once run seed=0 has a checkpoint: no trainer outlives it.
    killed = tmp_path / "killed"
    cmd = sweep_cmd(killed, sweep_file, overrides, "--parallel=2")
    xla_cache = ref / "xla-cache"
    sweep = subprocess.Popen(cmd, cwd=REPO, env=sweep_env(xla_cache), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (killed / "seed=0" / "checkpoints" / "2").is_dir(), 300, "a checkpoint")
    sweep.kill()
    sweep.communicate(timeout=60)
    children = [r["pid"] for r in status(killed).values() if r["state"] == "running"]
    assert children
    wait_for(lambda: not any(map(alive, children)), 10, "the trainers to die with the sweep")
    assert not (killed / "seed=0" / "results.json").exists()

    # The same command again finishes the sweep; seed=0 resumed, it did not start over.
    proc = subprocess.run(cmd, cwd=REPO, env=sweep_env(xla_cache), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 runs: 2 done" in proc.stdout and "test accuracy" in proc.stdout
    steps = [json.loads(line)["step"] for line in
             (killed / "seed=0" / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["split"] == "train"]
    assert steps.count(1) == 1 and steps[-1] == 12
    assert (killed / "seed=0" / "sweep.log").read_text().count("=== sweep:") == 2
    for seed in (0, 1):
        ours, theirs = results(killed / f"seed={seed}"), results(ref / f"seed={seed}")
        for split in ("validation", "test"):
            assert ours[split]["accuracy"] == theirs[split]["accuracy"]
            assert ours[split]["loss"] == pytest.approx(theirs[split]["loss"], abs=1e-6)

    # Done runs are not run again; another sweep in the same directory is refused.
    proc = run_sweep(killed, sweep_file, overrides, "--dry_run")
    assert proc.returncode == 0 and proc.stdout.count("(done)") == 2, proc.stderr
    proc = run_sweep(killed, sweep_file, {**overrides, "train.steps": 13}, "--dry_run")
    assert_user_error(proc, "sweep.json", "another sweep")


def test_a_sweep_file_imports_its_own_package_from_any_directory(tmp_path, monkeypatch):
    """`experiments/sweeps/*.py` import `experiments.sweeps`; `sft-jax sweep` (whose
    sys.path holds no repository) finds it through the file's import root."""
    package = tmp_path / "proj" / "labpkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("RATES = [1e-4, 2e-4]\n")
    (package / "grid.py").write_text(
        "from labpkg import RATES\n\n"
        "def get_sweep(arg=None):\n    return [{'optim.learning_rate': r} for r in RATES]\n")
    monkeypatch.chdir(tmp_path)
    assert sweeps.import_root(package / "grid.py") == (tmp_path / "proj").resolve()
    runs = sweeps.load_sweep(str(package / "grid.py"))
    assert runs == [{"optim.learning_rate": 1e-4}, {"optim.learning_rate": 2e-4}]
    assert str((tmp_path / "proj").resolve()) not in sys.path  # only while it loads


LAB_SWEEPS = [  # (sweep file, its config, variants)
    ("overfitting.py", "configs/classification.py", [None, "tiny"]),
    ("lora.py", "configs/classification.py", [None, "tiny"]),
    ("model_choice.py", "configs/classification.py", [None, "tiny"]),
    ("model_choice.py", "configs/linear.py", ["tfidf", "tfidf-tiny"]),
    ("augmentation.py", "configs/classification.py", [None, "tiny"]),
    ("augmentation.py", "configs/linear.py", ["tfidf", "tfidf-tiny"]),
    ("cv_mr_subj.py", "configs/classification.py", [None, "smollm2", "tiny"]),
]


@pytest.mark.parametrize("name,config,variants", LAB_SWEEPS,
                         ids=[f"{n}-{c.split('/')[1]}" for n, c, _ in LAB_SWEEPS])
def test_the_laboratory_sweep_files_plan(name, config, variants):
    """Every variant of the committed sweep files names its runs uniquely and passes the
    command line's parser with its config (keys, types)."""
    for variant in variants:
        spec = f"experiments/sweeps/{name}" + (f":{variant}" if variant else "")
        plan = sweeps.make_plan(config, str(REPO / spec))
        assert plan.runs, spec
