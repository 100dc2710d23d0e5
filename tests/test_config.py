"""ExtractorConfig: one home for the settings that decide a feature; the same settings give the same
features on every entry point; no import cycle among the library's modules."""

import ast
import itertools
import os
import random

import numpy as np
import pytest
from PIL import Image

import vggfeat
from vggfeat import ExtractorConfig
from vggfeat.config import FORMS, MAX_INPUT_SIZE, POOLINGS, PRECISIONS
from vggfeat.errors import VggfeatError

from conftest import REPO, make_folder, run_cli

# ---------------------------------------------------------------------------------------------
# Round trip and validation


def _valid_configs():
    """Every valid combination of a grid of values (a few thousand), made by trying them all."""
    grid = dict(
        layers=[("fc7",), ("pool5", "conv5_3"), ("fc6",)],
        arch=[None, "vgg11", "vgg16", "vgg11-lrn"],
        weights=["imagenet", "random", "/tmp/some/w.weights.h5"],
        form=list(FORMS),
        pooling=list(POOLINGS),
        input_size=[None, 32, 224, 512],
        resize=[None, "crop", "squash", "short"],
        precision=list(PRECISIONS),
        scales=[None, (224, 384), (256,)],
        flip=[False, True],
        aggregate=["mean", "stack"],
    )
    keys = list(grid)
    out = []
    for values in itertools.product(*grid.values()):
        kw = dict(zip(keys, values))
        try:
            out.append(ExtractorConfig(**kw))
        except VggfeatError:
            pass
    return out


VALID = _valid_configs()


def test_the_grid_has_valid_configs_of_every_form_and_the_descriptor():
    assert len(VALID) > 500
    assert {c.form for c in VALID} == set(FORMS)
    assert any(c.scales and c.flip and c.aggregate == "stack" for c in VALID)


def test_round_trip_through_attributes_and_kwargs():
    for c in VALID:
        assert ExtractorConfig.from_attrs(c.to_attrs()) == c, c
        assert ExtractorConfig(**c.to_kwargs()) == c
        assert not c.differences(ExtractorConfig.from_attrs(c.to_attrs()))


def test_round_trip_through_a_real_hdf5_file(tmp_path):
    import h5py

    for c in random.Random(0).sample(VALID, 40):
        with h5py.File(tmp_path / "a.h5", "w") as f:
            f.attrs.update(c.to_attrs())
        with h5py.File(tmp_path / "a.h5", "r") as f:
            assert ExtractorConfig.from_attrs(dict(f.attrs)) == c


@pytest.mark.parametrize("kwargs,setting", [
    (dict(layers=[]), "no layer given"),
    (dict(layers=["fc7", "FC7"]), "named twice"),
    (dict(layers=["fc9"]), "fc9"),
    (dict(arch="vgg99"), "vgg99"),
    (dict(form="sparse"), "form 'sparse'"),
    (dict(pooling="sum"), "pooling 'sum'"),
    (dict(precision="int8"), "precision 'int8'"),
    (dict(resize="stretch"), "resize 'stretch'"),
    (dict(input_size=16), "input_size=16"),
    (dict(input_size=100000), "input_size=100000"),
    (dict(input_size=3.5), "input_size=3.5"),
    (dict(input_size=float("inf")), "input_size=inf"),
    (dict(seed=-1, weights="random"), "seed=-1"),
    (dict(resize="short"), "resize=short"),
    (dict(form="dense", input_size=100), "input_size=100"),
    (dict(flip=True), "flip=True"),
    (dict(l2=True), "l2=True"),
    (dict(aggregate="stack"), "aggregate=stack"),
    (dict(scales=[256]), "scales need form dense"),
    (dict(scales=[256], form="dense", pooling="none"), "pooling avg or max"),
    (dict(scales=[128], form="dense"), "scales=[128]"),
    (dict(scales=[256, 256], form="dense"), "given twice"),
    (dict(scales=[256], form="dense", resize="crop"), "resize must be short"),
    (dict(scales=[256], form="dense", aggregate="median"), "aggregate 'median'"),
    (dict(scales=[256], form="dense", input_size=300), "scales replace input_size"),
    (dict(weights="random", weights_sha256="ab"), "weights_sha256"),
    (dict(form="fully_conv", layers=["fc7"]), "fc7"),
])
def test_each_invalid_setting_is_one_line_naming_it(kwargs, setting):
    with pytest.raises(VggfeatError) as info:
        ExtractorConfig(**kwargs)
    message = str(info.value)
    assert setting in message and "\n" not in message, message


