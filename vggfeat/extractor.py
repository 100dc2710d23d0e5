"""`FeatureExtractor`: a VGG network with weights, cut at named layers, run on batches of pixels."""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict

import numpy as np

from .config import ExtractorConfig
from .errors import InputError, LayerError
from .images import Geometry, ImageError, load_image, prepare_array
from .specs import get_arch, is_conv_layer, resolve_layer
from .weight_source import weight_source

#: Compute precision -> Keras dtype policy.
PRECISIONS = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


class FeatureExtractor:
    """A VGG network with weights, cut at one or several layers, ready to run on images.

    Args:
        arch: `vgg11`, `vgg11-lrn`, `vgg13`, `vgg16c`, `vgg16`, `vgg19` (or A..E); None takes it from
            the weight file, else vgg16.
        weights: `imagenet`, `random`, `timm:NAME` (torchvision's ImageNet weights from the Hugging Face
            cache), or a path (`.h5`, `.weights.h5`, `.keras`, or a torchvision/timm `.safetensors`).
        layers: layer names, Keras or paper spelling (`fc7`, `fc6`, `conv5_3`, `pool5`...).
            Outputs are taken after the ReLU.
        pooling: `avg`, `max` or `none`: global pooling of spatial maps (conv layers; FC layers of
            the dense form). Vectors of the standard FC layers are not pooled.
        form: `standard` (fixed input, FC layers as Dense), `fully_conv` (FC layers dropped, conv maps
            at any size >= 32) or `dense` (the paper's Sect. 3.2: fc6-fc8 as convolutions, any size
            >= 224).
        input_size: crop side (standard) or shorter side (other forms). Default: the weights'
            native size (224, or the size a fine-tuned model was trained at).
        resize: `crop`, `squash` or `short` (see `Geometry`); default `crop` for the standard form and
            `short` for the others.
        precision: `float32`, `bfloat16` or `float16` (mixed precision: float32 variables, low-precision
            compute; outputs are float32).
        seed: seed of `random` weights.
        batch_size: images per forward pass.

    Examples:
        >>> import numpy as np
        >>> from vggfeat import FeatureExtractor, prepare_array
        >>> fx = FeatureExtractor("vgg11", weights="random", layers=["fc7", "pool5"], input_size=32)
        >>> images = [np.full((40, 50, 3), v, np.uint8) for v in (0, 128, 255)]  # any uint8 RGB arrays
        >>> out = fx.predict([prepare_array(a, fx.geometry) for a in images])  # as load_image does a file
        >>> out["fc7"].shape, out["pool5"].shape
        ((3, 4096), (3, 512))
    """

    def __init__(self, arch=None, weights="imagenet", layers=("fc7",), *, pooling="avg", form="standard",
                 input_size=None, resize=None, precision="float32", seed=0, batch_size=32):
        config = ExtractorConfig(layers=layers, arch=arch, weights=weights, seed=seed, form=form, pooling=pooling,
                                 input_size=input_size, resize=resize, precision=precision)
        self._init(config, batch_size)

    @classmethod
    def from_config(cls, config, *, batch_size=32) -> "FeatureExtractor":
        """The extractor of an `ExtractorConfig` (without scales: see `ExtractorConfig.build`)."""
        if config.multiscale:
            raise InputError("a config with scales builds a MultiScaleExtractor: use build_extractor(config)")
        self = cls.__new__(cls)
        self._init(config, batch_size)
        return self

    def _init(self, config, batch_size):
        batch_size = int(batch_size)
        if batch_size < 1:
            raise InputError(f"batch size must be at least 1. Received: {batch_size}")
        self.layers = list(config.layers)
        self.pooling = config.pooling
        self.form = config.form
        self.precision = config.precision
        self.batch_size = batch_size
        self.jpeg_decode = config.jpeg_decode
        self._build(config.arch, config.weights, config.seed, config.input_size, config.resize,
                    expected_sha256=config.weights_sha256)
        self.config = config.replace(arch=self.arch, input_size=self.input_size, resize=self.geometry.resize,
                                     weights_sha256=self.weights_info.sha256 if config.weights_is_file else None)

    # -----------------------------------------------------------------------------------------
    def _build(self, arch, weights, seed, input_size, resize, expected_sha256=None):
        from .errors import WeightsError
        from .models import NO_INIT, build_vgg, copy_weights, feature_model, infer_arch
        from .weights import load_network

        needs_top = self.form != "fully_conv" and any(_is_fc_name(n) for n in self.layers)
        dtype = PRECISIONS[self.precision]
        native = int(input_size) if (str(weights) == "random" and self.form == "standard" and input_size) else 224
        # Build the network in its final form and precision at once where the weights allow it (legacy
        # .h5 files, ImageNet's included: one copy of the weights in memory); otherwise it is loaded in
        # the standard form and converted below.
        wanted = "standard" if self.form == "standard" else ("dense" if needs_top else "fully_conv")
        base, info = load_network(arch, weights, seed=seed, include_top=needs_top, input_size=native,
                                  dtype=dtype, form=wanted)
        built = _form_of(base)
        if expected_sha256 and info.sha256 and info.sha256 != expected_sha256:
            raise WeightsError(f"{weights} is not the weight file these settings were made with (its SHA-256 "
                               f"is {info.sha256[:12]}..., the settings say {expected_sha256[:12]}...)")
        self.arch = infer_arch(base) if arch is None else get_arch(arch).name
        from .weights import arch_note

        self.arch_note = arch_note(weights, arch)  # a vgg11 file may be a vgg11-lrn one: say so
        if self.arch_note:
            import logging

            logging.getLogger("vggfeat").warning(self.arch_note)
        spec = get_arch(self.arch)
        base_has_top = any(layer.name == "fc2" for layer in base.layers)
        self.keras_layers = [resolve_layer(spec, n, include_top=self.form != "fully_conv" and (
            base_has_top or self.form == "dense")) for n in self.layers]
        wants_fc = any(not is_conv_layer(k) for k in self.keras_layers)
        if wants_fc and not base_has_top:
            raise LayerError(f"the weights {info.name} have no FC layers; choose a conv layer such as conv5_3 or pool5")
        base_size = int(base.input.shape[1]) if base.input.shape[1] is not None else 224

        if self.form == "standard":
            size = int(input_size or base_size)
            resized = size != base_size
            if resized and wants_fc:
                raise InputError(
                    f"the FC layers of these weights take {base_size}x{base_size} input; input size {size} "
                    "needs --dense (FC layers as convolutions) or a conv layer with --fully-convolutional"
                )
            if resized or base.get_layer("block1_conv1").dtype_policy.name != dtype:
                net = build_vgg(spec.name, include_top=base_has_top and not resized, input_size=size,
                                classes=_classes(base), dtype=dtype, seed=NO_INIT)
                copy_weights(base, net)
            else:
                net = base
        elif self.form == "fully_conv" or not wants_fc:
            # The dense form only differs in its FC layers: with conv layers alone it is the trunk.
            size = int(input_size or 224)
            if built == "fully_conv":
                net = base
            else:
                net = build_vgg(spec.name, form="fully_conv", dtype=dtype, seed=NO_INIT)
                copy_weights(base, net)
        else:
            k = int(base.get_layer("fc1").kernel.shape[0]) if built == "dense" else base_size // 32
            size = int(input_size or 32 * k)
            if size < 32 * k:
                raise InputError(f"the dense form of these weights needs input of at least {32 * k} pixels. "
                                 f"Received: input_size={size}")
            if built == "dense":
                net = base
            else:
                net = build_vgg(spec.name, form="dense", classes=_classes(base), fc6_kernel=k, dtype=dtype,
                                seed=NO_INIT)
                copy_weights(base, net)
        del base
        self.geometry = Geometry(resize, size, self.jpeg_decode)
        self.weights_info = info
        self.preprocessing = info.preprocessing
        self.input_size = size
        self.model = feature_model(net, self.keras_layers, pooling=self.pooling, output_names=self.layers,
                                   preprocessing=self.preprocessing)
        self.output_shapes = {k: tuple(v.shape[1:]) for k, v in self.model.output.items()}
        if self.geometry.fixed and any(None in s for s in self.output_shapes.values()):
            # the convolutional forms take any size; with a fixed geometry every map has one shape
            known = self.model.compute_output_shape((None, size, size, 3))
            self.output_shapes = {k: tuple(int(d) for d in known[k][1:]) for k in self.output_shapes}
        for name, shape in self.output_shapes.items():
            if None in shape:
                raise InputError(
                    f"layer {name} gives maps whose size depends on each image's shape; use --pooling avg or "
                    "max, or a fixed geometry (--resize crop or squash)"
                )
        self.class_names = list(info.class_names)

    # -----------------------------------------------------------------------------------------
    @property
    def feature_dims(self) -> dict:
        """Number of values per image of each output."""
        return {k: int(np.prod(s)) for k, s in self.output_shapes.items()}

    def settings(self) -> dict:
        """The attributes written to every output file: the config (`ExtractorConfig.to_attrs`, what
        decides the features) plus what follows from it, in words (preprocessing, geometry, the Keras
        layer names)."""
        out = self.config.to_attrs()
        out.update(preprocessing=self.preprocessing, geometry=self.geometry.describe(),
                   keras_layers=json.dumps(self.keras_layers), input_size=int(self.input_size))
        if self.arch_note:
            out["arch_note"] = self.arch_note
        return out

    def predict(self, images) -> dict:
        """Features of a list of RGB uint8 images (H, W, 3) as {layer: float32 array (N, ...)}.

        Images of the same shape share forward passes of at most `batch_size`; with a fixed geometry
        a partial batch is padded to the full batch size, so that passes share one shape (one compiled
        function, on every backend) -- or, for a small last batch, the next power of two, which bounds
        both the padding waste (< 2x) and the number of compiled shapes (log2 of the batch size). Row i of every output belongs to `images[i]`.
        """
        images = [self._as_pixels(im) for im in images]
        n = len(images)
        out = {k: np.empty((n,) + s, dtype=np.float32) for k, s in self.output_shapes.items()}
        if n == 0:
            return out
        groups = {}
        for i, im in enumerate(images):
            groups.setdefault(im.shape, []).append(i)
        for shape, idx in groups.items():
            if self.geometry.fixed and shape[:2] != (self.input_size, self.input_size):
                raise InputError(f"an array of shape {shape} does not fit the input size {self.input_size}: "
                                 "pass the file path or a Pillow image (resized as extract does), or "
                                 "vggfeat.prepare_array(array, extractor.geometry)")
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start:start + self.batch_size]
                batch = np.stack([images[i] for i in chunk])
                padded = _padded_size(len(chunk), self.batch_size) if self.geometry.fixed else len(chunk)
                if padded > len(chunk):
                    pad = np.zeros((padded - len(chunk),) + batch.shape[1:], dtype=batch.dtype)
                    batch = np.concatenate([batch, pad])
                result = self.model.predict_on_batch(batch)
                for k in out:
                    out[k][chunk] = np.asarray(result[k], dtype=np.float32)[: len(chunk)]
        return out

    def _as_pixels(self, im):
        """One item of `predict`'s list as network input. A file path or a Pillow image goes through
        the extractor's geometry (as `extract` reads a file); an array is taken as network input."""
        if isinstance(im, (str, bytes)) or hasattr(im, "__fspath__"):
            try:
                return load_image(im, self.geometry)
            except ImageError as exc:
                raise InputError(f"cannot read image {os.fsdecode(im)}: {exc}") from None
        if hasattr(im, "getbands"):  # a Pillow image
            return prepare_array(im, self.geometry)
        a = np.asarray(im)
        if a.ndim != 3 or a.shape[-1] != 3:
            raise InputError("predict takes image file paths, Pillow images, or RGB arrays of shape (H, W, 3). "
                             f"Received shape: {a.shape}")
        if a.dtype != np.uint8:
            a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return a


