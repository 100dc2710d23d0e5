"""Classifiers on stored features: cross-validation, reports, plots, and classifier files (skops).

A classifier file holds the fitted scikit-learn pipeline together with the extraction settings read from
the HDF5 file it was trained on, so that `predict_images` extracts new images in exactly the same way
(same architecture, weights file hash, layer, geometry, preprocessing) and refuses other weights.
Files are written with skops rather than pickle: loading never runs arbitrary code, and a type that
skops does not trust by default is accepted only if it is listed in `TRUSTED_TYPES`.
"""

from __future__ import annotations

import json
import os
import re
import zlib
from dataclasses import dataclass

import numpy as np

from .errors import InputError, OutputError, WeightsError
from .io.read import load_features

CLASSIFIERS = ("linear-svm", "logreg", "knn")

#: Types a classifier file may contain (checked before loading it).
TRUSTED_TYPES = [
    "sklearn.pipeline.Pipeline",
    "sklearn.preprocessing._data.Normalizer",
    "sklearn.svm._classes.LinearSVC",
    "sklearn.linear_model._logistic.LogisticRegression",
    "sklearn.neighbors._classification.KNeighborsClassifier",
    "sklearn.neighbors._kd_tree.KDTree",
    "sklearn.neighbors._ball_tree.BallTree",
    "sklearn.utils._bunch.Bunch",
    "builtins.dict",
    "builtins.list",
    "builtins.str",
    "builtins.int",
    "builtins.float",
    "builtins.bool",
    "builtins.tuple",
    "numpy.ndarray",
    "numpy.dtype",
    "numpy.float64",
    "numpy.int64",
]


#: The default C of each linear classifier, chosen for L2-normalised rows (benchmarks/classifier_defaults.py,
#: docs/benchmarks.md): on unit-norm fc7 rows the class differences are small, and C=1 regularises so
#: strongly that logistic regression (whose intercept is not penalised) predicted one class for everything.
DEFAULT_C = {"linear-svm": 10.0, "logreg": 100.0}


