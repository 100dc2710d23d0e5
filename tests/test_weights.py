"""Weights: Keras's legacy .h5 layout, .weights.h5, .keras, ImageNet through the Keras cache, errors."""

import hashlib
import os

import h5py
import keras
import numpy as np
import pytest
from keras.src.legacy.saving import legacy_h5_format

import vggfeat.weights as W
from vggfeat import FeatureExtractor, load_network
from vggfeat.errors import WeightsError
from vggfeat.models import build_vgg


def save_legacy_h5(model, path):
    """The layout of the files keras.applications downloads (layer_names + per-layer groups)."""
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    return str(path)


def keras_fc2(model, pixels):
    """fc2 of a keras.applications model on pixels preprocessed the Keras way (caffe mode)."""
    x = keras.applications.vgg16.preprocess_input(pixels.astype("float32").copy())
    return keras.Model(model.input, model.get_layer("fc2").output).predict_on_batch(x)


@pytest.fixture(scope="module")
def small_keras_vgg16(tmp_path_factory):
    keras.utils.set_random_seed(11)
    model = keras.applications.VGG16(weights=None, input_shape=(32, 32, 3))
    path = save_legacy_h5(model, tmp_path_factory.mktemp("w") / "vgg16_small.h5")
    return model, path


def pixels(n, size, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3)).astype(np.uint8)


def test_legacy_h5_fc7_equals_keras_fc2(small_keras_vgg16):
    model, path = small_keras_vgg16
    fx = FeatureExtractor(weights=path, layers=["fc7"], resize="squash")
    assert fx.arch == "vgg16" and fx.input_size == 32
    x = pixels(3, 32)
    ours = fx.predict(list(x))["fc7"]
    theirs = keras_fc2(model, x)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5 * np.abs(theirs).max())


