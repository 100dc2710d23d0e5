"""The output is never one of the inputs (issue 21, case 4), and a `--resume --output-shards` with other
settings is refused before TensorFlow (issue 21, case 8).

Each refusal runs the CLI in a fresh interpreter (`run_light`, as in test_early_checks.py): one line, exit
code 2, nothing changed on disk, and TensorFlow/Keras never imported.
"""

import os
import re
import tarfile
import time

import pytest

from conftest import make_folder
from test_early_checks import FAST, listing, run_light


def _snapshot(root):
    """Every file under `root` with its bytes: an input replaced by an output shows here."""
    out = {}
    for rel in listing(root):
        with open(os.path.join(root, rel), "rb") as f:
            out[rel] = f.read()
    return out


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    make_folder(str(root / "images"), per_class=2)
    (root / "shards").mkdir()
    for i, cls in enumerate(["circles", "squares"]):
        with tarfile.open(root / "shards" / f"{i:05d}.tar", "w") as tar:
            for name in sorted(os.listdir(root / "images" / cls)):
                tar.add(root / "images" / cls / name, arcname=f"{cls}_{name}")
    (root / "list.txt").write_text("images/circles/img_000.png\nimages/squares/img_001.png\n")
    os.symlink("images/squares/img_001.png", root / "link.png")
    (root / "o.h5.parts" / "x").mkdir(parents=True)
    make_folder(str(root / "o.h5.parts" / "x"), per_class=1)
    return root