def make_classifier(kind="linear-svm", C=None, normalize=True, neighbors=5):
    """The paper's post-processing and classifier as one pipeline: L2 normalisation (`Normalizer`),
    then a linear SVM (default), logistic regression or k-NN. `C` None: `DEFAULT_C[kind]` (10 for
    linear-svm, 100 for logreg), suited to unit-norm rows.

    Examples:
        >>> import numpy as np
        >>> from vggfeat import make_classifier
        >>> clf = make_classifier()
        >>> [name for name, _ in clf.steps], clf.named_steps["classifier"].C
        (['normalize', 'classifier'], 10.0)
        >>> y = np.repeat([0, 1], 10)
        >>> X = np.random.default_rng(0).random((20, 8)) * 0.1
        >>> X[np.arange(20), y] += 1  # class 0 along the first column, class 1 along the second
        >>> clf.fit(X, y).score(X, y)
        1.0
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import Normalizer
    from sklearn.svm import LinearSVC

    if C is None and kind in DEFAULT_C:
        C = DEFAULT_C[kind]
    if kind == "linear-svm":
        clf = LinearSVC(C=C, max_iter=10000)
    elif kind == "logreg":
        clf = LogisticRegression(C=C, max_iter=2000)
    elif kind == "knn":
        clf = KNeighborsClassifier(n_neighbors=neighbors)
    else:
        raise InputError(f"unknown classifier {kind!r}; choose one of {', '.join(CLASSIFIERS)}")
    steps = [("normalize", Normalizer())] if normalize else []
    return Pipeline(steps + [("classifier", clf)])


@dataclass
class ClassifyResult:
    fold_scores: list
    y_true: np.ndarray
    y_pred: np.ndarray
    class_names: list
    report: str
    pipeline: object
    settings: dict
    #: rows of the file without a label (-1: images at the top of the folder), left out of training
    unlabelled: int = 0

    @property
    def mean(self):
        return float(np.mean(self.fold_scores))

    @property
    def std(self):
        return float(np.std(self.fold_scores))


def _checked_labels(data, path):
    """Check the labels a features file holds before they are counted or indexed (a file is input: it may
    have been edited): each is -1 (no label) or a class index below its number of class names (below
    2**31 when it has none). A file without class names (tar shards' `.cls` indices) gets the names of the
    indices present (`"3"`, `"7"`...), its labels renumbered 0, 1... in that order. Raises `InputError`."""
    from .shards import MAX_LABEL

    labels = np.asarray(data.labels, dtype=np.int64)
    names = list(data.class_names)
    bad = (labels < -1) | (labels > MAX_LABEL)
    if names:
        bad |= labels >= len(names)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        where = f"its {len(names)} class names" if names else "the class indices (0 to 2**31 - 1)"
        raise InputError(f"{path}: row {i} ({data.paths[i]}) has label {int(labels[i])}, outside {where}; "
                         f"{int(bad.sum())} such rows: the file was edited or damaged")
    if not names and (labels >= 0).any():
        present, dense = np.unique(labels[labels >= 0], return_inverse=True)
        labels = labels.copy()
        labels[labels >= 0] = dense
        names = [str(int(v)) for v in present]
    data.labels, data.class_names = labels, names
    return data


def _labelled(data, path):
    data = _checked_labels(data, path)
    mask = data.labels >= 0
    if not mask.any():
        raise InputError(f"{path} has no labels: put the images in one subfolder per class before extracting")
    X = data.features[mask].reshape(int(mask.sum()), -1).astype(np.float32)
    y = data.labels[mask]
    unlabelled = int(len(mask) - mask.sum())
    if unlabelled:  # said, not silently dropped (one line on stderr from the CLI)
        import logging

        logging.getLogger("vggfeat").warning(
            f"{unlabelled} of {len(mask)} rows of {path} are unlabelled (images at the top of the folder, not in a "
            "class subfolder) and were left out")
    present = np.unique(y)
    if len(present) < 2:
        raise InputError(f"{path} has one class only ({data.class_names[present[0]]}); a classifier needs two or more")
    return X, y


def check_same_features(train_path, test_path, layer=None) -> None:
    """Refuse (`InputError`, one line naming every differing setting) to score a classifier trained on
    `train_path` on `test_path` when the two files were not extracted with the same feature settings: the
    `ExtractorConfig` of each (architecture, weights by identity, seed, form, pooling, input size, resize,
    precision, scales... as `extract --resume` compares them) for `layer`, plus the preprocessing and the
    stored dtype. Reads the files' attributes only."""
    from .config import ExtractorConfig
    from .io.read import read_attrs

    a, b = read_attrs(train_path), read_attrs(test_path)
    mine = ExtractorConfig.from_attrs(a, source=str(train_path))
    theirs = ExtractorConfig.from_attrs(b, source=str(test_path))
    if layer is not None:
        mine, theirs = mine.replace(layers=(layer,)), theirs.replace(layers=(layer,))
    diffs = [(name, x, y) for name, x, y in mine.differing(theirs) if name != "layers"]
    for key in ("preprocessing", "dtype"):
        if a.get(key) != b.get(key):
            diffs.append((key, a.get(key), b.get(key)))
    if diffs:
        said = "; ".join(f"{name}={x!r} in {os.path.basename(os.fspath(train_path))}, {y!r} in "
                         f"{os.path.basename(os.fspath(test_path))}" for name, x, y in diffs)
        raise InputError(f"{test_path} was extracted with other feature settings than {train_path}, so a "
                         f"classifier trained on one cannot be scored on the other: {said}")


def classify(features_path, layer="fc7", *, classifier="linear-svm", C=None, normalize=True, neighbors=5, cv=5,
             test_size=None, seed=0, test=None):
    """Cross-validate (or hold out `test_size`) a classifier on stored features, then fit it on all
    the labelled rows (on the training part with `test_size`). With `test`, another features file made
    with the same feature settings (`check_same_features`, checked first): fit on all of `features_path`,
    score on the labelled rows of `test` (its classes matched to the training classes by name).

    Returns:
        `ClassifyResult` with per-fold accuracies, predictions, a classification report, the fitted
        pipeline and the extraction settings of the file.

    Examples:
        Extract a tiny folder of two classes (random weights at 32x32, so that it runs in seconds),
        cross-validate, save the classifier as `vggfeat classify -o` does, and predict with it:

        >>> import os, shutil, tempfile
        >>> import numpy as np
        >>> from PIL import Image
        >>> import vggfeat
        >>> from vggfeat.classifier import save_classifier
        >>> folder = tempfile.mkdtemp()
        >>> rng = np.random.default_rng(0)
        >>> for name, level in [("dark", 0), ("bright", 127)]:
        ...     os.makedirs(os.path.join(folder, "images", name))
        ...     for i in range(4):
        ...         pixels = (rng.integers(0, 128, (40, 48, 3)) + level).astype(np.uint8)
        ...         Image.fromarray(pixels).save(os.path.join(folder, "images", name, f"{i}.png"))
        >>> features = os.path.join(folder, "features.h5")
        >>> summary = vggfeat.extract([os.path.join(folder, "images")], features, arch="vgg11",
        ...                           weights="random", input_size=32, progress=False)
        >>> result = vggfeat.classify(features, cv=2)
        >>> len(result.fold_scores), result.class_names
        (2, ['bright', 'dark'])
        >>> save_classifier(result, os.path.join(folder, "clf.skops"))
        >>> rows = list(vggfeat.predict_images(os.path.join(folder, "clf.skops"), [os.path.join(folder, "images")],
        ...                                    progress=False))
        >>> len(rows), sorted(rows[0])
        (8, ['error', 'label', 'path', 'score', 'true_label'])
        >>> shutil.rmtree(folder)
    """
    from sklearn.base import clone
    from sklearn.metrics import accuracy_score, classification_report
    from sklearn.model_selection import StratifiedKFold, cross_val_predict, train_test_split

    if test is not None:
        if test_size is not None:
            raise InputError("--test and --test-size both choose the test rows; pass one of them")
        check_same_features(features_path, test, layer)
    data = load_features(features_path, layer)
    X, y = _labelled(data, features_path)
    pipe = make_classifier(classifier, C=C, normalize=normalize, neighbors=neighbors)
    counts = np.unique(y, return_counts=True)[1]
    class_names = list(data.class_names)
    if test is not None:
        other = _checked_labels(load_features(test, data.layer), test)
        mask = other.labels >= 0
        if not mask.any():
            raise InputError(f"{test} has no labels to score on: put its images in one subfolder per class")
        Xte = other.features[mask].reshape(int(mask.sum()), -1).astype(np.float32)
        if Xte.shape[1] != X.shape[1]:
            raise InputError(f"{test} holds {Xte.shape[1]:,} values per row of {data.layer}, {features_path} "
                             f"{X.shape[1]:,}")
        for name in other.class_names:  # a test class the training never saw: every prediction of it is wrong
            if name not in class_names:
                class_names.append(name)
        yte = np.array([class_names.index(other.class_names[i]) for i in other.labels[mask]], dtype=np.int64)
        fitted = _fit(clone(pipe), X, y, classifier)
        pred = fitted.predict(Xte)
        scores, y_true, y_pred = [accuracy_score(yte, pred)], yte, pred
    elif test_size is not None:
        if not 0 < test_size < 1:
            raise InputError(f"--test-size must be between 0 and 1. Received: {test_size}")
        try:
            Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=test_size, stratify=y, random_state=seed)
        except ValueError as exc:
            raise InputError(f"cannot split {len(y)} samples with --test-size {test_size}: {exc}") from None
        fitted = _fit(clone(pipe), Xtr, ytr, classifier)
        pred = fitted.predict(Xte)
        scores, y_true, y_pred = [accuracy_score(yte, pred)], yte, pred
    else:
        if cv < 2:
            raise InputError(f"--cv must be at least 2. Received: {cv}")
        if counts.min() < cv:
            small = [data.class_names[c] for c in np.unique(y) if (y == c).sum() < cv]
            raise InputError(f"--cv {cv} needs at least {cv} samples per class; too few in: {', '.join(small)}")
        folds = StratifiedKFold(n_splits=cv, shuffle=True, random_state=seed)
        try:
            y_pred = cross_val_predict(pipe, X, y, cv=folds)
        except ValueError as exc:  # e.g. knn with more neighbours than a fold has samples
            raise InputError(f"{classifier} cannot be fitted on these features: {_first_line(exc)}") from None
        scores = [accuracy_score(y[test], y_pred[test]) for _, test in folds.split(X, y)]
        y_true = y
        fitted = _fit(clone(pipe), X, y, classifier)
    labels = sorted(np.unique(np.concatenate([y, y_true])))
    report = classification_report(y_true, y_pred, labels=labels,
                                   target_names=[class_names[i] for i in labels], zero_division=0)
    settings = dict(data.attrs)
    settings["layer"] = data.layer
    return ClassifyResult(scores, y_true, y_pred, class_names, report, fitted, settings,
                          unlabelled=int((data.labels < 0).sum()))


