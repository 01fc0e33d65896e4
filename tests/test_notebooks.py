"""Every notebook in notebooks/ runs top to bottom at tiny size (nbclient).

The committed copy of a notebook holds the outputs of its full run, executed top to
bottom in one kernel with `TINY = False`. The test clears those outputs and executes the
notebook with `TINY = True` and `WORKDIR` set to a temporary directory, injected in a cell
after the one tagged `parameters` (papermill's convention), so its sweeps run at the size
of the task's `runlocal` config.
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


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_at_tiny_size(path: Path, tmp_path: Path):
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    index = parameters_index(nb)
    if index is not None:
        injected = nbformat.v4.new_code_cell(f"TINY = True\nWORKDIR = {str(tmp_path)!r}")
        nb.cells.insert(index + 1, injected)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO)}}).execute()
