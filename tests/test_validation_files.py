"""Hostile weight and classifier files: every one gives a one-line error (exit code 2), quickly, before
Keras builds any network from it.

The weight files are written with h5py directly, declaring shapes without data (HDF5 allocates lazily),
so that a file declaring a billion classes takes a few kilobytes; `.keras` files are zips written with
zipfile. The checks read shapes, dtypes and the zip directory only.
"""

import json
import os
import time
import zipfile

import h5py
import pytest
from click.testing import CliRunner

import vggfeat.models
import vggfeat.weights as W
from vggfeat.errors import InputError, WeightsError
from vggfeat.specs import ARCHS, conv_weight_shapes
from vggfeat_cli.main import cli

from conftest import make_folder

VGG11 = ARCHS["vgg11"]


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test if a network is built or a Keras model deserialised."""

    def refuse(*args, **kwargs):
        raise AssertionError("a network was built from a hostile file")

    monkeypatch.setattr(vggfeat.models, "build_vgg", refuse)
    import keras

    monkeypatch.setattr(keras.saving, "load_model", refuse)


def one_line_error(result, expected):
    """The command failed with exit code 2 and printed exactly `Error: <expected>`, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.output.strip().splitlines()
    assert lines == [f"Error: {expected}"], result.output
    assert "Traceback" not in result.output


def run(*args):
    start = time.monotonic()
    result = CliRunner().invoke(cli, [str(a) for a in args])
    result.seconds = time.monotonic() - start
    return result


# ---------------------------------------------------------------------------------------------
# Weight files, written with h5py: shapes only, no data
# ---------------------------------------------------------------------------------------------


def vgg_shapes(spec=VGG11, classes=10, fc6_inputs=512):
    """(layer name, [kernel shape, bias shape]) of a VGG of `spec` with top, for a 32x32 input."""
    layers = [(name, [kernel, bias]) for name, kernel, bias in conv_weight_shapes(spec)]
    return layers + [("fc1", [(fc6_inputs, 4096), (4096,)]), ("fc2", [(4096, 4096), (4096,)]),
                     ("predictions", [(4096, classes), (classes,)])]


def declare(group, name, shape, huge=False):
    """A float32 dataset of `shape` without data; `huge` ones chunked and compressed (still no data)."""
    if huge:
        chunks = tuple(min(s, 64) or 1 for s in shape)
        return group.create_dataset(name, shape=shape, dtype="f4", chunks=chunks, compression="gzip")
    return group.create_dataset(name, shape=shape, dtype="f4")


def legacy_file(path, changes=None, huge=()):
    """The layout of keras.applications' files (layer_names, weight_names, one group per layer), with
    `changes` {(layer, index): shape} applied."""
    changes = changes or {}
    with h5py.File(path, "w") as f:
        layers = vgg_shapes()
        f.attrs["layer_names"] = [n.encode() for n, _ in layers]
        for name, shapes in layers:
            g = f.create_group(name)
            inner = g.create_group(name)
            weight_names = []
            for i, (role, shape) in enumerate(zip(("kernel", "bias"), shapes)):
                shape = changes.get((name, i), shape)
                declare(inner, role, shape, huge=(name, i) in huge)
                weight_names.append(f"{name}/{role}".encode())
            g.attrs["weight_names"] = weight_names
    return path


def keras3_group(f, changes=None, huge=()):
    """The Keras 3 layout (`.weights.h5`, model.weights.h5 in `.keras`): layers by position."""
    changes = changes or {}
    layers = f.create_group("layers")
    convs = denses = 0
    for name, shapes in vgg_shapes():
        if name.startswith("block"):
            key = "conv2d" if convs == 0 else f"conv2d_{convs}"
            convs += 1
        else:
            key = "dense" if denses == 0 else f"dense_{denses}"
            denses += 1
        v = layers.create_group(key).create_group("vars")
        v.attrs["name"] = name
        for i, shape in enumerate(shapes):
            declare(v, str(i), changes.get((name, i), shape), huge=(name, i) in huge)


def keras3_file(path, changes=None, huge=()):
    with h5py.File(path, "w") as f:
        keras3_group(f, changes, huge)
    return path


