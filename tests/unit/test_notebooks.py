"""The notebooks run top to bottom with the project's code (nbclient, headless)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, List

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]
#: Seconds a cell may take; each notebook takes well under a minute here.
CELL_TIMEOUT = 300


def _texts(outputs: List) -> str:
    return " ".join(str(o.get("data", {}).get("text/plain", "")) + str(o.get("text", "")) for o in outputs)


def _markdown(outputs: List) -> str:
    return " ".join(o.get("data", {}).get("text/markdown", "") for o in outputs)


def _training_ok(outputs: List) -> bool:
    return "alive_roc_auc" in _texts(outputs) and "held-out flows" in _texts(outputs)


def _evaluation_ok(outputs: List) -> bool:
    tables = _markdown(outputs)
    return (tables.count("| at-risk flows protected | at-risk packets protected |") == 2
            and "| oracle |" in tables and "| predictive |" in tables and "peak groups" in tables)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("name, min_images, content_ok", [
    # the data plots and the policy curves
    ("01_train_spe.ipynb", 2, _training_ok),
    # distributions, protection vs cost (generated, real), balance and groups
    ("02_evaluate.ipynb", 4, _evaluation_ok),
])  # fmt: skip
def test_notebook_executes(capsys, name: str, min_images: int, content_ok: Callable[[List], bool]):
    notebook = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    client = NotebookClient(notebook, timeout=CELL_TIMEOUT, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT / "notebooks")}})  # fmt: skip
    start = time.perf_counter()
    client.execute()
    with capsys.disabled():
        print(f"\n{name} executed in {time.perf_counter() - start:.1f} s")
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert len([o for o in outputs if "image/png" in o.get("data", {})]) >= min_images
    assert content_ok(outputs)