class ExtractorCheck:
    """What `check_extractor` found out about a config without Keras: the configuration (`arch`), the
    weights in words (`weights`), the weight file to read (`path`: a file, or Keras's cached ImageNet
    file), and the Keras names of the layers."""

    def __init__(self, arch, weights, path, keras_layers, include_top=True, timm_name=None):
        self.arch, self.weights, self.path, self.keras_layers = arch, weights, path, keras_layers
        self.include_top = include_top
        self.timm_name = timm_name

    def fetch(self) -> "ExtractorCheck":
        """Download Keras's ImageNet file, or a `timm:NAME` file into the Hugging Face cache, now if it is not
        cached (nothing to do for other weights), and check what a downloaded timm file holds."""
        if self.weights == "with imagenet weights":
            from .weights import imagenet_weights_path

            self.path = imagenet_weights_path(self.arch, self.include_top)
        elif self.timm_name and self.path is None:
            from . import torch_weights

            self.path = torch_weights.check(self.timm_name, self.arch)["path"]
        return self

    def loading(self) -> str:
        """`loading vgg16 with imagenet weights...`: what building the extractor is about to do."""
        return f"loading {self.arch} {self.weights}..."

    def __repr__(self):
        return f"ExtractorCheck({self.arch!r}, {self.weights!r}, {self.path!r}, {self.keras_layers!r})"