def test_shape_only_files_of_the_right_shapes_pass(tmp_path):
    """The control: the same writers, unchanged, give files the checks accept."""
    for path in (legacy_file(tmp_path / "ok.h5"), keras3_file(tmp_path / "ok.weights.h5")):
        info = W.describe_weights(path)
        assert (info["arch"], info["classes"], info["input_size"], info["has_top"]) == ("vgg11", 10, 32, True)


LEGACY_CASES = {
    "absurd_conv": ({("block2_conv1", 0): (3, 3, 64, 10 ** 9)}, {("block2_conv1", 0)},
                    "weight file {name}: tensor 'block2_conv1/block2_conv1/kernel' (block2_conv1 kernel) has shape "
                    "(3, 3, 64, 1000000000), expected (3, 3, 64, 128)"),
    "conv_bias": ({("block1_conv1", 1): (65,)}, set(),
                  "weight file {name}: tensor 'block1_conv1/block1_conv1/bias' (block1_conv1 bias) has shape (65,), "
                  "expected (64,)"),
    "fc6_mismatch": ({("fc1", 0): (1000, 4096)}, set(),
                     "weight file {name}: tensor 'fc1/fc1/kernel' (fc1 kernel) has shape (1000, 4096), expected "
                     "(512*s*s, 4096) for an input of 32*s pixels, 32..4096 ((25088, 4096) at 224)"),
    "fc7_mismatch": ({("fc2", 0): (4096, 4097)}, set(),
                     "weight file {name}: tensor 'fc2/fc2/kernel' (fc2 kernel) has shape (4096, 4097), "
                     "expected (4096, 4096)"),
    "zero_classes": ({("predictions", 0): (4096, 0), ("predictions", 1): (0,)}, set(),
                     "weight file {name}: tensor 'predictions/predictions/kernel' (predictions kernel) has shape "
                     "(4096, 0): 0 classes, expected 1..100,000"),
    "billion_classes": ({("predictions", 0): (4096, 10 ** 9), ("predictions", 1): (10 ** 9,)},
                        {("predictions", 0), ("predictions", 1)},
                        "weight file {name}: tensor 'predictions/predictions/kernel' (predictions kernel) has shape "
                        "(4096, 1000000000): 1,000,000,000 classes, expected 1..100,000"),
    "classes_disagree": ({("predictions", 1): (11,)}, set(),
                         "weight file {name}: tensor 'predictions/predictions/bias' (predictions bias) has shape "
                         "(11,), expected (10,)"),
    # fc6 of the right shape for an input of 4096, declared (137 GB) but not stored
    "lazy_fc6": ({("fc1", 0): (128 * 128 * 512, 4096)}, {("fc1", 0)},
                 "weight file {name}: tensor 'fc1/fc1/kernel' declares 137,438,953,472 bytes of weights but the file "
                 "stores only 0 bytes of them"),
}


@pytest.mark.parametrize("case", sorted(LEGACY_CASES))
def test_hostile_legacy_h5_info_and_load_network(case, tmp_path, no_network):
    changes, huge, message = LEGACY_CASES[case]
    path = legacy_file(tmp_path / f"{case}.h5", changes, huge)
    assert os.path.getsize(path) < 1 << 20  # the file declares what it does not hold
    expected = message.format(name=f"{case}.h5")
    result = run("info", "--weights", path)
    one_line_error(result, expected)
    assert result.seconds < 5
    with pytest.raises(WeightsError) as err:
        W.load_network(None, str(path), include_top=True)
    assert str(err.value) == expected


def test_hostile_legacy_h5_through_extract(tmp_path, no_network):
    images = tmp_path / "images"
    make_folder(str(images), per_class=1)
    path = legacy_file(tmp_path / "w.h5", {("predictions", 0): (4096, 0), ("predictions", 1): (0,)})
    result = run("extract", images, "-o", tmp_path / "out.h5", "--weights", path, "-q")
    one_line_error(result, "weight file w.h5: tensor 'predictions/predictions/kernel' (predictions kernel) has shape "
                           "(4096, 0): 0 classes, expected 1..100,000")
    assert not (tmp_path / "out.h5").exists()


