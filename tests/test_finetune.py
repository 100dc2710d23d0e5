"""Fine-tuning and training from scratch on a small generated dataset, then extracting from the result;
each part of `finetune` on its own; nothing an earlier run left is removed before every argument is checked."""

import csv
import os
import re

import h5py
import keras
import numpy as np
import pytest
from keras.src.legacy.saving import legacy_h5_format

from vggfeat import extract, finetune, load_features
from vggfeat.errors import ArchitectureError, InputError, LayerError, OutputError, WeightsError
from vggfeat.finetuning import (FinetuneSettings, ImageBatches, build_network, check_output, compile_network,
                                freeze, inverse_frequency_weights, make_callbacks, plan_network, split_images,
                                weights_layout)
from vggfeat.images import Geometry, load_image
from vggfeat.models import build_vgg
from vggfeat.preprocessing import preprocess

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
    from vggfeat.finetuning import AUGMENTS
    from vggfeat.weights import read_keras_metadata

    meta = read_keras_metadata(out)
    assert (meta["augment"], meta["augmentation"], meta["horizontal_flips"]) == ("light", AUGMENTS["light"], False)
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


def test_resume_continues_from_the_saved_epoch_in_the_second_stage(train_dir, tmp_path):
    """Interrupted in the second stage of a two-stage run: --resume neither trains the first stage again
    nor repeats a finished epoch."""
    out = tmp_path / "r.keras"
    with pytest.raises(KeyboardInterrupt):
        finetune(train_dir, out, epochs=3, unfreeze_after=1, callbacks=[_Interrupt()], **QUICK)
    assert not out.exists() and os.path.isdir(str(out) + ".work")
    assert os.path.exists(str(out) + ".work/stage1.weights.h5")
    assert os.path.exists(str(out) + ".work/best.npz")  # the best epoch so far, kept for the resumed run
    with h5py.File(str(out) + ".work/stage1.weights.h5") as f:  # the checkpoints keep the optimizer: resume needs it
        assert "optimizer" in f and len(f["optimizer"]["vars"])
    history = finetune(train_dir, out, epochs=3, unfreeze_after=1, resume=True, **QUICK)
    assert history.epoch == [2]  # Keras's index of the third epoch
    with open(str(out)[:-6] + ".log.csv") as f:  # numbered as Keras's progress lines and the plot number them
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    # the kept epoch is chosen among all three, the two before the interruption included
    best = min(rows, key=lambda r: float(r["val_loss"]))
    from vggfeat.weights import read_keras_metadata

    meta = read_keras_metadata(out)
    assert (meta["kept"], meta["kept_epoch"], meta["epochs_run"]) == ("lowest val_loss", int(best["epoch"]), 3)
    assert history.kept_epoch == int(best["epoch"])
    assert np.isclose(meta["kept_metrics"]["val_loss"], float(best["val_loss"]), rtol=1e-5)
    assert out.exists() and not os.path.exists(str(out) + ".work")
    assert _weights_groups(out) == ["layers", "vars"]  # the final model without optimizer state
    assert sorted(os.listdir(tmp_path)) == ["r.curves.png", "r.keras", "r.log.csv"]  # no partial file left


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
    from vggfeat.weights import read_keras_metadata

    meta = read_keras_metadata(tmp_path / "m.keras")  # no validation images: the last epoch is kept, and said so
    assert (h.kept, h.kept_epoch, meta["kept"], meta["kept_epoch"], meta["epochs_run"]) == (
        "last epoch", 1, "last epoch", 1, 1)
    assert (meta["augment"], meta["horizontal_flips"]) == ("none", False)


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
    with pytest.raises(InputError, match="--resume and --overwrite exclude each other"):
        finetune(train_dir, tmp_path / "y.keras", resume=True, overwrite=True, **QUICK)
    with pytest.raises(OutputError, match="no interrupted run .* to resume; pass --overwrite"):
        finetune(train_dir, tmp_path / "exists.keras", resume=True, **QUICK)
    with pytest.warns(DeprecationWarning, match="precision='bfloat16'"), pytest.raises(InputError, match="epochs"):
        finetune(train_dir, tmp_path / "y.keras", precision="mixed_bfloat16", epochs=0, **QUICK)
    assert not os.path.exists(tmp_path / "y.keras.work") and not os.path.exists(tmp_path / "y.keras")


