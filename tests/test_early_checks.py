"""Every mistake is answered before TensorFlow is imported: one line, exit code 2, nothing written.

Each case runs the CLI in a fresh interpreter (as a user would) and reports, at exit, whether TensorFlow
or Keras were imported; the cases need no TensorFlow, so each takes a fraction of a second.
"""

import json
import os
import re
import subprocess
import sys

import h5py
import pytest

from conftest import REPO, make_folder

# Runs the CLI like `vggfeat ARGS`, then prints whether TensorFlow/Keras were imported, as JSON on stdout.
_RUN = """
import json, sys
from vggfeat_cli.main import cli
try:
    cli(sys.argv[1:], prog_name="vggfeat")
except SystemExit as exc:
    code = exc.code
else:
    code = 0
print(json.dumps({"code": code, "heavy": sorted(m for m in ("tensorflow", "keras", "jax") if m in sys.modules)}))
"""

#: no network: an ImageNet download fails at once, wherever the tests run
OFFLINE = {"https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "no_proxy": "", "NO_PROXY": ""}


def run_light(*args, cwd, env=None):
    e = dict(os.environ, PYTHONPATH=REPO, **OFFLINE)
    e.update(env or {})
    p = subprocess.run([sys.executable, "-c", _RUN, *map(str, args)], capture_output=True, text=True, env=e,
                       cwd=cwd, timeout=120)
    report = json.loads(p.stdout.strip().splitlines()[-1])
    return report, p.stderr


def listing(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def legacy_weights(path, arch, classes=None):
    """A legacy `.h5` weight file of `arch` without top, its tensors declared but never written (h5py
    allocates chunked datasets lazily): every shape is right, the file is a few kilobytes."""
    from vggfeat.specs import conv_weight_shapes, get_arch

    with h5py.File(path, "w") as f:
        names = []
        for name, kernel, bias in conv_weight_shapes(get_arch(arch)):
            g = f.create_group(name)
            g.create_dataset(f"{name}/kernel:0", shape=kernel, dtype="f4", chunks=True)
            g.create_dataset(f"{name}/bias:0", shape=bias, dtype="f4", chunks=True)
            g.attrs["weight_names"] = [f"{name}/kernel:0".encode(), f"{name}/bias:0".encode()]
            names.append(name.encode())
        f.attrs["layer_names"] = names
    return str(path)


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    root = tmp_path_factory.mktemp("early")
    make_folder(str(root / "images"), per_class=2)
    (root / "empty").mkdir()
    (root / "taken.h5").write_bytes(b"an earlier output")
    (root / "taken.keras").write_bytes(b"an earlier model")
    (root / "notes.h5").write_bytes(b"not hdf5")
    legacy_weights(root / "vgg13_notop.h5", "vgg13")
    (root / "list.txt").write_text("images/circles/img_000.png\nimages/circles/img_009.png\nnowhere/a.png\n")
    (root / "one_class").mkdir()
    make_folder(str(root / "one_class"), per_class=2, classes={"only": ((1, 2, 3), "circle")})
    (root / "keras_home").mkdir()
    return root


FAST = ["--arch", "vgg11", "--weights", "random", "--input-size", "32"]

MISTAKES = {
    "input missing": (["extract", "nowhere", "-o", "out.h5", *FAST], r"input not found: nowhere"),
    "no images": (["extract", "empty", "-o", "out.h5", *FAST], r"no images found in empty"),
    "excluded all": (["extract", "images", "-o", "out.h5", "--exclude", "*.png", *FAST],
                     r"no images found .*; 6 excluded by \*\.png"),
    "bad --ext": (["extract", "images", "-o", "out.h5", "--ext", "*", *FAST], r"not a file name extension"),
    "list names missing files": (["extract", "list.txt", "-o", "out.h5", *FAST],
                                 r"2 of 3 files named in list\.txt do not exist \(images/circles/img_009\.png, "
                                 r"nowhere/a\.png\)"),
    "output exists": (["extract", "images", "-o", "taken.h5", *FAST], r"taken\.h5 exists; pass --resume"),
    "output folder missing": (["extract", "images", "-o", "no/such/out.h5", *FAST],
                              r"the output folder does not exist"),
    "unknown layer": (["extract", "images", "-o", "out.h5", "--layer", "fc9", *FAST],
                      r"unknown layer 'fc9' for vgg11; valid layers: conv1_1"),
    "layer of the file's arch": (["extract", "images", "-o", "out.h5", "--weights", "vgg13_notop.h5",
                                  "--layer", "conv3_3"], r"unknown layer 'conv3_3' for vgg13"),
    "scales without a dense form": (["extract", "images", "-o", "out.h5", "--scales", "256,384", *FAST],
                                    r"scales need form dense"),
    "dense below 224": (["extract", "images", "-o", "out.h5", "--dense", "--input-size", "64", "--arch", "vgg11",
                         "--weights", "random"], r"the dense form needs input of at least 224 pixels"),
    "fc layer at another size": (["extract", "images", "-o", "out.h5", "--arch", "vgg16", "--input-size", "64",
                                  "--weights", "imagenet"], r"take 224x224 input; input size 64 needs --dense"),
    "flip without scales": (["extract", "images", "-o", "out.h5", "--flip", *FAST], r"flip=True belongs to"),
    "weight file not HDF5": (["extract", "images", "-o", "out.h5", "--weights", "notes.h5"],
                             r"cannot read weight file notes\.h5"),
    "weight file of another arch": (["extract", "images", "-o", "out.h5", "--weights", "vgg13_notop.h5",
                                     "--arch", "vgg16", "--layer", "pool5"],
                                    r"holds a vgg13 network and does not fit vgg16"),
    "fc layer from a notop file": (["extract", "images", "-o", "out.h5", "--weights", "vgg13_notop.h5"],
                                   r"has no fc6/fc7/fc8 weights \(a 'notop' file\)"),
    "no imagenet weights for the arch": (["extract", "images", "-o", "out.h5", "--arch", "vgg13"],
                                         r"no ImageNet weights exist for vgg13"),
    "imagenet not cached, offline": (["extract", "images", "-o", "out.h5", "-q"],
                                     r"cannot get ImageNet weights for vgg16: vgg16_weights_tf_dim_ordering_tf_kernels"
                                     r"\.h5 is not in .*keras_home/models and downloading it failed"),
    "finetune: output exists": (["finetune", "images", "-o", "taken.keras", *FAST], r"taken\.keras exists"),
    "finetune: unknown --train-from": (["finetune", "images", "-o", "m.keras", "--train-from", "fc9", *FAST],
                                       r"--train-from: unknown layer 'fc9'"),
    "finetune: one class": (["finetune", "one_class", "-o", "m.keras", *FAST], r"at least 2 classes"),
    "finetune: no imagenet weights for the arch": (["finetune", "images", "-o", "m.keras", "--arch", "vgg13"],
                                                   r"no ImageNet weights exist for vgg13"),
    "classify: output exists": (["classify", "taken.h5", "-o", "taken.keras"], r"taken\.keras exists"),
}


@pytest.mark.parametrize("case", list(MISTAKES))
def test_mistake_is_one_line_before_tensorflow(place, case):
    args, pattern = MISTAKES[case]
    before = listing(place)
    report, stderr = run_light(*args, cwd=place, env={"KERAS_HOME": str(place / "keras_home")})
    lines = stderr.strip().splitlines()
    assert report["code"] == 2, stderr
    assert len(lines) == 1 and re.match(r"(Error|vggfeat): ", lines[0]), stderr
    assert re.search(pattern, lines[0]), lines[0]
    assert report["heavy"] == [], f"{case}: imported {report['heavy']} before answering"
    assert listing(place) == before  # nothing written, no temporary file left


def test_found_line_comes_before_the_imagenet_download(place):
    """The inputs are reported as Keras reports them before the ImageNet file is fetched; here the offline
    download fails after that line, still without TensorFlow. (The `loading ...` line of a run that goes
    on is checked in test_cli.py.)"""
    report, stderr = run_light("extract", "images", "-o", "out.h5", cwd=place,
                               env={"KERAS_HOME": str(place / "keras_home")})
    lines = stderr.strip().splitlines()
    assert lines[0] == "Found 6 images in 3 classes", stderr
    assert lines[1].startswith("Error: cannot get ImageNet weights") and report["heavy"] == []


@pytest.fixture(scope="module")
def classifier_place(place):
    """A real classifier file (random vgg11 at 32, fc7) beside the images of `place`."""
    from vggfeat import extract
    from vggfeat.classifier import classify, save_classifier

    extract([place / "images"], place / "f.h5", ["fc7"], arch="vgg11", weights="random", input_size=32,
            progress=False)
    save_classifier(classify(place / "f.h5", "fc7", cv=2), place / "clf.skops")
    (place / "taken.csv").write_text("path,label\n")
    return place


PREDICT_MISTAKES = {
    "classifier file missing": (["--classifier", "none.skops", "images"], r"classifier file not found: none\.skops"),
    "input missing": (["--classifier", "clf.skops", "nowhere"], r"input not found: nowhere"),
    "weights the classifier was not trained with": (["--classifier", "clf.skops", "images", "--weights",
                                                     "vgg13_notop.h5"],
                                                    r"trained on features from random weights, not vgg13_notop\.h5"),
    "output exists": (["--classifier", "clf.skops", "images", "-o", "taken.csv"], r"taken\.csv exists"),
    "output folder missing": (["--classifier", "clf.skops", "images", "-o", "no/p.csv"],
                              r"the output folder does not exist"),
}


@pytest.mark.parametrize("case", list(PREDICT_MISTAKES))
def test_predict_mistake_is_one_line_before_tensorflow(classifier_place, case):
    args, pattern = PREDICT_MISTAKES[case]
    before = listing(classifier_place)
    report, stderr = run_light("predict", *args, cwd=classifier_place)
    lines = stderr.strip().splitlines()
    assert report["code"] == 2 and len(lines) == 1, stderr
    assert re.search(pattern, lines[0]), lines[0]
    assert report["heavy"] == [], f"predict, {case}: imported {report['heavy']} before answering"
    assert listing(classifier_place) == before


def test_check_predict_says_what_it_found_and_loads(classifier_place, caplog):
    from vggfeat.classifier import check_predict

    with caplog.at_level("INFO", logger="vggfeat"):
        images = check_predict(str(classifier_place / "clf.skops"), [classifier_place / "images"],
                               exclude=["*/img_001.png"])
    assert len(images) == 3 and images.class_names == ["circles", "squares", "stripes"]
    assert [r.getMessage() for r in caplog.records] == ["Found 3 images in 3 classes (3 excluded)",
                                                        "loading vgg11 with random weights (seed 0)..."]


@pytest.fixture
def local_server(tmp_path, monkeypatch):
    """An HTTP server on 127.0.0.1 serving `tmp_path/served` (the ImageNet download without a network)."""
    import functools
    import http.server
    import threading

    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for key in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "home"))
    yield served, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_imagenet_download_is_checked_and_renamed_into_the_keras_cache(local_server, monkeypatch):
    import hashlib

    import vggfeat.weights as W
    from vggfeat.errors import WeightsError

    served, url = local_server
    body = os.urandom(3000)
    (served / "w.h5").write_bytes(body)
    fname = W.IMAGENET_FILES[("vgg16", False)][0]
    home = served.parent / "home" / "models"
    monkeypatch.setitem(W.IMAGENET_FILES, ("vgg16", False), (fname, url + "w.h5", "0" * 32))
    with pytest.raises(WeightsError, match=r"downloading it failed \(the downloaded file's MD5 is [0-9a-f]{32}, not 0+\)"):
        W.imagenet_weights_path("vgg16", include_top=False)
    assert not home.exists() or os.listdir(home) == []  # nothing half-written is left

    monkeypatch.setitem(W.IMAGENET_FILES, ("vgg16", False), (fname, url + "w.h5", hashlib.md5(body).hexdigest()))
    path = W.imagenet_weights_path("vgg16", include_top=False)
    assert path == str(home / fname) and open(path, "rb").read() == body and os.listdir(home) == [fname]
    # a damaged cached file is fetched again
    with open(path, "r+b") as f:
        f.write(b"\0" * 10)
    os.utime(path, ns=(1, 1))
    assert open(W.imagenet_weights_path("vgg16", include_top=False), "rb").read() == body


def test_resume_with_other_settings_is_refused_before_tensorflow(classifier_place):
    """`f.h5` was extracted with fc7 (vgg11, random, 32): resuming it with pool5 is a mistake known at once."""
    before = listing(classifier_place)
    report, stderr = run_light("extract", "images", "-o", "f.h5", "--resume", "--layer", "pool5", *FAST,
                               cwd=classifier_place)
    lines = stderr.strip().splitlines()
    assert report["code"] == 2 and len(lines) == 1, stderr
    assert re.search(r"cannot resume f\.h5: its settings differ from this run's: layers=\('fc7',\) in the file, "
                     r"\('pool5',\) now", lines[0]), lines[0]
    assert report["heavy"] == [] and listing(classifier_place) == before