def check_extractor(config, *, fetch=True) -> ExtractorCheck:
    """Check everything `build_extractor(config)` would refuse that can be known without Keras (so,
    in well under a second, before TensorFlow is imported): the weights (`imagenet`: that they exist
    for the architecture and are in Keras's cache, downloaded now when not and `fetch`; a file: that it
    exists, every tensor's shape fits a VGG network, its architecture fits `arch`, its SHA-256 is the
    config's), the layer names for the weights' architecture, FC layers that the weights or the input
    size cannot give. `build_extractor` calls it first; `extract` calls it before anything is built.

    Raises:
        WeightsError, LayerError, InputError: with the message `build_extractor` would give.
    """
    from .errors import WeightsError
    from .weights import file_sha256, imagenet_file, inspect_keras_file, read_weight_file_layout
    from . import torch_weights

    if config.multiscale:
        config = config.replace(input_size=max(config.scales), scales=None, flip=False, aggregate="mean", l2=False)
    needs_top = config.form != "fully_conv" and any(_is_fc_name(n) for n in config.layers)
    w = config.weights
    src = weight_source(w)  # its kind, and a missing file, a folder or an unknown type refused
    path = None
    base_size = 224
    if src.kind in ("random", "imagenet"):
        arch = get_arch(config.arch or "vgg16").name
        has_top = needs_top
        if src.kind == "random":
            described = f"with random weights (seed {config.seed})"
            if config.form == "standard" and config.input_size:
                base_size = config.input_size
        else:
            described = "with imagenet weights"
            _, _, _, path = imagenet_file(arch, needs_top)
        name = w
    elif src.kind == "torch":  # torchvision/timm: a .safetensors file or timm:NAME (a .pth is refused)
        found = torch_weights.check(w, config.arch, fetch=fetch)
        arch, path, name = found["arch"], found["path"], found["name"]
        described = f"with {name} weights" if torch_weights.is_timm_name(w) else f"from {name}"
        if needs_top and not found["has_top"]:
            raise WeightsError(f"weight file {name} has no fc6/fc7/fc8 weights; use a conv layer or "
                               "--fully-convolutional")
        has_top = needs_top
        base_size = found["base_size"] if needs_top else 224
        if config.weights_sha256 and path and file_sha256(path) != config.weights_sha256:
            raise WeightsError(f"{w} is not the weight file these settings were made with (its SHA-256 "
                               f"is {file_sha256(path)[:12]}..., the settings say {config.weights_sha256[:12]}...)")
    else:
        path, name = src.path, src.name
        described = f"from {name}"
        if src.kind == "keras":
            held = inspect_keras_file(path)
            if config.arch is not None and get_arch(config.arch).name != held.arch:
                raise WeightsError(f"{name} holds a {held.arch} network, not {get_arch(config.arch).name}; "
                                   "drop --arch or fix it")
            arch, has_top = held.arch, held.fc_form is not None
            base_size = held.input_size or 224
        else:  # "h5"
            from .specs import fc_input_side

            layout = read_weight_file_layout(path)
            candidates = list(layout.archs)
            arch = candidates[0] if config.arch is None else get_arch(config.arch).name
            if arch not in candidates:
                raise WeightsError(f"weight file {name} holds a {candidates[0]} network and does not fit {arch}")
            if needs_top and not layout.has_top:
                raise WeightsError(f"weight file {name} has no fc6/fc7/fc8 weights (a 'notop' file); "
                                   "use a conv layer, --fully-convolutional, or a file with top")
            if needs_top and layout.fc_form == "conv":
                raise WeightsError(f"weight file {name} holds fc6-fc8 as convolutions (the dense form); vggfeat "
                                   "reads FC weights from .h5 files of the standard form (Dense fc6-fc8): use a "
                                   "conv layer, or save the whole model as .keras")
            has_top = needs_top
            if needs_top:
                base_size = fc_input_side(layout.fc1_inputs)
        if config.weights_sha256 and file_sha256(path) != config.weights_sha256:
            raise WeightsError(f"{w} is not the weight file these settings were made with (its SHA-256 "
                               f"is {file_sha256(path)[:12]}..., the settings say {config.weights_sha256[:12]}...)")
    spec = get_arch(arch)
    keras_layers = [resolve_layer(spec, n, include_top=config.form != "fully_conv" and (
        has_top or config.form == "dense")) for n in config.layers]
    wants_fc = any(not is_conv_layer(k) for k in keras_layers)
    if wants_fc and not has_top:
        raise LayerError(f"the weights {name} have no FC layers; choose a conv layer such as conv5_3 or pool5")
    if config.form == "standard":
        size = int(config.input_size or base_size)
        if size != base_size and wants_fc:
            raise InputError(
                f"the FC layers of these weights take {base_size}x{base_size} input; input size {size} "
                "needs --dense (FC layers as convolutions) or a conv layer with --fully-convolutional"
            )
    elif config.form == "dense" and wants_fc:
        k = base_size // 32
        size = int(config.input_size or base_size)
        if size < 32 * k:
            raise InputError(f"the dense form of these weights needs input of at least {32 * k} pixels. "
                             f"Received: input_size={size}")
    if config.form != "standard" and config.resize == "short" and config.pooling == "none":
        raise InputError(f"layer {config.layers[0]} gives maps whose size depends on each image's shape; use "
                         "--pooling avg or max, or a fixed geometry (--resize crop or squash)")
    check = ExtractorCheck(arch, described, path, keras_layers, needs_top,
                           timm_name=w if torch_weights.is_timm_name(w) else None)
    return check.fetch() if fetch else check