def test_randaugment_mixed_precision_and_tensorboard(train_dir, tmp_path):
    out = tmp_path / "ra.keras"
    h = finetune(train_dir, out, arch="vgg11", weights="random", input_size=32, epochs=1, batch_size=8,
                 augment="randaugment", precision="bfloat16", tensorboard=str(tmp_path / "tb"), verbose=0)
    assert h.epoch == [0] and np.isfinite(h.history["loss"][0])
    assert any(os.scandir(tmp_path / "tb"))
    feats = tmp_path / "f.h5"
    extract([train_dir], feats, ["fc7"], weights=str(out), progress=False)
    assert np.isfinite(load_features(feats).features).all()


# ---------------------------------------------------------------------------------------------
# Nothing destroyed before it is checked
# ---------------------------------------------------------------------------------------------


def _snapshot(*paths):
    """Every file under `paths`: relative path -> (bytes, mtime), and the folders."""
    out = {}
    for root in map(str, paths):
        if os.path.isfile(root):
            out[root] = (open(root, "rb").read(), os.stat(root).st_mtime_ns)
        for folder, dirs, files in os.walk(root):
            out[folder] = "dir"
            for name in files:
                p = os.path.join(folder, name)
                out[p] = (open(p, "rb").read(), os.stat(p).st_mtime_ns)
    return out


@pytest.fixture
def interrupted(tmp_path):
    """An output and the work folder of an interrupted run beside it."""
    out = tmp_path / "m.keras"
    out.write_bytes(b"the model of an earlier run")
    work = tmp_path / "m.keras.work"
    (work / "backup").mkdir(parents=True)
    (work / "backup" / "training_metadata.json").write_text('{"epoch": 3}')
    (work / "backup" / "latest.weights.h5").write_bytes(os.urandom(1000))
    return out, work


def test_an_interrupted_run_is_refused_without_resume_or_overwrite_and_left_as_it_was(train_dir, interrupted):
    out, work = interrupted
    before = _snapshot(out, work)
    message = (f"{work} holds an interrupted fine-tuning run; pass --resume to continue it or --overwrite to "
               "start again")
    with pytest.raises(OutputError) as info:
        finetune(train_dir, out, epochs=1, **QUICK)
    assert str(info.value) == message
    out.unlink()  # the work folder alone is refused the same way
    with pytest.raises(OutputError, match="holds an interrupted fine-tuning run"):
        finetune(train_dir, out, epochs=1, **QUICK)
    out.write_bytes(b"the model of an earlier run")
    os.utime(out, ns=(before[str(out)][1], before[str(out)][1]))
    from click.testing import CliRunner
    from vggfeat_cli.main import cli

    result = CliRunner().invoke(cli, ["finetune", str(train_dir), "-o", str(out), "--weights", "random",
                                      "--arch", "vgg11", "--input-size", "32", "--epochs", "1"])
    assert result.exit_code == 2 and result.output.strip() == f"Error: {message}"
    assert _snapshot(out, work) == before


@pytest.mark.parametrize("bad", [
    dict(optimizer="rmsprop"), dict(epochs=0), dict(precision="mixed_float32"), dict(input_size=16),
    dict(val_split=1.5), dict(recipe="alexnet"), dict(augment="heavy"), dict(distribute="tpu"),
    dict(train_from="conv9_9"), dict(arch="vgg20"), dict(weights="missing.h5"), dict(resume=True),
    dict(train_dir="one_class"),
])
def test_with_a_bad_argument_overwrite_removes_nothing(train_dir, interrupted, tmp_path, bad):
    out, work = interrupted
    bad = dict(bad)
    if bad.get("train_dir") == "one_class":
        make_folder(str(tmp_path / "one"), per_class=2, classes={"only": ((200, 0, 0), "circle")})
        bad["train_dir"] = tmp_path / "one"
    kwargs = {**QUICK, "epochs": 1, "overwrite": True, **bad}
    before = _snapshot(out, work)
    with pytest.raises((InputError, LayerError, WeightsError, ArchitectureError)):
        finetune(kwargs.pop("train_dir", train_dir), out, **kwargs)
    assert _snapshot(out, work) == before


