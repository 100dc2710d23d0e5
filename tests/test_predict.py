"""predict with a fine-tuned model and ImageNet top-k, its CSV on a terminal, true labels, accuracy and the
summary; classify --test on another features file (issue 14, points 2 and 3)."""

import csv
import fcntl
import hashlib
import io
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import REPO, make_folder
from vggfeat_cli.main import cli

SMALL = dict(arch="vgg11", weights="random", input_size=32, seed=0)


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    make_folder(str(root / "train"), per_class=4)
    make_folder(str(root / "new"), per_class=2, size=(56, 44))
    return root


@pytest.fixture(scope="module")
def finetuned(place):
    """A model of `vggfeat finetune` (vgg11 at 32 px, from random weights), fc8 its three-class classifier."""
    from vggfeat import finetune

    out = place / "mine.keras"
    finetune(place / "train", out, epochs=4, optimizer="adam", lr=3e-4, val_split=None, batch_size=4,
             augment="none", verbose=0, **SMALL)
    return out


def _pixels(files, size):
    """The images as vggfeat's predict reads them (crop geometry at `size`), as float32 for Keras."""
    from vggfeat.images import Geometry, load_image

    return np.stack([load_image(str(f), Geometry("crop", size)) for f in files]).astype("float32")


def test_predict_with_a_finetuned_model_gives_its_own_argmax(place, finetuned):
    import keras

    from vggfeat.weights import read_keras_metadata

    out = place / "tuned.csv"
    result = CliRunner().invoke(cli, ["predict", "--classifier", str(finetuned), str(place / "new"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    names = read_keras_metadata(finetuned)["class_names"]
    assert list(rows[0]) == ["path", "true_label", "label", "score", "p_circles", "p_squares", "p_stripes", "error"]
    model = keras.saving.load_model(finetuned, compile=False)
    x = keras.applications.vgg16.preprocess_input(_pixels([place / "new" / r["path"] for r in rows], 32))
    proba = np.asarray(model.predict_on_batch(x))
    assert [r["label"] for r in rows] == [names[i] for i in proba.argmax(axis=1)]
    np.testing.assert_allclose([float(r["score"]) for r in rows], proba.max(axis=1), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose([[float(r[f"p_{n}"]) for n in names] for r in rows], proba, rtol=1e-4, atol=1e-6)
    assert [r["true_label"] for r in rows] == [r["path"].split("/")[0] for r in rows]
    right = sum(r["label"] == r["true_label"] for r in rows)
    assert f"6 rows written to {out} (0 failed)" in result.stderr
    assert f"accuracy {right / 6:.4f} ({right} of 6 labelled images)" in result.stderr


def test_predict_imagenet_top_k_names_from_keras_class_index(place, tmp_path, monkeypatch):
    """A keras.applications VGG16 (random weights, 32 px) saved in Keras's ImageNet file layout; the class
    index (this test's names, in Keras's format) in a temporary Keras cache."""
    import keras

    from test_weights import save_legacy_h5
    from vggfeat import prediction

    keras.utils.set_random_seed(5)
    model = keras.applications.VGG16(weights=None, input_shape=(32, 32, 3))
    weights = save_legacy_h5(model, tmp_path / "vgg16_imagenet_layout.h5")
    cache = tmp_path / "keras_home" / "models"
    cache.mkdir(parents=True)
    index = json.dumps({str(i): [f"n{i:08d}", f"thing_{i}"] for i in range(1000)}).encode()
    (cache / "imagenet_class_index.json").write_bytes(index)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    name, _, _ = prediction.IMAGENET_CLASS_INDEX  # this index, not Keras's: its own MD5, no download
    monkeypatch.setattr(prediction, "IMAGENET_CLASS_INDEX",
                        (name, "http://127.0.0.1:9/x", hashlib.md5(index).hexdigest()))

    result = CliRunner().invoke(cli, ["predict", "--weights", weights, "--top-k", "3", str(place / "new")])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(rows[0]) == ["path", "true_label", "label", "score", "label_2", "score_2", "label_3", "score_3",
                             "error"]
    x = keras.applications.vgg16.preprocess_input(_pixels([place / "new" / r["path"] for r in rows], 32))
    proba = np.asarray(model.predict_on_batch(x))
    top = np.argsort(-proba, axis=1)[:, :3]
    assert [[r["label"], r["label_2"], r["label_3"]] for r in rows] == [[f"thing_{i}" for i in t] for t in top]
    np.testing.assert_allclose([[float(r["score"]), float(r["score_2"]), float(r["score_3"])] for r in rows],
                               np.take_along_axis(proba, top, axis=1), rtol=1e-4, atol=1e-7)
    # the folder's classes are not ImageNet's: said, no accuracy of 0
    assert "no accuracy: the inputs' classes (circles, squares, stripes) are not the classifier's" in result.stderr


def test_predict_kinds_and_offline_class_index_answered_before_tensorflow(place, tmp_path, finetuned, skops_classifier):
    from test_early_checks import run_light
    from vggfeat.prediction import KINDS

    (tmp_path / "notes.txt").write_text("not a classifier\n")
    report, stderr = run_light("predict", "--classifier", "notes.txt", str(place / "new"), cwd=tmp_path)
    lines = stderr.strip().splitlines()
    assert report == {"code": 2, "heavy": []} and len(lines) == 1, stderr
    assert lines[0].startswith("Error: notes.txt is not a classifier vggfeat can use (not a zip archive): "
                               "--classifier takes a "
                               "classifier file of `vggfeat classify -o` (.skops"), lines[0]
    assert "a model of `vggfeat finetune -o` (.keras" in lines[0]

    import zipfile

    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:  # a zip archive, but of neither kind
        z.writestr("readme.txt", "hello")
    report, stderr = run_light("predict", "--classifier", "other.zip", str(place / "new"), cwd=tmp_path)
    assert report == {"code": 2, "heavy": []}, stderr
    assert stderr.strip() == f"Error: other.zip is not a classifier vggfeat can use: --classifier takes {KINDS}"

    report, stderr = run_light("predict", "--classifier", finetuned, str(place / "new"), "--weights", "imagenet",
                               cwd=tmp_path)
    assert report == {"code": 2, "heavy": []}, stderr
    assert stderr.strip() == "Error: mine.keras is a whole model with its own weights; drop --weights"
    report, stderr = run_light("predict", "--classifier", skops_classifier, str(place / "new"), "--top-k", "3",
                               cwd=tmp_path)
    assert report == {"code": 2, "heavy": []}, stderr
    assert stderr.strip().startswith("Error: --top-k needs a classifier with one score per class")

    report, stderr = run_light("predict", "--classifier", skops_classifier, "shards/{00000..00003}.tar",
                               cwd=tmp_path)
    assert report == {"code": 2, "heavy": []}, stderr  # shards are read as extract reads them, checked first
    assert stderr.strip() == ("Error: no shard matches shards/{00000..00003}.tar (4 names, from shards/00000.tar "
                              "to shards/00003.tar, none exists)"), stderr

    report, stderr = run_light("predict", str(place / "new"), "--weights", "random", cwd=tmp_path)
    assert report == {"code": 2, "heavy": []}, stderr
    assert "predict without --classifier gives ImageNet's classes, so it needs ImageNet weights" in stderr

    home = tmp_path / "home"
    report, stderr = run_light("predict", str(place / "new"), "--weights", "imagenet", cwd=tmp_path,
                               env={"KERAS_HOME": str(home)})
    lines = stderr.strip().splitlines()
    assert report == {"code": 2, "heavy": []} and len(lines) == 1, stderr
    assert re.match(r"Error: cannot get ImageNet's class names: imagenet_class_index\.json is not in .*home/models "
                    r"and downloading it failed \(.*\); fetch https://storage\.googleapis\.com/download\.tensorflow"
                    r"\.org/data/imagenet_class_index\.json on a machine with network and put it in",
                    lines[0]), lines[0]
    assert not home.exists() or os.listdir(home / "models") == []


def _on_terminal(args, *, stdout_too=True):
    """Run the CLI with stderr (and stdout when `stdout_too`) on a pseudo-terminal of 100 columns; returns
    (exit code, what the terminal received, stdout when it was a pipe)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
    p = subprocess.Popen([sys.executable, "-m", "vggfeat_cli", *map(str, args)], cwd=REPO, stdin=subprocess.DEVNULL,
                         stdout=slave if stdout_too else subprocess.PIPE, stderr=slave)
    os.close(slave)
    received = []
    while True:
        try:
            data = os.read(master, 1 << 16)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        received.append(data)
    piped = p.stdout.read().decode() if p.stdout else None
    p.wait(timeout=300)
    os.close(master)
    return p.returncode, b"".join(received).decode(errors="replace"), piped


def test_predict_csv_on_a_terminal_is_intact_and_the_bar_goes_where_the_csv_does_not(place, finetuned):
    args = ["predict", "--classifier", finetuned, place / "new", "--batch-size", "2"]
    code, screen, _ = _on_terminal(args)
    assert code == 0, screen
    # the terminal turns each line end into CR LF: the CSV's own CR LF arrives as CR CR LF
    lines = screen.replace("\r\r\n", "\n").replace("\r\n", "\n").split("\n")
    header = "path,true_label,label,score,p_circles,p_squares,p_stripes,error"
    assert header in lines, screen
    rows = [line for line in lines if ".png" in line]
    row = re.compile(r"(circles|squares|stripes)/img_00[01]\.png,(circles|squares|stripes),"
                     r"(circles|squares|stripes),[0-9.e-]+(,[0-9.e-]+){3},$")
    assert len(rows) == 6 and all(row.fullmatch(r) for r in rows), screen
    assert "\r" not in "\n".join(lines[lines.index(header):]), screen  # nothing drawn over the table

    # CSV to a pipe, stderr a terminal: the bar is shown there, the CSV is whole
    code, screen, piped = _on_terminal(args, stdout_too=False)
    assert code == 0, screen
    assert "6/6" in screen and "%|" in screen
    assert len(list(csv.DictReader(io.StringIO(piped)))) == 6


@pytest.fixture(scope="module")
def skops_classifier(place):
    from vggfeat import extract
    from vggfeat.classifier import classify, save_classifier

    extract([place / "train"], place / "train.h5", ["fc7"], progress=False, **SMALL)
    save_classifier(classify(place / "train.h5", "fc7", classifier="logreg", cv=2), place / "clf.skops")
    return place / "clf.skops"


def test_predict_skops_true_labels_accuracy_and_summary(place, skops_classifier, tmp_path):
    mixed = tmp_path / "mixed"
    make_folder(str(mixed), per_class=2, size=(56, 44))
    (mixed / "broken.jpg").write_bytes(b"nope")
    out = tmp_path / "p.csv"
    result = CliRunner().invoke(cli, ["predict", "--classifier", str(skops_classifier), str(mixed), "-o", str(out)])
    assert result.exit_code == 0, result.output
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "true_label", "label", "score", "p_circles", "p_squares", "p_stripes", "error"]
    by_path = {r["path"]: r for r in rows}
    assert by_path["broken.jpg"]["true_label"] == "" and by_path["broken.jpg"]["error"]
    good = [r for r in rows if r["label"]]
    assert [r["true_label"] for r in good] == [r["path"].split("/")[0] for r in good]
    for r in good:  # logreg: score is the probability of the label
        assert float(r["score"]) == pytest.approx(float(r[f"p_{r['label']}"]))
    right = sum(r["label"] == r["true_label"] for r in good)
    assert f"7 rows written to {out} (1 failed)" in result.stderr
    assert f"accuracy {right / 6:.4f} ({right} of 6 labelled images)" in result.stderr
    quiet = CliRunner().invoke(cli, ["predict", "--classifier", str(skops_classifier), str(mixed), "-o",
                                     str(tmp_path / "q.csv"), "-q"])
    assert quiet.exit_code == 0 and quiet.stderr == "", quiet.stderr


def test_classify_test_scores_on_another_features_file_made_alike(place, skops_classifier, tmp_path):
    from vggfeat import extract, load_features
    from vggfeat.classifier import make_classifier

    extract([place / "new"], tmp_path / "new.h5", ["fc7"], progress=False, **SMALL)
    result = CliRunner().invoke(cli, ["classify", str(place / "train.h5"), "--test", str(tmp_path / "new.h5")])
    assert result.exit_code == 0, result.output
    train, test = load_features(place / "train.h5", "fc7"), load_features(tmp_path / "new.h5", "fc7")
    expected = make_classifier("linear-svm").fit(train.features, train.labels).score(test.features, test.labels)
    assert f"(6 test samples, trained on {place / 'train.h5'}, scored on {tmp_path / 'new.h5'})" in result.stdout
    # one score: no "+/- 0.0000" spread (issue 22)
    assert f"accuracy: {expected:.4f}\n" in result.stdout and "+/-" not in result.stdout and "fold" not in result.stdout

    extract([place / "new"], tmp_path / "other.h5", ["fc7"], progress=False, **{**SMALL, "seed": 1})
    refused = CliRunner().invoke(cli, ["classify", str(place / "train.h5"), "--test", str(tmp_path / "other.h5")])
    assert refused.exit_code == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "other feature settings" in lines[0]
    assert "seed=0 in train.h5, 1 in other.h5" in lines[0]
    both = CliRunner().invoke(cli, ["classify", str(place / "train.h5"), "--test", str(tmp_path / "new.h5"),
                                    "--test-size", "0.5"])
    assert both.exit_code == 2 and "--test and --test-size" in both.stderr


def test_classify_test_matches_classes_by_name(place, skops_classifier, tmp_path):
    """A test folder with a subset of the training classes (so other class indices) and a class the training
    never saw: labels are matched by name, and the unseen class counts as wrong."""
    from vggfeat import extract, load_features
    from vggfeat.classifier import classify, make_classifier

    classes = {"dots": ((200, 200, 40), "circle"), "stripes": ((40, 60, 220), "stripes"),
               "squares": ((40, 200, 60), "square")}
    make_folder(str(tmp_path / "some"), per_class=2, size=(56, 44), classes=classes)
    extract([tmp_path / "some"], tmp_path / "some.h5", ["fc7"], progress=False, **SMALL)
    result = classify(place / "train.h5", "fc7", test=tmp_path / "some.h5")
    assert result.class_names == ["circles", "squares", "stripes", "dots"]
    test = load_features(tmp_path / "some.h5", "fc7")
    assert list(test.class_names) == ["dots", "squares", "stripes"]
    expected = np.array([result.class_names.index(test.class_names[i]) for i in test.labels])
    np.testing.assert_array_equal(result.y_true, expected)
    train = load_features(place / "train.h5", "fc7")
    pred = make_classifier("linear-svm").fit(train.features, train.labels).predict(test.features)
    np.testing.assert_array_equal(result.y_pred, pred)
    assert result.mean == pytest.approx(np.mean(pred == expected)) and 3 not in pred
    assert "dots" in result.report


# ---- tar shards and s3:// inputs, read as extract reads them -------------------------------------------------


def _csv_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_predict_shards_equal_the_same_images_as_loose_files(place, skops_classifier, tmp_path, monkeypatch):
    from test_shards import dataset

    images = dataset(tmp_path, shards=2, per_shard=3)  # KEY.png + KEY.cls (+ .json), and the same as loose/KEY.png
    monkeypatch.chdir(tmp_path)
    names = ["circles", "squares", "stripes"]  # the .cls indices' names (the classifier's classes)
    run = CliRunner().invoke
    shards = run(cli, ["predict", "--classifier", str(skops_classifier), "shards/{00000..00001}.tar", "--class-names",
                       ",".join(names), "-o", "s.csv"])
    loose = run(cli, ["predict", "--classifier", str(skops_classifier), "loose", "-o", "l.csv"])
    assert shards.exit_code == 0 and loose.exit_code == 0, shards.output + loose.output
    s, f = _csv_rows(tmp_path / "s.csv"), _csv_rows(tmp_path / "l.csv")
    keys = sorted(images)
    assert [r["path"] for r in s] == [f"shards/{int(k) // 3:05d}.tar/{k}.png" for k in keys]
    assert [r["path"] for r in f] == [f"{k}.png" for k in keys]
    assert list(s[0]) == ["path", "true_label", *list(f[0])[1:]]  # shards have the labels of their .cls
    assert [r["true_label"] for r in s] == [names[images[k][1]] for k in keys]
    for a, b in zip(s, f):  # the same images: the same label and probabilities (to float rounding: shards and a
        # folder may be cut into batches differently)
        assert a["label"] == b["label"] and a["error"] == b["error"] == ""
        numbers = [k for k in b if k == "score" or k.startswith("p_")]
        assert [float(a[k]) for k in numbers] == pytest.approx([float(b[k]) for k in numbers], rel=1e-5, abs=1e-7)
    right = sum(r["label"] == r["true_label"] for r in s)
    assert "Found 2 shards in 3 classes" in shards.stderr
    assert f"accuracy {right / 6:.4f} ({right} of 6 labelled images)" in shards.stderr


def test_predict_records_a_hostile_shard_and_predicts_the_rest(place, finetuned, tmp_path, monkeypatch):
    """A member that is no image, a shard cut inside a member, a file that is not a tar: each a row with its
    reason, in input order (batches of 2, so failures sit between rows of different batches); labels from a
    .json field named by --class-names."""
    from test_shards import png, write_tar

    monkeypatch.chdir(tmp_path)
    meta = [json.dumps({"meta": {"cls": c}}).encode() for c in ("squares", "circles", "stripes", "dots")]
    write_tar("h/a.tar", [("k0.png", png(1)), ("k0.json", meta[0]), ("k1.png", b"text, not a PNG"),
                          ("k2.png", png(0)), ("k2.json", meta[1])])
    write_tar("h/full.tar", [("t0.png", png(2)), ("t0.json", meta[2]), ("t1.png", png(3)), ("t1.json", meta[3])])
    raw = (tmp_path / "h/full.tar").read_bytes()
    (tmp_path / "h/trunc.tar").write_bytes(raw[:raw.index(png(3)) + 100])  # ends inside t1.png
    (tmp_path / "h/nottar.tar").write_bytes(b"PK\x03\x04 a zip, say, not a tar" * 40)
    write_tar("h/z.tar", [("z0.png", png(4)), ("z0.json", meta[3])])  # "dots": not one of the class names
    args = ["predict", "--classifier", str(finetuned), "h/a.tar", "h/trunc.tar", "h/nottar.tar", "h/z.tar",
            "--label-field", "meta.cls", "--class-names", "circles,squares,stripes", "--batch-size", "2"]
    result = CliRunner().invoke(cli, [*args, "-o", "h.csv"])
    assert result.exit_code == 0, result.output
    rows = _csv_rows(tmp_path / "h.csv")
    assert [(r["path"], r["true_label"], bool(r["label"]), bool(r["error"])) for r in rows] == [
        ("h/a.tar/k0.png", "squares", True, False), ("h/a.tar/k1.png", "", False, True),
        ("h/a.tar/k2.png", "circles", True, False), ("h/trunc.tar/t0.png", "stripes", True, False),
        ("h/trunc.tar/t1.png", "", False, True), ("h/nottar.tar", "", False, True), ("h/z.tar/z0.png", "", True, False)]
    errors = {r["path"]: r["error"] for r in rows if r["error"]}
    assert "not an image" in errors["h/a.tar/k1.png"]
    assert errors["h/trunc.tar/t1.png"].startswith("truncated member")
    assert errors["h/nottar.tar"].startswith("not a tar file")
    assert "7 rows written to h.csv (3 failed)" in result.stderr
    assert "2 shard images had no usable label (no field 'meta.cls' of its .json" in result.stderr  # k1, z0
    right = sum(r["label"] == r["true_label"] for r in rows if r["true_label"])
    assert f"accuracy {right / 3:.4f} ({right} of 3 labelled images)" in result.stderr


def test_predict_reads_an_s3_prefix_as_the_local_shards(place, skops_classifier, tmp_path, monkeypatch, s3_env):
    from conftest import _upload
    from test_shards import dataset
    from vggfeat.classifier import predict_images

    dataset(tmp_path, shards=2, per_shard=2)
    files = [(f"data/shards/{i:05d}.tar", tmp_path / f"shards/{i:05d}.tar") for i in range(2)]
    files.append(("data/loose/000001.png", tmp_path / "loose/000001.png"))  # a loose image under the prefix too
    _upload(s3_env["AWS_ENDPOINT_URL"], "vgg-predict", files)
    monkeypatch.chdir(tmp_path)
    local = list(predict_images(skops_classifier, ["loose/000001.png", "shards/00000.tar", "shards/00001.tar"],
                                batch_size=4, progress=False))
    remote = list(predict_images(skops_classifier, ["s3://vgg-predict/data/"], batch_size=4, progress=False))
    assert [r["path"] for r in remote] == [r["path"] for r in local] == [
        "loose/000001.png", "shards/00000.tar/000000.png", "shards/00000.tar/000001.png",
        "shards/00001.tar/000002.png", "shards/00001.tar/000003.png"]
    assert remote == local and [r["true_label"] for r in remote] == ["", "0", "1", "2", "0"]  # .cls, unnamed
    assert all(r["label"] and not r["error"] for r in remote)