def build_extractor(config, *, batch_size=32):
    """The extractor an `ExtractorConfig` describes: a `FeatureExtractor`, wrapped in a
    `MultiScaleExtractor` when the config has scales. Its `config` is the given one with what the
    weights decided filled in (arch, input size, the weight file's SHA-256). Every entry point builds
    its extractor here. The network is shared: an equal config, with its weight file unchanged, gets the
    network built last time (the last `NETWORKS_KEPT` are kept), traced already, whatever the batch size.

    Examples:
        >>> from vggfeat import ExtractorConfig, build_extractor
        >>> fx = build_extractor(ExtractorConfig(layers=["pool5"], arch="vgg11", weights="random", input_size=32))
        >>> fx.output_shapes, fx.config.arch
        ({'pool5': (512,)}, 'vgg11')
    """
    check = check_extractor(config)  # every check that needs no Keras, before Keras is imported
    if not config.multiscale:
        return _shared(config, check, batch_size)
    from .multiscale import MultiScaleExtractor

    base = _shared(config.replace(input_size=max(config.scales), scales=None, flip=False, aggregate="mean",
                                  l2=False), check, batch_size)
    return MultiScaleExtractor(base, config.scales, flip=config.flip, aggregate=config.aggregate, l2=config.l2)


#: The networks `build_extractor` built, by settings and weight file (most recently used last), the last
#: `NETWORKS_KEPT` of them kept: the next `extract`, `iter_features`, `predict` or `VGGFeaturizer` with the
#: same settings (in a notebook, say) reuses the network and its traced forward pass, whatever its batch size.
#: A network built per call was traced again per call, and after a few TensorFlow warned "5 out of the last 5
#: calls to <function ...one_step_on_data_distributed> triggered tf.function retracing".
_NETWORKS = OrderedDict()
NETWORKS_KEPT = 2
_NETWORKS_LOCK = threading.Lock()


