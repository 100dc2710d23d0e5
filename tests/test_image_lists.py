"""Inputs people have: lists of image files (.txt, .csv with labels), --ext and --exclude."""

import os

import pytest
from click.testing import CliRunner

from vggfeat.errors import InputError
from vggfeat.images import scan_images

from conftest import make_folder


@pytest.fixture
def photos(tmp_path):
    make_folder(str(tmp_path / "photos"), per_class=2)
    return tmp_path


def test_txt_list_keeps_its_order_and_reads_paths_from_its_folder(photos, monkeypatch):
    (photos / "lists").mkdir()
    (photos / "lists" / "todo.txt").write_text(
        "# chosen by hand\n../photos/squares/img_001.png\n\n../photos/circles/img_000.png\n"
        f"{photos / 'photos' / 'stripes' / 'img_000.png'}\n../photos/squares/img_001.png\n")
    monkeypatch.chdir("/")  # relative paths are the list's, not the working folder's
    found = scan_images(str(photos / "lists" / "todo.txt"))
    assert found.files == [str(photos / "photos" / p) for p in
                           ("squares/img_001.png", "circles/img_000.png", "stripes/img_000.png")]
    assert found.labels == [-1, -1, -1] and found.class_names == []
    # the files are outside the list's folder: stored absolute, each once
    assert found.paths == found.files and found.root is None
    assert found.found() == "Found 3 images (no classes)"


def test_csv_list_labels_are_classes_sorted_like_folder_names(photos):
    (photos / "labels.csv").write_text(
        "path,label,comment\nphotos/stripes/img_001.png,zebra,\nphotos/circles/img_000.png,ant,round\n"
        "photos/squares/img_000.png,,unknown\nphotos/circles/img_001.png,zebra,\n")
    found = scan_images([photos / "labels.csv"])
    assert found.paths == ["photos/stripes/img_001.png", "photos/circles/img_000.png", "photos/squares/img_000.png",
                           "photos/circles/img_001.png"]  # relative to the list's folder, which holds them all
    assert found.root == str(photos)
    assert found.class_names == ["ant", "zebra"] and found.labels == [1, 0, -1, 1]
    assert found.found() == "Found 4 images in 2 classes (1 without a class)"


@pytest.mark.parametrize("text,message", [
    ("file,label\na.png,x\n", r"needs a header row naming a 'path' column"),
    ("path,label\nphotos/circles/img_000.png,a\nphotos/circles/img_000.png,b\n", r"twice, with labels 'a' and 'b'"),
    ("path,label\n", r"names no image"),
    ("path,label\nphotos/circles/img_000.png,a\nphotos/nope.png,b\nmissing.jpg,c\n",
     r"2 of 3 files named in .*do not exist \(photos/nope.png, missing.jpg\)"),
])
def test_bad_lists_are_refused_up_front(photos, text, message):
    (photos / "l.csv").write_text(text)
    with pytest.raises(InputError, match=message):
        scan_images([photos / "l.csv"])


def test_ext_chooses_extensions_and_exclude_leaves_out_by_glob(photos):
    (photos / "photos" / "circles" / "extra.JPG").write_bytes(b"x")
    (photos / "photos" / "circles" / "notes.txt").write_text("not an image")
    assert len(scan_images(photos / "photos")) == 7  # the default extensions, any letter case
    only_jpg = scan_images(photos / "photos", extensions=["jpg"])
    assert only_jpg.paths == ["circles/extra.JPG"]
    kept = scan_images(photos / "photos", exclude=["squares/*", "*_001.png"])
    assert kept.paths == ["circles/extra.JPG", "circles/img_000.png", "stripes/img_000.png"]
    assert kept.excluded == 4 and kept.class_names == ["circles", "stripes"]
    assert kept.found() == "Found 3 images in 2 classes (4 excluded)"
    with pytest.raises(InputError, match="not a file name extension"):
        scan_images(photos / "photos", extensions=["*.png"])


def test_extract_reads_a_csv_list_with_filters(photos):
    """The CLI takes a list wherever it takes a folder: stored paths, labels and classes come from it."""
    from vggfeat import load_features
    from vggfeat_cli.main import cli

    (photos / "labels.csv").write_text("path,label\n" + "".join(
        f"photos/{c}/img_00{i}.png,{c[:-1]}\n" for c in ("stripes", "circles") for i in (0, 1)))
    out = photos / "out.h5"
    result = CliRunner().invoke(cli, ["extract", str(photos / "labels.csv"), "-o", str(out), "--exclude", "*_001.png",
                                      "--arch", "vgg11", "--weights", "random", "--input-size", "32", "--layer",
                                      "pool5", "-q"])
    assert result.exit_code == 0, result.output
    data = load_features(out, layer="pool5")
    assert list(data.paths) == ["photos/stripes/img_000.png", "photos/circles/img_000.png"]
    assert list(data.class_names) == ["circle", "stripe"] and list(data.labels) == [1, 0]
    assert os.path.getsize(out) > 0
