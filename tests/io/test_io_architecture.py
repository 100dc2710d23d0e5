"""The two wings (docs/architecture.md), read from the code: the format wing (`vggfeat.io`) never imports
the run wing, Keras, TensorFlow or anything that computes a feature; the run wing writes rows only
through the format wing's sinks; the library never imports the CLI. No TensorFlow is imported here."""

import ast
import os
import subprocess
import sys

import pytest
from io_helpers import REPO, no_framework_imported  # noqa: F401 - the autouse check

PKG = os.path.join(REPO, "vggfeat")

#: what a module of the format wing may import: the standard library, NumPy, h5py, the format wing itself
#: and these modules of vggfeat, none of which imports Keras (checked below by importing them)
FORMAT_MAY_IMPORT = {"vggfeat.errors", "vggfeat.redact", "vggfeat.config", "vggfeat.specs", "vggfeat._version",
                     "vggfeat.progress", "vggfeat.faults"}
THIRD_PARTY = {"numpy", "h5py", "sklearn", "tqdm", "ipywidgets", "IPython"}
NEVER_IN_FORMAT = {"keras", "tensorflow", "jax", "torch", "ray", "PIL"}


def modules(wing):
    folder = os.path.join(PKG, wing)
    return sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".py"))


def imports_of(path):
    """Every module `path` imports, at the top and inside functions, as absolute dotted names."""
    package = "vggfeat." + os.path.relpath(os.path.dirname(path), PKG).replace(os.sep, ".").strip(".")
    package = package.rstrip(".")
    tree = ast.parse(open(path, encoding="utf-8").read())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
                out.add(name)
                if not node.module:
                    out.update(f"{name}.{a.name}" for a in node.names)
            else:
                out.add(node.module)
    return out


def _stdlib(name):
    return name.split(".")[0] in sys.stdlib_module_names or name == "__future__"


@pytest.mark.parametrize("path", modules("io"), ids=os.path.basename)
def test_the_format_wing_imports_no_network_and_no_run_wing(path):
    bad = []
    for name in imports_of(path):
        top = name.split(".")[0]
        if _stdlib(name) or top in THIRD_PARTY or name.startswith("vggfeat.io") or name in FORMAT_MAY_IMPORT \
                or name == "vggfeat":
            continue
        bad.append(name)
    assert not bad, f"{os.path.relpath(path, REPO)} imports {sorted(bad)}"
    assert not (imports_of(path) & NEVER_IN_FORMAT)


@pytest.mark.parametrize("path", modules("run"), ids=os.path.basename)
def test_the_run_wing_writes_only_through_the_format_wings_sinks(path):
    """No engine opens HDF5 itself or builds a writer: rows go into a sink (`vggfeat.io.sink`)."""
    names = imports_of(path)
    assert "h5py" not in names, f"{os.path.basename(path)} opens HDF5 itself"
    source = open(path, encoding="utf-8").read()
    assert "FeatureWriter" not in source, f"{os.path.basename(path)} builds a FeatureWriter: use a sink"


def test_the_library_never_imports_the_cli():
    for folder, _, files in os.walk(PKG):
        for n in files:
            if n.endswith(".py"):
                names = imports_of(os.path.join(folder, n))
                assert not any(x == "cli" or x.startswith("cli.") or x.startswith("vggfeat_cli") for x in names), n


def test_importing_the_format_wing_loads_no_framework():
    """Every module of the format wing (and what it imports) imported for real in a fresh process."""
    names = [f"vggfeat.io.{os.path.basename(p)[:-3]}" for p in modules("io") if not p.endswith("__init__.py")]
    code = ("import importlib, sys\n"
            f"for m in {names!r}: importlib.import_module(m)\n"
            "heavy = [m for m in ('keras', 'tensorflow', 'jax', 'torch', 'ray', 'vggfeat.run', 'vggfeat.stream',\n"
            "                     'vggfeat.extractor', 'vggfeat.models', 'vggfeat.weights') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