def test_stored_settings_are_input_and_name_their_source():
    attrs = ExtractorConfig(layers=["fc7"]).to_attrs()
    with pytest.raises(VggfeatError, match=r"clf.skops: stored settings: input_size must be between 32 and "
                                           rf"{MAX_INPUT_SIZE} pixels. Received: input_size=100000"):
        ExtractorConfig.from_attrs(dict(attrs, input_size=100000), source="clf.skops")
    with pytest.raises(VggfeatError, match="stored settings cannot be read"):
        ExtractorConfig.from_attrs(dict(attrs, layers="[not json"), source="x.h5")


def test_format_1_attributes_read_as_the_same_config():
    """What vggfeat wrote before the config existed: the descriptor's input size, seed only for random."""
    old = {"arch": "vgg16", "weights": "imagenet", "form": "dense", "resize": "short", "input_size": 384,
           "layers": '["fc7"]', "pooling": "avg", "precision": "float32", "scales": "[256, 384]", "flip": True,
           "aggregate": "mean", "l2": False, "preprocessing": "caffe", "keras_layers": '["fc2"]'}
    c = ExtractorConfig.from_attrs(old)
    assert c == ExtractorConfig(layers=["fc7"], arch="vgg16", form="dense", scales=[256, 384], flip=True,
                                jpeg_decode="reduced")  # the only JPEG decode then (not recorded)


# ---------------------------------------------------------------------------------------------
# No import cycle


def _library_modules():
    """{dotted name relative to vggfeat (`io.sink`): its file} of every module of the library."""
    root = os.path.join(REPO, "vggfeat")
    out = {}
    for folder, _, files in os.walk(root):
        rel = os.path.relpath(folder, root).replace(os.sep, ".")
        for n in files:
            if n.endswith(".py") and n != "__init__.py":
                out[(n[:-3] if rel == "." else f"{rel}.{n[:-3]}")] = os.path.join(folder, n)
    return out


def _imports_of(name, path, modules):
    """The library modules that module `name` imports (at the top or in a function)."""
    package = name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(open(path).read())):
        targets = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").startswith("vggfeat."):
                mod = node.module[len("vggfeat."):]
            else:
                continue
            targets = [mod] + [f"{mod}.{a.name}".strip(".") for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name[len("vggfeat."):] for a in node.names if a.name.startswith("vggfeat.")]
        out.update(t for t in targets if t in modules)
    out.discard(name)
    return out


def test_no_import_cycle_among_the_library_modules():
    modules = _library_modules()
    graph = {m: _imports_of(m, p, modules) for m, p in modules.items()}
    assert "io.sink" in graph and "run.job" in graph and "io.writer" in graph["io.sink"]  # it reads subpackages
    state = {}

    def visit(m, stack):
        state[m] = "open"
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack + [m, n]))
            if n not in state:
                visit(n, stack + [m])
        state[m] = "done"

    for m in sorted(modules):
        if m not in state:
            visit(m, [])
    assert not any(m.startswith("run.") for m in graph["stream"])


