"""Predictions from a network's own fc8: a model written by `vggfeat finetune` (its fc8 is the classifier,
its class names stored with it), or ImageNet weights (ImageNet's 1000 classes, named by Keras's class index).

`classifier_kind` tells the two kinds of `--classifier` file apart (a skops classifier of `vggfeat classify
-o`, a `.keras` model of `vggfeat finetune -o`) and refuses anything else in one line saying what each kind is;
`vggfeat.classifier.load_predictor` loads either, or ImageNet's top-k. Everything is checked without Keras;
the class index is fetched like Keras's ImageNet weights (urllib, into Keras's cache, with Keras's MD5), so an
offline machine hears about a missing file before TensorFlow loads."""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field

import numpy as np

from .errors import InputError, WeightsError

#: Keras's ImageNet class index (`keras.applications.imagenet_utils.decode_predictions` reads the same file).
IMAGENET_CLASS_INDEX = ("imagenet_class_index.json",
                        "https://storage.googleapis.com/download.tensorflow.org/data/imagenet_class_index.json",
                        "c2c37ea517e94d9795004a39431a14cb")
IMAGENET_CLASSES = 1000

#: `--top-k`'s default, by what the network's fc8 predicts, whichever option names the network (`--classifier`
#: or `--weights`): ImageNet's 1000 classes, their top 5 (the ImageNet benchmark's); a fine-tuned model's own
#: classes (its `p_<class>` columns give every probability anyway), its top 1.
DEFAULT_TOP_K = {"imagenet": 5, "finetuned": 1}

#: What each kind of `--classifier` file is, for the error about a file that is neither.
KINDS = ("a classifier file of `vggfeat classify -o` (.skops: a scikit-learn pipeline trained on features of "
         "`vggfeat extract`) or a model of `vggfeat finetune -o` (.keras: a network whose fc8 predicts your classes)")


@dataclass
class ModelClassifier:
    """A network that classifies with its own fc8 (softmax): `kind` is `finetuned` (a `.keras` of `vggfeat
    finetune`, `class_names` from the file) or `imagenet` (ImageNet weights, names from Keras's class index).
    `top_k` names per image are predicted (the first is `label`)."""

    kind: str
    weights: str
    arch: str | None
    class_names: list
    top_k: int = 1
    source: str = ""
    settings: dict = field(default_factory=dict)

    def config(self):
        from .config import ExtractorConfig

        return ExtractorConfig(layers=("fc8",), arch=self.arch, weights=self.weights)


