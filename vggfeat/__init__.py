"""vggfeat: VGG-16/19 (every configuration of Simonyan & Zisserman, 2015) for transfer learning.

The public API is imported lazily, so `import vggfeat` (and the `vggfeat --help` CLI) does not pull
in TensorFlow; the first use of a function that needs Keras does.

Examples:
    >>> import vggfeat
    >>> vggfeat.extract(["images/"], "features.h5", layers=["fc7"])   # doctest: +SKIP
    >>> data = vggfeat.load_features("features.h5", layer="fc7")       # doctest: +SKIP
"""

import sys as _sys
import types as _types

from ._version import __version__

# public name -> module that defines it
_API = {
    "ARCHS": "specs",
    "get_arch": "specs",
    "layer_table": "specs",
    "count_params": "specs",
    "resolve_layer": "specs",
    "VggfeatError": "errors",
    "ArchitectureError": "errors",
    "LayerError": "errors",
    "WeightsError": "errors",
    "InputError": "errors",
    "OutputError": "errors",
    "WriteFailed": "errors",
    "preprocess": "preprocessing",
    "build_vgg": "models",
    "copy_weights": "models",
    "feature_model": "models",
    "load_network": "weights",
    "LocalResponseNormalization": "layers",
    "Geometry": "images",
    "load_image": "images",
    "scan_images": "images",
    "FeatureExtractor": "extractor",
    "extract": "extract",
    "iter_features": "extract",
    "ExtractSummary": "extract",
    "ExtractFailed": "extract",
    "ExtractInterrupted": "extract",
    "load_features": "store",
    "read_attrs": "store",
    "FeatureWriter": "store",
    "verify": "store",
    "repair": "store",
    "VerifyReport": "store",
    "VGGFeaturizer": "sklearn",
    "classify": "classify",
    "make_classifier": "classify",
    "load_classifier": "classify",
    "predict_images": "classify",
    "finetune": "finetune",
    "build_extractor": "extract",
    "MultiScaleExtractor": "multiscale",
}

__all__ = sorted(_API) + ["__version__"]


class _Package(_types.ModuleType):
    """Keeps `vggfeat.extract` (and `classify`, `finetune`) the function when the module of the same
    name is imported (`from vggfeat.extract import ...`), which would otherwise rebind it."""

    def __setattr__(self, name, value):
        if (isinstance(value, _types.ModuleType) and _API.get(name) == name
                and value.__name__ == f"{__name__}.{name}"):
            value = getattr(value, name)
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package


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
