"""`finetune`: adapt a VGG network to the user's classes (or train one from scratch), then extract from it.

The network keeps the standard layer names and takes preprocessed input, exactly like the networks
`extract` builds; images go through the same loader (`vggfeat.images.load_image`) and the same
preprocessing, so `vggfeat extract --weights model.keras` sees what the model saw in training. The saved
`.keras` file records the class names, architecture, input size and preprocessing (`vggfeat.json`
inside the archive, which Keras ignores).

Long runs: a checkpoint of the model and optimiser every epoch (Keras `BackupAndRestore`, in
`<output>.work/`), `resume=True` continuing from the last finished epoch, early stopping on validation
loss, a CSV log, a PNG of the learning curves, and TensorBoard logs on request.
"""

from __future__ import annotations

import math
import os
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .errors import ImageError, InputError, LayerError, OutputError
from .images import load_image, scan_images
from .specs import get_arch, layer_names, resolve_layer

OPTIMIZERS = ("sgd", "adam")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


def _split(images, val_dir, val_split, seed):
    """(train files, train labels, val files, val labels, class names)."""
    from sklearn.model_selection import train_test_split

    train = scan_images([images]) if not isinstance(images, list) else scan_images(images)
    names = train.class_names
    labelled = [(f, y) for f, y in zip(train.files, train.labels) if y >= 0]
    root = os.fspath(images if not isinstance(images, list) else images[0])
    subfolders = sorted(e.name for e in os.scandir(root) if e.is_dir()) if os.path.isdir(root) else []
    empty = [d for d in subfolders if d not in names]
    if empty:
        raise InputError(f"class folder without images: {', '.join(empty)}")
    if len(names) < 2:
        raise InputError(f"fine-tuning needs at least 2 classes (one subfolder each); found {len(names)}: "
                         f"{', '.join(names) or 'none'}")
    files = [f for f, _ in labelled]
    labels = np.array([y for _, y in labelled])
    if val_dir:
        val = scan_images([val_dir])
        missing = [c for c in val.class_names if c not in names]
        if missing:
            raise InputError(f"validation classes not in the training folder: {', '.join(missing)}")
        vf = [f for f, y in zip(val.files, val.labels) if y >= 0]
        vy = np.array([names.index(val.class_names[y]) for y in val.labels if y >= 0])
        return files, labels, vf, vy, names
    if not val_split:
        return files, labels, [], np.array([], dtype=int), names
    if not 0 < val_split < 1:
        raise InputError(f"--val-split must be between 0 and 1. Received: {val_split}")
    try:
        tf_, vf, ty, vy = train_test_split(files, labels, test_size=val_split, stratify=labels, random_state=seed)
    except ValueError as exc:
        raise InputError(f"cannot split {len(files)} images for validation: {exc}") from None
    return list(tf_), np.asarray(ty), list(vf), np.asarray(vy), names


class _ImageBatches:
    """Batches of decoded, augmented, preprocessed images for `model.fit` (a Keras PyDataset).

    Unreadable images are skipped (counted in `failed`); a batch is never empty.
    """

    def __new__(cls, *args, **kwargs):
        import keras

        class ImageBatches(keras.utils.PyDataset):
            def __init__(self, files, labels, geometry, layers, preprocessing, batch_size, shuffle, seed, workers):
                super().__init__()
                self.files, self.labels = list(files), np.asarray(labels)
                self.geometry, self.aug_layers = geometry, layers
                self.preprocessing, self.batch_size = preprocessing, batch_size
                self.shuffle, self.rng = shuffle, np.random.default_rng(seed)
                self.order = np.arange(len(self.files))
                self.pool = ThreadPoolExecutor(max_workers=workers)
                self.failed = {}
                if shuffle:
                    self.rng.shuffle(self.order)

            def __len__(self):
                return math.ceil(len(self.files) / self.batch_size)

            def _load(self, i):
                try:
                    return load_image(self.files[i], self.geometry)
                except ImageError as exc:
                    self.failed[self.files[i]] = str(exc)
                    return None

            def __getitem__(self, idx):
                from .preprocessing import preprocess

                index = self.order[idx * self.batch_size:(idx + 1) * self.batch_size]
                images = list(self.pool.map(self._load, index))
                keep = [k for k, im in enumerate(images) if im is not None]
                if not keep:  # every image of the batch failed: borrow one readable image
                    for j in self.order:
                        im = self._load(j)
                        if im is not None:
                            images, index, keep = [im], np.array([j]), [0]
                            break
                    else:
                        raise InputError("no training image could be read")
                x = np.stack([images[k] for k in keep]).astype("float32")
                y = self.labels[index[keep]]
                for layer in self.aug_layers:
                    x = layer(x, training=True)
                x = np.clip(np.asarray(x, dtype="float32"), 0, 255)
                return preprocess(x, self.preprocessing), y

            def on_epoch_end(self):
                if self.shuffle:
                    self.rng.shuffle(self.order)

        return ImageBatches(*args, **kwargs)


