"""The progress bar of every extraction: nothing at all when progress is off, a bar that degrades quietly.

`progress=None` (the default) shows it on a terminal and in a Jupyter notebook, nowhere else;
`progress=False` creates no bar and imports no tqdm. In Jupyter, `tqdm.auto` draws a widget when
ipywidgets is installed; without it tqdm warns `IProgress not found` and vggfeat uses the text bar instead.
"""

from __future__ import annotations

import sys
import warnings


class NoBar:
    """A progress bar that shows nothing (progress off)."""

    def update(self, n=1):
        pass

    def close(self):
        pass


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (its stderr is no terminal, but the user looks at it)."""
    shell = sys.modules.get("IPython")
    try:
        ip = shell.get_ipython() if shell is not None else None
    except Exception:  # noqa: BLE001 - no usable IPython: not a notebook
        return False
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


def progress_bar(total, progress, desc="extract"):
    """A tqdm bar of `total` images on stderr; `progress` None: where the user is, on a terminal or in a
    Jupyter notebook (a widget, or a text bar without ipywidgets), never into a pipe or a file.
    Returns `NoBar()` when progress is off."""
    if progress is None:
        progress = sys.stderr.isatty() or in_notebook()
    if not progress:
        return NoBar()
    from tqdm import TqdmWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TqdmWarning)  # an old ipywidgets: fall back to the text bar quietly
        try:
            import ipywidgets  # noqa: F401  (the notebook bar needs it; tqdm.auto warns without it)

            from tqdm.auto import tqdm
        except ImportError:
            from tqdm import tqdm
        try:
            return tqdm(total=total, unit="img", file=sys.stderr, dynamic_ncols=True, smoothing=0.1, desc=desc)
        except ImportError:  # tqdm.notebook without a usable widget
            from tqdm import tqdm as text_tqdm

            return text_tqdm(total=total, unit="img", file=sys.stderr, dynamic_ncols=True, smoothing=0.1,
                             desc=desc)
