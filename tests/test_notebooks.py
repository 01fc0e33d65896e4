"""Every notebook in notebooks/ runs top to bottom at tiny size (nbclient).

The committed copy of a notebook holds the outputs of its full run, executed top to
bottom in one kernel with `TINY = False`. The test clears those outputs and executes the
notebook with `TINY = True`, `WORKDIR` set to a temporary directory and `TINY_MODEL` to the
tiny random BERT of the other tests, injected in a cell after the one tagged `parameters`
(papermill's convention), so its sweeps run at the size of the task's `runlocal` config,
on a model that costs seconds, not a minute, per run (a notebook that trains uses
`TINY_MODEL` as the `model.checkpoint` of its TINY runs).
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from conftest import REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS


def parameters_index(nb) -> int | None:
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) <= 1, "more than one cell tagged parameters"
    return tagged[0] if tagged else None


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_holds_a_full_run(path: Path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    counts = [c.execution_count for c in code]
    assert all(counts), f"{path.name}: commit the notebook executed (cells without outputs)"
    assert counts == sorted(counts), f"{path.name}: cells executed out of order"
    assert not any(o.get("output_type") == "error" for c in code for o in c.outputs), \
        f"{path.name}: committed with an error output"
    index = parameters_index(nb)
    if index is not None:
        assert "TINY = False" in nb.cells[index].source, f"{path.name}: not the full run"


def execute_tiny(nb, workdir: Path, model: Path):
    """Runs `nb` with its outputs cleared and `TINY = True`, `WORKDIR = workdir`,
    `TINY_MODEL = model` injected after its parameters cell (when it has one), from the
    repository root."""
    from nbclient import NotebookClient

    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    index = parameters_index(nb)
    if index is not None:
        injected = nbformat.v4.new_code_cell(
            f"TINY = True\nWORKDIR = {str(workdir)!r}\nTINY_MODEL = {str(model)!r}")
        nb.cells.insert(index + 1, injected)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO)}}).execute()
    return nb


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_at_tiny_size(path: Path, tmp_path: Path, tiny_bert_dir: Path):
    execute_tiny(nbformat.read(path, as_version=4), tmp_path, tiny_bert_dir)


def test_the_tiny_parameters_replace_the_full_ones(tmp_path: Path):
    """The injected cell comes after the tagged one and before the rest; outputs of the
    full run are cleared first."""
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(
        'TINY = False\nWORKDIR = "workdirs"\nTINY_MODEL = "minilm-l6"')
    params.metadata["tags"] = ["parameters"]
    stale = nbformat.v4.new_code_cell("seen = (TINY, WORKDIR, TINY_MODEL)")
    stale.outputs = [nbformat.v4.new_output("stream", name="stdout", text="full run\n")]
    nb.cells = [params, stale, nbformat.v4.new_code_cell("print(seen)")]
    done = execute_tiny(nb, tmp_path, tmp_path / "model")
    assert done.cells[1].source == (f"TINY = True\nWORKDIR = {str(tmp_path)!r}\n"
                                    f"TINY_MODEL = {str(tmp_path / 'model')!r}")
    assert done.cells[2].outputs == []  # the full run's output is gone
    assert done.cells[3].outputs[0]["text"] == \
        f"(True, {str(tmp_path)!r}, {str(tmp_path / 'model')!r})\n"