def test_check_output_decides_and_removes_nothing(interrupted, tmp_path):
    out, work = interrupted
    before = _snapshot(out, work)
    assert check_output(out, overwrite=True) == str(work)
    assert check_output(out, resume=True) == str(work)  # an output and a run to continue
    with pytest.raises(OutputError, match="holds an interrupted fine-tuning run"):
        check_output(out)
    with pytest.raises(InputError, match="must be a .keras file"):
        check_output(tmp_path / "m.h5")
    assert _snapshot(out, work) == before
    assert check_output(tmp_path / "new.keras") == str(tmp_path / "new.keras.work")


# ---------------------------------------------------------------------------------------------
# The parts, one by one
# ---------------------------------------------------------------------------------------------


def test_settings_resolve_defaults_and_refuse_bad_values():
    s = FinetuneSettings(weights="random")
    assert (s.optimizer, s.lr, s.weight_decay, s.augment, s.distribute) == ("sgd", 1e-2, 5e-4, "light", "none")
    assert s.dtype_policy is None and s.stage1_epochs == 10 and not s.two_stage
    a = FinetuneSettings(optimizer="adam", precision="bfloat16", unfreeze_after=3, epochs=5, val_split=0)
    assert (a.lr, a.weight_decay, a.dtype_policy, a.stage1_epochs, a.two_stage, a.val_split) == (
        1e-4, None, "mixed_bfloat16", 3, True, None)
    assert FinetuneSettings(precision="float16").dtype_policy == "mixed_float16"
    assert FinetuneSettings(arch="A").arch == "vgg11"
    for bad, match in [(dict(batch_size=0), "--batch-size must be at least 1"),
                       (dict(epochs=2.5), "--epochs must be a whole number"),
                       (dict(lr=0), "--lr must be above 0"), (dict(lr=float("nan")), "--lr must be a finite"),
                       (dict(weight_decay=-1), "--weight-decay must be at least 0"),
                       (dict(precision="mixed_bfloat16"), "unknown precision 'mixed_bfloat16'; choose one of "
                                                          "float32, bfloat16, float16"),
                       (dict(input_size=5000), "--input-size must be at most 4096"),
                       (dict(weights=None), "there is no default of no weights")]:
        with pytest.raises(InputError, match=match):
            FinetuneSettings(**bad)