def _fit(pipe, X, y, classifier):
    try:
        return pipe.fit(X, y)
    except ValueError as exc:
        raise InputError(f"{classifier} cannot be fitted on these features: {_first_line(exc)}") from None


def plot_confusion(result: ClassifyResult, path):
    """Write the confusion matrix of `result` as a PNG."""
    from matplotlib.figure import Figure  # no pyplot: leaves the caller's backend (e.g. Jupyter's) alone
    from sklearn.metrics import ConfusionMatrixDisplay

    labels = sorted(np.unique(result.y_true))
    names = [result.class_names[i] for i in labels]
    size = max(4.0, 0.6 * len(names) + 2)
    fig = Figure(figsize=(size, size))
    ax = fig.subplots()
    ConfusionMatrixDisplay.from_predictions(result.y_true, result.y_pred, labels=labels, display_labels=names,
                                            ax=ax, colorbar=False, xticks_rotation=45)
    ax.set_title(f"accuracy {result.mean:.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


# ---------------------------------------------------------------------------------------------
# Classifier files
# ---------------------------------------------------------------------------------------------

#: The largest classifier file member vggfeat decompresses without question, and the most it may expand.
_ZIP_FLOOR = 1 << 30
_ZIP_MAX_EXPANSION = 100


def check_output(path, *, overwrite=False, inputs=(), extensions=None) -> str:
    """Check, before any work, that a file (a classifier file, a CSV of predictions) can be written at
    `path`: not a folder, its folder exists and is writable, and an existing file only with `overwrite`.
    With `inputs` (of `predict`): not one of them, as `extract` checks its output (an input file or list
    given by name, or a name a folder scan reads, by `extensions`, inside an input folder; see
    `vggfeat.run.job.prepare_extract`).

    Raises:
        OutputError: one line naming the path and the way out.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise OutputError(f"the output is a folder: {path}")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise OutputError(f"the output folder does not exist: {parent}")
    if os.path.lexists(path) and not overwrite:
        raise OutputError(f"{path} exists; pass --overwrite to replace it")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"cannot write {path}: permission denied")
    if inputs:
        from .run.checks import check_output_not_input

        check_output_not_input(path, inputs, extensions=extensions)
    return path


def save_classifier(result: ClassifyResult, path, overwrite=False):
    """Save the fitted pipeline with the extraction settings and class names (skops format)."""
    import skops.io as sio

    from ._version import __version__

    path = check_output(path, overwrite=overwrite)
    from .config import ExtractorConfig

    # the features' config, through the one pair of functions every file uses, cut to the one layer
    layer = result.settings["layer"]
    config = ExtractorConfig.from_attrs(result.settings, source="the features file")
    settings = config.replace(layers=(layer,)).to_attrs()
    del settings["layers"]
    settings.pop("weights_path", None)  # a path of this machine; predict takes --weights for a file
    settings.update(layer=layer, preprocessing=result.settings.get("preprocessing", "caffe"))
    settings = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in settings.items()}
    sio.dump({"pipeline": result.pipeline, "settings": json.dumps(settings), "class_names": list(result.class_names),
              "vggfeat_version": __version__}, path)


def check_settings(settings, source="classifier file", weights=None):
    """Check the extraction settings stored in a classifier file, before anything is built from them,
    with the rules the command line applies to the same options (`ExtractorConfig`: architecture, layer,
    form, input size within MIN_INPUT_SIZE..MAX_INPUT_SIZE, resize, pooling, precision, scales...), plus
    what a classifier file adds (its one layer, the preprocessing, the weight file's SHA-256).

    Returns the `ExtractorConfig` the settings describe (with `weights`, when given, as the weights).
    Raises `InputError` (or `LayerError`, `ArchitectureError`) naming `source` and the setting."""
    from .config import ExtractorConfig
    from .preprocessing import MODES

    if not isinstance(settings, dict):
        raise InputError(f"{source}: the stored settings are not a JSON object")
    for key in ("arch", "weights", "layer"):
        if key not in settings:
            raise InputError(f"{source}: the stored settings lack {key}")
    if not isinstance(settings["layer"], str):
        raise InputError(f"{source}: stored setting layer={settings['layer']!r} is not a layer name")
    stored = settings["weights"]
    if not isinstance(stored, str) or not stored or len(stored) > 4096:
        raise InputError(f"{source}: stored setting weights={stored!r} is not imagenet, random or a file name")
    sha = settings.get("weights_sha256")
    if stored not in ("imagenet", "random") and not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
        raise InputError(f"{source}: stored setting weights_sha256={sha!r} is not the SHA-256 of a weight file")
    if settings.get("preprocessing", "caffe") not in MODES:
        raise InputError(f"{source}: stored setting preprocessing={settings['preprocessing']!r} is not one of "
                         f"{', '.join(MODES)}")
    if "layers" in settings:
        raise InputError(f"{source}: the stored settings name layers besides the classifier's layer")
    return ExtractorConfig.from_attrs(settings, weights=weights, source=source)


def _check_archive(path):
    """A classifier file is a zip archive: refuse it early when it is not one, when a member would
    decompress to far more than the file holds, or when an array's header declares more values than
    the member holds (NumPy would allocate the declared size before reading)."""
    import math
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if info.file_size > _ZIP_FLOOR and info.file_size > _ZIP_MAX_EXPANSION * max(1, info.compress_size):
                    raise InputError(f"{path}: member {info.filename} would expand {info.compress_size:,} bytes to "
                                     f"{info.file_size:,}")
                if info.filename.endswith(".npy"):
                    with z.open(info) as fh:
                        version = np.lib.format.read_magic(fh)
                        read = {(1, 0): np.lib.format.read_array_header_1_0,
                                (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                        if read is None:
                            raise ValueError(f"unknown .npy version {version}")
                        shape, _, dtype = read(fh)
                    declared = math.prod(shape) * dtype.itemsize
                    if declared > info.file_size:
                        raise InputError(f"{path}: member {info.filename} declares an array of shape {shape} "
                                         f"({declared:,} bytes) but holds {info.file_size:,} bytes")
    except InputError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError):
        raise InputError(f"{path} is not a skops classifier file (not a zip archive)") from None
    except (ValueError, TypeError, zlib.error) as exc:
        raise InputError(f"{path} is damaged: {_first_line(exc)}") from None


def load_classifier(path):
    """Load a classifier file: types skops does not trust by default must be in `TRUSTED_TYPES`, and
    the stored settings (`check_settings`), class names and pipeline are checked before use.

    Returns:
        `(pipeline, settings, class_names)`.
    """
    from .prediction import KINDS, classifier_kind

    path = os.fspath(path)
    if classifier_kind(path) != "skops":  # one line saying what each kind of file is, not skops internals
        raise InputError(f"{path} is a Keras model (of `vggfeat finetune`), not a skops classifier: "
                         f"load it with vggfeat.classifier.load_predictor; --classifier takes {KINDS}")
    _check_archive(path)
    import skops.io as sio  # (scikit-learn with it: a second's import, after the cheap checks)

    try:
        untrusted = sio.get_untrusted_types(file=path)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{path} is not a skops classifier file: {_first_line(exc)}") from None
    refused = [t for t in untrusted if t not in TRUSTED_TYPES]
    if refused:
        raise InputError(f"{path} contains types vggfeat does not trust: {', '.join(refused)}")
    try:
        obj = sio.load(path, trusted=list(untrusted))
    except Exception as exc:  # noqa: BLE001 - a damaged file can make skops raise anything
        raise InputError(f"{path} is damaged: {_first_line(exc)}") from None
    if not isinstance(obj, dict) or not {"pipeline", "settings", "class_names"} <= set(obj):
        raise InputError(f"{path} was not written by `vggfeat classify -o`")
    try:
        settings = json.loads(obj["settings"])
    except (TypeError, ValueError, RecursionError):
        raise InputError(f"{path}: the stored settings are not JSON") from None
    check_settings(settings, path)
    names = obj["class_names"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(names) < 2:
        raise InputError(f"{path}: the stored class names are not a list of two or more names")
    pipeline = obj["pipeline"]
    classes = getattr(pipeline, "classes_", None) if hasattr(pipeline, "predict") else None
    n_features = getattr(pipeline, "n_features_in_", None)
    if classes is None or not isinstance(n_features, (int, np.integer)) or n_features < 1:
        raise InputError(f"{path}: the stored pipeline is not a fitted classifier")
    classes = np.asarray(classes)
    if classes.ndim != 1 or classes.dtype.kind not in "iu" or len(classes) < 2 or \
            classes.min() < 0 or classes.max() >= len(names):
        raise InputError(f"{path}: the classifier's classes do not match its {len(names)} class names")
    return pipeline, settings, list(names)


def load_predictor(classifier=None, *, weights=None, arch=None, top_k=None):
    """What `predict` classifies with, checked without Keras:

    - a `.skops` file of `vggfeat classify -o`: `load_classifier`'s `(pipeline, settings, class_names)`;
    - a `.keras` model of `vggfeat finetune -o`: a `ModelClassifier` predicting with its fc8;
    - no classifier: ImageNet's top-k with ImageNet `weights` (`load_imagenet`), or the fc8 of a fine-tuned
      model given as `weights`.

    `top_k` None: `vggfeat.prediction.DEFAULT_TOP_K` of what the fc8 predicts, whichever argument names the
    network: 5 of ImageNet's classes, 1 of a fine-tuned model's own.

    Anything else is refused in one line saying what each kind of file is and which command makes it."""
    from .prediction import classifier_kind, load_finetuned, load_imagenet

    if classifier is None:
        return load_imagenet(weights, arch, top_k)
    kind = classifier_kind(classifier)
    if kind == "keras":
        if weights is not None:
            raise InputError(f"{os.path.basename(os.fspath(classifier))} is a whole model with its own weights; "
                             "drop --weights")
        return load_finetuned(classifier, top_k)
    if top_k not in (None, 1):
        raise InputError("--top-k needs a classifier with one score per class: a .keras model of "
                         "`vggfeat finetune`, or ImageNet weights without --classifier")
    return load_classifier(classifier)


def _first_line(exc):
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def extractor_for(settings, weights=None, batch_size=32):
    """The extractor (a `MultiScaleExtractor` for multi-scale features) with exactly the settings of a
    classifier file, checked first with `config_for`.
    """
    from .extractor import build_extractor

    config = config_for(settings, weights)
    fx = build_extractor(config, batch_size=batch_size)
    preprocessing = getattr(fx, "preprocessing", None) or fx.extractor.preprocessing
    if preprocessing != settings.get("preprocessing", preprocessing):
        raise WeightsError(f"preprocessing {preprocessing} differs from the classifier's "
                           f"{settings['preprocessing']}")
    return fx


def config_for(settings, weights=None):
    """The `ExtractorConfig` of a classifier file's settings, checked without Keras (`check_settings`,
    then the weights: `weights` is needed when the classifier was trained on features from a weight
    file, whose SHA-256 must match; `imagenet` and `random` (with the stored seed) are recreated from the
    settings)."""
    from .weights import file_sha256

    check_settings(settings, "the classifier's settings")
    stored = settings.get("weights")
    if stored in ("imagenet", "random"):
        if weights not in (None, stored):
            raise WeightsError(f"the classifier was trained on features from {stored} weights, not {weights}")
        weights = stored
    else:
        if weights is None:
            raise WeightsError(f"the classifier was trained on features from the weight file {stored}; "
                               "pass it with --weights PATH")
        if weights in ("imagenet", "random") or not os.path.isfile(weights):
            raise WeightsError(f"the classifier was trained on features from the weight file {stored}, not {weights}")
        sha = file_sha256(weights)
        if sha != settings.get("weights_sha256"):
            raise WeightsError(f"the weights {os.path.basename(weights)} differ from those the classifier was "
                               f"trained with ({stored}, sha256 {settings.get('weights_sha256', '?')[:12]}...)")
    return check_settings(settings, "the classifier's settings", weights=os.fspath(weights))


def check_predict(classifier, inputs, *, weights=None, extensions=None, exclude=(), class_names=None,
                  label_field=None, max_member_size=None, retries=None):
    """Every check of `predict_images` that needs no Keras: the classifier (a path to a `.skops` or a
    fine-tuned `.keras` file, or what `load_classifier` / `load_predictor` returned), its
    settings and the weights (`config_for`; a `ModelClassifier` brings its own), and the inputs, read as
    `extract` reads them (`vggfeat.shards.scan_inputs`: folders, files and lists; tar shards, brace ranges
    and `s3://` prefixes, with `class_names` and `label_field` for their labels). Says what it found and
    what it loads next on the `vggfeat` logger (INFO); `max_member_size` and `retries` as for `extract`. Returns the `ImageList` (or, for shards and URLs,
    the `ShardInputs`) to pass to `predict_images`."""
    import logging

    from .extractor import check_extractor
    from .prediction import ModelClassifier, check_model_predict
    from .shards import scan_inputs

    loaded = _loaded(classifier)
    if isinstance(loaded, ModelClassifier):
        check = check_model_predict(loaded, fetch=False)
    else:
        check = check_extractor(config_for(loaded[1], weights), fetch=False)  # the weight file, the layer
    images = scan_inputs(inputs, extensions=extensions, exclude=exclude, class_names=class_names,
                         label_field=label_field, max_member_size=max_member_size, retries=retries)
    log = logging.getLogger("vggfeat")
    log.info(images.found())
    log.info(check.fetch().loading())  # Keras's ImageNet file, downloaded now when it is not cached
    return images


def _redacted(rows):
    """The rows with no credential in a path or a failure reason (`vggfeat.redact`)."""
    from .redact import redact, redact_urls

    for path, label, row in rows:
        if row.get("error"):
            row["error"] = redact(row["error"])
        yield redact_urls(path), label, row


def _loaded(classifier):
    from .prediction import ModelClassifier

    if isinstance(classifier, (tuple, ModelClassifier)):
        return classifier
    return load_predictor(classifier)


def predict_images(classifier_path, inputs, *, weights=None, batch_size=32, workers=None, progress=None,
                   extensions=None, exclude=(), class_names=None, label_field=None, max_member_size=None, retries=None):
    """Classify images with a classifier: a `.skops` file of `vggfeat classify -o`, a `.keras` model of
    `vggfeat finetune -o` (its fc8 predicts), or what `load_classifier` / `load_predictor`
    returned (a `ModelClassifier` also stands for ImageNet top-k).
    `inputs`: what `extract` reads (`vggfeat.shards.scan_inputs`, with `extensions` and `exclude`): folders,
    image files, lists of images; WebDataset tar shards (`shards/00000.tar`, `shards/{00000..00009}.tar`)
    and URLs (`s3://bucket/prefix/`), streamed shard by shard, rows `SHARD/KEY.ext`, labels from `.cls` or
    the `.json` field `label_field`, named by `class_names`; or the `ImageList` / `ShardInputs`
    `check_predict` returned. Yields one dict per image, in input order:
    `path`, `true_label` (only when the inputs have classes: the image's class subfolder or list label, empty
    where it has none; for shards always: the sample's class name, or its label index without
    `class_names`), `label`, `score`, further columns by classifier kind, and `error` (the reason, for
    images, members or shards that cannot be read; their other values are empty).

    `score` is, for a skops classifier with `predict_proba` (logreg; knn: the share of the k neighbours that
    vote for `label`), the probability of `label`, followed by `p_<class>` for every class; for the linear
    SVM (no probabilities), its decision value for `label` (the largest one-vs-rest margin; the margin's
    absolute value with two classes): larger is more confident, but it is not a probability. For a fine-tuned
    model, fc8's softmax probability (and `p_<class>`); for ImageNet, `label_2`, `score_2`... follow up to
    `top_k`. The inputs and weights are checked before the network is built."""
    from .images import ImageList
    from .prediction import ModelClassifier, predict_with_model
    from .shards import ShardInputs, scan_inputs

    loaded = _loaded(classifier_path)
    if isinstance(inputs, (ImageList, ShardInputs)):
        images = inputs
    else:
        images = scan_inputs(inputs, extensions=extensions, exclude=exclude, class_names=class_names,
                             label_field=label_field, max_member_size=max_member_size, retries=retries)
    if isinstance(loaded, ModelClassifier):
        rows = predict_with_model(loaded, images, batch_size=batch_size, workers=workers, progress=progress)
    else:
        rows = _predict_skops(loaded, images, weights, batch_size, workers, progress)
    rows = _redacted(rows)
    if isinstance(images, ShardInputs):  # labels come with the rows, as the shards are read
        names = images.class_names
        for path, label, row in rows:
            truth = "" if label < 0 else (names[label] if names else str(label))
            yield {"path": path, "true_label": truth, **row}
        return
    truth = dict(zip(images.paths, images.labels)) if images.class_names else None
    for path, _, row in rows:
        if truth is None:
            yield {"path": path, **row}
        else:
            label = truth.get(path, -1)
            yield {"path": path, "true_label": images.class_names[label] if label >= 0 else "", **row}


def _predict_skops(loaded, images, weights, batch_size, workers, progress):
    """`(path, label, row)` of a skops classifier, in input order (`label`: the input's class index, -1 for
    a failed image)."""
    from .stream import iter_features

    pipeline, settings, class_names = loaded
    fx = extractor_for(settings, weights, batch_size)
    layer = settings["layer"]
    if fx.feature_dims[layer] != pipeline.n_features_in_:
        raise InputError(f"the classifier takes {pipeline.n_features_in_:,} features, but {layer} of "
                         f"{settings['arch']} with the stored settings gives {fx.feature_dims[layer]:,}")
    has_proba = hasattr(pipeline, "predict_proba")
    proba_columns = [f"p_{class_names[int(c)]}" for c in pipeline.classes_] if has_proba else []
    for batch in iter_features(images, fx, workers=workers, progress=progress):
        rows = []
        if batch.paths:
            X = batch.features[layer].reshape(len(batch.paths), -1)
            pred = pipeline.predict(X)
            if has_proba:
                proba = pipeline.predict_proba(X)
                score = proba.max(axis=1)
            else:
                decision = pipeline.decision_function(X)
                score = decision.max(axis=1) if decision.ndim == 2 else np.abs(decision)
            for i, p in enumerate(batch.paths):
                row = {"label": class_names[int(pred[i])], "score": float(score[i])}
                for j, column in enumerate(proba_columns):
                    row[column] = float(proba[i, j])
                row["error"] = ""
                rows.append(row)
        # keep input order: failures sit where their image was
        for p, i, reason in batch.in_input_order():
            if i is None:
                yield p, -1, {"label": "", "score": "", **dict.fromkeys(proba_columns, ""), "error": reason}
            else:
                yield p, batch.labels[i], rows[i]
