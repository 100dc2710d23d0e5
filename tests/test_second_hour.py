"""The second hour (issue 22): behaviour a user expects once the first run works. Each test failed before
its fix."""

import os

from conftest import run_cli


def test_a_mistyped_pth_path_is_not_found(tmp_path, image_folder):
    """It was 'a pickled PyTorch file, convert it', for a file that does not exist."""
    r = run_cli("extract", image_folder, "-o", tmp_path / "f.h5", "--weights", tmp_path / "missing.pth")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [f"Error: weights file not found: {tmp_path / 'missing.pth'}"]
    (tmp_path / "real.pth").write_bytes(b"\x80\x02}q\x00.")  # an existing pickle is still refused as one
    r = run_cli("extract", image_folder, "-o", tmp_path / "f.h5", "--weights", tmp_path / "real.pth")
    assert r.returncode == 2 and "pickled PyTorch file" in r.stderr


def test_an_output_naming_a_folder_is_refused_before_tensorflow(tmp_path, image_folder):
    """`-o newdir/` took 6 s and 1.2 GB before failing with 'newdir/ is a folder', which was false."""
    r = run_cli("extract", image_folder, "-o", str(tmp_path / "newdir") + os.sep, "--weights", "random", "--arch",
                "vgg11", "--input-size", "32")
    assert r.returncode == 2 and "names a folder, which does not exist" in r.stderr
    assert f"{tmp_path / 'newdir' / 'features.h5'}" in r.stderr and "Found" not in r.stderr  # before the scan
    assert not os.path.exists(tmp_path / "newdir")
    from vggfeat.errors import OutputError
    from vggfeat.io.guard import check_output

    try:  # an existing folder (click refuses it first at the CLI)
        check_output(str(tmp_path) + os.sep)
    except OutputError as exc:
        assert "names a folder;" in str(exc)
    else:
        raise AssertionError("an existing folder was accepted as an output")


def test_a_grey_array_gives_the_network_input_of_its_grey_file(tmp_path):
    """`extract` reads grey files; `VGGFeaturizer` and `prepare_array` refused grey (H, W) arrays."""
    import numpy as np
    from PIL import Image

    from vggfeat.images import Geometry, load_image, prepare_array

    grey = (np.arange(48 * 40) % 251).astype(np.uint8).reshape(48, 40)
    Image.fromarray(grey, mode="L").save(tmp_path / "g.png")
    geometry = Geometry("crop", 32)
    from_file = load_image(str(tmp_path / "g.png"), geometry)
    np.testing.assert_array_equal(prepare_array(grey, geometry), from_file)
    np.testing.assert_array_equal(prepare_array(grey[..., None], geometry), from_file)
    from vggfeat.sklearn import VGGFeaturizer

    np.testing.assert_array_equal(VGGFeaturizer._image(grey, geometry), from_file)


def test_one_classifier_recipe_everywhere():
    """The README's snippet and notebook 01 used LinearSVC(C=1), `classify` C=10: 0.965 and 0.980 on one file."""
    import glob
    import re

    import vggfeat
    from conftest import REPO
    from vggfeat.classifier import DEFAULT_C, make_classifier

    assert vggfeat.make_classifier().get_params()["classifier__C"] == DEFAULT_C["linear-svm"]
    assert make_classifier().get_params().keys() == vggfeat.make_classifier().get_params().keys()
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        first_snippet = f.read().split("```python", 1)[1].split("```", 1)[0]
    assert "vggfeat.make_classifier()" in first_snippet and "LinearSVC" not in first_snippet
    for nb in glob.glob(os.path.join(REPO, "notebooks", "*.ipynb")):
        with open(nb, encoding="utf-8") as f:
            text = f.read()
        assert not re.search(r"LinearSVC\(C=", text), nb