def test_image_batches_yield_batches_of_the_right_shape_with_labels_in_order(train_dir, tmp_path):
    files, labels, _, _, names = split_images(train_dir)
    assert names == ["circles", "squares", "stripes"] and len(files) == 36
    files, labels = files[10:20], labels[10:20]  # crosses the class boundary at 12
    geometry = Geometry("crop", 32)
    data = ImageBatches(files, labels, geometry=geometry, preprocessing="caffe", batch_size=4)
    try:
        batches = [data[i] for i in range(len(data))]
    finally:
        data.close()
    assert len(data) == 3 and [x.shape for x, _ in batches] == [(4, 32, 32, 3)] * 2 + [(2, 32, 32, 3)]
    assert all(x.dtype == np.float32 for x, _ in batches)
    assert np.concatenate([y for _, y in batches]).tolist() == labels.tolist() == [0, 0, 1, 1, 1, 1, 1, 1, 1, 1]
    first = preprocess(load_image(files[0], geometry)[None].astype("float32"), "caffe")[0]
    np.testing.assert_array_equal(batches[0][0][0], first)

    shuffled = ImageBatches(files, labels, geometry=geometry, batch_size=4, shuffle=True, seed=1)
    order = shuffled.order.copy()
    assert sorted(order) == list(range(10)) and list(order) != list(range(10))
    assert shuffled[0][1].tolist() == labels[order[:4]].tolist()
    shuffled.on_epoch_end()
    assert list(shuffled.order) != list(order)
    shuffled.close()

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"broken")
    skipping = ImageBatches([files[0], str(bad), files[2]], [0, 1, 2], geometry=geometry, batch_size=4)
    x, y = skipping[0]
    skipping.close()
    assert x.shape == (2, 32, 32, 3) and y.tolist() == [0, 2] and list(skipping.failed) == [str(bad)]
    assert inverse_frequency_weights([0, 0, 0, 1], 3) == {0: 4 / 9, 1: 4 / 3}


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    """vgg11 at 32 pixels: weight files with and without fc6-fc8, in both layouts."""
    root = tmp_path_factory.mktemp("weights")
    top = build_vgg("vgg11", input_size=32, classes=5, seed=7)
    notop = build_vgg("vgg11", include_top=False, input_size=32, seed=8)
    paths = {"top": str(root / "top.weights.h5"), "notop": str(root / "notop.weights.h5"),
             "legacy_notop": str(root / "legacy_notop.h5"), "top_model": str(root / "top.keras")}
    top.save_weights(paths["top"])
    notop.save_weights(paths["notop"])
    with h5py.File(paths["legacy_notop"], "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, notop)
    top.save(paths["top_model"])
    return paths, top, notop


def test_whether_the_weights_hold_fc_layers_is_read_from_the_file_layout(tiny_files):
    paths, top, notop = tiny_files
    assert weights_layout(paths["top"]) == ("vgg11", True)
    assert weights_layout(paths["top_model"]) == ("vgg11", True)
    assert weights_layout(paths["notop"]) == ("vgg11", False)
    assert weights_layout(paths["legacy_notop"]) == ("vgg11", False)
    assert weights_layout(paths["legacy_notop"], "vgg11-lrn") == ("vgg11-lrn", False)  # LRN has no weights
    assert weights_layout("random", "vgg13") == ("vgg13", False)
    assert weights_layout("imagenet", "vgg19") == ("vgg19", True)
    with pytest.raises(WeightsError, match="holds a vgg11 network and does not fit vgg16"):
        weights_layout(paths["notop"], "vgg16")
    with pytest.raises(WeightsError, match="no ImageNet weights exist for vgg13"):
        weights_layout("imagenet", "vgg13")

    # the network built from each: the file's convolutions, fc6/fc7 only from a file that has them
    for key, source in (("legacy_notop", notop), ("top", top)):
        settings = FinetuneSettings(weights=paths[key], input_size=32, seed=0)
        plan = plan_network(settings)
        assert plan.first_trainable == "fc1" and plan.has_fc == (key == "top")
        net, info = build_network(settings, plan, classes=3)
        assert info.name == os.path.basename(paths[key]) and net.get_layer("predictions").units == 3
        for name in ("block1_conv1", "block5_conv2"):
            np.testing.assert_array_equal(net.get_layer(name).get_weights()[0], source.get_layer(name).get_weights()[0])
        carried = np.array_equal(net.get_layer("fc2").get_weights()[0], top.get_layer("fc2").get_weights()[0])
        assert carried == (key == "top")


@pytest.fixture(scope="module")
def tiny_net():
    return build_vgg("vgg11", input_size=32, classes=3, seed=0)


def test_freeze_leaves_exactly_the_intended_layers_trainable(tiny_net):
    convs = ["block1_conv1", "block2_conv1", "block3_conv1", "block3_conv2", "block4_conv1", "block4_conv2",
             "block5_conv1", "block5_conv2"]
    head = ["fc1", "fc2", "predictions"]
    assert freeze(tiny_net, "vgg11", "block1_conv1") == convs + head
    assert freeze(tiny_net, "vgg11", "block5_conv1") == convs[-2:] + head
    assert freeze(tiny_net, "vgg11", "fc1") == head
    assert freeze(tiny_net, "vgg11", "predictions") == ["predictions"]
    assert [l.name for l in tiny_net.layers if l.weights and not l.trainable] == convs + ["fc1", "fc2"]
    random = FinetuneSettings(weights="random", arch="vgg11")
    assert plan_network(random).first_trainable == "block1_conv1"
    assert plan_network(FinetuneSettings(weights="random", arch="vgg11", train_from="conv5_1")).first_trainable \
        == "block5_conv1"
    assert plan_network(FinetuneSettings(weights="random", arch="vgg11", train_from="fc8")).first_trainable \
        == "predictions"
    compile_network(tiny_net, FinetuneSettings(weights="random", precision="float16"))
    assert isinstance(tiny_net.optimizer, keras.optimizers.LossScaleOptimizer)
    compile_network(tiny_net, FinetuneSettings(weights="random", optimizer="adam"))
    assert isinstance(tiny_net.optimizer, keras.optimizers.Adam) and np.isclose(tiny_net.optimizer.learning_rate, 1e-4)


def test_callbacks_of_each_stage(tmp_path):
    extra = keras.callbacks.Callback()
    cbs = make_callbacks(str(tmp_path / "w"), str(tmp_path / "log.csv"), patience=4, tensorboard=str(tmp_path / "tb"),
                         extra=[extra])
    assert [type(c).__name__ for c in cbs] == ["BackupAndRestore", "EpochLog", "EarlyStopping", "ReduceLROnPlateau",
                                               "TensorBoard", "Callback"]
    assert isinstance(cbs[1], keras.callbacks.CSVLogger)
    assert cbs[0].backup_dir == str(tmp_path / "w" / "backup") and not cbs[1].append and cbs[-1] is extra
    assert (cbs[2].monitor, cbs[2].patience, cbs[3].monitor, cbs[3].patience) == ("val_loss", 4, "val_accuracy", 2)
    second = make_callbacks(str(tmp_path / "w"), str(tmp_path / "log.csv"), stage=2, validation=False, append=True)
    assert [type(c).__name__ for c in second] == ["BackupAndRestore", "EpochLog", "EarlyStopping",
                                                  "ReduceLROnPlateau"]
    assert second[0].backup_dir == str(tmp_path / "w" / "backup-stage2") and second[1].append
    assert (second[2].monitor, second[3].monitor) == ("loss", "accuracy")


def test_the_cli_says_what_an_interruption_kept(train_dir, tmp_path, monkeypatch):
    import vggfeat.finetuning
    from click.testing import CliRunner
    from vggfeat_cli.main import cli

    def interrupted_run(job, **kwargs):  # the run, once every check passed
        os.makedirs(job.output + ".work")
        raise KeyboardInterrupt()

    monkeypatch.setattr(vggfeat.finetuning.FinetuneJob, "run", interrupted_run)
    out = tmp_path / "i.keras"
    result = CliRunner().invoke(cli, ["finetune", str(train_dir), "-o", str(out), "--weights", "random", "-q"])
    assert result.exit_code == 130
    assert result.output.strip() == (f"Error: interrupted; the finished epochs are kept in {out}.work; --resume "
                                     "continues the run")


def _weights_groups(model_file):
    """The top-level groups of a .keras file's weights (`optimizer` among them when it holds its state)."""
    import io
    import zipfile

    with zipfile.ZipFile(model_file) as z, h5py.File(io.BytesIO(z.read("model.weights.h5"))) as f:
        return sorted(f.keys())


def test_the_cli_says_the_dataset_first_and_names_the_files_it_wrote(train_dir, tmp_path):
    """Found images and classes, then the split, then what is loaded, all before the first epoch; at the end
    each file written, named; the CSV and the plot number epochs from 1, as Keras's progress lines do."""
    from conftest import run_cli

    out = tmp_path / "cli.keras"
    result = run_cli("finetune", train_dir, "-o", out, "--arch", "vgg11", "--weights", "random", "--input-size", "32",
                     "--batch-size", "8", "--augment", "none", "--epochs", "2", "--val-split", "0.25",
                     "--tensorboard", tmp_path / "tb")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if not re.match(r"[IEW]\d{4} |WARNING: All log", line)]
    assert lines[:3] == ["Found 36 images in 3 classes: circles (12), squares (12), stripes (12)",
                         "training on 27 images, validating on 9 (a stratified 0.25 of the images)",
                         "loading vgg11 with random weights (seed 0)..."], result.stderr
    assert len(lines) == 3 + 7 and "Epoch 1/2" in result.stdout  # (Keras prints its progress on stdout)
    size = os.path.getsize(out) / 1e6
    stem = str(tmp_path / "cli")
    paths = [str(out), stem + ".curves.png", stem + ".log.csv", str(tmp_path / "tb")]
    w = max(map(len, paths))
    from vggfeat.weights import read_keras_metadata

    kept = read_keras_metadata(out)["kept_epoch"]
    assert lines[-7].startswith(f"saved {out} after 2 epochs, with the weights of epoch {kept} (lowest val_loss): "
                                "loss "), result.stderr
    assert lines[-6:] == [
        "wrote:",
        f"  {paths[0].ljust(w)}  the fine-tuned model ({size:.1f} MB, without optimizer state; --save-optimizer "
        "keeps it)",
        f"  {paths[1].ljust(w)}  learning curves (loss and accuracy per epoch)",
        f"  {paths[2].ljust(w)}  CSV log, one row per epoch (numbered from 1)",
        f"  {paths[3].ljust(w)}  TensorBoard logs",
        f"checkpoints ({out}.work) removed: the run is complete"], result.stderr
    assert all(os.path.exists(p) for p in paths) and not os.path.exists(f"{out}.work")
    with open(stem + ".log.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2"]
    assert _weights_groups(out) == ["layers", "vars"]
    model = keras.saving.load_model(out)
    assert not model.compiled  # the network alone: nothing of training is kept


