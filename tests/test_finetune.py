"""Fine-tuning and training from scratch on a small generated dataset, then extracting from the result."""

import csv
import os

import keras
import numpy as np
import pytest

from vggfeat import extract, finetune, load_features
from vggfeat.errors import InputError, LayerError, OutputError
from vggfeat.models import build_vgg

from conftest import make_folder

QUICK = dict(arch="vgg11", weights="random", input_size=32, batch_size=8, augment="none", verbose=0, seed=0)


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("train") / "images"
    make_folder(str(root), per_class=12)
    return root


def test_from_scratch_beats_chance_and_round_trips_through_extract(train_dir, tmp_path):
    out = tmp_path / "mine.keras"
    history = finetune(train_dir, out, epochs=6, optimizer="adam", lr=3e-4, val_split=0.25, **QUICK)
    val = history.history["val_accuracy"]
    print("validation accuracy per epoch:", [round(v, 3) for v in val])
    assert max(val) >= 0.75  # chance is 1/3
    assert os.path.exists(str(out)[:-6] + ".log.csv") and os.path.exists(str(out)[:-6] + ".curves.png")
    from vggfeat.weights import read_keras_metadata

    meta = read_keras_metadata(out)
    assert meta["class_names"] == ["circles", "squares", "stripes"] and meta["arch"] == "vgg11"
    assert meta["input_size"] == 32 and meta["preprocessing"] == "caffe"
    model = keras.saving.load_model(out)
    assert [l.name for l in model.layers if l.weights][-3:] == ["fc1", "fc2", "predictions"]
    feats = tmp_path / "f.h5"
    extract([train_dir], feats, ["fc7"], weights=str(out), progress=False)
    data = load_features(feats)
    assert data.features.shape == (36, 4096) and data.attrs["input_size"] == 32
    assert data.attrs["weights"] == "mine.keras" and len(data.attrs["weights_sha256"]) == 64
    from click.testing import CliRunner
    from vggfeat_cli.main import cli

    info = CliRunner().invoke(cli, ["info", "--weights", str(out)])
    assert info.exit_code == 0, info.output
    assert "vgg11 (configuration A)" in info.output and "input 32x32x3" in info.output
    assert "class_names: circles, squares, stripes" in info.output and "predictions    fc8" in info.output


def test_frozen_layers_keep_their_weights_bit_for_bit(train_dir, tmp_path):
    start = build_vgg("vgg11", input_size=32, seed=3)
    start.save_weights(tmp_path / "start.weights.h5")
    out = tmp_path / "ft.keras"
    finetune(train_dir, out, arch="vgg11", weights=str(tmp_path / "start.weights.h5"), input_size=32, epochs=1,
             batch_size=8, augment="light", train_from="conv5_1", verbose=0, val_split=None)
    tuned = keras.saving.load_model(out)
    for layer in start.layers:
        if not layer.weights or layer.name == "predictions":
            continue
        same = all(np.array_equal(a, b) for a, b in zip(layer.get_weights(), tuned.get_layer(layer.name).get_weights()))
        if layer.name.startswith(("block1", "block2", "block3", "block4")):
            assert same, f"{layer.name} changed although frozen"
        else:
            assert not same, f"{layer.name} did not train"


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt("simulated interruption")


def test_resume_continues_from_the_saved_epoch(train_dir, tmp_path):
    out = tmp_path / "r.keras"
    with pytest.raises(KeyboardInterrupt):
        finetune(train_dir, out, epochs=4, callbacks=[_Interrupt()], **QUICK)
    assert not out.exists() and os.path.isdir(str(out) + ".work")
    history = finetune(train_dir, out, epochs=4, resume=True, **QUICK)
    assert history.epoch == [2, 3]
    with open(str(out)[:-6] + ".log.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [0, 1, 2, 3]
    assert out.exists() and not os.path.exists(str(out) + ".work")


def test_same_seed_same_result_on_cpu(train_dir, tmp_path):
    a = finetune(train_dir, tmp_path / "a.keras", epochs=1, **QUICK).history["loss"]
    b = finetune(train_dir, tmp_path / "b.keras", epochs=1, **QUICK).history["loss"]
    assert a == b


def test_two_stage_and_paper_recipe_and_mirrored(train_dir, tmp_path):
    h = finetune(train_dir, tmp_path / "two.keras", arch="vgg11", weights="random", input_size=32, epochs=2,
                 unfreeze_after=1, batch_size=8, train_from="fc6", verbose=0, recipe="paper",
                 distribute="mirrored")
    assert h.epoch == [1]


def test_corrupt_images_are_skipped_and_counted(tmp_path):
    root = tmp_path / "imgs"
    make_folder(str(root), per_class=4)
    (root / "circles" / "bad.png").write_bytes(b"broken")
    h = finetune(root, tmp_path / "m.keras", epochs=1, val_split=None, **QUICK)
    assert list(h.failed) == [str(root / "circles" / "bad.png")]


def test_errors(tmp_path, train_dir):
    one = tmp_path / "one"
    make_folder(str(one), per_class=2, classes={"only": ((200, 0, 0), "circle")})
    with pytest.raises(InputError, match="at least 2 classes"):
        finetune(one, tmp_path / "x.keras", **QUICK)
    (one / "empty_class").mkdir()
    with pytest.raises(InputError, match="class folder without images: empty_class"):
        finetune(one, tmp_path / "x.keras", **QUICK)
    (tmp_path / "exists.keras").write_bytes(b"old")
    with pytest.raises(OutputError, match="exists; pass --overwrite"):
        finetune(train_dir, tmp_path / "exists.keras", **QUICK)
    with pytest.raises(LayerError, match="unknown layer 'conv9_9'"):
        finetune(train_dir, tmp_path / "y.keras", train_from="conv9_9", **QUICK)


def test_randaugment_mixed_precision_and_tensorboard(train_dir, tmp_path):
    out = tmp_path / "ra.keras"
    h = finetune(train_dir, out, arch="vgg11", weights="random", input_size=32, epochs=1, batch_size=8,
                 augment="randaugment", precision="mixed_bfloat16", tensorboard=str(tmp_path / "tb"), verbose=0)
    assert h.epoch == [0] and np.isfinite(h.history["loss"][0])
    assert any(os.scandir(tmp_path / "tb"))
    feats = tmp_path / "f.h5"
    extract([train_dir], feats, ["fc7"], weights=str(out), progress=False)
    assert np.isfinite(load_features(feats).features).all()
