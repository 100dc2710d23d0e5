"""torchvision/timm weights from safetensors files and timm names (issue 15): written here from known arrays
with the safetensors package (no PyTorch), checked against vggfeat's own `.weights.h5` path and against a
forward pass written in plain NumPy."""

import json
import os
import re

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import save_file

from conftest import run_cli
import vggfeat
from vggfeat import torch_weights as tw
from vggfeat.errors import WeightsError
from vggfeat.specs import BLOCK_WIDTHS, get_arch

SIDE = 2  # pool5's side at 64x64 input: fc6 sees a 2x2 map, so the (C, H, W) -> (H, W, C) reorder matters
SIZE = 32 * SIDE
CLASSES = 10


# ---------------------------------------------------------------------------------------------
# Known arrays, in torch's layout, and the same arrays as a Keras network
# ---------------------------------------------------------------------------------------------


def torch_arrays(arch, layout="torchvision", top=True, seed=0, side=SIDE, classes=CLASSES):
    """A torch-layout state dict of `arch` with small random weights (He-scaled, non-zero biases and batch
    norm statistics), as torchvision (`classifier.0/3/6`) or timm (`pre_logits.fc1/fc2`, `head.fc`) name it."""
    spec = get_arch(arch)
    rng = np.random.default_rng(seed)
    out = {}
    index, c_in = 0, 3
    for b, kernels in enumerate(spec.kernels):
        width = BLOCK_WIDTHS[b]
        for k in kernels:
            scale = np.sqrt(2.0 / (c_in * k * k))
            out[f"features.{index}.weight"] = (rng.standard_normal((width, c_in, k, k)) * scale).astype(np.float32)
            out[f"features.{index}.bias"] = rng.uniform(-0.1, 0.1, width).astype(np.float32)
            if spec.bn:
                n = index + 1
                out[f"features.{n}.weight"] = rng.uniform(0.5, 1.5, width).astype(np.float32)
                out[f"features.{n}.bias"] = rng.uniform(-0.2, 0.2, width).astype(np.float32)
                out[f"features.{n}.running_mean"] = rng.uniform(-0.3, 0.3, width).astype(np.float32)
                out[f"features.{n}.running_var"] = rng.uniform(0.5, 2.0, width).astype(np.float32)
                out[f"features.{n}.num_batches_tracked"] = np.array(1000, dtype=np.int64)
            index += 3 if spec.bn else 2
            c_in = width
        index += 1  # the max pool
    if top:
        fc6 = (rng.standard_normal((4096, 512, side, side)) * np.sqrt(2.0 / (512 * side * side))).astype(np.float32)
        fc7 = (rng.standard_normal((4096, 4096)) * np.sqrt(2.0 / 4096)).astype(np.float32)
        fc8 = (rng.standard_normal((classes, 4096)) * np.sqrt(1.0 / 4096)).astype(np.float32)
        biases = [rng.uniform(-0.1, 0.1, n).astype(np.float32) for n in (4096, 4096, classes)]
        if layout == "torchvision":
            out.update({"classifier.0.weight": fc6.reshape(4096, -1), "classifier.3.weight": fc7,
                        "classifier.6.weight": fc8, "classifier.0.bias": biases[0], "classifier.3.bias": biases[1],
                        "classifier.6.bias": biases[2]})
        else:
            out.update({"pre_logits.fc1.weight": fc6, "pre_logits.fc2.weight": fc7[:, :, None, None],
                        "head.fc.weight": fc8, "pre_logits.fc1.bias": biases[0], "pre_logits.fc2.bias": biases[1],
                        "head.fc.bias": biases[2]})
    return out


def conv_indices(arch):
    spec = get_arch(arch)
    out, index = [], 0
    for b, kernels in enumerate(spec.kernels, start=1):
        for i, _ in enumerate(kernels, start=1):
            out.append((b, i, index))
            index += 3 if spec.bn else 2
        index += 1
    return out