def test_the_saved_model_keeps_the_optimizer_only_when_asked_same_seed_same_result_and_overwrite(train_dir,
                                                                                                  tmp_path):
    """--save-optimizer keeps SGD's momentum (one float per weight: twice the file), loaded back compiled with
    its state; without it the file holds the same network, which predicts the same, at half the size.
    The two runs have the same seed: the same losses on CPU. The second one is written with --overwrite over
    an earlier output and the work folder of an interrupted run, and starts again."""
    x = np.random.default_rng(0).uniform(0, 1, (4, 32, 32, 3)).astype("float32")
    (tmp_path / "keep_True.keras").write_bytes(b"old model")
    (tmp_path / "keep_True.keras.work").mkdir()
    (tmp_path / "keep_True.keras.work" / "stale").write_bytes(b"an earlier run")
    both, losses = {}, {}
    for keep in (False, True):
        out = tmp_path / f"keep_{keep}.keras"
        history = finetune(train_dir, out, epochs=1, save_optimizer=keep, overwrite=keep, **QUICK)
        assert history.optimizer_saved is keep and history.files["model"] == str(out)
        assert not os.path.exists(str(out) + ".work")
        losses[keep] = history.history["loss"]
        both[keep] = (os.path.getsize(out), keras.saving.load_model(out))
    assert losses[False] == losses[True]
    assert not [f for f in os.listdir(tmp_path) if "partial" in f]
    (small, bare), (large, full) = both[False], both[True]
    assert bare.get_layer("predictions").units == full.get_layer("predictions").units == 3
    assert _weights_groups(tmp_path / "keep_True.keras") == ["layers", "optimizer", "vars"]
    assert _weights_groups(tmp_path / "keep_False.keras") == ["layers", "vars"]
    assert full.compiled and full.optimizer.iterations.numpy() > 0 and not bare.compiled
    assert 1.9 < large / small < 2.1, (large, small)
    np.testing.assert_array_equal(bare.predict(x, verbose=0), full.predict(x, verbose=0))  # same seed, same run
    from vggfeat.weights import read_keras_metadata

    assert read_keras_metadata(tmp_path / "keep_False.keras")["arch"] == "vgg11"