def classifier_kind(path) -> str:
    """`skops` or `keras`, read from the archive's members (not the file name); `InputError` saying what
    each kind of file is (and which command makes it) for anything else."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"classifier file not found: {path}")
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError):
        raise InputError(f"{path} is not a classifier vggfeat can use (not a zip archive): --classifier takes "
                         f"{KINDS}") from None
    if {"config.json", "model.weights.h5"} <= names:
        return "keras"
    if "schema.json" in names:
        return "skops"
    raise InputError(f"{path} is not a classifier vggfeat can use: --classifier takes {KINDS}")


def load_finetuned(path, top_k=None) -> ModelClassifier:
    """A `.keras` model of `vggfeat finetune` as a classifier, checked without Keras (`inspect_keras_file`:
    every tensor's shape; fc8 present; the class names finetune stored, one per fc8 output). `top_k`: None
    for `DEFAULT_TOP_K["finetuned"]`."""
    from .weights import inspect_keras_file

    path = os.fspath(path)
    base = os.path.basename(path)
    held = inspect_keras_file(path)
    names = list(held.metadata.get("class_names", []))
    if held.fc_form is None:
        raise InputError(f"{base} is a Keras model without fc6-fc8, so it cannot classify: --classifier takes {KINDS}")
    if not names:
        raise InputError(f"{base} is a Keras model without the class names `vggfeat finetune` stores with it; use "
                         f"it for features (`vggfeat extract --weights {base}`), or --classifier takes {KINDS}")
    return ModelClassifier("finetuned", path, held.arch, names, _top_k(top_k, len(names), "finetuned"),
                           source=base, settings={k: held.metadata[k] for k in ("input_size", "preprocessing", "base_weights")
                                     if k in held.metadata})


def imagenet_class_index_path() -> str:
    """Path of Keras's `imagenet_class_index.json` in Keras's cache (`$KERAS_HOME/models`), downloaded once
    (urllib, MD5 checked, renamed into place when complete) as `imagenet_weights_path` fetches the weights.

    Raises:
        WeightsError: not cached and cannot be downloaded; the message says where to put the file.
    """
    from .weights import keras_cache_dir, keras_cache_file

    fname, url, md5 = IMAGENET_CLASS_INDEX
    try:
        return keras_cache_file(fname, url, md5)
    except Exception as exc:  # noqa: BLE001 - any failure to fetch means the same thing to the user
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WeightsError(
            f"cannot get ImageNet's class names: {fname} is not in {keras_cache_dir()} and downloading it failed "
            f"({reason}); fetch {url} on a machine with network and put it in {keras_cache_dir()}") from None


def imagenet_class_names(path=None) -> list:
    """ImageNet's 1000 class names in fc8's order (`tench`, `goldfish`...), from Keras's class index."""
    path = path or imagenet_class_index_path()
    try:
        with open(path, encoding="utf-8") as f:
            index = json.load(f)
        names = [index[str(i)][1] for i in range(IMAGENET_CLASSES)]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise WeightsError(f"{path} is not Keras's ImageNet class index: {exc}") from None
    if not all(isinstance(n, str) for n in names):
        raise WeightsError(f"{path} is not Keras's ImageNet class index: its names are not strings")
    return names


def load_imagenet(weights, arch=None, top_k=None) -> ModelClassifier:
    """ImageNet top-k from weights with ImageNet's 1000-class fc8: `imagenet` (Keras's files), or a weight
    file of that layout (`keras.applications`' files, a `.weights.h5`); names from Keras's class index. A
    model of `vggfeat finetune` given as `weights` is that model's classifier (`load_finetuned`). `top_k`:
    None for `DEFAULT_TOP_K` of the kind found (5 for ImageNet, 1 for a fine-tuned model)."""
    from .weights import describe_weights

    if weights is None or str(weights) == "random":
        raise InputError("predict without --classifier gives ImageNet's classes, so it needs ImageNet weights: "
                         "--weights imagenet (or a file with ImageNet's 1000-class fc8); or pass --classifier, "
                         f"{KINDS}")
    weights = os.fspath(weights)
    if weights != "imagenet":
        described = describe_weights(weights, arch)
        if described.get("class_names"):  # a fine-tuned model passed as --weights: its own classes
            return load_finetuned(weights, top_k)
        if not described.get("has_top") or described.get("classes") != IMAGENET_CLASSES:
            what = "no fc8" if not described.get("has_top") else f"an fc8 of {described.get('classes')} classes"
            raise InputError(f"{os.path.basename(weights)} has {what}, not ImageNet's {IMAGENET_CLASSES}: predict "
                             f"without --classifier needs ImageNet weights; or pass --classifier, {KINDS}")
        arch = described["arch"]
    names = imagenet_class_names()
    return ModelClassifier("imagenet", weights, arch, names, _top_k(top_k, IMAGENET_CLASSES, "imagenet"),
                           source=f"ImageNet ({weights})")


def _top_k(k, n, kind):
    if k is None:
        k = DEFAULT_TOP_K[kind]
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"--top-k must be a whole number of at least 1. Received: {k!r}")
    return int(min(k, n))


def check_model_predict(model: ModelClassifier, fetch=True):
    """The checks `check_predict` makes of a `ModelClassifier` without Keras (weights, fc8); returns the
    `ExtractorCheck` (whose `loading()` says what is built next)."""
    from .extractor import check_extractor

    check = check_extractor(model.config(), fetch=False)
    return check.fetch() if fetch else check


