"""The training notebook runs top to bottom with the project's code (nbclient, headless)."""

from __future__ import annotations

import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "01_train_spe.ipynb"
#: Seconds a cell may take; the whole notebook trains on the shipped flows in well under a minute.
CELL_TIMEOUT = 300


@pytest.mark.timeout(900)
def test_training_notebook_executes(capsys):
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
    assert len(images) >= 2  # the data plots and the policy curves were drawn
    texts = " ".join(str(o.get("data", {}).get("text/plain", "")) + str(o.get("text", "")) for o in outputs)
    assert "alive_roc_auc" in texts and "held-out flows" in texts
