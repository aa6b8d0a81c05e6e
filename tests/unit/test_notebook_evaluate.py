"""The evaluation notebook runs top to bottom with the simulator's code (nbclient, headless)."""

from __future__ import annotations

import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "02_evaluate.ipynb"
#: Seconds a cell may take; the whole notebook takes about 20 s (a 60,000-flow population).
CELL_TIMEOUT = 120


@pytest.mark.timeout(300)
def test_evaluation_notebook_executes(capsys):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(notebook, timeout=CELL_TIMEOUT, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT / "notebooks")}})  # fmt: skip
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    with capsys.disabled():
        print(f"\n{NOTEBOOK.name} executed in {elapsed:.1f} s")
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 4  # distributions, protection vs cost (generated, real), balance and groups
    tables = " ".join(o.get("data", {}).get("text/markdown", "") for o in outputs)
    assert tables.count("| at-risk flows protected | at-risk packets protected |") == 2
    assert "| oracle |" in tables and "| predictive |" in tables and "peak groups" in tables
