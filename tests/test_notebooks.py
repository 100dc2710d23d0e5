"""The notebooks run top to bottom (as in Jupyter) on a fresh kernel, offline, on 2 CPU cores."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks")


@pytest.mark.parametrize("name", sorted(f for f in os.listdir(NOTEBOOKS) if f.endswith(".ipynb")))
def test_notebook_runs(name, tmp_path):
    book = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    for cell in book.cells:
        if cell.cell_type == "code":
            assert not cell.outputs, f"{name}: commit notebooks with outputs cleared"
    # as in Jupyter: the kernel's inline backend turns each figure into a PNG output
    NotebookClient(book, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    nbformat.write(book, str(tmp_path / name))  # the executed copy, for a look when a test fails
    images = [o for c in book.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert images, f"{name} shows no picture"
