"""Regression tests for what surprised a new user in the first hour (issue "The first hour", point 7)."""

import re

import numpy as np
import pytest
from PIL import Image

import vggfeat
from vggfeat.errors import InputError, LayerError, OutputError

from conftest import make_folder

FAST = dict(arch="vgg11", weights="random", input_size=32, batch_size=4, progress=False)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("surprises") / "in"
    make_folder(str(root), per_class=2)
    return root


@pytest.mark.parametrize("name", ["feats.npy", "feats.csv", "feats.pkl", "FEATS.NPZ"])
def test_an_output_named_like_another_format_is_refused(tmp_path, folder, name):
    with pytest.raises(OutputError, match=r"vggfeat writes HDF5, not .*; name the output feats\.h5|FEATS\.h5"):
        vggfeat.extract([folder], tmp_path / name, ["fc7"], **FAST)
    assert list(tmp_path.iterdir()) == []


def test_a_layer_is_stored_under_one_spelling_and_found_under_any(tmp_path, folder):
    out = tmp_path / "f.h5"
    vggfeat.extract([folder], out, ["FC7", "block5_pool"], **FAST)
    attrs = vggfeat.read_attrs(out)
    assert attrs["layers"] == '["fc7", "pool5"]'
    for spelling in ("fc7", "FC7", "fc2", " fc7 "):
        assert vggfeat.load_features(out, spelling).layer == "fc7"
    assert vggfeat.load_features(out, "Pool5").features.shape == (6, 512)
    with pytest.raises(LayerError, match="a layer is named twice"):
        vggfeat.ExtractorConfig(layers=["fc7", "fc2"], weights="random")


def test_summary_says_total_and_extraction_time_rows_and_singulars(tmp_path, folder):
    one = tmp_path / "one"
    one.mkdir()
    Image.open(next(folder.glob("circles/*.png"))).save(one / "a.png")
    summary = vggfeat.extract([one], tmp_path / "f.h5", ["fc7", "pool5"], **FAST)
    line = summary.line()
    assert summary.total_seconds >= summary.seconds > 0
    assert re.search(r"^1 image written, 0 failed in \d+\.\d s \(extraction \d+\.\d s, [\d.]+ images/s\); "
                     r"1 row in .*f\.h5 \[fc7 \(1, 4096\), pool5 \(1, 512\)\]$", line), line


def test_feature_extractor_predict_takes_paths_and_pillow_images_like_extract(tmp_path, folder):
    out = tmp_path / "f.h5"
    vggfeat.extract([folder], out, ["fc7"], **FAST)
    data = vggfeat.load_features(out, "fc7")
    fx = vggfeat.build_extractor(vggfeat.ExtractorConfig(layers=["fc7"], arch="vgg11", weights="random",
                                                          input_size=32), batch_size=4)
    files = [folder / p for p in data.paths[:3]]
    photo = Image.open(files[1])
    got = fx.predict([files[0], photo.convert("RGBA"), str(files[2])])["fc7"]
    np.testing.assert_allclose(got, data.features[:3], rtol=1e-5, atol=1e-5)
    array = np.asarray(photo.convert("RGB"))
    with pytest.raises(InputError, match=r"does not fit the input size 32: pass the file path or a Pillow image"):
        fx.predict([array])
    np.testing.assert_allclose(fx.predict([vggfeat.prepare_array(array, fx.geometry)])["fc7"], data.features[1:2],
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match="cannot read image .*missing.png"):
        fx.predict([tmp_path / "missing.png"])
