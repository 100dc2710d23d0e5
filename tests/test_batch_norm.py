"""The batch-norm configurations (torchvision's vgg11_bn..vgg19_bn): conv, batch norm, ReLU; checked against
a forward pass written here in NumPy, in every form, through weight files, info and finetune."""

import h5py
import keras
import numpy as np
import pytest
from keras.src.legacy.saving import legacy_h5_format

import vggfeat
from vggfeat.models import build_vgg
from vggfeat.specs import BLOCK_WIDTHS, get_arch
from vggfeat.weights import load_network

from conftest import make_folder, run_cli

CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)


def _with_statistics(model, seed=0):
    """Give every batch norm layer non-trivial scale, offset, mean and variance (as a trained one has)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if layer.name.startswith("block") and "_bn" in layer.name:
            n = layer.get_weights()[0].shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(0, 0.2, n), rng.normal(0, 0.5, n),
                               rng.uniform(0.5, 2.0, n)])
    return model


def numpy_forward(model, arch, pixels, upto="fc2"):
    """VGG with batch norm in plain NumPy: caffe preprocessing, 3x3 'same' convolutions, batch norm in
    inference mode (eps 1e-5), ReLU, 2x2 max pooling, flatten in (H, W, C) order, fc6/fc7 with ReLU."""
    x = pixels.astype(np.float64)[..., ::-1] - CAFFE_MEAN_BGR.astype(np.float64)
    spec = get_arch(arch)
    for b, kernels in enumerate(spec.kernels, start=1):
        for i, k in enumerate(kernels, start=1):
            kernel, bias = (w.astype(np.float64) for w in model.get_layer(f"block{b}_conv{i}").get_weights())
            pad = k // 2
            padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
            h, w = x.shape[1:3]
            out = np.zeros(x.shape[:3] + (kernel.shape[-1],))
            for dy in range(k):
                for dx in range(k):
                    out += np.einsum("nhwc,cd->nhwd", padded[:, dy:dy + h, dx:dx + w], kernel[dy, dx])
            out += bias
            gamma, beta, mean, var = (w.astype(np.float64) for w in model.get_layer(f"block{b}_bn{i}").get_weights())
            x = np.maximum((out - mean) / np.sqrt(var + 1e-5) * gamma + beta, 0)
        n, h, w, c = x.shape
        x = x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
    x = x.reshape(len(x), -1)
    for name in ("fc1", "fc2"):
        kernel, bias = (w.astype(np.float64) for w in model.get_layer(name).get_weights())
        x = np.maximum(x @ kernel + bias, 0)
        if name == upto:
            break
    return x


@pytest.fixture(scope="module")
def bn_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bn")
    keras.utils.set_random_seed(4)
    model = _with_statistics(build_vgg("vgg11-bn", input_size=32, classes=5, seed=4))
    vggfeat.save_weights(model, root / "a.weights.h5")
    with h5py.File(root / "legacy.h5", "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    model.save(root / "a.keras")
    return model, root


def pixels(n, size, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3)).astype(np.uint8)


def test_fc7_equals_a_numpy_forward_pass_with_batch_norm_in_inference_mode(bn_files):
    model, root = bn_files
    x = pixels(2, 32)
    want = numpy_forward(model, "vgg11-bn", x)
    for name in ("a.weights.h5", "legacy.h5", "a.keras"):
        fx = vggfeat.FeatureExtractor(weights=str(root / name), layers=["fc7", "conv5_2"], resize="squash")
        assert fx.arch == "vgg11-bn" and fx.input_size == 32
        got = fx.predict(list(x))
        np.testing.assert_allclose(got["fc7"], want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
        assert got["conv5_2"].min() >= 0  # after the ReLU


def test_the_three_forms_agree(bn_files):
    model, root = bn_files
    x = pixels(2, 32, seed=1)
    pre = keras.applications.vgg16.preprocess_input(x.astype("float32"))
    want = numpy_forward(model, "vgg11-bn", x)
    dense, _ = load_network(None, str(root / "legacy.h5"), form="dense")
    got = keras.Model(dense.input, dense.get_layer("fc2").output).predict_on_batch(pre)[:, 0, 0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    trunk = vggfeat.FeatureExtractor(weights=str(root / "legacy.h5"), layers=["conv5_2"], form="fully_conv",
                                     input_size=32, resize="squash", pooling="none")
    standard = vggfeat.FeatureExtractor(weights=str(root / "legacy.h5"), layers=["conv5_2"], resize="squash",
                                        input_size=32, pooling="none")
    np.testing.assert_allclose(trunk.predict(list(x))["conv5_2"], standard.predict(list(x))["conv5_2"],
                               rtol=1e-5, atol=1e-5)


def test_a_batch_norm_file_is_told_from_a_plain_one(bn_files, tmp_path):
    _, root = bn_files
    assert vggfeat.describe_weights(root / "legacy.h5")["arch"] == "vgg11-bn"
    assert vggfeat.describe_weights(root / "a.keras")["arch"] == "vgg11-bn"
    r = run_cli("info", "--weights", root / "legacy.h5", "--arch", "vgg11")
    assert r.returncode == 2 and "holds a vgg11-bn network, not vgg11" in r.stderr, r.stderr
    # a plain file refused as a batch-norm one, and a batch norm layer of the wrong width named
    plain = tmp_path / "plain.weights.h5"
    build_vgg("vgg11", input_size=32, seed=0).save_weights(plain)
    r = run_cli("info", "--weights", plain, "--arch", "vgg11-bn")
    assert r.returncode == 2 and "not vgg11-bn" in r.stderr, r.stderr
    broken = tmp_path / "broken.h5"
    with h5py.File(root / "legacy.h5") as src, h5py.File(broken, "w") as dst:
        for key in src:
            src.copy(key, dst)
        dst.attrs.update(src.attrs)
        name = [n.decode() if isinstance(n, bytes) else n for n in dst["block3_bn1"].attrs["weight_names"]][2]
        del dst["block3_bn1"][name]
        dst["block3_bn1"].create_dataset(name, data=np.zeros(7, np.float32))
    r = run_cli("info", "--weights", broken)
    assert r.returncode == 2 and "block3_bn1 moving mean" in r.stderr and "(256,)" in r.stderr, r.stderr


def test_info_counts_parameters_as_torchvision_does():
    r = run_cli("info", "--arch", "vgg16-bn")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("vgg16-bn (configuration D-BN)")
    assert "138,365,992" in r.stdout.splitlines()[-2] and "conv3x3+bn" in r.stdout


def test_finetune_trains_a_batch_norm_network_and_extract_reads_it(tmp_path):
    data = tmp_path / "images"
    make_folder(str(data), per_class=12)
    out = tmp_path / "bn.keras"
    history = vggfeat.finetune(data, out, arch="vgg11-bn", weights="random", input_size=32, batch_size=8,
                               augment="none", verbose=0, seed=0, epochs=4, optimizer="adam", lr=3e-4,
                               val_split=0.25)
    print("validation accuracy per epoch:", [round(v, 3) for v in history.history["val_accuracy"]])
    assert max(history.history["val_accuracy"]) >= 0.75  # chance is 1/3
    assert vggfeat.describe_weights(out)["arch"] == "vgg11-bn"
    feats = tmp_path / "f.h5"
    vggfeat.extract([data], feats, ["conv5_2"], weights=str(out), progress=False)
    assert vggfeat.read_attrs(feats)["arch"] == "vgg11-bn"

    # --train-from conv5_1: the conv, batch norm (scale, offset and statistics) of blocks 1-4 stay as they were
    start = build_vgg("vgg11-bn", input_size=32, seed=3)
    vggfeat.save_weights(start, tmp_path / "start.weights.h5")
    tuned_path = tmp_path / "ft.keras"
    vggfeat.finetune(data, tuned_path, weights=str(tmp_path / "start.weights.h5"), input_size=32, epochs=1,
                     batch_size=8, augment="none", train_from="conv5_1", verbose=0, val_split=None)
    tuned = keras.saving.load_model(tuned_path)
    for layer in start.layers:
        if not layer.weights or layer.name == "predictions":
            continue
        same = all(np.array_equal(a, b) for a, b in zip(layer.get_weights(), tuned.get_layer(layer.name).get_weights()))
        if layer.name.startswith(("block1", "block2", "block3", "block4")):
            assert same, f"{layer.name} changed although frozen"
        elif layer.name.startswith("block5_conv"):
            assert not same, f"{layer.name} did not train"


def test_block_widths_of_the_batch_norm_layers():
    model = build_vgg("vgg13-bn", input_size=32, seed=0)
    widths = [layer.get_weights()[0].shape[0] for layer in model.layers if "_bn" in layer.name]
    assert widths == [w for w, n in zip(BLOCK_WIDTHS, (2, 2, 2, 2, 2)) for _ in range(n)]
