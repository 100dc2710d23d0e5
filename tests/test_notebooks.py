"""The notebooks run top to bottom (as in Jupyter) on a fresh kernel each, offline, on 2 CPU cores.

The notebooks this session selected start together, each in its own kernel (its own process, as when
opened side by side in Jupyter): what one leaves idle (small forward passes, writing checkpoints, decoding,
scikit-learn, plotting, the kernel's start-up) the others use: 178 s one after the other, 99-130 s together
on 2 cores. Together they hold about 8.4 GB (resident, kernels summed; 03 alone 5.6 GB, 02 2.2 GB, 01
1.5 GB), so they run together only where that much memory is free, and one after the other otherwise.
The cells run are the same either way; run together, the timings notebook 03 prints are not steady-state
ones (no test reads them). Each test checks its own notebook's run."""

import asyncio
import os

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks")
NAMES = sorted(f for f in os.listdir(NOTEBOOKS) if f.endswith(".ipynb"))
#: free memory (MemAvailable) under which the notebooks run one after the other
TOGETHER_GIB = 10


def _kernels_at_once(n):
    try:
        with open("/proc/meminfo") as f:
            free = {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in f)}["MemAvailable"]
    except (OSError, KeyError, ValueError):
        return 1
    return n if free >= TOGETHER_GIB * 2**20 else 1


@pytest.fixture(scope="module")
def executed(request, tmp_path_factory):
    """{name: (the notebook as executed, its folder, what its run raised or None)} for the selected notebooks."""
    selected = [item.callspec.params["name"] for item in request.session.items
                if getattr(item, "originalname", None) == "test_notebook_runs" and item.module is request.module]
    runs, refused = {}, {}
    for name in selected:
        book = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
        if any(cell.outputs for cell in book.cells if cell.cell_type == "code"):
            refused[name] = (book, None, AssertionError(f"{name}: commit notebooks with outputs cleared"))
        else:
            runs[name] = (book, tmp_path_factory.mktemp(name.split("_")[0]))

    async def run_all():
        at_once = asyncio.Semaphore(_kernels_at_once(len(runs)))

        async def run(book, folder):
            # as in Jupyter: the kernel's inline backend turns each figure into a PNG output
            async with at_once:
                tmp = folder / "tmp"  # the kernel's temporary folder: what a notebook leaves there is seen
                tmp.mkdir()
                await NotebookClient(book, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(folder)}}).async_execute(
                    env={**os.environ, "TMPDIR": str(tmp)})

        return await asyncio.gather(*(run(book, folder) for book, folder in runs.values()), return_exceptions=True)

    results = asyncio.run(run_all()) if runs else []
    return {**refused, **{name: (book, folder, error if isinstance(error, BaseException) else None)
                          for (name, (book, folder)), error in zip(runs.items(), results)}}


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name, executed):
    book, folder, error = executed[name]
    if folder is not None:
        nbformat.write(book, str(folder / name))  # the executed copy, for a look when a test fails
    if error is not None:
        raise error
    images = [o for c in book.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert images, f"{name} shows no picture"
    left = [p.name for p in (folder / "tmp").glob("vggfeat-nb-*")]
    assert not left, f"{name} left its temporary folder {left} (issue 22: they piled up in the temp dir)"
