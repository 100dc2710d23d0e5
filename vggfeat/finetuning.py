"""`finetune`: adapt a VGG network to the user's classes (or train one from scratch), then extract from it.

The network keeps the standard layer names and takes preprocessed input, exactly like the networks
`extract` builds; images go through the same loader (`vggfeat.images.load_image`) and the same
preprocessing, so `vggfeat extract --weights model.keras` sees what the model saw in training. The saved
`.keras` file records the class names, architecture, input size and preprocessing (`vggfeat.json`
inside the archive, which Keras ignores).

Long runs: a checkpoint of the model and optimiser every epoch (Keras `BackupAndRestore`, in
`<output>.work/`), `resume=True` continuing from the last finished epoch (of either stage of a two-stage
run), early stopping on validation loss, the weights of the epoch with the lowest validation loss kept
(`KeepBest`; the last epoch's without validation data), a CSV log, a PNG of the learning curves, and TensorBoard logs on
request.

`finetune` is made of parts that can be used and tested one by one, in the order it calls them:

1. `FinetuneSettings`: the training settings, validated when made (no Keras, no files);
2. `check_output`: the output and its work folder (nothing is removed here);
3. `split_images`: the classes, the training and validation images;
4. `plan_network`: the configuration, whether the weights hold fc6-fc8 (read from the weight file's
   layout) and the first layer that trains;
   -- only now, with everything checked, does `--overwrite` remove an earlier run's work folder --
5. `build_network`, `freeze`, `compile_network`: the network with its new head, which layers train;
6. `ImageBatches`: the batches for `model.fit` (a Keras `PyDataset`, in `vggfeat.batches`);
7. `make_callbacks`, `train`: the run, in one or two stages;
8. `save_model`: the model written beside the output and renamed over it when complete.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import warnings
from dataclasses import dataclass

import numpy as np

from .config import MAX_INPUT_SIZE, MIN_INPUT_SIZE, PRECISIONS
from .errors import InputError, LayerError, OutputError, WeightsError
from .images import Geometry, scan_images
from .specs import get_arch, layer_names, resolve_layer
from .weight_source import weight_source

OPTIMIZERS = ("sgd", "adam")
RECIPES = ("paper",)
DISTRIBUTE = ("none", "mirrored")
#: `--augment` levels -> what each does to a training image (`--help`, the README and the model's metadata say
#: the same). No level below `flip` flips: a mirrored digit, letter or anything with a handedness is another image.
AUGMENTS = {
    "none": "nothing random: the extraction geometry (shorter side to size*256/224, centre crop)",
    "light": "random crops (shifts of up to size/7 pixels) and brightness (+-10%); no flips",
    "flip": "light plus random horizontal flips (only for classes that look the same mirrored)",
    "paper": "the paper's: scale jittering, random crops, horizontal flips, RGB colour shift",
    "randaugment": "random crops, horizontal flips and keras-cv's RandAugment",
}
#: The levels whose pipeline flips images horizontally.
FLIPPING_AUGMENTS = ("flip", "paper", "randaugment")
#: --precision -> the Keras dtype policy of the network (None: the global policy, float32).
DTYPE_POLICIES = {"float32": None, "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
#: The precision names of earlier releases (Keras policy names), accepted by `finetune` with a warning.
_OLD_PRECISIONS = {"mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}


# ---------------------------------------------------------------------------------------------
# 1. Settings
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FinetuneSettings:
    """The settings that decide a fine-tuning run, validated when made (one-line `InputError`s).

    The recipe and the optimizer's defaults are resolved here: `recipe="paper"` sets SGD, lr 1e-2 (unless
    given), weight decay 5e-4 (unless given) and `augment="paper"`; `lr` defaults to 1e-2 for SGD and 1e-4
    for Adam; SGD's weight decay to 5e-4. See `finetune` for what each setting means.

    Examples:
        >>> s = FinetuneSettings(weights="random", recipe="paper", optimizer="adam")
        >>> s.optimizer, s.lr, s.weight_decay, s.augment
        ('sgd', 0.01, 0.0005, 'paper')
        >>> FinetuneSettings(epochs=0)
        Traceback (most recent call last):
        ...
        vggfeat.errors.InputError: --epochs must be at least 1. Received: 0
    """

    arch: str | None = None
    weights: str = "imagenet"
    seed: int = 0
    input_size: int = 224
    val_split: float | None = 0.2
    train_from: str | None = None
    unfreeze_after: int | None = None
    epochs: int = 10
    batch_size: int = 32
    optimizer: str = "sgd"
    lr: float | None = None
    weight_decay: float | None = None
    recipe: str | None = None
    augment: str = "light"
    class_weights: bool = True
    precision: str = "float32"
    patience: int = 5
    distribute: str = "none"

    def __post_init__(self):
        set_ = object.__setattr__
        if self.weights is None:
            raise InputError("weights must be 'imagenet', 'random' or a path; there is no default of no weights")
        set_(self, "weights", str(os.fspath(self.weights)))
        if self.arch is not None:
            set_(self, "arch", get_arch(self.arch).name)
        for name, low in (("seed", 0), ("input_size", MIN_INPUT_SIZE), ("epochs", 1), ("batch_size", 1),
                          ("patience", 1)):
            set_(self, name, _whole(name, getattr(self, name), low))
        if self.input_size > MAX_INPUT_SIZE:
            raise InputError(f"--input-size must be at most {MAX_INPUT_SIZE}. Received: {self.input_size}")
        if self.unfreeze_after is not None:
            set_(self, "unfreeze_after", _whole("unfreeze_after", self.unfreeze_after, 1))
        if not self.val_split:
            set_(self, "val_split", None)
        else:
            split = _real("val_split", self.val_split)
            if not 0 < split < 1:
                raise InputError(f"--val-split must be between 0 and 1. Received: {self.val_split}")
            set_(self, "val_split", split)
        set_(self, "distribute", "none" if self.distribute is None else self.distribute)
        _choose("recipe", self.recipe, (None, *RECIPES), "the only recipe is 'paper'")
        _choose("optimizer", self.optimizer, OPTIMIZERS)
        _choose("precision", self.precision, PRECISIONS)
        _choose("distribute", self.distribute, DISTRIBUTE, "the only strategy is 'mirrored'")
        _choose("augment", self.augment, tuple(AUGMENTS))
        for name in ("lr", "weight_decay"):
            value = getattr(self, name)
            if value is not None:
                value = _real(name, value)
                if value < 0 or (name == "lr" and value == 0):
                    raise InputError(f"--{name.replace('_', '-')} must be {'above' if name == 'lr' else 'at least'}"
                                     f" 0. Received: {value}")
                set_(self, name, value)
        if self.recipe == "paper":
            set_(self, "optimizer", "sgd")
            set_(self, "lr", self.lr or 1e-2)
            set_(self, "weight_decay", 5e-4 if self.weight_decay is None else self.weight_decay)
            set_(self, "augment", "paper")
        if self.lr is None:
            set_(self, "lr", 1e-2 if self.optimizer == "sgd" else 1e-4)
        if self.weight_decay is None and self.optimizer == "sgd":
            set_(self, "weight_decay", 5e-4)
        set_(self, "class_weights", bool(self.class_weights))

    @property
    def dtype_policy(self) -> str | None:
        """The Keras dtype policy of `precision` (`mixed_bfloat16`...), None for float32."""
        return DTYPE_POLICIES[self.precision]

    @property
    def stage1_epochs(self) -> int:
        """Epochs of the first stage (all of them, without `unfreeze_after`)."""
        return min(self.unfreeze_after, self.epochs) if self.unfreeze_after else self.epochs

    @property
    def two_stage(self) -> bool:
        return self.epochs > self.stage1_epochs


def _whole(name, value, low):
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool) or not isinstance(value, (int, np.integer, float, str)):
        raise InputError(f"{flag} must be a whole number. Received: {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise InputError(f"{flag} must be a whole number. Received: {value!r}") from None
    if not math.isfinite(number) or number != int(number):
        raise InputError(f"{flag} must be a whole number. Received: {value!r}")
    if number < low:
        raise InputError(f"{flag} must be at least {low}. Received: {value}")
    return int(number)


def _real(name, value):
    flag = "--" + name.replace("_", "-")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{flag} must be a number. Received: {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(number):
        raise InputError(f"{flag} must be a finite number. Received: {value!r}")
    return number


def _choose(name, value, allowed, hint=None):
    if value not in allowed:
        shown = ", ".join(a for a in allowed if a is not None)
        raise InputError(f"unknown {name} {value!r}; {hint or 'choose one of ' + shown}")


# ---------------------------------------------------------------------------------------------
# 2. The output and its work folder
# ---------------------------------------------------------------------------------------------


def check_output(output, *, resume=False, overwrite=False) -> str:
    """Check that `output` may be written; return the path of its work folder (`<output>.work`).

    Removes nothing: an existing work folder (an interrupted run's checkpoints) is refused unless
    `resume` (continue it) or `overwrite` (start again: the caller removes it once every other argument
    has been checked); an existing output is refused unless `overwrite`, or `resume` with an interrupted
    run to continue.
    """
    output = os.fspath(output)
    if not output.endswith(".keras"):
        raise InputError(f"the output must be a .keras file. Received: {output}")
    if resume and overwrite:
        raise InputError("--resume and --overwrite exclude each other")
    if os.path.isdir(output):
        raise OutputError(f"{output} is a folder; the output must be a .keras file")
    work = output + ".work"
    if os.path.lexists(work) and not (resume or overwrite):
        raise OutputError(f"{work} holds an interrupted fine-tuning run; pass --resume to continue it or "
                          "--overwrite to start again")
    if resume and os.path.lexists(work) and not os.path.isdir(work):
        raise OutputError(f"{work} is not a folder of checkpoints; pass --overwrite to start again")
    if os.path.lexists(output) and not overwrite:
        if not resume:
            raise OutputError(f"{output} exists; pass --overwrite to replace it")
        if not os.path.isdir(work):
            raise OutputError(f"{output} exists and there is no interrupted run ({work}) to resume; pass "
                              "--overwrite to replace it")
    parent = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(parent):
        raise OutputError(f"the output folder does not exist: {parent}")
    # the model, its log and plot go to `parent`, the checkpoints to `work`: a read-only, unwritable or full
    # folder is an error now, in one line, not an OSError once the network is built and trained
    _probe(parent, output)
    if resume and os.path.isdir(work):
        _probe(work, output)
    return work


def _probe(folder, output):
    """Create (O_CREAT|O_EXCL), write 4 kB to and remove a probe file in `folder`, as `extract` checks its
    output (`vggfeat.io.guard.check_output`, whose probe this is: it refuses names other than HDF5's, and
    the library imports no private name of another module); an OS error is one `OutputError` line."""
    import errno

    probe = os.path.join(folder, f".{os.path.basename(output)}.{os.getpid()}.probe")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as exc:
        error = exc
    else:
        error = None
        try:
            os.write(fd, b"\0" * 4096)
        except OSError as exc:
            error = exc
        finally:
            os.close(fd)
            os.remove(probe)
    if error is not None:
        full = getattr(error, "errno", None) in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
        hint = "free some space" if full else "choose a folder you can write to"
        raise OutputError(f"cannot write {output}: creating a file in {folder} failed ({error.strerror or error}); "
                          f"{hint}")


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


# ---------------------------------------------------------------------------------------------
# 3. The images
# ---------------------------------------------------------------------------------------------


def split_images(images, val_dir=None, val_split=None, seed=0):
    """`(train files, train labels, val files, val labels, class names)` from class subfolders.

    Validation images come from `val_dir` (its classes must be training classes), else a stratified
    `val_split` fraction of `images`, else there are none.
    """
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
        vy = np.array([names.index(val.class_names[y]) for y in val.labels if y >= 0], dtype=int)
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


def describe_split(data, *, val_dir=None, val_split=None, show=8) -> list[str]:
    """What `split_images` found, in two lines (the first in Keras's words), said before training starts:

    >>> data = (["a1", "a2", "a3", "b1", "b2", "b3"], np.array([0, 0, 0, 1, 1, 1]), ["a4", "b4"],
    ...         np.array([0, 1]), ["cats", "dogs"])
    >>> print("\\n".join(describe_split(data, val_split=0.25)))
    Found 8 images in 2 classes: cats (4), dogs (4)
    training on 6 images, validating on 2 (a stratified 0.25 of the images)

    Past `show` classes, the rest are counted, not named."""
    files, labels, vfiles, vlabels, names = data
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=len(names))
    if not val_dir and len(vfiles):
        counts = counts + np.bincount(np.asarray(vlabels, dtype=int), minlength=len(names))
    named = ", ".join(f"{n} ({c})" for n, c in zip(names[:show], counts[:show]))
    if len(names) > show:
        named += f" and {len(names) - show} more"
    total = len(files) + (0 if val_dir else len(vfiles))
    first = f"Found {total} image{'s' * (total != 1)} in {len(names)} classes: {named}"
    if val_dir:
        second = f"training on {len(files)} images, validating on {len(vfiles)} images of {os.fspath(val_dir)}"
    elif len(vfiles):
        second = (f"training on {len(files)} images, validating on {len(vfiles)} (a stratified {val_split:g} of the "
                  "images)")
    else:
        second = (f"training on {len(files)} images, no validation images (--val-split 0): early stopping and the "
                  "learning-rate schedule follow the training loss and accuracy")
    return [first, second]


def inverse_frequency_weights(labels, n_classes) -> dict:
    """Weights by inverse class frequency, `{class: n / (n_classes * count)}` (absent classes left out)."""
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=n_classes)
    return {i: float(len(labels) / (n_classes * c)) for i, c in enumerate(counts) if c}


# ---------------------------------------------------------------------------------------------
# 4. Which network, which weights, which layers train
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NetworkPlan:
    """What `build_network` will build: the configuration, whether the weights hold Dense fc6-fc8 that
    can be carried over (decided from the weight file's layout; False for random weights), and the Keras
    name of the first layer that trains."""

    arch: str
    has_fc: bool
    first_trainable: str


def weights_layout(weights, arch=None) -> tuple[str, bool]:
    """`(configuration, has_fc)` of `weights`, read from the weight file's layout (h5py/zip metadata, every
    shape checked; no weight is read and Keras builds nothing): `has_fc` says whether the file holds
    fc6-fc8. `imagenet` is Keras's file with top, `random` has none to carry over.

    Raises `WeightsError` for a file that cannot be used: missing, not a VGG, another configuration than
    `arch`, or (for `.h5` files) fc6-fc8 stored as convolutions.
    """
    from .weights import IMAGENET_FILES, imagenet_weights_path, inspect_keras_file, read_weight_file_layout

    w = str(weights)
    src = weight_source(weights)  # its kind, and a missing file, a folder or an unknown type refused
    if src.kind in ("random", "imagenet"):
        name = get_arch(arch or "vgg16").name
        if w == "imagenet" and (name, True) not in IMAGENET_FILES:
            imagenet_weights_path(name, True)  # raises the one-line "no ImageNet weights for ..." error
        return name, w == "imagenet"
    from .torch_weights import check as check_torch_weights

    if src.kind == "torch":  # a torchvision/timm .safetensors file or timm:NAME (fetched when built)
        held = check_torch_weights(w, arch, fetch=False)
        return held["arch"], held["has_top"]
    path, base = src.path, src.name
    if src.kind == "keras":
        held = inspect_keras_file(path)
        archs, has_fc = (held.arch,), held.fc_form is not None
    else:  # "h5"
        layout = read_weight_file_layout(path)
        archs = layout.archs
        if layout.fc_form == "conv":
            raise WeightsError(f"weight file {base} holds fc6-fc8 as convolutions (the dense form); fine-tuning "
                               "carries Dense fc6-fc8 over from .h5 files: save the whole model as .keras, or "
                               "use a file without top")
        has_fc = layout.has_top
    if arch is not None and get_arch(arch).name not in archs:
        raise WeightsError(f"weight file {base} holds a {archs[0]} network and does not fit "
                           f"{get_arch(arch).name}; drop --arch or fix it")
    return (get_arch(arch).name if arch is not None else archs[0]), has_fc


def plan_network(settings: FinetuneSettings) -> NetworkPlan:
    """Decide the configuration, whether fc6-fc8 come from the weights, and the first layer that trains
    (`train_from`, paper or Keras name; default `fc6`, or every layer with random weights)."""
    arch, has_fc = weights_layout(settings.weights, settings.arch)
    if settings.train_from is None:
        first = "block1_conv1" if settings.weights == "random" else "fc1"
    else:
        try:
            first = resolve_layer(get_arch(arch), settings.train_from)
        except LayerError as exc:
            raise LayerError(f"--train-from: {exc}") from None
    return NetworkPlan(arch, has_fc, first)


# ---------------------------------------------------------------------------------------------
# 5. The network
# ---------------------------------------------------------------------------------------------


def build_network(settings: FinetuneSettings, plan: NetworkPlan, classes: int):
    """The standard-form network of `plan.arch` at `settings.input_size`, with a new head of `classes`
    outputs: the convolutions (and fc6/fc7, when the weights hold them at a fitting size) from the weights.

    Returns `(network, WeightsInfo)`."""
    from .models import build_vgg
    from .weights import WeightsInfo, load_network

    size, dtype = settings.input_size, settings.dtype_policy
    if settings.weights == "random":
        net = build_vgg(plan.arch, input_size=size, classes=classes, seed=settings.seed, dtype=dtype)
        return net, WeightsInfo("random", "random", seed=settings.seed)
    base, info = load_network(plan.arch, settings.weights, seed=settings.seed, include_top=plan.has_fc,
                              input_size=size)
    net = build_vgg(plan.arch, input_size=size, classes=classes, seed=settings.seed, dtype=dtype)
    for layer in net.layers:
        if layer.weights and layer.name.startswith("block"):
            layer.set_weights(base.get_layer(layer.name).get_weights())
    _copy_fc(base, net)
    del base
    return net, info


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


def freeze(net, arch, first) -> list[str]:
    """Freeze every layer below `first` (Keras name) in forward order; return the names of the layers
    with weights that train."""
    if first not in layer_names(get_arch(arch), include_top=True) and first != "block1_conv1":
        raise LayerError(f"unknown layer {first!r} for --train-from")
    # a batch-norm network's conv{b}_{i} feature is its ReLU's output: its unit starts at the convolution
    start = re.sub(r"^block(\d)_relu(\d)$", r"block\1_conv\2", first)
    order = [layer.name for layer in net.layers]  # forward order
    frozen = set(order[: order.index(start)])
    for layer in net.layers:
        layer.trainable = layer.name not in frozen
    return [layer.name for layer in net.layers if layer.trainable and layer.weights]


def make_optimizer(name, lr, weight_decay, precision="float32"):
    """SGD (momentum 0.9) or Adam; with float16 compute wrapped in a `LossScaleOptimizer` (gradients
    would underflow otherwise)."""
    import keras

    if name == "sgd":
        opt = keras.optimizers.SGD(learning_rate=lr, momentum=0.9, weight_decay=weight_decay or None)
    else:
        opt = keras.optimizers.Adam(learning_rate=lr, weight_decay=weight_decay or None)
    return keras.optimizers.LossScaleOptimizer(opt) if precision == "float16" else opt


def compile_network(net, settings: FinetuneSettings, lr=None):
    """Compile for sparse categorical cross-entropy and accuracy with the settings' optimizer."""
    net.compile(optimizer=make_optimizer(settings.optimizer, lr or settings.lr, settings.weight_decay,
                                         settings.precision),
                loss="sparse_categorical_crossentropy", metrics=["accuracy"])


# ---------------------------------------------------------------------------------------------
# 6. The batches
# ---------------------------------------------------------------------------------------------


# `ImageBatches` (a Keras `PyDataset`) lives in `vggfeat.batches`, so that this module, and every check
# of a fine-tuning run, imports without Keras; `vggfeat.finetuning.ImageBatches` still names it.


def augmentation(level, size, seed=0):
    """`(load_geometry, [keras layers])` of an `--augment` level (`AUGMENTS` says what each does) at crop
    `size`: images are decoded at `load_geometry`, then the layers run on 0-255 batches before preprocessing.

    `light` never flips; `flip` is `light` plus horizontal flips; `paper` and `randaugment` flip. Built by
    `vggfeat.augment` (the one place of augmentation layers, and of keras-cv)."""
    from . import augment

    if level not in AUGMENTS:
        raise InputError(f"unknown augment {level!r}; choose one of {', '.join(AUGMENTS)}")
    return augment.augmentation(level, size, seed)


def flips(layers) -> bool:
    """Whether a pipeline of augmentation `layers` flips images horizontally."""
    return any(getattr(layer, "mode", "") in ("horizontal", "horizontal_and_vertical") for layer in layers)


def __getattr__(name):
    if name == "ImageBatches":
        from .batches import ImageBatches

        return ImageBatches
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------------------------------
# 7. The run
# ---------------------------------------------------------------------------------------------


def make_callbacks(work, log_csv, *, stage=1, validation=True, patience=5, append=False, tensorboard=None,
                   extra=()) -> list:
    """The callbacks of one stage, in this order: a checkpoint every epoch (`BackupAndRestore` in
    `work/backup`, `work/backup-stage2` for the second stage), the CSV log (a Keras `CSVLogger` whose
    epochs are numbered from 1, as Keras's progress lines and the learning-curves plot number them), early
    stopping on (validation)
    loss, learning rate / 10 when (validation) accuracy stalls, TensorBoard when `tensorboard` names a
    folder, then `extra`."""
    import keras

    prefix = "val_" if validation else ""
    callbacks = [
        keras.callbacks.BackupAndRestore(os.path.join(work, "backup" if stage == 1 else "backup-stage2")),
        _epoch_log_class()(log_csv, append=append),
        keras.callbacks.EarlyStopping(monitor=prefix + "loss", patience=patience, restore_best_weights=False),
        keras.callbacks.ReduceLROnPlateau(monitor=prefix + "accuracy", factor=0.1,
                                          patience=max(1, patience // 2), min_lr=1e-7),
    ]
    if tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(tensorboard))
    return callbacks + list(extra)


_EPOCH_LOG = None


def _epoch_log_class():
    """`EpochLog`: Keras's `CSVLogger` writing epoch N of `model.fit` as N + 1 (Keras counts from 0 in its
    callbacks, from 1 in its progress lines); made on first use, so that this module imports without Keras."""
    global _EPOCH_LOG
    if _EPOCH_LOG is None:
        import keras

        class EpochLog(keras.callbacks.CSVLogger):
            def on_epoch_end(self, epoch, logs=None):
                super().on_epoch_end(epoch + 1, logs)

        _EPOCH_LOG = EpochLog
    return _EPOCH_LOG


#: In the work folder: the weights of the epoch with the lowest validation loss so far, with that epoch's
#: number and metrics (`KeepBest`), in one file replaced whole, so that `resume` keeps the best of the
#: epochs before the interruption too.
BEST_WEIGHTS = "best.npz"


def _keep_best_class():
    """`KeepBest`, made on first use (this module imports without Keras)."""
    import keras

    class KeepBest(keras.callbacks.Callback):
        """At the end of each epoch whose `monitor` (validation loss) is the lowest so far, write the
        network's weights, the epoch (numbered from 1, across both stages) and its metrics to `path` (a
        partial file renamed over it: an interruption leaves the previous best whole). The best so far is
        read back from `path` when training (re)starts, so a resumed run compares with the epochs before
        the interruption."""

        def __init__(self, path, monitor="val_loss"):
            super().__init__()
            self.path, self.monitor = path, monitor

        def best(self):
            """`(epoch, metrics)` of the file at `path`, or None."""
            if not os.path.exists(self.path):
                return None
            import json

            with np.load(self.path) as f:
                return int(f["epoch"]), json.loads(str(f["metrics"]))

        def on_epoch_end(self, epoch, logs=None):
            import json

            value = _number((logs or {}).get(self.monitor))
            held = self.best()
            if value is None or (held is not None and not value < held[1][self.monitor]):
                return
            metrics = {k: float(v) for k, v in (logs or {}).items() if _number(v) is not None}
            partial = self.path[: -len(".npz")] + ".partial.npz"
            arrays = {f"w{i}": w for i, w in enumerate(self.model.get_weights())}
            np.savez(partial, epoch=np.array(epoch + 1), metrics=np.array(json.dumps(metrics)), **arrays)
            os.replace(partial, self.path)

        def restore(self):
            """Load the best epoch's weights into the model; return `(epoch, metrics)`, or None."""
            held = self.best()
            if held is not None:
                with np.load(self.path) as f:
                    self.model.set_weights([f[f"w{i}"] for i in range(len(self.model.weights))])
            return held

    return KeepBest


#: In the work folder: the weights at the end of the first stage, written once it is complete, so that
#: `resume` continues a two-stage run in its second stage without training the first again.
STAGE1_WEIGHTS = "stage1.weights.h5"


def train(net, train_data, val_data, settings: FinetuneSettings, *, work, log_csv, resume=False,
          tensorboard=None, extra_callbacks=(), verbose=1, scope=None):
    """Fit `net` for `settings.epochs` epochs: the first stage as compiled, then (with `unfreeze_after`)
    every layer at lr / 10. `resume` continues from the checkpoints in `work`. Returns the last stage's
    Keras `History`.

    With validation data, `net` ends with the weights of the epoch with the lowest validation loss (of
    both stages, and of the epochs before a resumed interruption: `KeepBest` keeps them in `work`), not
    the last epoch's; without, the last epoch's. The History says which: `kept` (`"lowest val_loss"` or
    `"last epoch"`), `kept_epoch` (numbered from 1), `kept_metrics` (that epoch's loss, accuracy...) and
    `epochs_run` (the last epoch trained, numbered from 1: fewer than `settings.epochs` after early stopping)."""
    scope = scope or contextlib.nullcontext
    cw = inverse_frequency_weights(train_data.labels, net.output.shape[-1]) if settings.class_weights else None
    common = dict(validation=val_data is not None, patience=settings.patience, tensorboard=tensorboard,
                  extra=extra_callbacks)
    stage1, done = settings.stage1_epochs, os.path.join(work, STAGE1_WEIGHTS)
    keep = _keep_best_class()(os.path.join(work, BEST_WEIGHTS)) if val_data is not None else None
    if keep is not None:
        if not resume and os.path.exists(keep.path):
            os.remove(keep.path)  # an earlier run's best is no candidate (the caller removes `work` on overwrite)
    first = [keep] if keep is not None else []  # before the checkpoint: a resumed epoch is never lost to it
    history = None
    if settings.two_stage and resume and os.path.exists(done):
        if net.optimizer is not None and not net.optimizer.built:
            net.optimizer.build(net.trainable_variables)  # the file holds the first stage's optimizer too
        net.load_weights(done)
    else:
        history = net.fit(train_data, validation_data=val_data, epochs=stage1, class_weight=cw, verbose=verbose,
                          callbacks=first + make_callbacks(work, log_csv, stage=1, append=resume, **common))
        if settings.two_stage:
            partial = os.path.join(work, "stage1.partial.weights.h5")
            net.save_weights(partial)
            os.replace(partial, done)
    if settings.two_stage:
        with scope():
            for layer in net.layers:
                layer.trainable = True
            compile_network(net, settings, lr=settings.lr / 10)
        history = net.fit(train_data, validation_data=val_data, initial_epoch=stage1, epochs=settings.epochs,
                          class_weight=cw, verbose=verbose,
                          callbacks=first + make_callbacks(work, log_csv, stage=2, append=True, **common))
    _kept(history, net, keep)
    return history


def _kept(history, net, keep):
    """Load the best epoch's weights into `net` (with `keep`) and say on `history` which epoch's weights
    `net` holds."""
    last = history.epoch[-1] + 1 if history.epoch else 0
    logs = {k: float(v[-1]) for k, v in history.history.items() if v and _number(v[-1]) is not None}
    held = keep.restore() if keep is not None else None
    if held is None:  # no validation data (or no finite validation loss): the last epoch
        history.kept, history.kept_epoch, history.kept_metrics = "last epoch", last, logs
    else:
        history.kept, (history.kept_epoch, history.kept_metrics) = "lowest val_loss", held
    history.epochs_run = last


# ---------------------------------------------------------------------------------------------
# 8. The model file
# ---------------------------------------------------------------------------------------------


def save_model(net, output, metadata, *, work=None, include_optimizer=False):
    """Write `net` and vggfeat's `metadata` to a temporary `.keras` file beside `output` (in `work` when
    given), then rename it over `output`: an existing output is replaced only by a complete file.

    Without `include_optimizer` the file holds the network alone, not compiled: Keras 3's `.keras` format
    ignores `model.save(include_optimizer=False)` (only its legacy `.h5` writer reads it), so the model
    saved is a functional model on the same layers and weights (no copy) that was never compiled. SGD's
    momentum is one float per weight (Adam's state two), so this halves the file for SGD (a third for
    Adam). With `include_optimizer` the compiled model is saved as it is, optimizer state included (to
    continue training it with Keras)."""
    import keras

    from .weights import write_keras_metadata

    if not include_optimizer and getattr(net, "optimizer", None) is not None:
        net = keras.Model(net.input, net.output, name=net.name)  # the same structure (one input, one output)

    output = os.fspath(output)
    folder = work or os.path.dirname(os.path.abspath(output))
    os.makedirs(folder, exist_ok=True)
    partial = os.path.join(folder, f".{os.path.basename(output)[:-len('.keras')]}.{os.getpid()}.partial.keras")
    try:
        net.save(partial)
        write_keras_metadata(partial, metadata)
        os.replace(partial, output)
    finally:
        with contextlib.suppress(OSError):
            os.remove(partial)


def _number(text):
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _learning_curves(csv_path, png_path):
    import csv

    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    if rows:
        _curves_figure(rows).savefig(png_path, dpi=100)


def _curves_figure(rows):
    """The learning curves of the CSV log's `rows` (dicts): loss and accuracy against the logged epoch
    numbers, ticks on whole epochs only."""
    from matplotlib.figure import Figure  # no pyplot: leaves the caller's backend (e.g. Jupyter's) alone
    from matplotlib.ticker import MaxNLocator

    epochs = [int(r["epoch"]) for r in rows]  # numbered from 1 (`EpochLog`), as the plot shows them
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
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs only
        ax.set_title(metric)
        ax.legend()
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# All of it
# ---------------------------------------------------------------------------------------------


def finetune(train_dir, output, *, arch=None, weights="imagenet", val_dir=None, val_split=0.2,
             train_from=None, unfreeze_after=None, epochs=10, batch_size=32, input_size=224, seed=0,
             optimizer="sgd", lr=None, weight_decay=None, recipe=None, augment="light", class_weights=True,
             precision="float32", patience=5, resume=False, overwrite=False, tensorboard=None,
             distribute=None, save_optimizer=False, workers=None, verbose=1, callbacks=None):
    """Fine-tune (or train from scratch) a VGG network on the class subfolders of `train_dir`.

    Every argument is checked (the images scanned, the weight file's layout read) before anything is
    written or removed.

    Args:
        train_dir: folder with one subfolder of images per class.
        output: the `.keras` file to write. An existing one is refused unless `overwrite` (or `resume`
            continues an interrupted run); it is replaced only once the new model is complete.
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
        augment: `none`; `light` (random crops and brightness, no flips; the default); `flip` (`light`
            plus horizontal flips); `paper` or `randaugment` (both flip). `AUGMENTS` says what each does;
            the saved model's metadata records it (`augment`, `augmentation`, `horizontal_flips`).
        class_weights: weight classes by inverse frequency (imbalanced folders).
        precision: `float32`, `bfloat16` or `float16` (mixed precision: float32 weights, low-precision
            compute), as for extraction. The Keras policy names `mixed_bfloat16` and `mixed_float16` of
            earlier releases still work, with a `DeprecationWarning`.
        patience: early stopping on validation loss after this many epochs without improvement.
            With validation data the saved model holds the weights of the epoch with the lowest validation
            loss, not the last epoch's; without, the last epoch's. The History (`kept`, `kept_epoch`,
            `kept_metrics`, `epochs_run`) and the model's metadata (the same keys) say which.
        resume: continue an interrupted run (`<output>.work/`) from its last finished epoch.
        overwrite: start again: replace an existing output, and discard an interrupted run's work folder
            (only once every other argument has been checked).
        tensorboard: folder for TensorBoard logs.
        distribute: `mirrored` for `tf.distribute.MirroredStrategy` over all local GPUs.
        save_optimizer: keep the optimizer's state in the saved model (to continue training it with
            Keras; about twice the size with SGD). Default: the network alone, not compiled. (The
            checkpoints in `<output>.work/`, which `resume` continues from, always keep it.)
        workers: threads that decode images (default: the CPUs, 2 to 8).
        callbacks: extra Keras callbacks.

    Returns:
        The Keras `History` of the (last stage of) training, with `failed` (unreadable image -> reason)
        and `files` (what was written: `model`, `curves`, `log`, and `tensorboard` when asked; paths).
        Beside `output`: `<stem>.log.csv` (one row per epoch, numbered from 1) and `<stem>.curves.png`.
        The work folder `<output>.work/` is removed once the model is saved.
    """
    if precision in _OLD_PRECISIONS:
        warnings.warn(f"precision={precision!r} is now precision={_OLD_PRECISIONS[precision]!r} (the name every "
                      "command uses); the old name will be refused in a later release",
                      DeprecationWarning, stacklevel=2)
        precision = _OLD_PRECISIONS[precision]
    job = prepare_finetune(train_dir, output, arch=arch, weights=weights, val_dir=val_dir, val_split=val_split,
                           train_from=train_from, unfreeze_after=unfreeze_after, epochs=epochs, batch_size=batch_size,
                           input_size=input_size, seed=seed, optimizer=optimizer, lr=lr, weight_decay=weight_decay,
                           recipe=recipe, augment=augment, class_weights=class_weights, precision=precision,
                           patience=patience, resume=resume, overwrite=overwrite, tensorboard=tensorboard,
                           distribute=distribute, save_optimizer=save_optimizer)
    return job.run(workers=workers, verbose=verbose, callbacks=callbacks)


@dataclass
class FinetuneJob:
    """A `finetune` call whose every argument has been checked (`prepare_finetune`); `run()` removes an
    earlier run's work folder (with `overwrite`), builds the network (the first import of Keras) and
    trains."""

    settings: FinetuneSettings
    plan: NetworkPlan
    output: str
    work: str
    data: tuple
    resume: bool = False
    overwrite: bool = False
    tensorboard: str | None = None
    save_optimizer: bool = False

    def run(self, *, workers=None, verbose=1, callbacks=None):
        # Everything is checked: only now is an earlier run discarded.
        if self.overwrite:
            _remove(self.work)
        return _run(self.settings, self.plan, self.output, self.work, self.data, resume=self.resume,
                    tensorboard=self.tensorboard, save_optimizer=self.save_optimizer, workers=workers,
                    verbose=verbose, callbacks=callbacks)


def prepare_finetune(train_dir, output, *, arch=None, weights="imagenet", val_dir=None, val_split=0.2,
                     train_from=None, unfreeze_after=None, epochs=10, batch_size=32, input_size=224, seed=0,
                     optimizer="sgd", lr=None, weight_decay=None, recipe=None, augment="light", class_weights=True,
                     precision="float32", patience=5, resume=False, overwrite=False, tensorboard=None,
                     distribute=None, save_optimizer=False) -> FinetuneJob:
    """Check every argument of `finetune` without Keras (settings, output and work folder, images and
    classes, the weights' layout and the first layer that trains; Keras's ImageNet file is downloaded
    now if it is not cached) and return the `FinetuneJob` that runs it. Says what it found (`Found 12
    images in 3 classes: ...`, then the training/validation split, see `describe_split`) and what it loads
    next on the `vggfeat` logger (INFO). Nothing is written or
    removed. Arguments as for `finetune`."""
    import logging

    settings = FinetuneSettings(
        arch=arch, weights=weights, seed=seed, input_size=input_size, val_split=val_split, train_from=train_from,
        unfreeze_after=unfreeze_after, epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr,
        weight_decay=weight_decay, recipe=recipe, augment=augment, class_weights=class_weights,
        precision=precision, patience=patience, distribute=distribute)
    output = os.fspath(output)
    work = check_output(output, resume=resume, overwrite=overwrite)
    plan = plan_network(settings)
    data = split_images(train_dir, val_dir, settings.val_split, settings.seed)
    for line in describe_split(data, val_dir=val_dir, val_split=settings.val_split):
        logging.getLogger("vggfeat").info(line)
    if settings.weights == "imagenet":
        from .weights import imagenet_weights_path

        imagenet_weights_path(plan.arch, True)  # downloaded now (no Keras) when it is not cached
    what = {"imagenet": "with imagenet weights", "random": f"with random weights (seed {settings.seed})"}.get(
        settings.weights, f"from {os.path.basename(settings.weights)}")
    logging.getLogger("vggfeat").info(f"loading {plan.arch} {what}...")
    return FinetuneJob(settings, plan, output, work, data, resume=resume, overwrite=overwrite, tensorboard=tensorboard,
                       save_optimizer=bool(save_optimizer))


def _run(settings, plan, output, work, data, *, resume, tensorboard, save_optimizer, workers, verbose, callbacks):
    import keras

    from .batches import ImageBatches

    files, labels, vfiles, vlabels, class_names = data
    keras.utils.set_random_seed(settings.seed)
    strategy = None
    if settings.distribute == "mirrored":
        import tensorflow as tf

        strategy = tf.distribute.MirroredStrategy()
    scope = strategy.scope if strategy else contextlib.nullcontext

    with scope():
        net, info = build_network(settings, plan, len(class_names))
        freeze(net, plan.arch, plan.first_trainable)
        compile_network(net, settings)

    geometry, aug_layers = augmentation(settings.augment, settings.input_size, settings.seed)
    train_data = ImageBatches(files, labels, geometry=geometry, layers=aug_layers, preprocessing=info.preprocessing,
                              batch_size=settings.batch_size, shuffle=True, seed=settings.seed,
                              decode_workers=workers)
    val_data = (ImageBatches(vfiles, vlabels, geometry=Geometry("crop", settings.input_size),
                             preprocessing=info.preprocessing, batch_size=settings.batch_size,
                             decode_workers=workers) if len(vfiles) else None)
    stem = output[: -len(".keras")]
    os.makedirs(work, exist_ok=True)
    try:
        history = train(net, train_data, val_data, settings, work=work, log_csv=stem + ".log.csv", resume=resume,
                        tensorboard=tensorboard, extra_callbacks=callbacks or (), verbose=verbose, scope=scope)
    finally:
        train_data.close()
        if val_data is not None:
            val_data.close()
    failed = dict(train_data.failed)
    if val_data is not None:
        failed.update(val_data.failed)
    history.failed = failed

    save_model(net, output, {
        "arch": plan.arch, "class_names": class_names, "input_size": settings.input_size,
        "preprocessing": info.preprocessing, "base_weights": info.name, "augment": settings.augment,
        "augmentation": AUGMENTS[settings.augment], "horizontal_flips": flips(aug_layers),
        "failed_images": len(failed),
        # which epoch's weights the file holds: the lowest validation loss, or the last without validation data
        "kept": history.kept, "kept_epoch": history.kept_epoch, "epochs_run": history.epochs_run,
        "kept_metrics": history.kept_metrics,
    }, work=work, include_optimizer=save_optimizer)
    shutil.rmtree(work, ignore_errors=True)
    _learning_curves(stem + ".log.csv", stem + ".curves.png")
    history.files = {"model": output, "log": stem + ".log.csv"}
    if os.path.exists(stem + ".curves.png"):
        history.files["curves"] = stem + ".curves.png"
    if tensorboard:
        history.files["tensorboard"] = os.fspath(tensorboard)
    history.optimizer_saved = bool(save_optimizer)
    return history


__all__ = ["AUGMENTS", "FinetuneJob", "FinetuneSettings", "ImageBatches", "NetworkPlan", "augmentation",
           "build_network", "check_output", "compile_network", "describe_split", "finetune", "freeze",
           "inverse_frequency_weights", "make_callbacks", "make_optimizer", "plan_network", "prepare_finetune",
           "save_model", "split_images", "train", "weights_layout"]