def test_the_library_never_imports_the_cli_nor_private_names_of_other_modules():
    folder = os.path.join(REPO, "vggfeat")
    for name in os.listdir(folder):
        if not name.endswith(".py"):
            continue
        tree = ast.parse(open(os.path.join(folder, name)).read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith("vggfeat_cli"), name
                if node.level == 1:
                    private = [a.name for a in node.names if a.name.startswith("_") and a.name != "__version__"]
                    assert not private, f"{name} imports {private} from .{node.module}"


def test_public_api_is_small_documented_and_free_of_module_clashes():
    assert 15 <= len(vggfeat.__all__) <= 30
    for name in vggfeat.__all__:
        if name == "__version__":
            continue
        obj = getattr(vggfeat, name)
        assert callable(obj) and (obj.__doc__ or "").strip(), name
    import importlib

    for name in ("run.job", "run.options", "stream", "io.read", "io.merge", "io.recover", "config", "sklearn"):
        importlib.import_module(f"vggfeat.{name}")
    assert callable(vggfeat.extract)


# ---------------------------------------------------------------------------------------------
# The same settings, the same features, on every entry point


SETTINGS = {
    "standard": dict(layers=["fc7", "pool5"], arch="vgg11", weights="random", input_size=32),
    "fully_conv": dict(layers=["conv5_2"], arch="vgg11", weights="random", form="fully_conv", input_size=40),
    "dense": dict(layers=["fc7"], arch="vgg11", weights="random", form="dense", input_size=224, resize="squash",
                  pooling="none"),
    "descriptor": dict(layers=["conv5_2"], arch="vgg11", weights="random", form="fully_conv", scales=[32, 48],
                       flip=True, aggregate="stack", l2=True),
}


@pytest.fixture(scope="module")
def few_images(tmp_path_factory):
    root = tmp_path_factory.mktemp("few") / "in"
    make_folder(str(root), per_class=2, size=(60, 44))
    return root


def _cli_args(s):
    args = []
    for layer in s["layers"]:
        args += ["--layer", layer]
    for key in ("arch", "weights", "input_size", "resize", "pooling", "aggregate"):
        if key in s:
            args += [f"--{key.replace('_', '-')}", str(s[key])]
    if s.get("form") == "dense":
        args.append("--dense")
    if s.get("form") == "fully_conv":
        args.append("--fully-convolutional")
    if "scales" in s:
        args += ["--scales", ",".join(map(str, s["scales"]))]
    args += [f"--{k}" for k in ("flip", "l2") if s.get(k)]
    return args


@pytest.mark.parametrize("name", list(SETTINGS))
def test_same_settings_same_features_on_every_entry_point(name, few_images, tmp_path):
    from vggfeat.images import load_image, scan_images
    import pickle

    from vggfeat.io.layout import OutputSpec
    from vggfeat.run.ray import PartWorker
    from vggfeat.run.units import units_of

    s = SETTINGS[name]
    config = ExtractorConfig(**s)
    out = tmp_path / "cli.h5"
    r = run_cli("extract", few_images, *_cli_args(s), "--batch-size", "4", "-q", "-o", out)
    assert r.returncode == 0, r.stderr
    layers = list(config.layers)
    ref = {k: vggfeat.load_features(out, k) for k in layers}
    paths = list(ref[layers[0]].paths)
    assert ExtractorConfig.from_attrs(ref[layers[0]].attrs) == config.replace(
        arch="vgg11", input_size=config.input_size, resize=config.resize)

    def same(got, layer, what):
        np.testing.assert_allclose(np.asarray(got).reshape(len(paths), -1),
                                   ref[layer].features.reshape(len(paths), -1), rtol=2e-5, atol=1e-5, err_msg=what)

    # iter_features from the config
    batches = list(vggfeat.iter_features([few_images], config, batch_size=3, progress=False))
    assert [p for b in batches for p in b.paths] == paths
    for k in layers:
        same(np.concatenate([b.features[k] for b in batches]), k, "iter_features")
    # the config rebuilt from the file's attributes (what predict and --resume do)
    rebuilt = vggfeat.build_extractor(ExtractorConfig.from_attrs(vggfeat.read_attrs(out)), batch_size=4)
    files = [os.path.join(few_images, p) for p in paths]
    got = rebuilt.predict([load_image(f, rebuilt.geometry) for f in files])
    for k in layers:
        same(got[k], k, "from_attrs")
    # predict's extractor, rebuilt from a classifier file trained on these features (all its settings)
    from vggfeat.classifier import classify, extractor_for, load_classifier, predict_images, save_classifier

    result = classify(out, layers[0], cv=2)
    save_classifier(result, tmp_path / "c.skops")
    loaded = load_classifier(tmp_path / "c.skops")
    fx = extractor_for(loaded[1], batch_size=4)
    same(fx.predict([load_image(f, fx.geometry) for f in files])[layers[0]], layers[0], "predict")
    rows = list(predict_images(loaded, [str(few_images)], batch_size=4, progress=False))
    X = ref[layers[0]].features.reshape(len(paths), -1)
    assert [r["label"] for r in rows] == [loaded[2][int(c)] for c in loaded[0].predict(X)]
    # VGGFeaturizer on paths and on the decoded arrays
    fz = vggfeat.VGGFeaturizer(batch_size=4, layer=layers[0], **{k: v for k, v in s.items() if k != "layers"}).fit()
    same(fz.transform(files), layers[0], "VGGFeaturizer paths")
    arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    same(fz.transform(arrays), layers[0], "VGGFeaturizer arrays")
    # the Ray engine's worker build (the actor class, called as Ray Data calls it): one unit, one part
    images = scan_images([str(few_images)])
    folder = tmp_path / "staged"
    folder.mkdir()
    driver = vggfeat.build_extractor(config, batch_size=4)
    spec = OutputSpec(driver.settings(), driver.output_shapes, images.class_names)
    worker = PartWorker(str(folder), driver.config, 4, spec, 2, 10**8, {})
    worker({"unit": np.array([pickle.dumps(units_of(images)[0])], dtype=object)})
    part = os.path.join(folder, os.listdir(folder)[0])
    for k in layers:
        got = vggfeat.load_features(part, k)
        assert list(got.paths) == paths
        same(got.features, k, "Ray worker")


# ---------------------------------------------------------------------------------------------
# Regressions


def test_a_vgg11_file_may_be_vgg11_lrn_and_info_and_extract_agree(tmp_path, few_images):
    from vggfeat.models import build_vgg

    weights = tmp_path / "a.weights.h5"
    build_vgg("vgg11", input_size=32, seed=0).save_weights(weights)
    r = run_cli("info", "--weights", weights, "--arch", "vgg11-lrn")
    assert r.returncode == 0 and r.stdout.startswith("vgg11-lrn (configuration A-LRN)"), r.stderr
    r = run_cli("info", "--weights", weights)
    assert r.returncode == 0 and "note: the file fits vgg11 and vgg11-lrn" in r.stdout
    assert "input 32x32x3" in r.stdout
    r = run_cli("info", "--weights", weights, "--input-size", "224")  # an explicit size is honoured
    assert r.returncode == 0 and "input 224x224x3" in r.stdout
    r = run_cli("info", "--weights", weights, "--arch", "vgg16")
    assert r.returncode == 2 and "holds a vgg11 or vgg11-lrn network, not vgg16" in r.stderr
    out = tmp_path / "f.h5"
    r = run_cli("extract", few_images, "--weights", weights, "--layer", "fc7", "-q", "-o", out)
    assert r.returncode == 0, r.stderr
    assert "a.weights.h5: the file fits vgg11 and vgg11-lrn" in r.stderr
    assert "pass --arch to choose" in vggfeat.read_attrs(out)["arch_note"]
    r = run_cli("extract", few_images, "--weights", weights, "--arch", "vgg11-lrn", "--layer", "fc7", "-q",
                "-o", tmp_path / "lrn.h5")
    assert r.returncode == 0 and vggfeat.read_attrs(tmp_path / "lrn.h5")["arch"] == "vgg11-lrn"
    assert "arch_note" not in vggfeat.read_attrs(tmp_path / "lrn.h5")


def test_a_weight_file_vggfeat_writes_records_its_architecture(tmp_path, few_images):
    # LRN has no weights: only the record tells a vgg11-lrn file from a vgg11 one
    from vggfeat.models import build_vgg

    weights = tmp_path / "lrn.weights.h5"
    vggfeat.save_weights(build_vgg("vgg11-lrn", input_size=32, seed=3), weights)
    meta = vggfeat.describe_weights(weights)
    assert meta["arch"] == "vgg11-lrn" and "note" not in meta and "also_fits" not in meta
    r = run_cli("info", "--weights", weights)
    assert r.returncode == 0 and r.stdout.startswith("vgg11-lrn (configuration A-LRN)") and "note" not in r.stdout
    r = run_cli("info", "--weights", weights, "--arch", "vgg11")
    assert r.returncode == 2 and f"{weights} holds a vgg11-lrn network, not vgg11" in r.stderr, r.stderr
    out = tmp_path / "f.h5"
    r = run_cli("extract", few_images, "--weights", weights, "--arch", "vgg11", "--layer", "fc7", "-q", "-o", out)
    assert r.returncode == 2 and "does not fit vgg11" in r.stderr and not out.exists(), r.stderr
    r = run_cli("extract", few_images, "--weights", weights, "--layer", "fc7", "-q", "-o", out)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    attrs = vggfeat.read_attrs(out)
    assert attrs["arch"] == "vgg11-lrn" and "arch_note" not in attrs
    fx = vggfeat.FeatureExtractor("vgg11-lrn", "random", ["fc7"], seed=3, input_size=32)
    x = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    ours = vggfeat.FeatureExtractor(weights=str(weights), layers=["fc7"]).predict(list(x))["fc7"]
    np.testing.assert_allclose(ours, fx.predict(list(x))["fc7"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("value, message", [("vgg16", "records the architecture vgg16, but its tensors are those of "
                                                      "vgg11 or vgg11-lrn"),
                                            ("vgg99", "is not one of")])
def test_a_wrong_architecture_record_is_one_line(tmp_path, value, message):
    import h5py

    from vggfeat.models import build_vgg

    weights = tmp_path / "w.weights.h5"
    vggfeat.save_weights(build_vgg("vgg11", input_size=32, seed=3), weights)
    with h5py.File(weights, "a") as f:
        f.attrs["vggfeat_arch"] = value
    r = run_cli("info", "--weights", weights)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_multiscale_predict_of_no_image_is_empty():
    fx = vggfeat.build_extractor(ExtractorConfig(**SETTINGS["descriptor"]), batch_size=4)
    out = fx.predict([])
    assert out["conv5_2"].shape == (0, 1024)


def test_pooling_none_with_a_convolutional_form_and_a_fixed_geometry(few_images, tmp_path):
    out = tmp_path / "maps.h5"
    r = run_cli("extract", few_images, "--arch", "vgg11", "--weights", "random", "--fully-convolutional",
                "--resize", "squash", "--input-size", "64", "--layer", "conv5_2", "--pooling", "none", "-q", "-o", out)
    assert r.returncode == 0, r.stderr
    assert vggfeat.load_features(out).features.shape == (6, 4, 4, 512)


def test_float_arrays_with_scales_give_the_features_of_their_uint8_image():
    fz = vggfeat.VGGFeaturizer(batch_size=4, layer="conv5_2",
                               **{k: v for k, v in SETTINGS["descriptor"].items() if k != "layers"}).fit()
    img = np.random.default_rng(0).integers(0, 256, (44, 60, 3)).astype(np.uint8)
    np.testing.assert_allclose(fz.transform([img.astype(np.float64)]), fz.transform([img]), rtol=1e-6)
