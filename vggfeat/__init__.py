"""vggfeat: VGG-16/19 (every configuration of Simonyan & Zisserman, 2015) for transfer learning.

The public API is imported lazily, so `import vggfeat` (and the `vggfeat --help` CLI) does not pull
in TensorFlow; the first use of a function that needs Keras does.

Examples:
    >>> import os, tempfile
    >>> import numpy as np
    >>> from PIL import Image
    >>> import vggfeat
    >>> images = tempfile.mkdtemp()  # a folder of 4 images in 2 classes (subfolders)
    >>> for i, name in enumerate(["cat", "cat", "dog", "dog"]):
    ...     os.makedirs(os.path.join(images, name), exist_ok=True)
    ...     pixels = np.random.default_rng(i).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    ...     Image.fromarray(pixels).save(os.path.join(images, name, f"{i}.png"))
    >>> out = os.path.join(tempfile.mkdtemp(), "features.h5")
    >>> summary = vggfeat.extract([images], out, ["fc7"], arch="vgg11", weights="random", input_size=32,
    ...                           progress=False)  # ImageNet weights: weights="imagenet" (the default)
    >>> data = vggfeat.load_features(out, layer="fc7")
    >>> data.features.shape, data.class_names
    ((4, 4096), ['cat', 'dog'])
"""

from ._version import __version__
from .quiet import install as _quiet_keras_import
from .redact import install_log_filter as _install_log_filter

_quiet_keras_import()  # vggfeat's first import of Keras runs without TensorFlow's C++ start-up lines
_install_log_filter()  # no log line of vggfeat's names a credential (vggfeat.redact), whatever the handler

# public name -> module that defines it. What a user calls; everything else stays in its module
# (vggfeat.errors, vggfeat.images, vggfeat.models, vggfeat.io...).
_API = {
    # the settings that decide a feature, and what computes features
    "ExtractorConfig": "config",
    "FeatureExtractor": "extractor",
    "build_extractor": "extractor",
    "MultiScaleExtractor": "multiscale",
    # the main job, and reading what it wrote
    "extract": "run.job",
    "iter_features": "stream",
    "ExtractSummary": "run.job",
    "RunOptions": "run.options",
    "load_features": "io.read",
    "open_features": "io.read",
    "merge_parts": "io.merge",
    "read_attrs": "io.read",
    "verify": "io.read",
    # the classifier `vggfeat classify` fits: L2 rows then a linear SVM (C=10), logistic regression or k-NN
    "make_classifier": "classifier",
    "repair": "io.recover",
    # images
    "scan_images": "images",
    "load_image": "images",
    "prepare_array": "images",
    # scikit-learn
    "VGGFeaturizer": "sklearn",
    "classify": "classifier",
    "load_classifier": "classifier",
    "predict_images": "classifier",
    # networks
    "finetune": "finetuning",
    "build_vgg": "models",
    "load_network": "weights",
    "save_weights": "weights",
    "describe_weights": "weights",
    "layer_table": "specs",
    # the base class of every one-line error (the others are in vggfeat.errors)
    "VggfeatError": "errors",
}

__all__ = sorted(_API) + ["__version__"]


def __getattr__(name):
    if name in _API:
        import importlib

        module = importlib.import_module(f".{_API[name]}", __name__)
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vggfeat' has no attribute {name!r}")


def __dir__():
    return __all__
