"""The paper's transfer descriptor: dense, multi-scale, flip-averaged (Appendix B)."""

import json

import numpy as np
import pytest

import vggfeat
from vggfeat import FeatureExtractor, extract, load_features
from vggfeat.errors import InputError, OutputError
from conftest import build as build_extractor
from conftest import make_folder

CONV = dict(arch="vgg11", weights="random", layers=["conv5_2"], fully_convolutional=True, batch_size=4)


def _image(w, h, seed=0, symmetric=False):
    a = np.random.default_rng(seed).integers(0, 256, (h, w, 3)).astype(np.uint8)
    if symmetric:
        a[:, w - w // 2:] = a[:, : w // 2][:, ::-1]
    return a


def test_one_scale_at_crop_size_on_a_square_image_equals_plain_fc7():
    img = _image(224, 224)
    plain = FeatureExtractor("vgg11", "random", ["fc7"], resize="squash").predict([img])["fc7"]
    ms = build_extractor(["fc7"], arch="vgg11", weights="random", dense=True, scales=[224])
    dense = ms.predict([img])["fc7"]
    assert dense.shape == (1, 4096)
    assert np.abs(dense - plain).max() <= 1e-4 * np.abs(plain).max()


def test_flip_of_a_symmetric_image_changes_nothing():
    img = _image(64, 48, symmetric=True)
    a = build_extractor(**CONV, scales=[40, 56]).predict([img])["conv5_2"]
    b = build_extractor(**CONV, scales=[40, 56], flip=True).predict([img])["conv5_2"]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    c = build_extractor(**CONV, scales=[40, 56], flip=True).predict([_image(64, 48)])["conv5_2"]
    d = build_extractor(**CONV, scales=[40, 56]).predict([_image(64, 48)])["conv5_2"]
    assert not np.allclose(c, d)  # an asymmetric image does change


def test_stack_gives_dims_times_scales_and_mean_of_one_scale_is_that_scale():
    img = _image(80, 60, seed=3)
    stack = build_extractor(**CONV, scales=[32, 48, 64], aggregate="stack")
    assert stack.output_shapes == {"conv5_2": (512 * 3,)}
    out = stack.predict([img])["conv5_2"]
    single = build_extractor(**CONV, scales=[48])
    np.testing.assert_allclose(out[:, 512:1024], single.predict([img])["conv5_2"], rtol=1e-5, atol=1e-6)
    base = FeatureExtractor("vgg11", "random", ["conv5_2"], form="fully_conv", input_size=48)
    from vggfeat.multiscale import _short_side

    np.testing.assert_allclose(single.predict([img])["conv5_2"], base.predict([_short_side(img, 48)])["conv5_2"],
                               rtol=1e-5, atol=1e-6)
    mx = build_extractor(**CONV, scales=[32, 48, 64], aggregate="max").predict([img])["conv5_2"]
    np.testing.assert_allclose(mx, out.reshape(1, 3, 512).max(axis=1), rtol=1e-6)


def test_l2_normalises_the_descriptor():
    out = build_extractor(**CONV, scales=[32, 48], l2=True).predict([_image(50, 40), _image(40, 70, 1)])["conv5_2"]
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)


def test_attributes_are_written_and_checked_on_resume(tmp_path):
    root = tmp_path / "in"
    make_folder(str(root), per_class=2, size=(56, 40))
    out = tmp_path / "f.h5"
    opts = dict(CONV, scales=[32, 48], flip=True, aggregate="stack", l2=True, progress=False, form="fully_conv")
    del opts["fully_convolutional"]
    extract([root], out, **opts)
    attrs = vggfeat.read_attrs(out)
    assert json.loads(attrs["scales"]) == [32, 48] and attrs["flip"] and attrs["aggregate"] == "stack" and attrs["l2"]
    assert load_features(out).features.shape == (6, 1024)
    extract([root], out, resume=True, **opts)
    with pytest.raises(OutputError, match="flip=True in the file, False now"):
        extract([root], out, resume=True, **dict(opts, flip=False))


def test_errors():
    with pytest.raises(InputError, match="scales need form dense"):
        build_extractor(["fc7"], arch="vgg11", weights="random", scales=[256])
    with pytest.raises(InputError, match="give scales"):
        build_extractor(["fc7"], arch="vgg11", weights="random", flip=True)
    with pytest.raises(InputError, match="between 224 and"):
        build_extractor(["fc7"], arch="vgg11", weights="random", dense=True, scales=[128, 256])
    with pytest.raises(InputError, match="need pooling avg or max"):
        build_extractor(**CONV, scales=[32], pooling="none")


def test_featurizer_takes_the_multiscale_options(tmp_path):
    from vggfeat import VGGFeaturizer

    fz = VGGFeaturizer(arch="vgg11", weights="random", layer="conv5_2", form="fully_conv", scales=[32, 48],
                       aggregate="stack", flip=True, l2=True, batch_size=4).fit()
    img = _image(60, 44)
    out = fz.transform([img])
    assert out.shape == (1, 1024) and fz.get_feature_names_out()[-1] == "conv5_2_1023"
    # an array is an image like a file: decoded to the largest scale first, then to each scale
    from PIL import Image

    Image.fromarray(img).save(tmp_path / "img.png")
    np.testing.assert_allclose(out, fz.transform([str(tmp_path / "img.png")]), rtol=1e-5, atol=1e-6)
    ms = build_extractor(**CONV, scales=[32, 48], aggregate="stack", flip=True, l2=True)
    from vggfeat.images import prepare_array

    want = ms.predict([prepare_array(img, ms.geometry)])["conv5_2"]
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
