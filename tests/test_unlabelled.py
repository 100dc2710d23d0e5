"""Unlabelled rows (label -1: images at the top of a labelled folder) are said, never taken for a class."""

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from vggfeat import extract, load_features
from vggfeat.classifier import classify
from vggfeat_cli.main import cli

from conftest import draw, make_folder

SMALL = dict(arch="vgg11", weights="random", input_size=32, batch_size=8)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Three classes of 6 images, and 2 images at the top of the folder (no class)."""
    root = tmp_path_factory.mktemp("mixed")
    make_folder(str(root / "images"), per_class=6)
    for i in range(2):
        Image.fromarray(draw("circle", (200, 200, 0), seed=900 + i)).save(root / "images" / f"top_{i}.png")
    extract([root / "images"], root / "f.h5", ["fc7"], progress=False, **SMALL)
    return root / "f.h5"


def test_load_features_X_y_leaves_out_unlabelled_rows_with_a_warning(mixed):
    data = load_features(mixed, "fc7")
    assert (data.labels == -1).sum() == 2 and len(data.labels) == 20  # the Bunch keeps every row
    with pytest.warns(UserWarning, match="2 of 20 rows are unlabelled"):
        X, y = load_features(mixed, "fc7", return_X_y=True)
    assert X.shape[0] == y.shape[0] == 18
    assert set(np.unique(y)) == {0, 1, 2}
    np.testing.assert_array_equal(X, data.features[data.labels >= 0])


def test_load_features_X_y_without_unlabelled_rows_is_silent(mixed, tmp_path, recwarn):
    make_folder(str(tmp_path / "images"), per_class=2)
    extract([tmp_path / "images"], tmp_path / "g.h5", ["fc7"], progress=False, **SMALL)
    X, y = load_features(tmp_path / "g.h5", "fc7", return_X_y=True)
    assert len(y) == 6 and (y >= 0).all()
    assert not [w for w in recwarn if "unlabelled" in str(w.message)]


def test_classify_says_how_many_unlabelled_rows_it_left_out(mixed):
    result = classify(mixed, "fc7", cv=3)
    assert result.unlabelled == 2 and len(result.y_true) == 18
    run = CliRunner().invoke(cli, ["classify", str(mixed), "--cv", "3"])
    assert run.exit_code == 0, run.output
    lines = [ln for ln in run.stderr.splitlines() if "unlabelled" in ln]
    assert len(lines) == 1 and "2 of 20 rows" in lines[0] and "left out" in lines[0], run.stderr
    assert "unlabelled" not in run.stdout
