"""The main job: folders to HDF5, row order, labels, failures, refusal, resume, layouts, precision."""

import h5py
import numpy as np
import pytest
from PIL import Image

import vggfeat
from vggfeat import FeatureExtractor, extract, load_features
from vggfeat.errors import LayerError, OutputError
from vggfeat.errors import ExtractFailed
from vggfeat.images import load_image

from conftest import make_folder

FAST = dict(arch="vgg11", weights="random", input_size=32, batch_size=4, progress=False)


@pytest.fixture(scope="module")
def fast_extractor():
    return FeatureExtractor("vgg11", "random", ["fc7", "pool5"], input_size=32, batch_size=4)


def test_rows_follow_paths_and_labels_follow_folders(tmp_path, image_folder, fast_extractor):
    out = tmp_path / "f.h5"
    summary = extract([image_folder], out, extractor=fast_extractor, progress=False)
    assert summary.written == 12 and summary.failed == 0
    data = load_features(out, "fc7")
    assert list(data.paths) == sorted(data.paths)
    assert data.class_names == ["circles", "squares", "stripes"]
    for path, label in zip(data.paths, data.labels):
        assert data.class_names[label] == path.split("/")[0]
    # row i is the features of paths[i], computed alone
    for i in (0, 5, 11):
        alone = fast_extractor.predict([load_image(image_folder / data.paths[i], fast_extractor.geometry)])
        np.testing.assert_allclose(data.features[i], alone["fc7"][0], rtol=1e-5, atol=1e-6)
    assert data.attrs["complete"] and data.attrs["preprocessing"] == "caffe"


def test_attributes_record_the_settings(tmp_path, image_folder):
    out = tmp_path / "f.h5"
    extract([image_folder], out, ["fc7", "conv5_2"], **FAST)
    attrs = vggfeat.read_attrs(out)
    for key in ("format", "format_version", "arch", "weights", "preprocessing", "resize", "input_size", "layers",
                "pooling", "precision", "vggfeat_version", "created"):
        assert key in attrs, key
    assert attrs["format"] == "vggfeat" and attrs["format_version"] == 3 and attrs["layers"] == '["fc7", "conv5_2"]'
    assert attrs["weights"] == "random" and attrs["seed"] == 0 and attrs["arch"] == "vgg11"
    with h5py.File(out) as f:
        assert f["features/fc7"].shape == (12, 4096) and f["features/conv5_2"].shape == (12, 512)
        assert f["features/fc7"].maxshape == (None, 4096) and f["features/fc7"].chunks is not None
        assert f["labels"].dtype == np.int64


def test_corrupt_images_are_skipped_and_recorded(tmp_path, image_folder, fast_extractor):
    (image_folder / "circles" / "zero.png").write_bytes(b"")
    (image_folder / "squares" / "text.jpg").write_text("hello")
    good = image_folder / "stripes" / "img_000.png"
    (image_folder / "stripes" / "cut.png").write_bytes(good.read_bytes()[:200])
    out = tmp_path / "f.h5"
    summary = extract([image_folder], out, extractor=fast_extractor, progress=False)
    assert summary.written == 12 and summary.failed == 3
    data = load_features(out, "fc7")
    failed = dict(data.failed)
    assert set(failed) == {"circles/zero.png", "squares/text.jpg", "stripes/cut.png"}
    assert "empty file" in failed["circles/zero.png"]
    assert not set(failed) & set(data.paths)
    with pytest.raises(ExtractFailed, match="cannot read circles/zero.png: empty file"):
        extract([image_folder], tmp_path / "s.h5", extractor=fast_extractor, strict=True, progress=False)


def test_nothing_readable_is_an_error(tmp_path, fast_extractor):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_bytes(b"junk")
    with pytest.raises(ExtractFailed, match="no image could be read"):
        extract([tmp_path / "in"], tmp_path / "f.h5", extractor=fast_extractor, progress=False)


def test_existing_output_is_refused_then_overwritten(tmp_path, image_folder, fast_extractor):
    out = tmp_path / "f.h5"
    out.write_bytes(b"precious")
    with pytest.raises(OutputError, match="exists; pass --resume .* or --overwrite"):
        extract([image_folder], out, extractor=fast_extractor, progress=False)
    assert out.read_bytes() == b"precious"
    extract([image_folder], out, extractor=fast_extractor, overwrite=True, progress=False)
    assert load_features(out, "fc7").features.shape == (12, 4096)


def test_resume_checks_settings_and_adds_only_new_images(tmp_path, image_folder, fast_extractor):
    out = tmp_path / "f.h5"
    extract([image_folder], out, extractor=fast_extractor, progress=False)
    again = extract([image_folder], out, extractor=fast_extractor, resume=True, progress=False)
    assert again.written == 0 and again.skipped == 12
    make_folder(str(image_folder), per_class=5)  # one more image per class
    more = extract([image_folder], out, extractor=fast_extractor, resume=True, progress=False)
    assert more.written == 3 and more.total_rows == 15
    data = load_features(out, "fc7")
    assert len(set(data.paths)) == 15
    other = FeatureExtractor("vgg11", "random", ["fc7", "pool5"], input_size=32, seed=1)
    with pytest.raises(OutputError, match="seed=0 in the file, 1 now"):
        extract([image_folder], out, extractor=other, resume=True, progress=False)