REFUSED = {
    "a tar shard given by name": (["shards/00000.tar", "-o", "shards/00000.tar", "--overwrite"],
                                  r"the output shards/00000\.tar is the input shards/00000\.tar"),
    "a shard of a brace range": (["shards/{00000..00001}.tar", "-o", "./shards/../shards/00001.tar", "--overwrite"],
                                 r"is one of the inputs \(a shard of shards/\{00000\.\.00001\}\.tar\)"),
    "a new shard name in a folder given with shards": (["shards/00000.tar", "shards", "-o", "shards/00002.tar"],
                                                       r"inside the input folder shards with a name that is read"),
    "an image file given by name, another spelling": (["images/circles/img_001.png", "images", "-o",
                                                       "images/circles/../circles/img_001.png", "--overwrite"],
                                                      r"is the input images/circles/img_001\.png"),
    "an image inside an input folder": (["images", "-o", "images/circles/img_000.png", "--overwrite"],
                                        r"the output images/circles/img_000\.png is inside the input folder images"),
    "a new image name inside an input folder": (["images", "-o", "images/new.jpg"],
                                                r"inside the input folder images with a name that is read as an "
                                                r"input \(an image or a tar shard\)"),
    "an image a list names": (["list.txt", "-o", "images/squares/img_001.png", "--overwrite"],
                              r"the output images/squares/img_001\.png is one of the inputs \(.*/images/squares/"
                              r"img_001\.png\)"),
    "a link to an image a list names": (["list.txt", "-o", "link.png", "--overwrite"],
                                        r"the output link\.png is one of the inputs \(.*/images/squares/img_001\.png\)"),
    # a list file is refused as an output by its suffix (vggfeat writes HDF5) before it is compared
    "the list file given": (["list.txt", "-o", "list.txt", "--overwrite"], r"list\.txt: vggfeat writes HDF5, not text"),
    "an input inside OUTPUT.parts": (["o.h5.parts/x", "-o", "o.h5", "--overwrite", "--output-shards"],
                                     r"the parts' folder o\.h5\.parts of the output would hold the input o\.h5\.parts/x"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_output_that_is_an_input_is_refused_before_tensorflow(place, case):
    args, pattern = REFUSED[case]
    before = _snapshot(place)
    report, stderr = run_light("extract", *args, *FAST, cwd=place)
    lines = stderr.strip().splitlines()
    assert report["code"] == 2 and len(lines) == 1, stderr
    assert re.search(pattern, lines[0]), lines[0]
    assert report["heavy"] == [], f"{case}: imported {report['heavy']} before answering"
    assert _snapshot(place) == before  # the input is intact, nothing written


def test_predict_csv_that_is_an_input_list_is_refused(place):
    (place / "list.csv").write_text("path\nimages/circles/img_000.png\n")
    before = _snapshot(place)
    report, stderr = run_light("predict", "--classifier", "none.skops", "list.csv", "-o", "list.csv", "--overwrite",
                               cwd=place)
    lines = stderr.strip().splitlines()
    assert report["code"] == 2 and len(lines) == 1, stderr
    assert re.search(r"the output list\.csv is the input list\.csv", lines[0]), lines[0]
    assert report["heavy"] == [] and _snapshot(place) == before
    # a CSV inside an input folder is no input: the next check (the classifier file) answers
    report, stderr = run_light("predict", "--classifier", "none.skops", "images", "-o", "images/p.csv", cwd=place)
    assert report["code"] == 2 and "classifier file not found: none.skops" in stderr, stderr


def test_features_file_inside_the_images_folder_is_allowed(place):
    """A name no scan reads (`.h5`) inside an input folder is written, and a later run does not read it."""
    from vggfeat import extract, load_features
    from vggfeat.shards import scan_inputs

    images = place / "images"
    try:
        summary = extract([images], images / "features.h5", ["fc7"], arch="vgg11", weights="random",
                          input_size=32, progress=False)
        assert summary.total_rows == 6 and len(load_features(images / "features.h5", "fc7").paths) == 6
        assert len(scan_inputs([images]).files) == 6  # the .h5 is not an image
    finally:
        if (images / "features.h5").exists():
            os.remove(images / "features.h5")


@pytest.fixture(scope="module")
def index_place(tmp_path_factory):
    """An index of parts made by `extract(..., output_shards=True)` (random vgg11 at 32, fc7, avg)."""
    from vggfeat import extract

    root = tmp_path_factory.mktemp("index")
    make_folder(str(root / "images"), per_class=2)
    cwd = os.getcwd()
    os.chdir(root)  # the inputs as the CLI will give them (their absolute paths are compared)
    try:
        extract(["images"], "idx.h5", ["fc7"], arch="vgg11", weights="random", input_size=32, progress=False,
                output_shards=True)
    finally:
        os.chdir(cwd)
    return root


@pytest.mark.parametrize("change, pattern", [
    (["--pooling", "max", "--layer", "pool5"], r"layers=\('fc7',\) in the file, \('pool5',\) now; pooling='avg' "
                                               r"in the file, 'max' now"),
    (["--layer", "fc6"], r"layers=\('fc7',\) in the file, \('fc6',\) now"),
])
def test_resume_index_with_other_settings_is_refused_before_tensorflow(index_place, change, pattern):
    before = _snapshot(index_place)
    began = time.perf_counter()
    report, stderr = run_light("extract", "images", "-o", "idx.h5", "--resume", "--output-shards", *FAST, *change,
                               cwd=index_place)
    seconds = time.perf_counter() - began
    lines = stderr.strip().splitlines()
    assert report["code"] == 2 and len(lines) == 1, stderr
    assert re.search(r"^Error: cannot resume idx\.h5: its settings differ from this run's: " + pattern, lines[0]), \
        lines[0]
    assert report["heavy"] == [], f"imported {report['heavy']} before answering"
    assert _snapshot(index_place) == before
    print(f"refused in {seconds:.2f} s")


def test_resume_index_with_the_same_settings_passes_the_early_check(index_place, monkeypatch):
    from vggfeat.run.job import prepare_extract

    monkeypatch.chdir(index_place)
    job = prepare_extract(["images"], "idx.h5", ["fc7"], arch="vgg11", weights="random", input_size=32, resume=True,
                          output_shards=True)
    assert len(job.images) == 6