def predict_with_model(model: ModelClassifier, images, *, batch_size=32, workers=None, progress=None):
    """Yield `(path, label, row)` in input order for an `ImageList` or `ShardInputs` (`label`: the input's
    class index, -1 for a failed image); `row`: `label` and `score` (fc8's softmax
    probability of the top class), then `label_2`, `score_2`... up to `top_k` (ImageNet) or the probability
    of every class (`p_<class>`, a fine-tuned model); failed images: empty values and `error`."""
    from .extractor import build_extractor
    from .stream import iter_features

    fx = build_extractor(model.config(), batch_size=batch_size)
    if fx.feature_dims["fc8"] != len(model.class_names):
        raise InputError(f"{model.source}: fc8 has {fx.feature_dims['fc8']:,} outputs but "
                         f"{len(model.class_names):,} class names")
    columns = model_columns(model)
    for batch in iter_features(images, fx, workers=workers, progress=progress):
        rows = []
        if batch.paths:
            proba = batch.features["fc8"].reshape(len(batch.paths), -1)
            order = np.argsort(-proba, axis=1, kind="stable")[:, : model.top_k]
            for i, p in enumerate(batch.paths):
                row = {}
                for rank, c in enumerate(order[i], 1):
                    suffix = "" if rank == 1 else f"_{rank}"
                    row[f"label{suffix}"] = model.class_names[int(c)]
                    row[f"score{suffix}"] = float(proba[i, c])
                if model.kind == "finetuned":
                    for j, name in enumerate(model.class_names):
                        row[f"p_{name}"] = float(proba[i, j])
                row["error"] = ""
                rows.append(row)
        for p, i, reason in batch.in_input_order():
            if i is None:
                yield p, -1, {**dict.fromkeys(columns, ""), "error": reason}
            else:
                yield p, batch.labels[i], rows[i]


def model_columns(model: ModelClassifier) -> list:
    """The CSV columns of a `ModelClassifier`'s rows between `path` and `error`."""
    columns = ["label", "score"]
    for rank in range(2, model.top_k + 1):
        columns += [f"label_{rank}", f"score_{rank}"]
    if model.kind == "finetuned":
        columns += [f"p_{name}" for name in model.class_names]
    return columns


class PredictionTally:
    """Counts the rows `predict_images` yields: `rows`, `failed`, and on inputs with classes the images whose
    `true_label` is known (`labelled`, not counting failed ones) and how many were predicted right.

    Examples:
        >>> tally = PredictionTally(class_names)          # doctest: +SKIP
        >>> for row in predict_images(clf, ["photos/"]):  # doctest: +SKIP
        ...     tally.add(row)
        >>> tally.accuracy_line()                         # doctest: +SKIP
        'accuracy 0.9167 (11 of 12 labelled images)'
    """

    def __init__(self, class_names=()):
        self.class_names = set(class_names)
        self.rows = self.failed = self.labelled = self.correct = 0
        self.true_names = set()

    def add(self, row):
        self.rows += 1
        if row.get("error"):
            self.failed += 1
            return
        truth = row.get("true_label")
        if truth:
            self.labelled += 1
            self.true_names.add(truth)
            self.correct += row.get("label") == truth

    @property
    def accuracy(self) -> float | None:
        """The share of labelled images predicted right; None without labelled images, or when none of their
        classes is one of the classifier's (ImageNet's names for a folder of your own classes, say)."""
        if not self.labelled or (self.class_names and not self.true_names & self.class_names):
            return None
        return self.correct / self.labelled

    def accuracy_line(self) -> str | None:
        """`accuracy 0.9167 (11 of 12 labelled images)`, or why there is none; None for inputs without labels."""
        if not self.labelled:
            return None
        if self.accuracy is None:
            return (f"no accuracy: the inputs' classes ({', '.join(sorted(self.true_names)[:5])}"
                    f"{', ...' if len(self.true_names) > 5 else ''}) are not the classifier's")
        return f"accuracy {self.accuracy:.4f} ({self.correct} of {self.labelled} labelled images)"


def class_names_of(loaded) -> list:
    """The class names of what `load_predictor` returned."""
    return list(loaded.class_names) if isinstance(loaded, ModelClassifier) else list(loaded[2])


__all__ = ["DEFAULT_TOP_K", "IMAGENET_CLASS_INDEX", "KINDS", "ModelClassifier", "PredictionTally", "check_model_predict",
           "class_names_of", "classifier_kind", "imagenet_class_index_path", "imagenet_class_names", "load_finetuned",
           "load_imagenet", "model_columns", "predict_with_model"]