def keras_network(arch, state, side=SIDE, classes=CLASSES):
    """The same weights in a Keras network built by vggfeat (standard form) and set with `set_weights`,
    converted here independently of `vggfeat.torch_weights`."""
    from vggfeat.models import build_vgg

    model = build_vgg(arch, input_size=32 * side, classes=classes, seed=0)
    for b, i, n in conv_indices(arch):
        model.get_layer(f"block{b}_conv{i}").set_weights(
            [state[f"features.{n}.weight"].transpose(2, 3, 1, 0), state[f"features.{n}.bias"]])
        if get_arch(arch).bn:
            model.get_layer(f"block{b}_bn{i}").set_weights(
                [state[f"features.{n + 1}.{t}"] for t in ("weight", "bias", "running_mean", "running_var")])
    tv = "classifier.0.weight" in state
    fc6 = state["classifier.0.weight" if tv else "pre_logits.fc1.weight"].reshape(4096, 512, side, side)
    fc6 = fc6.transpose(2, 3, 1, 0).reshape(-1, 4096)  # Keras's Flatten is (H, W, C)
    fc7 = state["classifier.3.weight" if tv else "pre_logits.fc2.weight"].reshape(4096, 4096).T
    fc8 = state["classifier.6.weight" if tv else "head.fc.weight"].T
    for name, kernel, prefix in (("fc1", fc6, ("classifier.0", "pre_logits.fc1")),
                                 ("fc2", fc7, ("classifier.3", "pre_logits.fc2")),
                                 ("predictions", fc8, ("classifier.6", "head.fc"))):
        model.get_layer(name).set_weights([kernel, state[f"{prefix[0] if tv else prefix[1]}.bias"]])
    return model


# ---------------------------------------------------------------------------------------------
# A forward pass in plain NumPy, on torch's layout (N/A to Keras)
# ---------------------------------------------------------------------------------------------


