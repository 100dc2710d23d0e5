"""The table-driven builder, the LRN layer, the cuts and the fully-convolutional forms."""

import numpy as np
import pytest

import keras
from vggfeat.errors import LayerError
from vggfeat.layers import LocalResponseNormalization
from vggfeat.models import build_vgg, copy_weights, dense_kernel_to_conv, feature_model, infer_arch
from vggfeat.specs import ARCHS, count_params, layer_names
from test_specs import PAPER_COUNTS


@pytest.mark.parametrize("arch", list(ARCHS))
def test_built_models_match_table_at_small_size(arch):
    model = build_vgg(arch, input_size=32, classes=10, seed=0)
    # parameters as torchvision counts them: batch norm's moving statistics are state, not parameters
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == count_params(arch, 32, classes=10)
    names = [layer.name for layer in model.layers]
    for name in layer_names(ARCHS[arch]):
        assert name in names
    assert infer_arch(model) == arch


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["vgg11", "vgg16", "vgg19"])
def test_full_size_parameter_counts(arch):
    assert build_vgg(arch).count_params() == PAPER_COUNTS[arch]


def test_same_seed_same_weights_other_seed_other_weights():
    a = build_vgg("vgg11", input_size=32, classes=5, seed=3)
    b = build_vgg("vgg11", input_size=32, classes=5, seed=3)
    c = build_vgg("vgg11", input_size=32, classes=5, seed=4)
    for wa, wb, wc in zip(a.get_weights(), b.get_weights(), c.get_weights()):
        np.testing.assert_array_equal(wa, wb)
        if wa.ndim > 1:
            assert not np.array_equal(wa, wc)


def test_seeded_conv_weights_do_not_depend_on_the_form():
    standard = build_vgg("vgg13", input_size=64, seed=1)
    conv = build_vgg("vgg13", form="fully_conv", seed=1)
    np.testing.assert_array_equal(standard.get_layer("block5_conv2").kernel.numpy(),
                                  conv.get_layer("block5_conv2").kernel.numpy())


def test_lrn_matches_krizhevsky_formula():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 30, (2, 3, 3, 7)).astype("float32")
    got = np.asarray(LocalResponseNormalization()(x))
    want = np.empty_like(x)
    for c in range(7):
        lo, hi = max(0, c - 2), min(7, c + 3)
        s = np.sum(x[..., lo:hi] ** 2, axis=-1)
        want[..., c] = x[..., c] / (2.0 + 1e-4 * s) ** 0.75
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_lrn_config_round_trip():
    layer = LocalResponseNormalization(size=3, alpha=2e-4, beta=0.5, k=1.0)
    clone = LocalResponseNormalization.from_config(layer.get_config())
    assert (clone.size, clone.alpha, clone.beta, clone.k) == (3, 2e-4, 0.5, 1.0)
    with pytest.raises(ValueError, match="size=4"):
        LocalResponseNormalization(size=4)


def test_one_pass_gives_several_layers_after_relu():
    net = build_vgg("vgg11", input_size=32, classes=4, seed=0)
    fm = feature_model(net, ["fc7", "conv5_2", "pool5"], pooling="avg")
    out = fm.predict_on_batch(np.random.default_rng(0).normal(0, 50, (2, 32, 32, 3)).astype("float32"))
    assert out["fc7"].shape == (2, 4096)
    assert out["conv5_2"].shape == (2, 512) and out["pool5"].shape == (2, 512)
    assert (out["fc7"] >= 0).all() and (out["conv5_2"] >= 0).all()  # after the ReLU
    plain = keras.Model(net.input, net.get_layer("fc2").output).predict_on_batch(
        np.random.default_rng(0).normal(0, 50, (2, 32, 32, 3)).astype("float32"))
    np.testing.assert_allclose(out["fc7"], plain, rtol=1e-5, atol=1e-6)


def test_pooling_none_keeps_maps():
    net = build_vgg("vgg11", form="fully_conv", seed=0)
    fm = feature_model(net, ["conv5_2"], pooling="none")
    out = fm.predict_on_batch(np.zeros((1, 64, 96, 3), "float32"))
    assert out["conv5_2"].shape == (1, 4, 6, 512)


def test_fully_convolutional_runs_at_any_size_and_has_no_fc():
    net = build_vgg("vgg16", form="fully_conv", seed=0)
    fm = feature_model(net, ["conv5_3"], pooling="max")
    for shape in [(32, 32), (40, 72), (100, 64)]:
        out = fm.predict_on_batch(np.zeros((1, *shape, 3), "float32"))
        assert out["conv5_3"].shape == (1, 512)
    with pytest.raises(LayerError):
        feature_model(net, ["fc7"])


def test_dense_kernel_reshape_follows_flatten_order():
    # A Dense layer on a flattened (2, 2, 3) map equals a 2x2 valid conv with the reshaped kernel.
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, 2, 2, 3)).astype("float32")
    kernel = rng.normal(size=(12, 5)).astype("float32")
    dense = x.reshape(1, -1) @ kernel
    conv_kernel = dense_kernel_to_conv(kernel, (2, 2, 3, 5))
    conv = np.einsum("bhwc,hwco->bo", x, conv_kernel)
    np.testing.assert_allclose(dense, conv, rtol=1e-5)


def test_dense_form_equals_standard_at_native_size_small():
    standard = build_vgg("vgg13", input_size=64, classes=6, seed=2)
    dense = build_vgg("vgg13", form="dense", classes=6, fc6_kernel=2, seed=9)
    copy_weights(standard, dense)
    x = np.random.default_rng(0).normal(0, 60, (3, 64, 64, 3)).astype("float32")
    a = feature_model(standard, ["fc7", "fc8"]).predict_on_batch(x)
    b = feature_model(dense, ["fc7", "fc8"], pooling="avg").predict_on_batch(x)
    for k in ("fc7", "fc8"):
        assert np.abs(a[k] - b[k]).max() <= 1e-4 * np.abs(a[k]).max()


@pytest.mark.slow
def test_dense_form_equals_standard_fc7_at_224_and_maps_at_320_448():
    standard = build_vgg("vgg16", seed=1)
    dense = build_vgg("vgg16", form="dense")
    copy_weights(standard, dense)
    x = np.random.default_rng(0).uniform(-120, 120, (2, 224, 224, 3)).astype("float32")
    a = feature_model(standard, ["fc7"]).predict_on_batch(x)["fc7"]
    b = feature_model(dense, ["fc7"], pooling="none").predict_on_batch(x)["fc7"]
    assert b.shape == (2, 1, 1, 4096)
    assert np.abs(a - b[:, 0, 0]).max() <= 1e-4 * np.abs(a).max()
    maps = feature_model(dense, ["fc7"], pooling="none")
    assert maps.predict_on_batch(np.zeros((1, 320, 320, 3), "float32"))["fc7"].shape == (1, 4, 4, 4096)
    assert maps.predict_on_batch(np.zeros((1, 448, 448, 3), "float32"))["fc7"].shape == (1, 8, 8, 4096)