def test_the_curves_plot_the_logged_epoch_numbers_on_whole_number_ticks():
    from vggfeat.finetuning import _curves_figure

    rows = [{"epoch": str(e), "loss": str(1 / e), "accuracy": "0.5", "val_loss": "", "val_accuracy": ""}
            for e in range(1, 8)]
    fig = _curves_figure(rows)
    for ax in fig.axes:
        assert list(ax.lines[0].get_xdata()) == list(range(1, 8))
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_describe_split_names_classes_and_the_split():
    from vggfeat.finetuning import describe_split

    names = [f"c{i}" for i in range(10)]
    data = (["f"] * 20, np.repeat(np.arange(10), 2), [], np.array([], dtype=int), names)
    first, second = describe_split(data, show=3)
    assert first == "Found 20 images in 10 classes: c0 (2), c1 (2), c2 (2) and 7 more"
    assert second.startswith("training on 20 images, no validation images (--val-split 0)")
    data = (["f"] * 4, np.array([0, 0, 1, 1]), ["v"] * 3, np.array([0, 1, 1]), ["a", "b"])
    assert describe_split(data, val_dir="val/") == ["Found 4 images in 2 classes: a (2), b (2)",
                                                    "training on 4 images, validating on 3 images of val/"]


class _WorseLater(keras.callbacks.Callback):
    """From the third epoch on, scramble the new head before the epoch (the same noise every run), so that
    the last epoch is not the best; record each epoch's weights."""

    def __init__(self):
        super().__init__()
        self.weights = {}

    def on_epoch_begin(self, epoch, logs=None):
        if epoch >= 2:
            head = self.model.get_layer("predictions")
            rng = np.random.default_rng(epoch)
            head.set_weights([w + rng.normal(0, 0.5, w.shape).astype(w.dtype) for w in head.get_weights()])

    def on_epoch_end(self, epoch, logs=None):
        self.weights[epoch + 1] = self.model.get_weights()