def test_float16_storage_and_compression(tmp_path, image_folder, fast_extractor):
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    extract([image_folder], a, extractor=fast_extractor, progress=False)
    extract([image_folder], b, extractor=fast_extractor, dtype="float16", compression="gzip", progress=False)
    fa, fb = load_features(a, "pool5"), load_features(b, "pool5")
    assert fb.features.dtype == np.float16
    np.testing.assert_allclose(fb.features.astype(np.float32), fa.features, rtol=2e-3, atol=1e-3)
    with h5py.File(b) as f:
        assert f["features/pool5"].compression == "gzip"


def test_load_features_errors(tmp_path, image_folder, fast_extractor):
    out = tmp_path / "f.h5"
    extract([image_folder], out, extractor=fast_extractor, progress=False)
    with pytest.raises(LayerError, match="'fc6' is not in .*it holds: fc7, pool5"):
        load_features(out, "fc6")
    with pytest.raises(LayerError, match="several layers"):
        load_features(out)
    X, y = load_features(out, "pool5", return_X_y=True)
    assert X.shape == (12, 512) and y.shape == (12,)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(OutputError, match="not a vggfeat file"):
        load_features(tmp_path / "other.h5")


def test_fully_convolutional_with_images_of_different_shapes(tmp_path):
    root = tmp_path / "in"
    make_folder(str(root), per_class=2, size=(64, 48))
    make_folder(str(root / "wide"), per_class=1, size=(96, 40))
    fx = FeatureExtractor("vgg11", "random", ["conv5_2"], form="fully_conv", input_size=40, batch_size=3)
    out = tmp_path / "f.h5"
    extract([root], out, extractor=fx, progress=False)
    data = load_features(out)
    assert data.features.shape == (9, 512)
    i = list(data.paths).index("wide/squares/img_000.png")
    alone = fx.predict([load_image(root / data.paths[i], fx.geometry)])["conv5_2"][0]
    np.testing.assert_allclose(data.features[i], alone, rtol=1e-5, atol=1e-6)


def test_dense_form_extraction(tmp_path):
    root = tmp_path / "in"
    make_folder(str(root), per_class=1, size=(80, 64))
    out = tmp_path / "f.h5"
    extract([root], out, ["fc7"], arch="vgg11", weights="random", form="dense", input_size=224, progress=False)
    assert vggfeat.read_attrs(out)["form"] == "dense"
    assert load_features(out).features.shape == (3, 4096)


def _cosine(a, b):
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_low_precision_features_are_close_to_float32(tmp_path, image_folder, precision):
    # vgg16's 13 convolutions for the rounding to build up through, at 32 pixels (conv5_3 a 2x2 map, all of
    # it seen by fc7) on 6 images, 2 of each class: float16 convolutions are emulated on CPU (about 1 s an
    # image at 32 pixels on 2 cores, 4x that at 64, where 12 images took 35 s)
    ref = FeatureExtractor("vgg16", "random", ["fc7", "conv5_3"], input_size=32)
    low = FeatureExtractor("vgg16", "random", ["fc7", "conv5_3"], input_size=32, precision=precision)
    images = [load_image(p, ref.geometry) for p in sorted(image_folder.rglob("*.png"))[::2]]
    a, b = ref.predict(images), low.predict(images)
    for layer in ("fc7", "conv5_3"):
        cos = _cosine(a[layer], b[layer])
        print(f"{precision} {layer}: cosine similarity to float32 min {cos.min():.5f} mean {cos.mean():.5f}")
        assert cos.min() > 0.99
        assert b[layer].dtype == np.float32


def test_png_features_equal_keras_on_the_same_preprocessed_pixels(tmp_path):
    """A 32x32 PNG through vggfeat's whole pipeline vs keras.applications' VGG16 (same weight file)."""
    import keras
    from test_weights import save_legacy_h5

    keras.utils.set_random_seed(21)
    model = keras.applications.VGG16(weights=None, input_shape=(32, 32, 3))
    weights = save_legacy_h5(model, tmp_path / "w.h5")
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3)).astype(np.uint8)
    (tmp_path / "in").mkdir()
    Image.fromarray(pixels).save(tmp_path / "in" / "x.png")
    out = tmp_path / "f.h5"
    extract([tmp_path / "in"], out, ["fc7"], weights=weights, resize="squash", progress=False)
    ours = load_features(out).features
    x = keras.applications.vgg16.preprocess_input(pixels[None].astype("float32"))
    theirs = keras.Model(model.input, model.get_layer("fc2").output).predict_on_batch(x)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5 * np.abs(theirs).max())


def test_release_networks_lets_the_kept_network_go():
    """`build_extractor` keeps the last networks for reuse; `release_networks` drops them, and the Keras
    model is then freed once the caller's extractor is gone."""
    import gc
    import weakref

    from vggfeat import ExtractorConfig, build_extractor
    from vggfeat.extractor import release_networks

    config = ExtractorConfig(layers=["pool5"], arch="vgg11", weights="random", input_size=32)
    fx = build_extractor(config, batch_size=2)
    assert build_extractor(config, batch_size=4).model is fx.model  # kept, and shared
    model = weakref.ref(fx.model)
    del fx
    gc.collect()
    assert model() is not None  # still kept for the next call
    assert release_networks() >= 1
    gc.collect()
    assert model() is None
    assert release_networks() == 0