def test_one_place_builds_the_augmentation_levels():
    """finetune's levels and vggfeat.augment's are the same, and only the flipping ones flip."""
    import keras

    from vggfeat import augment
    from vggfeat.finetuning import AUGMENTS, FLIPPING_AUGMENTS, augmentation

    assert augment.POLICIES == tuple(AUGMENTS)
    for level in ("none", "light", "flip"):
        flips = any(isinstance(x, keras.layers.RandomFlip) for x in augment.augmentation(level, 32)[1])
        assert flips == (level in FLIPPING_AUGMENTS)
        assert [type(x) for x in augmentation(level, 32)[1]] == [type(x) for x in augment.augmentation(level, 32)[1]]


def test_a_notebook_shows_extract_progress_by_default(tmp_path):
    """A kernel's stderr is no terminal: `vggfeat.extract` in a notebook was silent for minutes."""
    import json

    import nbformat
    from nbclient import NotebookClient

    code = """
import os
import numpy as np
from PIL import Image
import vggfeat
os.makedirs("imgs", exist_ok=True)
for i in range(3):
    Image.fromarray(np.full((40, 40, 3), 60 * i, np.uint8)).save(f"imgs/{i}.png")
summary = vggfeat.extract(["imgs"], "f.h5", arch="vgg11", weights="random", input_size=32, layers=["pool5"])
print(summary.written)
"""
    book = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    NotebookClient(book, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = book.cells[0].outputs
    text = json.dumps(outputs)
    assert any(o.get("name") == "stdout" and "3" in o.get("text", "") for o in outputs), text[:2000]
    widget = any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)
    bar = any(o.get("name") == "stderr" and "img" in o.get("text", "") for o in outputs)
    assert widget or bar, text[:2000]


def _fake_imagenet_notop(tmp_path, monkeypatch):
    """Keras's ImageNet vgg16 'notop' file, made here (random values in Keras's legacy layout) and put in
    a private Keras cache with its MD5, as test_weights.py does: ImageNet weights cannot download here."""
    import hashlib

    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    import vggfeat.weights as W

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    os.makedirs(tmp_path / "keras" / "models")
    fname, _, _ = W.IMAGENET_FILES[("vgg16", False)]
    target = tmp_path / "keras" / "models" / fname
    keras.utils.set_random_seed(3)
    with h5py.File(target, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, keras.applications.VGG16(weights=None, include_top=False,
                                                                                input_shape=(32, 32, 3)))
    md5 = hashlib.md5(target.read_bytes()).hexdigest()
    monkeypatch.setitem(W.IMAGENET_FILES, ("vgg16", False), (fname, "http://127.0.0.1:9/none.h5", md5))
    return target


def test_a_config_read_back_from_its_file_equals_it(tmp_path, monkeypatch):
    """README: `ExtractorConfig.from_attrs(read_attrs("voc.h5"))  # == config`. It was not: the file records
    the resolved arch (vgg16 for arch=None) and input size (224 for None); a weight file by its absolute path."""
    import shutil

    import vggfeat
    from conftest import make_folder
    from vggfeat import ExtractorConfig, build_extractor

    make_folder(str(tmp_path / "images"), per_class=1, size=(40, 32))
    notop = _fake_imagenet_notop(tmp_path, monkeypatch)
    monkeypatch.chdir(tmp_path)
    shutil.copyfile(notop, tmp_path / "mine.h5")
    configs = [ExtractorConfig(layers=["pool5"], weights="imagenet", form="fully_conv"),  # arch, size: defaults
               ExtractorConfig(layers=["pool5"], weights="imagenet", form="fully_conv", scales=[32, 48], flip=True),
               ExtractorConfig(layers=["pool5"], weights="mine.h5", form="fully_conv", input_size=32)]  # relative
    for i, config in enumerate(configs):
        out = tmp_path / f"{i}.h5"
        vggfeat.extract(["images"], out, config=config, progress=False)
        same = ExtractorConfig.from_attrs(vggfeat.read_attrs(out))
        if config.weights_is_file:  # its arch, size and SHA-256 are known once it is read
            assert same == build_extractor(config).config and same != config
        else:
            assert same == config and hash(same) == hash(config) and not same.differing(config), config
        assert ExtractorConfig.from_attrs(config.to_attrs()) == config
    assert ExtractorConfig(weights="random") == ExtractorConfig(weights="random", arch="vgg16", input_size=224)
    assert ExtractorConfig(weights="random") != ExtractorConfig(weights="random", arch="vgg19")
    assert ExtractorConfig(weights="random") != ExtractorConfig(weights="random", input_size=192)


