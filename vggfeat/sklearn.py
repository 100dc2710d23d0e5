"""scikit-learn integration: `VGGFeaturizer` (images -> features in a Pipeline) and classifier files.

`VGGFeaturizer` follows scikit-learn's "rolling your own estimator": `__init__` only stores its
parameters, `fit` builds the network (a fitted attribute, `extractor_`), `transform` runs it in batches.
Inputs are image file paths or images as arrays, never a numeric feature matrix.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from .errors import ImageError, InputError
from .images import load_image, prepare_array


#: networks built by VGGFeaturizer, by parameters (most recently used last)
_BUILT = OrderedDict()
_BUILT_MAX = 2
_BUILT_LOCK = threading.Lock()


class VGGFeaturizer(TransformerMixin, BaseEstimator):
    """Images (file paths or arrays) to VGG features, as a scikit-learn transformer.

    Args:
        arch: `vgg11`, `vgg11-lrn`, `vgg13`, `vgg16c`, `vgg16`, `vgg19` (or A..E), or with batch norm
            `vgg11-bn`, `vgg13-bn`, `vgg16-bn`, `vgg19-bn`; None: from the weight file, else vgg16.
        weights: `imagenet`, `random`, `timm:NAME` (torchvision's ImageNet weights, `timm:vgg11` ..
            `timm:vgg19_bn`) or a path (`.h5`, `.weights.h5`, `.keras`, `.safetensors`).
        layer: the layer to extract (`fc7`, `fc6`, `conv5_3`, `pool5`...), after the ReLU.
        pooling: `avg` or `max` global pooling of spatial maps (`none` flattens them).
        form: `standard`, `fully_conv` or `dense` (see `vggfeat.FeatureExtractor`).
        input_size: crop side, or shorter side for the convolutional forms; None: the weights' size.
        resize: `crop`, `squash` or `short`; None: the form's default.
        precision: `float32`, `bfloat16` or `float16`.
        seed: seed of `random` weights.
        batch_size: images per forward pass.
        scales, flip, aggregate, l2: the paper's multi-scale descriptor (with form `dense` or
            `fully_conv`; see `vggfeat.multiscale`).
        jpeg_decode: `full` (a JPEG path and its decoded array give the same features) or `reduced`
            (see `vggfeat.ExtractorConfig`).

    Examples:
        Six small images in a temporary folder, dark ones and bright ones; random weights at 32x32 so
        that it runs in seconds (use `weights="imagenet"` and the default size for real features):

        >>> import os, shutil, tempfile
        >>> import numpy as np
        >>> from PIL import Image
        >>> from sklearn.pipeline import make_pipeline
        >>> from sklearn.preprocessing import Normalizer
        >>> from sklearn.svm import LinearSVC
        >>> from vggfeat import VGGFeaturizer
        >>> folder = tempfile.mkdtemp()
        >>> rng = np.random.default_rng(0)
        >>> paths, labels = [], []
        >>> for i in range(6):
        ...     pixels = rng.integers(0, 128, (40, 48, 3), dtype=np.uint8) + 127 * (i % 2)
        ...     paths.append(os.path.join(folder, f"{i}.png"))
        ...     Image.fromarray(pixels.astype(np.uint8)).save(paths[-1])
        ...     labels.append(i % 2)
        >>> featurizer = VGGFeaturizer(arch="vgg11", weights="random", input_size=32)
        >>> featurizer.fit(paths).transform(paths).shape
        (6, 4096)
        >>> pipe = make_pipeline(featurizer, Normalizer(), LinearSVC())
        >>> pipe.fit(paths, labels).predict(paths[:2]).shape
        (2,)
        >>> shutil.rmtree(folder)
    """

    def __init__(self, arch=None, weights="imagenet", layer="fc7", pooling="avg", form="standard",
                 input_size=None, resize=None, precision="float32", seed=0, batch_size=32, scales=None,
                 flip=False, aggregate="mean", l2=False, jpeg_decode="full"):
        self.arch = arch
        self.weights = weights
        self.layer = layer
        self.pooling = pooling
        self.form = form
        self.input_size = input_size
        self.resize = resize
        self.precision = precision
        self.seed = seed
        self.batch_size = batch_size
        self.scales = scales
        self.flip = flip
        self.aggregate = aggregate
        self.l2 = l2
        self.jpeg_decode = jpeg_decode

    def config(self):
        """The `ExtractorConfig` of these parameters (validated)."""
        from .config import ExtractorConfig

        return ExtractorConfig(layers=[self.layer], arch=self.arch, weights=self.weights, seed=self.seed,
                               form=self.form, pooling=self.pooling, input_size=self.input_size,
                               resize=self.resize, precision=self.precision,
                               scales=list(self.scales) if self.scales else None, flip=self.flip,
                               aggregate=self.aggregate, l2=self.l2, jpeg_decode=self.jpeg_decode)

    def _build(self):
        """The network of these parameters: built once and shared by every featurizer with equal
        parameters (the clones `GridSearchCV` fits), so that its compiled forward pass is reused
        instead of traced again for every fit. The `_BUILT_MAX` most recently used ones are kept."""
        from .extractor import build_extractor

        key = self._cache_key()
        with _BUILT_LOCK:
            extractor = _BUILT.pop(key, None)
            if extractor is None:
                extractor = build_extractor(self.config(), batch_size=self.batch_size)
            _BUILT[key] = extractor  # most recently used last
            while len(_BUILT) > _BUILT_MAX:
                _BUILT.popitem(last=False)
        return extractor

    def _cache_key(self):
        import os

        params = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in self.get_params().items()))
        weights = self.weights
        if isinstance(weights, (str, os.PathLike)) and os.path.isfile(weights):  # a file edited in place is new
            st = os.stat(weights)
            return params + (("weights_file", os.path.abspath(weights), st.st_mtime_ns, st.st_size),)
        return params

    def fit(self, X=None, y=None):
        """Build the network (no learning happens: the weights are fixed). Returns self."""
        extractor = self._build()
        self.extractor_ = extractor
        self.settings_ = extractor.settings()
        self.n_features_out_ = int(extractor.feature_dims[self.layer])
        return self

    def _extractor(self):
        check_is_fitted(self, "settings_")
        if getattr(self, "extractor_", None) is None:  # after unpickling
            self.extractor_ = self._build()
        return self.extractor_

    def transform(self, X):
        """Features of the images in X: a list/array of file paths, a list of (H, W, 3) arrays, or an
        array (n, H, W, 3). An array is a whole image, as decoded from its file: it goes through the
        same resize and crop as a path does, so both give the same features. Returns float32 (n, n_features_out_); row i belongs to X[i].

        Raises:
            ValueError: an image cannot be read (a pipeline cannot drop rows; `vggfeat extract`
                records and skips such files instead), or X is not images.
        """
        extractor = self._extractor()
        out = np.empty((len(X), self.n_features_out_), dtype=np.float32)
        bs = extractor.batch_size
        for start in range(0, len(X), bs):
            chunk = [self._image(x, extractor.geometry) for x in X[start:start + bs]]
            feats = extractor.predict(chunk)[self.layer]
            out[start:start + len(chunk)] = feats.reshape(len(chunk), -1)
        return out

    @staticmethod
    def _image(x, geometry):
        """One item of X as network input: a path through `load_image`, an array through
        `prepare_array` (the same geometry: an image gives the same features either way)."""
        if isinstance(x, (str, bytes)) or hasattr(x, "__fspath__"):
            try:
                return load_image(x, geometry)
            except ImageError as exc:
                raise InputError(f"cannot read image {x}: {exc}") from None
        a = np.asarray(x)
        if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (1, 3))):
            raise InputError("VGGFeaturizer takes image file paths, RGB images of shape (H, W, 3) or grey ones "
                             f"of shape (H, W); received an item of shape {a.shape}")
        return prepare_array(a, geometry)

    def get_feature_names_out(self, input_features=None):
        check_is_fitted(self, "settings_")
        return np.array([f"{self.layer}_{i}" for i in range(self.n_features_out_)], dtype=object)

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("extractor_", None)  # a Keras model; rebuilt from the parameters when needed
        return state

    def __setstate__(self, state):
        state.setdefault("jpeg_decode", "reduced")  # pickled before the setting existed, when JPEGs were read so
        super().__setstate__(state)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.string = True
        tags.requires_fit = True
        tags.non_deterministic = False
        return tags
