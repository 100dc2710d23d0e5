"""The Python API is as quiet as the CLI (issue 14, point 5): no TensorFlow C++ lines, no tqdm warnings."""

import os
import subprocess
import sys

import pytest

from conftest import REPO

SCRIPT = r"""
import os, sys
sys.path.insert(0, {tests!r})
from conftest import make_folder
make_folder({images!r}, per_class=2)
{before}
import vggfeat
vggfeat.extract([{images!r}], {out!r}, ["fc7"], arch="vgg11", weights="random", input_size=32,
                progress={progress})
print("tqdm imported:", "tqdm" in sys.modules)
print("level:", os.environ.get("TF_CPP_MIN_LOG_LEVEL"))
"""

# a notebook as tqdm.auto recognises one (ipykernel's shell), without ipywidgets installed
FAKE_NOTEBOOK = """
import types
shell = type("ZMQInteractiveShell", (), {})()
ipython = types.ModuleType("IPython"); ipython.get_ipython = lambda: shell
sys.modules["IPython"] = ipython
sys.modules["ipykernel.zmqshell"] = types.ModuleType("ipykernel.zmqshell")
sys.modules["ipywidgets"] = None  # not installed
"""

NOISE = ("absl", "oneDNN", "cuda", "cuInit", "IProgress", "TqdmWarning", "tqdm", "retracing")


def run(tmp_path, progress=False, before="", env=None):
    e = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # conftest sets it
    e.update(env or {})
    code = SCRIPT.format(tests=os.path.join(REPO, "tests"), images=str(tmp_path / "images"),
                         out=str(tmp_path / "f.h5"), progress=progress, before=before)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, timeout=600,
                          cwd=str(tmp_path))


@pytest.mark.parametrize("where", ["script", "notebook"])
def test_extract_with_progress_off_prints_nothing_and_creates_no_bar(tmp_path, where):
    r = run(tmp_path, progress=False, before=FAKE_NOTEBOOK if where == "notebook" else "")
    assert r.returncode == 0, r.stderr
    assert [n for n in NOISE if n.lower() in r.stderr.lower()] == [], r.stderr
    assert r.stderr.strip() == "", r.stderr
    assert "tqdm imported: False" in r.stdout
    assert "level: 3" in r.stdout  # set for TensorFlow, since the user had not


def test_notebook_bar_without_ipywidgets_degrades_quietly(tmp_path):
    r = run(tmp_path, progress=True, before=FAKE_NOTEBOOK)
    assert r.returncode == 0, r.stderr
    assert "IProgress" not in r.stderr and "Warning" not in r.stderr, r.stderr
    assert "6/6" in r.stderr  # the text bar, on stderr


def test_a_log_level_the_user_set_is_kept(tmp_path):
    r = run(tmp_path, env={"TF_CPP_MIN_LOG_LEVEL": "1"})
    assert r.returncode == 0, r.stderr
    assert "level: 1" in r.stdout


def test_first_extract_in_a_jupyter_kernel_writes_nothing_to_the_cell(tmp_path, monkeypatch):
    """A real kernel (ipykernel forwards what C++ writes on descriptor 2 to the cell): nothing on stdout/stderr.
    Before, the cell showed the absl/oneDNN/CUDA lines twice (import and device discovery)."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    code = (f"import sys; sys.path.insert(0, {os.path.join(REPO, 'tests')!r})\n"
            "from conftest import make_folder\n"
            f"make_folder({str(tmp_path / 'images')!r}, per_class=2)\n"
            "import vggfeat\n"
            f"vggfeat.extract([{str(tmp_path / 'images')!r}], {str(tmp_path / 'f.h5')!r}, ['fc7'], arch='vgg11', "
            "weights='random', input_size=32, progress=False)\n")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
                            ).execute()
    streams = [o for o in nb.cells[0].outputs if o["output_type"] == "stream"]
    assert streams == []
    assert [o["output_type"] for o in nb.cells[0].outputs] == ["execute_result"]  # the ExtractSummary