def test_legacy_h5_loads_straight_into_the_dense_and_fully_convolutional_forms(small_keras_vgg16):
    # A legacy file is read straight into the form asked for (each variable made from the stored values,
    # fc6's Dense kernel given its convolution's shape): the network must hold exactly the file's values
    # and give keras.applications' fc7 on an image of the weights' own size.
    model, path = small_keras_vgg16
    dense, _ = load_network(None, path, form="dense")
    assert len(dense.get_layer("fc1").kernel.shape) == 4
    for layer in ("block1_conv1", "block5_conv3", "fc1", "fc2", "predictions"):
        for got, want in zip(dense.get_layer(layer).get_weights(), model.get_layer(layer).get_weights()):
            np.testing.assert_array_equal(got, want.reshape(got.shape))
    trunk, _ = load_network(None, path, include_top=False, form="fully_conv")
    assert trunk.input.shape[1] is None and "fc1" not in [layer.name for layer in trunk.layers]
    np.testing.assert_array_equal(trunk.get_layer("block3_conv2").get_weights()[0],
                                  model.get_layer("block3_conv2").get_weights()[0])
    x = pixels(2, 32, seed=4)
    pre = keras.applications.vgg16.preprocess_input(x.astype("float32").copy())
    got = keras.Model(dense.input, dense.get_layer("fc2").output).predict_on_batch(pre)
    assert got.shape == (2, 1, 1, 4096)  # a 32-pixel image is the weights' own size: one fc7 position
    want = keras_fc2(model, x)
    np.testing.assert_allclose(got[:, 0, 0], want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    conv = FeatureExtractor(weights=path, layers=["conv5_3"], form="fully_conv", input_size=48)
    img = pixels(1, 48, seed=5)[0]
    trunk_model = keras.applications.VGG16(weights=None, include_top=False)
    trunk_model.set_weights(model.get_weights()[:len(trunk_model.get_weights())])
    ref = keras.Model(trunk_model.input, trunk_model.get_layer("block5_conv3").output).predict_on_batch(
        keras.applications.vgg16.preprocess_input(img[None].astype("float32"))).mean(axis=(1, 2))
    np.testing.assert_allclose(conv.predict([img])["conv5_3"], ref, rtol=1e-4, atol=1e-4)


def test_vgg19_legacy_h5(tmp_path):
    keras.utils.set_random_seed(5)
    model = keras.applications.VGG19(weights=None, input_shape=(32, 32, 3))
    path = save_legacy_h5(model, tmp_path / "vgg19.h5")
    fx = FeatureExtractor(weights=path, layers=["fc7", "conv5_4"], pooling="none", resize="squash")
    assert fx.arch == "vgg19"
    x = pixels(2, 32, seed=1)
    np.testing.assert_allclose(fx.predict(list(x))["fc7"], keras_fc2(model, x), rtol=1e-4, atol=1e-4)


def test_preprocessing_does_not_touch_the_callers_array():
    from vggfeat.preprocessing import preprocess

    x = pixels(1, 4).astype("float32")
    before = x.copy()
    y = preprocess(x)
    np.testing.assert_array_equal(x, before)
    np.testing.assert_allclose(y, keras.applications.vgg16.preprocess_input(before.copy()), rtol=1e-6)


def test_notop_file_gives_conv_layers_but_refuses_fc(tmp_path):
    keras.utils.set_random_seed(2)
    model = keras.applications.VGG16(weights=None, include_top=False)
    path = save_legacy_h5(model, tmp_path / "vgg16_notop.h5")
    fx = FeatureExtractor(weights=path, layers=["conv5_3"], form="fully_conv", input_size=48)
    img = pixels(1, 48)[0]
    got = fx.predict([img])["conv5_3"]
    x = keras.applications.vgg16.preprocess_input(img[None].astype("float32"))
    want = keras.Model(model.input, model.get_layer("block5_conv3").output).predict_on_batch(x).mean(axis=(1, 2))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    with pytest.raises(WeightsError, match="notop"):
        FeatureExtractor(weights=path, layers=["fc7"])


def test_weights_h5_and_keras_files(tmp_path):
    net = build_vgg("vgg11", input_size=32, classes=3, seed=7)
    net.save_weights(tmp_path / "a.weights.h5")
    net.save(tmp_path / "a.keras")
    x = pixels(2, 32)
    ref = FeatureExtractor("vgg11", "random", ["fc7"], seed=7, input_size=32, resize="squash").predict(list(x))
    for name in ("a.weights.h5", "a.keras"):
        fx = FeatureExtractor(weights=str(tmp_path / name), layers=["fc7"], resize="squash")
        assert fx.arch == "vgg11"
        np.testing.assert_allclose(fx.predict(list(x))["fc7"], ref["fc7"], rtol=1e-5, atol=1e-6)
        assert fx.settings()["weights"] == name and len(fx.settings()["weights_sha256"]) == 64


def test_weight_file_of_another_arch_is_refused(small_keras_vgg16):
    _, path = small_keras_vgg16
    with pytest.raises(WeightsError, match="holds a vgg16 network and does not fit vgg19"):
        load_network("vgg19", path)


def test_missing_or_odd_weight_paths():
    with pytest.raises(WeightsError, match="existing file"):
        load_network("vgg16", "/no/such/file.h5")
    with pytest.raises(WeightsError, match="no ImageNet weights exist for vgg13"):
        load_network("vgg13", "imagenet")


def test_imagenet_comes_from_the_keras_cache_with_the_hash_check(tmp_path, monkeypatch, small_keras_vgg16):
    """The real code path: keras.utils.get_file finds the file in $KERAS_HOME/models and checks its hash."""
    model, path = small_keras_vgg16
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    os.makedirs(tmp_path / "models")
    fname, url, _ = W.IMAGENET_FILES[("vgg16", True)]
    target = tmp_path / "models" / fname
    target.write_bytes(open(path, "rb").read())
    md5 = hashlib.md5(target.read_bytes()).hexdigest()
    monkeypatch.setitem(W.IMAGENET_FILES, ("vgg16", True), (fname, "http://127.0.0.1:9/none.h5", md5))
    net, info = load_network("vgg16", "imagenet")
    assert info.kind == "imagenet" and info.preprocessing == "caffe"
    np.testing.assert_array_equal(net.get_layer("fc2").kernel.numpy(), model.get_layer("fc2").kernel.numpy())


def test_imagenet_offline_error_names_file_place_and_alternative(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    fname, _, md5 = W.IMAGENET_FILES[("vgg19", False)]
    monkeypatch.setitem(W.IMAGENET_FILES, ("vgg19", False), (fname, "http://127.0.0.1:9/" + fname, md5))
    with pytest.raises(WeightsError) as err:
        load_network("vgg19", "imagenet", include_top=False)
    msg = str(err.value)
    assert fname in msg and str(tmp_path / "models") in msg and "--weights PATH" in msg
    assert "\n" not in msg
    assert not (tmp_path / "models" / fname).exists()


@pytest.mark.slow
def test_full_size_vgg16_legacy_file_fc7_equals_keras(tmp_path):
    keras.utils.set_random_seed(3)
    model = keras.applications.VGG16(weights=None)
    path = save_legacy_h5(model, tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels.h5")
    fx = FeatureExtractor(weights=path, layers=["fc7"], batch_size=2)
    x = pixels(2, 224, seed=4)
    ours = fx.predict(list(x))["fc7"]
    theirs = keras_fc2(model, x)
    assert np.abs(ours - theirs).max() <= 1e-4 * np.abs(theirs).max()


# ---------------------------------------------------------------------------------------------
# Non-finite weights (issue 20, 14): refused where a file's values are loaded, naming the variable
# ---------------------------------------------------------------------------------------------


def _with(model, layer, index, position, value):
    weights = model.get_layer(layer).get_weights()
    weights[index].reshape(-1)[position] = value
    model.get_layer(layer).set_weights(weights)
    return model


def test_non_finite_keras_weights_are_refused_naming_the_variable(tmp_path):
    """A NaN or inf written by Keras itself into `.weights.h5`, `.keras` and legacy `.h5` files (tiny trunks):
    one line naming the file, the stored variable and its VGG layer; with no check they load and give NaN or,
    after ReLU and max pooling, quietly wrong features."""
    from vggfeat.weights import check_finite_weights

    nan = _with(build_vgg("vgg11", include_top=False, input_size=32, seed=0), "block2_conv1", 0, 7, np.nan)
    save_legacy_h5(nan, tmp_path / "nan.h5")
    W.save_weights(nan, str(tmp_path / "nan.weights.h5"))
    nan.save(tmp_path / "nan.keras")
    inf = _with(build_vgg("vgg11-bn", include_top=False, input_size=32, seed=0), "block3_bn2", 3, 5, np.inf)
    inf.save(tmp_path / "inf.keras")
    cases = {
        "nan.h5": r"weight file nan.h5: tensor 'block2_conv1/kernel(:0)?' holds NaN",
        "nan.weights.h5": r"weight file nan.weights.h5: tensor 'layers/conv2d_1/vars/0' \(block2_conv1 kernel\) "
                          r"holds NaN",
        "nan.keras": r"weight file nan.keras/model.weights.h5: tensor 'layers/conv2d_1/vars/0' \(block2_conv1 kernel\) "
                     r"holds NaN",
        "inf.keras": r"weight file inf.keras/model.weights.h5: tensor 'layers/batch_normalization_3/vars/3' "
                     r"\(block3_bn2 moving_variance\) holds infinite values",
    }
    for name, words in cases.items():
        with pytest.raises(WeightsError, match=words + r": weights must be finite numbers") as err:
            load_network(None, str(tmp_path / name), include_top=False)
        assert "\n" not in str(err.value)
    # the same files without the bad value load
    good = build_vgg("vgg11", include_top=False, input_size=32, seed=0)
    good.save(tmp_path / "good.keras")
    load_network(None, str(tmp_path / "good.keras"), include_top=False)
    check_finite_weights(str(tmp_path / "good.keras"), ((3,), (3,), (3, 3), (3, 3), (3, 3)), None)


def test_non_finite_keras_model_stops_extract_in_one_line(tmp_path):
    from conftest import make_folder, run_cli

    model = _with(build_vgg("vgg11", input_size=32, classes=3, seed=0), "fc2", 1, 9, -np.inf)
    model.save(tmp_path / "diverged.keras")
    make_folder(str(tmp_path / "images"), per_class=1)
    result = run_cli("extract", tmp_path / "images", "-o", tmp_path / "out.h5", "--weights",
                     tmp_path / "diverged.keras", "-q")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0] == ("Error: weight file diverged.keras/model.weights.h5: tensor 'layers/dense_1/vars/1' (fc2 bias) "
                        "holds infinite values: weights must be finite numbers (the file is damaged, or was saved "
                        "from a training run that diverged)")
    assert not (tmp_path / "out.h5").exists()