def test_the_saved_model_holds_the_epoch_with_the_lowest_validation_loss(train_dir, tmp_path):
    """The last epoch is made the worst: the model saved is the best epoch's, weight for weight, and its
    metadata, the History and the CLI's summary name that epoch."""
    out = tmp_path / "best.keras"
    worse = _WorseLater()
    h = finetune(train_dir, out, epochs=4, optimizer="adam", lr=3e-4, val_split=0.25, callbacks=[worse], **QUICK)
    val = h.history["val_loss"]
    print("validation loss per epoch:", [round(v, 3) for v in val])
    best = int(np.argmin(val)) + 1
    assert best < 4 and val[3] > min(val)  # the last epoch is not the best
    from vggfeat.weights import read_keras_metadata

    meta = read_keras_metadata(out)
    assert (meta["kept"], meta["kept_epoch"], meta["epochs_run"]) == ("lowest val_loss", best, 4)
    assert (h.kept, h.kept_epoch, h.epochs_run) == ("lowest val_loss", best, 4)
    assert meta["kept_metrics"]["val_loss"] == pytest.approx(min(val))
    saved = keras.saving.load_model(out).get_weights()
    for a, b in zip(saved, worse.weights[best]):
        np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(a, b) for a, b in zip(saved, worse.weights[4]))


def test_each_augment_level_says_what_it_does_and_only_flip_levels_flip():
    from click.testing import CliRunner
    from vggfeat.finetuning import AUGMENTS, augmentation, flips
    from vggfeat_cli.main import cli

    assert FinetuneSettings().augment == "light" and FinetuneSettings(augment="flip").augment == "flip"
    built = {level: augmentation(level, 32) for level in AUGMENTS}
    assert built["none"] == (Geometry("crop", 32), [])
    assert [type(l).__name__ for l in built["light"][1]] == ["RandomCrop", "RandomBrightness"]
    assert [type(l).__name__ for l in built["flip"][1]] == ["RandomCrop", "RandomBrightness", "RandomFlip"]
    assert {level: flips(layers) for level, (_, layers) in built.items()} == {
        "none": False, "light": False, "flip": True, "paper": True, "randaugment": True}
    # the default pipeline leaves an image with a handedness as it is, up to shifts and brightness: never mirrored
    x = np.zeros((16, 37, 37, 3), "float32")
    x[:, :, :10] = 255  # a bright left edge
    y = x
    for layer in built["light"][1]:
        y = layer(y, training=True)
    y = np.asarray(y)
    assert (y[:, :, :3].mean(axis=(1, 2, 3)) > y[:, :, -3:].mean(axis=(1, 2, 3)) + 100).all()
    text = " ".join(CliRunner().invoke(cli, ["finetune", "--help"]).output.split())
    for level, what in AUGMENTS.items():
        assert f"{level}: {what}" in text
    assert "[default: light]" in text
