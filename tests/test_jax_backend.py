"""The extraction loop runs unchanged with KERAS_BACKEND=jax (the GPU machine has JAX, not TensorFlow)."""

import importlib.util
import os

import numpy as np
import pytest

from vggfeat import extract, load_features
from vggfeat.models import build_vgg

from conftest import run_cli

pytestmark = [pytest.mark.jax, pytest.mark.skipif(importlib.util.find_spec("jax") is None,
                                                  reason="jax is not installed (pip install -e '.[dev]')")]


def test_extract_under_jax_equals_tensorflow(tmp_path, image_folder):
    weights = tmp_path / "w.weights.h5"
    build_vgg("vgg11", input_size=32, classes=3, seed=5).save_weights(weights)
    tf_out, jax_out = tmp_path / "tf.h5", tmp_path / "jax.h5"
    extract([image_folder], tf_out, ["fc7", "conv5_2"], weights=str(weights), progress=False, batch_size=4)
    result = run_cli("extract", image_folder, "-o", jax_out, "--weights", weights, "--layer", "fc7",
                     "--layer", "conv5_2", "--batch-size", "4", "-q", env={"KERAS_BACKEND": "jax"})
    assert result.returncode == 0, result.stderr
    assert "tensorflow" not in result.stderr.lower() or "error" not in result.stderr.lower()
    for layer in ("fc7", "conv5_2"):
        a, b = load_features(tf_out, layer), load_features(jax_out, layer)
        assert list(a.paths) == list(b.paths)
        np.testing.assert_allclose(a.features, b.features, rtol=1e-4, atol=1e-4 * np.abs(a.features).max())


def test_no_tensorflow_imported_under_jax(tmp_path, image_folder):
    weights = tmp_path / "w.weights.h5"
    build_vgg("vgg11", input_size=32, classes=3, seed=5).save_weights(weights)
    code = (
        "import sys, vggfeat\n"
        f"vggfeat.extract([{str(image_folder)!r}], {str(tmp_path / 'o.h5')!r}, ['fc7'], weights={str(weights)!r},"
        " progress=False)\n"
        "print('TF' if 'tensorflow' in sys.modules else 'NO-TF')\n"
    )
    import subprocess
    import sys

    env = dict(os.environ, KERAS_BACKEND="jax")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "NO-TF"


def test_the_extract_tests_pass_under_jax():
    """The whole extraction test module, once more, with KERAS_BACKEND=jax (in a fresh interpreter)."""
    import subprocess
    import sys

    from conftest import REPO

    env = dict(os.environ, KERAS_BACKEND="jax")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_extract.py",
                          "tests/test_multiscale.py"], capture_output=True, text=True, env=env, cwd=REPO)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert " passed" in out.stdout.strip().splitlines()[-1]
