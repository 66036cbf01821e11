"""Every notebook in notebooks/ runs top to bottom, offline, in a fresh python3 kernel; a failing cell fails its test.

Notebooks are stored without outputs (see notebooks/README.md); `test_notebooks_are_stored_small` refuses big ones.
"""

from __future__ import annotations

from pathlib import Path

import nbclient
import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT_S = 300
MAX_STORED_BYTES = 256 * 1024  # a few small outputs at most; no embedded runs of plots


def run_notebook(path: Path, tmp_path: Path, monkeypatch) -> None:
    """Execute `path` in a fresh kernel, cwd its folder; raises CellExecutionError when a cell fails."""
    # The kernel inherits this environment: nothing may be downloaded, temporary folders land in tmp_path.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    nb = nbformat.read(path, as_version=4)
    assert any(c.cell_type == "code" for c in nb.cells), f"{path.name} has no code cells"
    nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}}).execute()


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    run_notebook(path, tmp_path, monkeypatch)


def test_a_failing_cell_fails_the_run(tmp_path, monkeypatch):
    """The runner itself: a cell that raises (after one that passes) is reported, in the notebook's folder."""
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("import os; assert os.getcwd() == %r" % str(tmp_path)),
        nbformat.v4.new_markdown_cell("text"),
        nbformat.v4.new_code_cell("assert 1 + 1 == 3, 'wrong sum'"),
    ])
    nbformat.write(nb, tmp_path / "broken.ipynb")
    with pytest.raises(nbclient.exceptions.CellExecutionError, match="wrong sum"):
        run_notebook(tmp_path / "broken.ipynb", tmp_path, monkeypatch)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebooks_are_stored_small(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    size = path.stat().st_size
    assert size <= MAX_STORED_BYTES, (
        f"{path.name} is {size // 1024} KiB; clear its outputs: python -c \"import nbformat as n, sys; "
        f"b = n.read(sys.argv[1], 4); [c.update(outputs=[], execution_count=None) for c in b.cells "
        f"if c.cell_type == 'code']; n.write(b, sys.argv[1])\" {path}")