def release_networks() -> int:
    """Let go of the networks `build_extractor` keeps for reuse (the last `NETWORKS_KEPT`); returns how
    many it held. Their memory is freed once no extractor of yours uses them (in a notebook: after
    `del fx`); the next `extract`, `iter_features` or `VGGFeaturizer` builds its network again.

    Examples:
        >>> from vggfeat.extractor import release_networks
        >>> release_networks() >= 0
        True
    """
    with _NETWORKS_LOCK:
        n = len(_NETWORKS)
        _NETWORKS.clear()
    return n


def _shared(config, check, batch_size):
    """A `FeatureExtractor` of `config` with `batch_size`: a copy sharing the network of an earlier equal
    config whose weight file (or Keras's ImageNet file) is unchanged, else a new one."""
    import copy

    batch_size = int(batch_size)
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1. Received: {batch_size}")
    key = (config,)
    if check.path and os.path.isfile(check.path):  # a file replaced or edited in place is other weights
        st = os.stat(check.path)
        key += (os.path.abspath(check.path), st.st_mtime_ns, st.st_size, st.st_ino)
    with _NETWORKS_LOCK:
        built = _NETWORKS.pop(key, None)
        if built is None:
            built = FeatureExtractor.from_config(config, batch_size=batch_size)
        _NETWORKS[key] = built
        while len(_NETWORKS) > NETWORKS_KEPT:
            _NETWORKS.popitem(last=False)
    fx = copy.copy(built)  # its own attributes (batch size), the same Keras model
    fx.batch_size = batch_size
    return fx


def _padded_size(n, batch_size):
    """Rows a pass of `n` images is padded to: the next power of two, at most `batch_size`."""
    p = 1
    while p < n:
        p *= 2
    return min(p, batch_size)


def _is_fc_name(name):
    return str(name).strip().lower() in ("fc1", "fc2", "predictions", "fc6", "fc7", "fc8")


def _form_of(model):
    """The form a built VGG network has: `dense` (fc6 a convolution), `fully_conv` (any input size, no
    FC layer) or `standard`."""
    names = {layer.name for layer in model.layers}
    if "fc1" in names:
        return "dense" if len(model.get_layer("fc1").kernel.shape) == 4 else "standard"
    return "fully_conv" if model.input.shape[1] is None else "standard"


def _classes(model):
    try:
        return int(model.get_layer("predictions").output.shape[-1])
    except ValueError:
        return 1000