def _number(text):
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _learning_curves(csv_path, png_path):
    import csv

    from matplotlib.figure import Figure  # no pyplot: leaves the caller's backend (e.g. Jupyter's) alone

    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    epochs = [int(r["epoch"]) + 1 for r in rows]
    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for prefix, style in (("", "-o"), ("val_", "--o")):
            key = prefix + metric
            points = [(e, _number(r.get(key))) for e, r in zip(epochs, rows)]
            points = [(e, v) for e, v in points if v is not None]
            if points:
                ax.plot([e for e, _ in points], [v for _, v in points], style, label=key)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)


def finetune(train_dir, output, *, arch=None, weights="imagenet", val_dir=None, val_split=0.2,
             train_from=None, unfreeze_after=None, epochs=10, batch_size=32, input_size=224, seed=0,
             optimizer="sgd", lr=None, weight_decay=None, recipe=None, augment="light", class_weights=True,
             precision="float32", patience=5, resume=False, overwrite=False, tensorboard=None,
             distribute=None, workers=None, verbose=1, callbacks=None):
    """Fine-tune (or train from scratch) a VGG network on the class subfolders of `train_dir`.

    Args:
        train_dir: folder with one subfolder of images per class.
        output: the `.keras` file to write (refused if it exists, unless `overwrite` or `resume`).
        arch, weights: as for extraction; `weights="random"` trains from scratch.
        val_dir / val_split: validation images from another folder, or a stratified fraction.
        train_from: the first layer that trains (paper or Keras name); layers below it keep their
            weights bit for bit. Default: `fc6` (new head, fc6, fc7), or everything from random weights.
        unfreeze_after: after this many epochs, train every layer (two-stage fine-tuning, lr / 10).
        epochs, batch_size, input_size, seed: training length, batch, crop side (>= 32), seed.
        optimizer: `sgd` (momentum 0.9, weight decay) or `adam`; `lr` its learning rate, divided by 10
            when validation accuracy stalls.
        recipe: `paper`: SGD momentum 0.9, weight decay 5e-4, dropout 0.5, lr 1e-2 with /10 on plateau,
            scale jittering, flips and colour shift (`augment="paper"`).
        augment: `none`, `light`, `paper` or `randaugment` (see `vggfeat.augment`).
        class_weights: weight classes by inverse frequency (imbalanced folders).
        precision: `float32`, `mixed_bfloat16` or `mixed_float16`.
        patience: early stopping on validation loss after this many epochs without improvement.
        resume: continue an interrupted run from its last finished epoch.
        tensorboard: folder for TensorBoard logs.
        distribute: `mirrored` for `tf.distribute.MirroredStrategy` over all local GPUs.
        callbacks: extra Keras callbacks.

    Returns:
        The Keras `History` of the (last stage of) training. Beside `output`: `<stem>.log.csv` and
        `<stem>.curves.png`.
    """
    import keras

    from .models import build_vgg
    from .weights import load_network, write_keras_metadata

    output = os.fspath(output)
    if not output.endswith(".keras"):
        raise InputError(f"the output must be a .keras file. Received: {output}")
    work = output + ".work"
    if os.path.exists(output) and not (overwrite or resume):
        raise OutputError(f"{output} exists; pass --overwrite to replace it")
    if os.path.exists(work) and not resume:
        shutil.rmtree(work)
    if recipe not in (None, "paper"):
        raise InputError(f"unknown recipe {recipe!r}; the only recipe is 'paper'")
    if recipe == "paper":
        optimizer, lr = "sgd", lr or 1e-2
        weight_decay = 5e-4 if weight_decay is None else weight_decay
        augment = "paper"
    if optimizer not in OPTIMIZERS:
        raise InputError(f"unknown optimizer {optimizer!r}; choose sgd or adam")
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if int(input_size) < 32:
        raise InputError(f"input size must be at least 32 pixels. Received: {input_size}")
    if epochs < 1:
        raise InputError(f"--epochs must be at least 1. Received: {epochs}")
    lr = lr or (1e-2 if optimizer == "sgd" else 1e-4)
    weight_decay = 5e-4 if (weight_decay is None and optimizer == "sgd") else weight_decay

    files, labels, vfiles, vlabels, class_names = _split(train_dir, val_dir, val_split, seed)
    keras.utils.set_random_seed(seed)

    strategy = None
    if distribute == "mirrored":
        import tensorflow as tf

        strategy = tf.distribute.MirroredStrategy()
    elif distribute not in (None, "none"):
        raise InputError(f"unknown --distribute {distribute!r}; the only strategy is 'mirrored'")

    def build():
        from .errors import WeightsError
        from .models import infer_arch
        from .weights import WeightsInfo

        dtype = precision if precision != "float32" else None
        if str(weights) == "random":
            name = get_arch(arch or "vgg16").name
            net = build_vgg(name, input_size=int(input_size), classes=len(class_names), seed=seed, dtype=dtype)
            return net, WeightsInfo("random", "random", seed=seed), name
        try:
            base, info = load_network(arch, weights, seed=seed, include_top=True, input_size=int(input_size))
        except WeightsError as exc:
            if "notop" not in str(exc):
                raise
            base, info = load_network(arch, weights, seed=seed, include_top=False, input_size=int(input_size))
        name = infer_arch(base)
        net = build_vgg(name, input_size=int(input_size), classes=len(class_names), seed=seed, dtype=dtype)
        for layer in net.layers:
            if layer.weights and layer.name.startswith("block"):
                layer.set_weights(base.get_layer(layer.name).get_weights())
        _copy_fc(base, net)
        return net, info, name

    def scope():
        return strategy.scope() if strategy else _null()

    with scope():
        net, info, arch_name = build()
        spec = get_arch(arch_name)
        if train_from is None:
            first = "block1_conv1" if info.kind == "random" else "fc1"
        else:
            first = resolve_layer(spec, train_from)
        _freeze_below(net, spec, first)
        opt = _optimizer(optimizer, lr, weight_decay)
        net.compile(optimizer=opt, loss="sparse_categorical_crossentropy", metrics=["accuracy"])

    geometry, aug_layers = _policy(augment, int(input_size), seed)
    workers = workers or max(2, min(8, os.cpu_count() or 2))
    from .images import Geometry

    train_data = _ImageBatches(files, labels, geometry, aug_layers, info.preprocessing, batch_size, True, seed,
                               workers)
    val_data = (_ImageBatches(vfiles, vlabels, Geometry("crop", int(input_size)), [], info.preprocessing,
                              batch_size, False, seed, workers) if len(vfiles) else None)
    cw = None
    if class_weights:
        counts = np.bincount(labels, minlength=len(class_names))
        cw = {i: float(len(labels) / (len(class_names) * c)) for i, c in enumerate(counts) if c}

    stem = output[: -len(".keras")]
    os.makedirs(work, exist_ok=True)
    monitor = "val_loss" if val_data is not None else "loss"
    extra = list(callbacks or [])
    callbacks = [
        keras.callbacks.BackupAndRestore(os.path.join(work, "backup")),
        keras.callbacks.CSVLogger(stem + ".log.csv", append=resume),
        keras.callbacks.EarlyStopping(monitor=monitor, patience=patience, restore_best_weights=False),
        keras.callbacks.ReduceLROnPlateau(monitor="val_accuracy" if val_data is not None else "accuracy",
                                          factor=0.1, patience=max(1, patience // 2), min_lr=1e-7),
    ]
    if tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(tensorboard))
    callbacks += extra

    stage1 = min(int(unfreeze_after), epochs) if unfreeze_after else epochs
    history = net.fit(train_data, validation_data=val_data, epochs=stage1, class_weight=cw, callbacks=callbacks,
                      verbose=verbose)
    if unfreeze_after and epochs > stage1:
        with scope():
            for layer in net.layers:
                layer.trainable = True
            net.compile(optimizer=_optimizer(optimizer, lr / 10, weight_decay),
                        loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        callbacks[0] = keras.callbacks.BackupAndRestore(os.path.join(work, "backup-stage2"))
        callbacks[1] = keras.callbacks.CSVLogger(stem + ".log.csv", append=True)
        history = net.fit(train_data, validation_data=val_data, initial_epoch=stage1, epochs=epochs,
                          class_weight=cw, callbacks=callbacks, verbose=verbose)
    failed = dict(train_data.failed)
    if val_data is not None:
        failed.update(val_data.failed)
    history.failed = failed

    if os.path.exists(output):
        os.remove(output)
    net.save(output)
    write_keras_metadata(output, {
        "arch": arch_name, "class_names": class_names, "input_size": int(input_size),
        "preprocessing": info.preprocessing, "base_weights": info.name, "augment": augment,
        "failed_images": len(failed),
    })
    _learning_curves(stem + ".log.csv", stem + ".curves.png")
    shutil.rmtree(work, ignore_errors=True)
    return history


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _copy_fc(base, net):
    """Carry fc6/fc7 of a loaded network with top over when their shapes fit (same input size);
    fc8 is always replaced by the new head."""
    names = {layer.name for layer in base.layers}
    for name in ("fc1", "fc2"):
        if name not in names:
            continue
        src, dst = base.get_layer(name), net.get_layer(name)
        if [w.shape for w in src.get_weights()] == [w.shape for w in dst.get_weights()]:
            dst.set_weights(src.get_weights())


def _freeze_below(net, spec, first):
    order = layer_names(spec, include_top=True)
    if first not in order:
        raise LayerError(f"unknown layer {first!r} for --train-from")
    frozen = set(order[: order.index(first)])
    for layer in net.layers:
        layer.trainable = layer.name not in frozen


def _optimizer(name, lr, weight_decay):
    import keras

    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=lr, momentum=0.9, weight_decay=weight_decay or None)
    return keras.optimizers.Adam(learning_rate=lr, weight_decay=weight_decay or None)


def _policy(augment, size, seed):
    from .augment import augmentation

    return augmentation(augment, size, seed)