def test_legacy_h5_with_a_layer_no_vgg_has_or_a_missing_tensor(tmp_path, no_network):
    path = legacy_file(tmp_path / "extra.h5")
    with h5py.File(path, "a") as f:
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in f.attrs["layer_names"]]
        f.attrs["layer_names"] = [n.encode() for n in names + ["evil"]]
        g = f.create_group("evil")
        declare(g, "w", (10 ** 6, 10 ** 6), huge=True)
        g.attrs["weight_names"] = [b"w"]
    one_line_error(run("info", "--weights", path),
                   "weight file extra.h5: layer 'evil' has weights, and no VGG network has such a layer")
    path = legacy_file(tmp_path / "missing.h5")
    with h5py.File(path, "a") as f:
        del f["fc2/fc2/bias"]
    one_line_error(run("info", "--weights", path),
                   "weight file missing.h5: tensor 'fc2/fc2/bias' is listed but missing")


def test_weight_tensor_of_strings_is_refused(tmp_path, no_network):
    path = legacy_file(tmp_path / "s.h5")
    with h5py.File(path, "a") as f:
        del f["block1_conv1/block1_conv1/bias"]
        f["block1_conv1/block1_conv1"].create_dataset("bias", shape=(64,), dtype=h5py.string_dtype())
    one_line_error(run("info", "--weights", path), "weight file s.h5: tensor 'block1_conv1/block1_conv1/bias' holds "
                                                   "object values, not floating-point weights")


KERAS3_CASES = {
    "absurd_conv": ({("block1_conv1", 0): (3, 3, 3, 10 ** 9)}, {("block1_conv1", 0)},
                    "weight file {name}: tensor 'layers/conv2d/vars/0' (block1_conv1 kernel) has shape "
                    "(3, 3, 3, 1000000000), expected (3, 3, 3, 64)"),
    "fc6_mismatch": ({("fc1", 0): (1536, 4096)}, set(),
                     "weight file {name}: tensor 'layers/dense/vars/0' (fc1 kernel) has shape (1536, 4096), expected "
                     "(512*s*s, 4096) for an input of 32*s pixels, 32..4096 ((25088, 4096) at 224)"),
    "zero_classes": ({("predictions", 0): (4096, 0), ("predictions", 1): (0,)}, set(),
                     "weight file {name}: tensor 'layers/dense_2/vars/0' (predictions kernel) has shape (4096, 0): "
                     "0 classes, expected 1..100,000"),
    "billion_classes": ({("predictions", 0): (4096, 10 ** 9), ("predictions", 1): (10 ** 9,)},
                        {("predictions", 0), ("predictions", 1)},
                        "weight file {name}: tensor 'layers/dense_2/vars/0' (predictions kernel) has shape "
                        "(4096, 1000000000): 1,000,000,000 classes, expected 1..100,000"),
}


@pytest.mark.parametrize("case", sorted(KERAS3_CASES))
def test_hostile_weights_h5(case, tmp_path, no_network):
    changes, huge, message = KERAS3_CASES[case]
    path = keras3_file(tmp_path / f"{case}.weights.h5", changes, huge)
    expected = message.format(name=f"{case}.weights.h5")
    one_line_error(run("info", "--weights", path), expected)
    with pytest.raises(WeightsError) as err:
        W.load_network(None, str(path), include_top=False)
    assert str(err.value) == expected