def numpy_forward(state, arch, pixels):
    """fc7 (after ReLU) and pool5 (C, H, W) of one RGB uint8 image, computed as torch would: torch
    preprocessing, conv 3x3 pad 1 (cross-correlation), batch norm (eps 1e-5), ReLU, 2x2 max pool, flatten in
    (C, H, W) order, linear layers."""
    spec = get_arch(arch)
    x = (pixels.astype(np.float64) / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    x = x.transpose(2, 0, 1)  # (C, H, W)
    convs = iter(conv_indices(arch))
    for kernels in spec.kernels:
        for k in kernels:
            _, _, n = next(convs)
            w = state[f"features.{n}.weight"].astype(np.float64)
            pad = k // 2
            xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
            h, wd = x.shape[1:]
            y = np.zeros((w.shape[0], h, wd))
            for dy in range(k):
                for dx in range(k):
                    y += np.einsum("oi,ihw->ohw", w[:, :, dy, dx], xp[:, dy:dy + h, dx:dx + wd])
            y += state[f"features.{n}.bias"][:, None, None]
            if spec.bn:
                g, beta, mean, var = (state[f"features.{n + 1}.{t}"].astype(np.float64)[:, None, None]
                                      for t in ("weight", "bias", "running_mean", "running_var"))
                y = (y - mean) / np.sqrt(var + 1e-5) * g + beta
            x = np.maximum(y, 0)
        c, h, wd = x.shape
        x = x.reshape(c, h // 2, 2, wd // 2, 2).max(axis=(2, 4))
    pool5 = x
    tv = "classifier.0.weight" in state
    fc6 = state["classifier.0.weight" if tv else "pre_logits.fc1.weight"].reshape(4096, -1).astype(np.float64)
    v = np.maximum(fc6 @ pool5.reshape(-1) + state["classifier.0.bias" if tv else "pre_logits.fc1.bias"], 0)
    fc7 = state["classifier.3.weight" if tv else "pre_logits.fc2.weight"].reshape(4096, 4096).astype(np.float64)
    v = np.maximum(fc7 @ v + state["classifier.3.bias" if tv else "pre_logits.fc2.bias"], 0)
    return v, pool5


# ---------------------------------------------------------------------------------------------
# Fixtures: files written once per module
# ---------------------------------------------------------------------------------------------

CASES = [("vgg11", "torchvision"), ("vgg11-bn", "timm")]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """{(arch, layout): (state, path)} for the CASES, and plain/bn files in the other layout."""
    root = tmp_path_factory.mktemp("torch")
    out = {}
    for arch in ("vgg11", "vgg11-bn"):
        for layout in ("torchvision", "timm"):
            state = torch_arrays(arch, layout, seed=1 if layout == "timm" else 0)
            path = root / f"{arch}_{layout}.safetensors"
            save_file(state, str(path))
            out[(arch, layout)] = (state, str(path))
    return out


def write(tmp_path, state, name="w.safetensors"):
    path = tmp_path / name
    save_file(state, str(path))
    return str(path)


# ---------------------------------------------------------------------------------------------
# Layout and checks (no Keras)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["vgg11", "vgg11-bn"])
@pytest.mark.parametrize("layout", ["torchvision", "timm"])
def test_layout_is_inferred_from_the_tensors(files, arch, layout):
    state, path = files[(arch, layout)]
    found = tw.read_torch_layout(path)
    assert (found.arch, found.layout, found.has_top, found.classes, found.fc6_side) == (arch, layout, True, 10, SIDE)
    assert tw.read_torch_layout(path, arch).arch == arch
    with pytest.raises(WeightsError, match=rf"holds a {arch} network \({layout} layout\), not vgg16;"):
        tw.read_torch_layout(path, "vgg16")
    meta = tw.describe(path)
    assert meta["arch"] == arch and meta["preprocessing"] == "torch" and meta["input_size"] == SIZE


def test_every_configuration_is_inferred(tmp_path):
    """vgg13/16/19 and their batch-norm twins from the positions in `features` (trunk only: small files)."""
    for arch in ("vgg13", "vgg16", "vgg19", "vgg13-bn", "vgg16-bn", "vgg19-bn"):
        state = {k: np.zeros(v.shape, v.dtype) for k, v in torch_arrays(arch, top=False).items()}
        path = write(tmp_path, state, f"{arch}.safetensors")
        layout = tw.read_torch_layout(path)
        assert (layout.arch, layout.has_top) == (arch, False), arch
        os.remove(path)


def test_mismatched_tensors_are_named(tmp_path, files):
    state, _ = files[("vgg11", "torchvision")]
    missing = dict(state)
    del missing["features.3.bias"]
    with pytest.raises(WeightsError, match=r"tensor 'features.3.bias' \(conv2_1 bias of vgg11\) is missing"):
        tw.read_torch_layout(write(tmp_path, missing))
    bad = dict(state, **{"classifier.3.weight": np.zeros((4096, 4095), np.float32)})
    with pytest.raises(WeightsError, match=r"tensor 'classifier.3.weight' \(fc7 kernel\) has shape \(4096, 4095\), "
                                           r"vgg11 needs \(4096, 4096\)"):
        tw.read_torch_layout(write(tmp_path, bad))
    bad = dict(state, **{"features.0.weight": np.zeros((64, 3, 3, 3), np.float32)[:, :, :, :2].copy()})
    with pytest.raises(WeightsError, match=r"features.0.weight"):
        tw.read_torch_layout(write(tmp_path, bad))
    extra = dict(state, **{"fc.weight": np.zeros(3, np.float32)})
    with pytest.raises(WeightsError, match=r"holds tensor 'fc.weight', which no torchvision or timm VGG has"):
        tw.read_torch_layout(write(tmp_path, extra))
    partial = {k: v for k, v in state.items() if k != "classifier.6.weight"}
    with pytest.raises(WeightsError, match=r"'classifier.6.weight' .* is missing"):
        tw.read_torch_layout(write(tmp_path, partial))


def test_hostile_headers_are_one_line_errors(tmp_path):
    p = tmp_path / "x.safetensors"
    p.write_bytes(b"\x00" * 4)
    with pytest.raises(WeightsError, match="shorter than a header"):
        tw.read_safetensors_header(p)
    p.write_bytes((1 << 40).to_bytes(8, "little") + b"{}")
    with pytest.raises(WeightsError, match="header declares"):
        tw.read_safetensors_header(p)
    header = json.dumps({"features.0.weight": {"dtype": "F32", "shape": [64, 3, 3, 3],
                                               "data_offsets": [0, 64 * 27 * 4]}}).encode()
    p.write_bytes(len(header).to_bytes(8, "little") + header + b"\x00" * 16)
    with pytest.raises(WeightsError, match="runs past the end of the file"):
        tw.read_safetensors_header(p)


# ---------------------------------------------------------------------------------------------
# Loading: the same features as vggfeat's own weight files, and as a NumPy forward pass
# ---------------------------------------------------------------------------------------------


def _outputs(model, x):
    from vggfeat.models import feature_model

    fm = feature_model(model, ["fc7", "pool5"], pooling="none")
    out = fm.predict_on_batch(x)
    return {k: np.asarray(v) for k, v in out.items()}


@pytest.mark.parametrize("arch,layout", CASES)
def test_same_features_as_the_keras_weight_file(tmp_path, files, arch, layout):
    """The safetensors file, and the same arrays saved by vggfeat as .weights.h5, give the same fc7 and pool5
    in the standard and the dense form."""
    from vggfeat.models import NO_INIT, build_vgg, copy_weights
    from vggfeat.weights import load_network, save_weights

    state, path = files[(arch, layout)]
    keras_model = keras_network(arch, state)
    h5 = str(tmp_path / "same.weights.h5")
    save_weights(keras_model, h5)
    del keras_model
    x = np.random.default_rng(3).normal(size=(2, SIZE, SIZE, 3)).astype(np.float32)

    ours, info = load_network(None, path, include_top=True, form="standard")
    assert info.preprocessing == "torch" and info.name == os.path.basename(path) and info.sha256
    theirs, other = load_network(None, h5, include_top=True, form="standard")
    assert other.preprocessing == "caffe"
    a, b = _outputs(ours, x), _outputs(theirs, x)
    for key in ("fc7", "pool5"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-4 * np.abs(b[key]).max())

    dense, _ = load_network(arch, path, include_top=True, form="dense")
    assert len(dense.get_layer("fc1").kernel.shape) == 4
    ref = build_vgg(arch, form="dense", classes=CLASSES, fc6_kernel=SIDE, seed=NO_INIT)
    copy_weights(theirs, ref)
    a, b = _outputs(dense, x), _outputs(ref, x)
    for key in ("fc7", "pool5"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-4 * np.abs(b[key]).max())


@pytest.mark.parametrize("arch,layout", CASES)
def test_features_equal_a_numpy_forward_pass(files, arch, layout):
    """Independent of Keras: a transposed kernel, a wrong flatten order or a wrong preprocessing fails."""
    from vggfeat import FeatureExtractor

    state, path = files[(arch, layout)]
    fx = FeatureExtractor(None, path, ["fc7", "pool5"], pooling="none", batch_size=2)
    assert fx.arch == arch and fx.preprocessing == "torch" and fx.input_size == SIZE
    pixels = np.random.default_rng(5).integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
    out = fx.predict(list(pixels))
    for i in range(2):
        fc7, pool5 = numpy_forward(state, arch, pixels[i])
        np.testing.assert_allclose(out["fc7"][i], fc7, rtol=1e-3, atol=1e-4 * np.abs(fc7).max())
        np.testing.assert_allclose(out["pool5"][i], pool5.transpose(1, 2, 0), rtol=1e-3,
                                   atol=1e-4 * np.abs(pool5).max())


def test_torch_preprocessing_equals_the_formula():
    from vggfeat.layers import Preprocess
    from vggfeat.preprocessing import preprocess

    pixels = np.array([[[0, 128, 255], [12, 34, 56]]], dtype=np.uint8)
    expected = (pixels / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(preprocess(pixels, "torch"), expected, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(Preprocess("torch")(pixels[None])[0]), expected, rtol=1e-6, atol=1e-6)


def test_extract_records_torch_preprocessing_and_round_trips(tmp_path, files, image_folder):
    import vggfeat
    from vggfeat import ExtractorConfig

    _, path = files[("vgg11", "torchvision")]
    out = tmp_path / "f.h5"
    vggfeat.extract([image_folder], out, ["fc7"], weights=path, progress=False)
    attrs = vggfeat.read_attrs(out)
    assert attrs["preprocessing"] == "torch" and attrs["arch"] == "vgg11"
    assert attrs["weights"] == os.path.basename(path) and attrs["weights_sha256"]
    assert attrs["geometry"] == f"shorter side to {round(SIZE * 256 / 224)}, centre crop {SIZE}x{SIZE}"
    config = ExtractorConfig.from_attrs(attrs)
    assert config.weights == os.path.abspath(path) and config.arch == "vgg11"
    timm = ExtractorConfig(layers=["fc7"], weights="timm:vgg16_bn.tv_in1k")
    assert not timm.weights_is_file and timm.to_attrs()["weights"] == "timm:vgg16_bn.tv_in1k"
    assert "weights_path" not in timm.to_attrs()
    assert ExtractorConfig.from_attrs(timm.to_attrs()).weights == "timm:vgg16_bn.tv_in1k"


# ---------------------------------------------------------------------------------------------
# Named weights: the Hugging Face cache, offline
# ---------------------------------------------------------------------------------------------


def test_timm_names_resolve_to_repository_and_file():
    assert tw.timm_repo("timm:vgg16_bn.tv_in1k") == ("timm/vgg16_bn.tv_in1k", "model.safetensors")
    assert tw.timm_model_name("timm:VGG11") == ("vgg11.tv_in1k", "vgg11")
    assert tw.timm_model_name("timm:vgg19_bn") == ("vgg19_bn.tv_in1k", "vgg19-bn")
    for bad in ("timm:vgg17", "timm:resnet50", "timm:vgg16_bn.tv/../x", "timm:", "timm:vgg16.", "timm:vgg16._x",
                "timm:vgg16.tv in1k", "timm:vgg16.tv-in1k", "timm:vgg16.tv\nin1k", "timm:vgg16." + "a" * 65):
        with pytest.raises(WeightsError, match=r"unknown timm weights .* e.g. timm:vgg16_bn.tv_in1k") as err:
            tw.timm_repo(bad)
        assert "\n" not in str(err.value) and len(str(err.value)) < 400, bad
    assert tw.timm_repo("timm:vgg16." + "a" * 64) == ("timm/vgg16." + "a" * 64, "model.safetensors")  # the longest


def test_long_timm_name_is_one_line_before_huggingface_hub(tmp_path):
    """Issue 20 (15): `timm:vgg16.<300 letters>` reached huggingface_hub, whose HFValidationError came out as a
    traceback. The tag is checked first: one line naming it (cut, with its length); the hub is never imported."""
    import subprocess
    import sys

    tag = "a" * 300
    with pytest.raises(WeightsError, match=r"the tag 'a{20}'\.\.\. is 300 characters long \(at most 64\)"):
        tw.timm_model_name(f"timm:vgg16.{tag}")
    code = ("import sys\nfrom vggfeat import describe_weights\nfrom vggfeat.errors import WeightsError\n"
            f"try:\n    describe_weights('timm:vgg16.{tag}')\nexcept WeightsError as e:\n    print(e)\n"
            "print('huggingface_hub' in sys.modules)")
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.splitlines()[1:] == ["False"] and "300 characters long" in out.splitlines()[0], out
    for command in (("info", "--weights"), ("extract", tmp_path, "-o", tmp_path / "out.h5", "--weights")):
        result = run_cli(*command, f"timm:vgg16.{tag}", env={"HF_HOME": str(tmp_path / "hf")})
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert lines[0].startswith("Error: unknown timm weights 'timm:vgg16.aaaaaaaa"), lines[0]
        assert "(311 characters)" in lines[0]
        assert "Traceback" not in result.stderr and "HFValidationError" not in result.stderr
    assert not (tmp_path / "out.h5").exists()


def hf_cache(root, name, state):
    """The Hugging Face cache layout: models--timm--NAME/{refs/main, snapshots/<rev>/model.safetensors}."""
    rev = "0123456789abcdef0123456789abcdef01234567"
    repo = root / "hub" / f"models--timm--{name}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    snap = repo / "snapshots" / rev
    snap.mkdir(parents=True)
    save_file(state, str(snap / "model.safetensors"))
    return str(snap / "model.safetensors")


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


def test_cached_timm_file_is_found_without_network(hf_home):
    state = {k: np.zeros(v.shape, v.dtype) for k, v in torch_arrays("vgg11-bn", "timm", top=False).items()}
    cached = hf_cache(hf_home, "vgg11_bn.tv_in1k", state)
    assert tw.hf_cache_dir() == str(hf_home / "hub")
    assert tw.timm_weights_path("timm:vgg11_bn.tv_in1k") == cached
    assert tw.timm_weights_path("timm:vgg11_bn") == cached
    meta = tw.describe("timm:vgg11_bn")
    assert meta["arch"] == "vgg11-bn" and meta["source"] == "huggingface.co/timm/vgg11_bn.tv_in1k"
    with pytest.raises(WeightsError,
                       match=r"timm:vgg11_bn.tv_in1k holds a vgg11-bn network \(convolutions only\), not vgg13-bn"):
        tw.describe("timm:vgg11_bn", "vgg13-bn")


def test_offline_error_names_repository_cache_and_alternative(hf_home):
    with pytest.raises(WeightsError) as err:
        tw.timm_weights_path("timm:vgg16.tv_in1k")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("cannot get timm:vgg16.tv_in1k: model.safetensors of the Hugging Face repository "
                              "timm/vgg16.tv_in1k is not in the Hugging Face cache (")
    assert str(hf_home / "hub") in message and "HF_HUB_OFFLINE is set" in message
    assert "--weights PATH" in message
    # not downloaded: info describes it from its name, without network
    meta = tw.describe("timm:vgg16")
    assert meta["arch"] == "vgg16" and "not downloaded yet" in meta["note"]


def test_cli_offline_timm_is_one_line_and_writes_nothing(tmp_path, hf_home, image_folder):
    result = run_cli("extract", image_folder, "-o", tmp_path / "out.h5", "--weights", "timm:vgg13_bn", "-q",
                     env={"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"})
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert re.match(r"Error: cannot get timm:vgg13_bn.tv_in1k: model.safetensors of the Hugging Face repository "
                    r"timm/vgg13_bn.tv_in1k is not in the Hugging Face cache", lines[0]), lines[0]
    assert not (tmp_path / "out.h5").exists()


# ---------------------------------------------------------------------------------------------
# The CLI: one-line errors, exit 2, nothing written; info
# ---------------------------------------------------------------------------------------------


def _one_line(result, pattern, tmp_path):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert re.search(pattern, lines[0]), lines[0]
    assert not (tmp_path / "out.h5").exists()


def test_cli_mismatches_are_one_line_errors(tmp_path, files, image_folder):
    _, bn = files[("vgg11-bn", "timm")]
    state, _ = files[("vgg11", "torchvision")]
    out = tmp_path / "out.h5"
    _one_line(run_cli("extract", image_folder, "-o", out, "--weights", bn, "--arch", "vgg16", "-q"),
              r"vgg11-bn_timm.safetensors holds a vgg11-bn network \(timm layout\), not vgg16; drop --arch", tmp_path)
    _one_line(run_cli("extract", image_folder, "-o", out, "--weights", bn, "--arch", "vgg11", "-q"),
              r"holds a vgg11-bn network \(timm layout\), not vgg11;", tmp_path)
    missing = write(tmp_path, {k: v for k, v in state.items() if k != "features.8.weight"}, "missing.safetensors")
    _one_line(run_cli("extract", image_folder, "-o", out, "--weights", missing, "-q"),
              r"features.8", tmp_path)
    shaped = write(tmp_path, dict(state, **{"classifier.0.bias": np.zeros(4000, np.float32)}), "shape.safetensors")
    _one_line(run_cli("extract", image_folder, "-o", out, "--weights", shaped, "-q"),
              r"tensor 'classifier.0.bias' \(fc6 bias\) has shape \(4000,\), vgg11 needs \(4096,\)", tmp_path)
    pth = tmp_path / "vgg16.pth"
    pth.write_bytes(b"\x80\x02not really")
    _one_line(run_cli("extract", image_folder, "-o", out, "--weights", pth, "-q"),
              r"vgg16.pth is a pickled PyTorch file, which vggfeat does not read .*safetensors.torch.save_file\("
              r"torch.load\('vgg16.pth', weights_only=True\)", tmp_path)


def test_info_describes_torch_files_and_names(files, hf_home):
    from vggfeat_cli.main import cli

    _, path = files[("vgg11-bn", "timm")]
    result = CliRunner().invoke(cli, ["info", "--weights", path, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["arch"], data["classes"], data["preprocessing"], data["layout"]) == ("vgg11-bn", 10, "torch", "timm")
    assert data["input_size"] == SIZE
    result = CliRunner().invoke(cli, ["info", "--weights", "timm:vgg16_bn.tv_in1k"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("vgg16-bn (configuration D-BN), standard form, input 224x224x3")
    assert "preprocessing: torch" in result.output
    result = CliRunner().invoke(cli, ["info", "--weights", path, "--arch", "vgg16"])
    assert result.exit_code == 2 and "holds a vgg11-bn network (timm layout), not vgg16" in result.output


def test_mistakes_are_found_before_tensorflow(files, tmp_path):
    """A torch file's checks (arch, tensors, a .pth) read the header only: TensorFlow is not imported."""
    import subprocess
    import sys

    _, bn = files[("vgg11-bn", "timm")]
    pth = tmp_path / "x.pth"
    pth.write_bytes(b"pickle")
    code = (
        "import sys\nfrom vggfeat import ExtractorConfig\nfrom vggfeat.extractor import check_extractor\n"
        "from vggfeat.errors import WeightsError\n"
        f"for w, arch in (({bn!r}, 'vgg16'), ({str(pth)!r}, None)):\n"
        "    try:\n        check_extractor(ExtractorConfig(layers=['fc7'], weights=w, arch=arch))\n"
        "    except WeightsError as e:\n        print(e)\n"
        f"print(check_extractor(ExtractorConfig(layers=['fc7', 'pool5'], weights={bn!r})).arch)\n"
        "check = check_extractor(ExtractorConfig(layers=['fc7'], weights='timm:vgg13'), fetch=False)\n"
        "print(check.loading())\n"
        "try:\n    check.fetch()\nexcept WeightsError as e:\n    print(str(e)[:40])\n"
        "print(sorted(m for m in ('tensorflow', 'keras', 'torch', 'jax') if m in sys.modules))"
    )
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    lines = out.strip().splitlines()
    assert "holds a vgg11-bn network (timm layout), not vgg16" in lines[0]
    assert "x.pth is a pickled PyTorch file" in lines[1]
    assert lines[2:] == ["vgg11-bn", "loading vgg13 with timm:vgg13.tv_in1k weights...",
                         "cannot get timm:vgg13.tv_in1k: model.saf", "[]"]


def _write_raw(path, tensors):
    """A safetensors file written by hand: {name: (dtype, shape, bytes)} (for BF16, which NumPy lacks)."""
    header, blobs, offset = {}, [], 0
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw + b"".join(blobs))


def test_chunked_conversion_and_bfloat16(tmp_path, files):
    """Tensors are converted a slice of output units at a time (the same values whatever the slice), and
    bfloat16 tensors are widened to float32."""
    state, path = files[("vgg11", "torchvision")]
    layout = tw.read_torch_layout(path)
    whole, sliced = tw._SafetensorsSource(layout), tw._SafetensorsSource(layout, chunk_bytes=1 << 16)
    for layer, role, shape in (("fc1", "kernel", (SIDE * SIDE * 512, 4096)), ("fc1", "kernel", (SIDE, SIDE, 512, 4096)),
                               ("fc2", "kernel", (4096, 4096)), ("block3_conv2", "kernel", (3, 3, 256, 256)),
                               ("predictions", "bias", (CLASSES,))):
        a = np.asarray(whole._initial(layer, role, shape))
        b = np.asarray(sliced._initial(layer, role, shape))
        assert a.shape == shape and np.array_equal(a, b), (layer, role)
    expected = state["classifier.0.weight"].reshape(4096, 512, SIDE, SIDE).transpose(2, 3, 1, 0).reshape(-1, 4096)
    np.testing.assert_array_equal(np.asarray(whole._initial("fc1", "kernel", expected.shape)), expected)

    trunk = {k: v for k, v in state.items() if k.startswith("features.")}
    bf16 = trunk["features.0.weight"].view(np.uint32) >> 16  # the top half of each float32
    tensors = {k: ("F32", v.shape, v.tobytes()) for k, v in trunk.items()}
    tensors["features.0.weight"] = ("BF16", bf16.shape, bf16.astype("<u2").tobytes())
    raw = tmp_path / "bf16.safetensors"
    _write_raw(raw, tensors)
    layout = tw.read_torch_layout(raw)
    assert layout.arch == "vgg11" and not layout.has_top
    kernel = np.asarray(tw._SafetensorsSource(layout)._initial("block1_conv1", "kernel", (3, 3, 3, 64)))
    widened = (bf16 << 16).astype(np.uint32).view(np.float32)
    np.testing.assert_array_equal(kernel, widened.transpose(2, 3, 1, 0))

    half = dict(trunk, **{"features.0.weight": trunk["features.0.weight"].astype(np.float16)})
    layout = tw.read_torch_layout(write(tmp_path, half, "f16.safetensors"))
    kernel = np.asarray(tw._SafetensorsSource(layout)._initial("block1_conv1", "kernel", (3, 3, 3, 64)))
    np.testing.assert_array_equal(kernel, half["features.0.weight"].astype(np.float32).transpose(2, 3, 1, 0))


def test_extract_with_a_cached_timm_name(tmp_path, files, hf_home, image_folder):
    """`timm:NAME` found in the Hugging Face cache (offline): extracted with torch preprocessing, recorded by
    name (no file path), the same features as the file itself."""
    import shutil

    import vggfeat

    state, path = files[("vgg11-bn", "timm")]
    cached = hf_cache(hf_home, "vgg11_bn.tv_in1k", {})
    shutil.copyfile(path, cached)
    by_name, by_file = tmp_path / "name.h5", tmp_path / "file.h5"
    vggfeat.extract([image_folder], by_name, ["fc7"], weights="timm:vgg11_bn", progress=False)
    vggfeat.extract([image_folder], by_file, ["fc7"], weights=path, progress=False)
    attrs = vggfeat.read_attrs(by_name)
    assert attrs["weights"] == "timm:vgg11_bn" and attrs["preprocessing"] == "torch" and attrs["arch"] == "vgg11-bn"
    assert "weights_path" not in attrs
    np.testing.assert_allclose(vggfeat.load_features(by_name, "fc7").features,
                               vggfeat.load_features(by_file, "fc7").features, rtol=1e-6)


def test_finetune_starts_from_torch_weights_with_their_preprocessing(tmp_path, files, image_folder):
    # the conv units (batch norm included) and fc6/fc7 start from the file; the model records `torch`
    import keras

    state, path = files[("vgg11-bn", "timm")]
    ref = keras_network("vgg11-bn", state)
    out = tmp_path / "ft.keras"
    vggfeat.finetune(image_folder, out, weights=path, input_size=SIZE, epochs=1, batch_size=4, augment="none",
                     train_from="fc8", verbose=0, val_split=None)
    from vggfeat.weights import read_keras_metadata

    meta = read_keras_metadata(out)
    assert meta["arch"] == "vgg11-bn" and meta["preprocessing"] == "torch"
    tuned = keras.saving.load_model(out)
    for name in ("block1_conv1", "block1_bn1", "block5_bn2", "fc1", "fc2"):
        for got, want in zip(tuned.get_layer(name).get_weights(), ref.get_layer(name).get_weights()):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    r = run_cli("finetune", image_folder, "-o", tmp_path / "x.keras", "--weights", path, "--arch", "vgg16")
    assert r.returncode == 2 and "vgg11-bn" in r.stderr and not (tmp_path / "x.keras").exists(), r.stderr
