"""Keras (and TensorFlow) imported by vggfeat without TensorFlow's C++ start-up chatter.

TensorFlow 2.20+ writes absl/oneDNN/CUDA notices from C++ to file descriptor 2 while it is imported and
when it first looks for devices (`WARNING: All log messages before absl::InitializeLog()...`, `oneDNN
custom operations are on...`, `Could not find cuda drivers...`), even with TF_CPP_MIN_LOG_LEVEL set; in
Jupyter they land in the first cell that extracts. `install()` (run by `import vggfeat`) adds a one-shot
import hook: when vggfeat first imports Keras, it sets TF_CPP_MIN_LOG_LEVEL=3 unless the user set it,
and, unless the level asks for messages (below 2), runs that import and the device discovery with
descriptor 2 pointed at /dev/null. Python exceptions still surface (the descriptor is restored first).
An import of Keras by other code is left alone, and so is a Keras already imported.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import os
import sys

LEVEL = "3"


def _from_vggfeat():
    """True when the import under way was started by vggfeat's code (not the user's, not another library's)."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_globals.get("__name__") or ""
        if not (name.startswith("importlib") or name.startswith("_frozen_importlib") or name == __name__):
            return name == "vggfeat" or name.startswith("vggfeat.")
        frame = frame.f_back
    return False


@contextlib.contextmanager
def _stderr_muted():
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no descriptor 2 to mute
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class _MutedLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        with _stderr_muted():
            self.loader.exec_module(module)
            tf = sys.modules.get("tensorflow")
            if tf is not None and hasattr(tf, "config"):
                tf.config.list_physical_devices()  # device discovery logs here (cuInit...), while muted


class _KerasImportHook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "keras" or not _from_vggfeat():
            return None
        uninstall()
        level = os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", LEVEL)
        if "tensorflow" in sys.modules or not level.strip().isdigit() or int(level) < 2:
            return None  # TensorFlow already spoke, or the user asked for its messages
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _MutedLoader(spec.loader)
        return spec


_HOOK = _KerasImportHook()


def install():
    """Quiet vggfeat's first import of Keras (a no-op when Keras is imported already)."""
    if "keras" not in sys.modules and _HOOK not in sys.meta_path:
        sys.meta_path.insert(0, _HOOK)


def uninstall():
    if _HOOK in sys.meta_path:
        sys.meta_path.remove(_HOOK)