def test_not_hdf5_and_truncated_hdf5(tmp_path, no_network):
    (tmp_path / "text.h5").write_bytes(b"not hdf5 at all")
    result = run("info", "--weights", tmp_path / "text.h5")
    assert result.exit_code == 2 and result.output.startswith(f"Error: cannot read weight file {tmp_path / 'text.h5'}")
    good = keras3_file(tmp_path / "good.weights.h5")
    data = good.read_bytes()
    (tmp_path / "cut.weights.h5").write_bytes(data[: len(data) // 2])
    result = run("info", "--weights", tmp_path / "cut.weights.h5")
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert result.output.startswith("Error: cannot read weight file") and "Traceback" not in result.output


# ---------------------------------------------------------------------------------------------
# .keras files: zip archives of config.json and model.weights.h5
# ---------------------------------------------------------------------------------------------


def keras_config(input_size=32, classes=10, spec=VGG11):
    """config.json as Keras writes it for a VGG (the parts a loader reads)."""

    def layer(cls, name, **cfg):
        return {"module": "keras.layers", "class_name": cls, "config": {"name": name, **cfg}, "registered_name": None,
                "name": name, "inbound_nodes": []}

    layers = [layer("InputLayer", "image", batch_shape=[None, input_size, input_size, 3], dtype="float32")]
    convs = conv_weight_shapes(spec)
    for i, (name, kernel, _) in enumerate(convs):
        layers.append(layer("Conv2D", name, filters=kernel[-1], kernel_size=list(kernel[:2]), strides=[1, 1],
                            padding="same", groups=1, activation="relu"))
        if i + 1 == len(convs) or convs[i + 1][0][:6] != name[:6]:  # the block's last conv
            layers.append(layer("MaxPooling2D", f"{name[:6]}_pool", pool_size=[2, 2], strides=[2, 2]))
    layers += [layer("Flatten", "flatten"), layer("Dense", "fc1", units=4096),
               layer("Dropout", "fc1_dropout", rate=0.5), layer("Dense", "fc2", units=4096),
               layer("Dropout", "fc2_dropout", rate=0.5),
               layer("Dense", "predictions", units=classes, activation="softmax")]
    return {"module": "keras.src.models.functional", "class_name": "Functional", "registered_name": "Functional",
            "config": {"name": spec.name, "trainable": True, "layers": layers}}


def keras_file(path, config=None, changes=None, huge=(), metadata=None):
    weights = path.with_suffix(".weights-inside.h5")
    with h5py.File(weights, "w") as f:
        keras3_group(f, changes, huge)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("metadata.json", json.dumps({"keras_version": "3.15.1"}))
        z.writestr("config.json", json.dumps(config or keras_config()))
        z.write(weights, "model.weights.h5")
        if metadata is not None:
            z.writestr("vggfeat.json", json.dumps(metadata))
    weights.unlink()
    return path


def test_shape_only_keras_file_passes(tmp_path):
    path = keras_file(tmp_path / "ok.keras", metadata={"arch": "vgg11", "class_names": [f"c{i}" for i in range(10)],
                                                       "input_size": 32, "preprocessing": "caffe"})
    info = W.describe_weights(path)
    assert (info["arch"], info["classes"], info["input_size"], info["preprocessing"]) == ("vgg11", 10, 32, "caffe")


def test_keras_file_that_is_not_a_zip(tmp_path, no_network):
    path = tmp_path / "model.keras"
    path.write_bytes(b"\x89HDF\r\n\x1a\n not a zip")
    one_line_error(run("info", "--weights", path), "model.keras is not a .keras file (not a zip archive)")
    with pytest.raises(WeightsError, match=r"^model.keras is not a .keras file \(not a zip archive\)$"):
        W.load_network(None, str(path))


def test_keras_file_declaring_an_input_of_100000(tmp_path, no_network):
    images = tmp_path / "images"
    make_folder(str(images), per_class=1)
    path = keras_file(tmp_path / "big.keras", config=keras_config(input_size=100000))
    expected = "big.keras: config.json declares input size 100000, which is out of range (32..4096)"
    one_line_error(run("info", "--weights", path), expected)
    result = run("extract", images, "-o", tmp_path / "out.h5", "--weights", path, "-q")
    one_line_error(result, expected)


@pytest.mark.parametrize("classes, shown", [(0, "0"), (10 ** 9, "1000000000")])
def test_keras_file_declaring_absurd_class_counts(classes, shown, tmp_path, no_network):
    path = keras_file(tmp_path / "c.keras", config=keras_config(classes=classes))
    one_line_error(run("info", "--weights", path),
                   f"c.keras: config.json declares {shown} classes for predictions (fc8), expected 1..100,000")


def test_keras_file_whose_weights_disagree_with_its_config(tmp_path, no_network):
    path = keras_file(tmp_path / "w.keras", changes={("block3_conv2", 0): (3, 3, 256, 10 ** 9)},
                      huge={("block3_conv2", 0)})
    one_line_error(run("info", "--weights", path),
                   "weight file w.keras/model.weights.h5: tensor 'layers/conv2d_3/vars/0' (block3_conv2 kernel) has "
                   "shape (3, 3, 256, 1000000000), expected (3, 3, 256, 256)")
    path = keras_file(tmp_path / "n.keras", config=keras_config(classes=7))
    one_line_error(run("info", "--weights", path), "n.keras: model.weights.h5 holds 10 classes but config.json "
                                                   "declares 7")


def test_keras_file_with_foreign_layers_or_missing_parts(tmp_path, no_network):
    config = keras_config()
    config["config"]["layers"].append({"class_name": "Embedding", "config": {"name": "evil", "input_dim": 10 ** 9,
                                                                             "output_dim": 10 ** 9}})
    path = keras_file(tmp_path / "e.keras", config=config)
    one_line_error(run("info", "--weights", path),
                   "e.keras: config.json declares layer 'evil' of class 'Embedding', which no VGG network has")
    with zipfile.ZipFile(tmp_path / "empty.keras", "w") as z:
        z.writestr("config.json", json.dumps(keras_config()))
    one_line_error(run("info", "--weights", tmp_path / "empty.keras"),
                   "empty.keras is not a Keras model file: the archive has no model.weights.h5")
    path = keras_file(tmp_path / "m.keras", metadata={"arch": "vgg11", "class_names": ["a", "b"]})
    one_line_error(run("info", "--weights", path), "m.keras: vggfeat.json lists 2 class names but the model has "
                                                   "10 classes")


# ---------------------------------------------------------------------------------------------
# Classifier files (skops), with the extraction settings predict rebuilds an extractor from
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def classifier_file(tmp_path_factory):
    """A real classifier file of `vggfeat classify`, on features of 6 tiny images (random vgg11 at 32)."""
    from vggfeat import extract
    from vggfeat.classifier import classify, save_classifier

    root = tmp_path_factory.mktemp("clf")
    make_folder(str(root / "images"), per_class=3)
    extract([root / "images"], root / "f.h5", ["fc7"], arch="vgg11", weights="random", input_size=32,
            progress=False)
    save_classifier(classify(root / "f.h5", "fc7", cv=3), root / "clf.skops")
    return root


def rewritten(src, dst, **changes):
    """A copy of the classifier file `src` whose stored settings have `changes` (None: removed)."""
    import skops.io as sio

    obj = sio.load(src, trusted=sio.get_untrusted_types(file=src))
    settings = json.loads(obj["settings"])
    for key, value in changes.items():
        if value is None:
            settings.pop(key, None)
        else:
            settings[key] = value
    obj["settings"] = json.dumps(settings)
    sio.dump(obj, dst)
    return dst


SETTING_CASES = {
    "input_size": (100000, "{path}: stored settings: input_size must be between 32 and 4096 pixels. "
                           "Received: input_size=100000"),
    "arch": ("vgg17", "{path}: stored settings: unknown architecture 'vgg17'; choose one of vgg11 (A), "
                      "vgg11-lrn (A-LRN), vgg13 (B), vgg16c (C), vgg16 (D), vgg19 (E), vgg11-bn (A-BN), "
                      "vgg13-bn (B-BN), vgg16-bn (D-BN), vgg19-bn (E-BN)"),
    "pooling": ("median", "{path}: stored settings: unknown pooling 'median'; choose one of avg, max, none"),
    "preprocessing": ("bgr2", "{path}: stored setting preprocessing='bgr2' is not one of caffe, torch, tf"),
}


@pytest.mark.parametrize("key", sorted(SETTING_CASES))
def test_classifier_with_hostile_settings(key, classifier_file, tmp_path, no_network):
    value, message = SETTING_CASES[key]
    path = rewritten(classifier_file / "clf.skops", tmp_path / "clf.skops", **{key: value})
    result = run("predict", "--classifier", path, classifier_file / "images", "-q")
    one_line_error(result, message.format(path=path))
    assert result.seconds < 10


def test_classifier_with_a_layer_the_arch_lacks_and_scales_out_of_range(classifier_file, tmp_path, no_network):
    path = rewritten(classifier_file / "clf.skops", tmp_path / "a.skops", layer="conv5_4")
    result = run("predict", "--classifier", path, classifier_file / "images", "-q")
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert result.output.startswith(f"Error: {path}: stored settings: unknown layer 'conv5_4' for vgg11")
    path = rewritten(classifier_file / "clf.skops", tmp_path / "b.skops", form="dense", resize="short",
                     input_size=None, scales=json.dumps([256, 10 ** 6]))
    from vggfeat.classifier import load_classifier

    with pytest.raises(InputError) as err:
        load_classifier(path)
    assert str(err.value).startswith(f"{path}: stored settings: each scale must be between 224 and 4096 pixels")


def test_classifier_still_predicts_when_untouched(classifier_file):
    """The control: the same file, rewritten without changes, passes the checks."""
    from vggfeat.classifier import load_classifier

    _, settings, names = load_classifier(rewritten(classifier_file / "clf.skops", classifier_file / "same.skops"))
    assert settings["input_size"] == 32 and names == ["circles", "squares", "stripes"]


def test_truncated_flipped_and_foreign_classifier_files(classifier_file, tmp_path, no_network):
    from vggfeat.prediction import KINDS  # what each kind of --classifier file is, and which command makes it

    data = (classifier_file / "clf.skops").read_bytes()
    cut = tmp_path / "cut.skops"
    cut.write_bytes(data[: len(data) // 2])
    one_line_error(run("predict", "--classifier", cut, classifier_file / "images", "-q"),
                   f"{cut} is not a classifier vggfeat can use (not a zip archive): --classifier takes {KINDS}")
    foreign = tmp_path / "foreign.skops"
    foreign.write_bytes(b"\x80\x04K\x01.")  # a pickle
    one_line_error(run("predict", "--classifier", foreign, classifier_file / "images", "-q"),
                   f"{foreign} is not a classifier vggfeat can use (not a zip archive): --classifier takes {KINDS}")
    # flip one byte in the middle of each member's data: every flip is a one-line error
    with zipfile.ZipFile(classifier_file / "clf.skops") as z:
        members = [i for i in z.infolist() if i.compress_size > 8]
    for n, info in enumerate(members):
        flipped = bytearray(data)
        start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
        flipped[start + info.compress_size // 2] ^= 0xFF
        path = tmp_path / f"flip{n}.skops"
        path.write_bytes(bytes(flipped))
        result = run("predict", "--classifier", path, classifier_file / "images", "-q")
        assert result.exit_code == 2, (info.filename, result.output, result.exception)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"Error: {path}"), (info.filename, result.output)


def test_classifier_array_declaring_a_huge_shape(classifier_file, tmp_path, no_network):
    """A well-formed zip (CRCs right) whose largest array's .npy header declares 10^12 float64 values."""
    import io

    import numpy as np

    src = classifier_file / "clf.skops"
    path = tmp_path / "huge.skops"
    with zipfile.ZipFile(src) as z:
        biggest = max((i for i in z.infolist() if i.filename.endswith(".npy")), key=lambda i: i.file_size)
        with zipfile.ZipFile(path, "w") as out:
            for info in z.infolist():
                data = z.read(info)
                if info.filename == biggest.filename:
                    array = np.lib.format.read_array(io.BytesIO(data))
                    header = io.BytesIO()
                    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False,
                                                                  "shape": (10 ** 12,)})
                    data = header.getvalue() + array.astype("<f8").tobytes()
                    held = len(data)
                out.writestr(info, data)
    one_line_error(run("predict", "--classifier", path, classifier_file / "images", "-q"),
                   f"{path}: member {biggest.filename} declares an array of shape (1000000000000,) "
                   f"(8,000,000,000,000 bytes) but holds {held:,} bytes")


def test_info_bounds_its_flags_with_the_same_constants(tmp_path):
    from vggfeat.config import MAX_INPUT_SIZE, MIN_INPUT_SIZE

    result = run("info", "--input-size", 100000)
    assert result.exit_code == 2
    assert f"100000 is not in the range {MIN_INPUT_SIZE}<=x<={MAX_INPUT_SIZE}" in result.output
    assert run("info", "--classes", 0).exit_code == 2
    path = legacy_file(tmp_path / "a.h5")
    one_line_error(run("info", "--arch", "vgg19", "--weights", path), f"{path} holds a vgg11 or vgg11-lrn network, not vgg19; drop --arch or fix it")