def test_one_top_k_default_whichever_option_names_a_finetuned_model(tmp_path):
    """`predict --weights mine.keras` gave the top 5 of a fine-tuned model's classes, `--classifier mine.keras`
    the top 1. The default follows what fc8 predicts: 1 of a fine-tuned model's classes, 5 of ImageNet's."""
    from vggfeat.classifier import load_predictor
    from vggfeat.models import build_vgg
    from vggfeat.weights import write_keras_metadata

    path = str(tmp_path / "mine.keras")
    build_vgg("vgg11", input_size=32, classes=6).save(path)
    write_keras_metadata(path, {"class_names": [f"c{i}" for i in range(6)], "input_size": 32,
                                "preprocessing": "caffe"})
    by_classifier, by_weights = load_predictor(path), load_predictor(weights=path)
    assert by_classifier.kind == by_weights.kind == "finetuned"
    assert by_classifier.top_k == by_weights.top_k == 1
    assert load_predictor(path, top_k=3).top_k == load_predictor(weights=path, top_k=3).top_k == 3
    from vggfeat.prediction import DEFAULT_TOP_K

    assert DEFAULT_TOP_K == {"imagenet": 5, "finetuned": 1}


def test_calls_again_in_one_session_do_not_retrace(tmp_path, monkeypatch):
    """A notebook calling extract / iter_features / VGGFeaturizer again, with other batch sizes: each call built
    a network and traced its forward pass again, and after a few calls TensorFlow warned "5 out of the last 11
    calls to <function ...one_step_on_data_distributed> triggered tf.function retracing"."""
    import logging
    import weakref

    import numpy as np

    import vggfeat
    from conftest import make_folder

    try:  # TensorFlow counts traces per function code across the process: start from a fresh session's count
        from tensorflow.python.eager.polymorphic_function import polymorphic_function as pf

        monkeypatch.setattr(pf._frequent_tracing_detector_manager, "_detectors", weakref.WeakKeyDictionary())
    except (ImportError, AttributeError):
        pass
    make_folder(str(tmp_path / "images"), per_class=2)
    config = vggfeat.ExtractorConfig(layers=["pool5"], arch="vgg11", weights="random", input_size=32, seed=7)
    messages = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())
    logging.getLogger("tensorflow").addHandler(handler)
    try:
        for i, batch_size in enumerate([2, 4, 5, 3, 8, 1]):
            vggfeat.extract([tmp_path / "images"], tmp_path / f"{i}.h5", config=config, batch_size=batch_size,
                            progress=False)
            list(vggfeat.iter_features([tmp_path / "images"], config, batch_size=batch_size + 1, progress=False))
        featurizer = vggfeat.VGGFeaturizer(arch="vgg11", weights="random", layer="pool5", input_size=32, seed=7)
        for n in (1, 3, 6, 2):
            featurizer.fit().transform([np.full((40, 48, 3), 10 * n, np.uint8)] * n)
    finally:
        logging.getLogger("tensorflow").removeHandler(handler)
    assert not [m for m in messages if "retracing" in m], messages
    first = vggfeat.load_features(tmp_path / "0.h5", "pool5").features
    np.testing.assert_array_equal(vggfeat.load_features(tmp_path / "5.h5", "pool5").features, first)
