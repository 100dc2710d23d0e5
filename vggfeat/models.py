"""Build every VGG configuration from the table in `vggfeat.specs`, in its three forms.

- standard: fixed input size, Flatten + Dense fc6/fc7/fc8 exactly as `keras.applications` builds them
  (same layer names, same weight order), plus the paper's dropout after fc6 and fc7;
- fully convolutional: the convolutional trunk alone, any input size >= 32;
- dense (Sect. 3.2 of the paper): fc6 as a 7x7 convolution and fc7/fc8 as 1x1 convolutions, any input
  size >= 224. `copy_weights` turns the standard form's Dense kernels into these convolution kernels.
"""

from __future__ import annotations

import zlib

import keras
import numpy as np

from .errors import ArchitectureError, LayerError
from .layers import LocalResponseNormalization
from .specs import BLOCK_WIDTHS, FC_WIDTH, get_arch, is_conv_layer, resolve_layer

FORMS = ("standard", "fully_conv", "dense")


def _layer_seed(seed, layer_name):
    """A per-layer seed, so one layer's initial weights do not depend on which others exist."""
    if seed is None:
        return None
    return zlib.crc32(f"{int(seed)}:{layer_name}".encode()) & 0x7FFFFFFF


@keras.saving.register_keras_serializable(package="vggfeat")
class SeededGlorotUniform(keras.initializers.Initializer):
    """Glorot-uniform kernels drawn by NumPy from a seed.

    Unlike Keras's seeded initializers, whose numbers depend on the backend's random generator, this
    gives the same weights for the same seed on TensorFlow and JAX, and it draws float32 directly
    in place (fc6 of VGG-16 alone is 411 MB; no float64 or extra temporary copies).
    """

    def __init__(self, seed):
        self.seed = int(seed)

    def __call__(self, shape, dtype=None):
        shape = tuple(int(s) for s in shape)
        receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
        fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
        limit = np.float32(np.sqrt(6.0 / (fan_in + fan_out)))
        values = np.random.default_rng(self.seed).random(shape, dtype=np.float32)
        values *= 2 * limit
        values -= limit
        return keras.ops.convert_to_tensor(values, dtype=dtype or "float32")

    def get_config(self):
        return {"seed": self.seed}


#: `seed` value of `build_vgg` for a network whose weights will be loaded: variables start as zeros,
#: which costs one allocation each (random initialisers make temporaries as large as fc6's 411 MB).
NO_INIT = "zeros"


#: Batch norm as torchvision's VGGs have it: epsilon 1e-5, running statistics updated by 0.1 of the batch's
#: (PyTorch's momentum 0.1 is Keras's 0.9).
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9


def _bn_init_kwargs(seed, layer_name):
    if hasattr(seed, "initializers"):  # a weight source: scale, offset and moving statistics as stored
        return seed.initializers(layer_name)
    return {}  # Keras's defaults: scale 1, offset 0, mean 0, variance 1


def _init_kwargs(seed, layer_name):
    if hasattr(seed, "initializers"):  # a weight source: each variable starts as the stored values
        return seed.initializers(layer_name)
    if isinstance(seed, str) and seed == NO_INIT:
        return {"kernel_initializer": "zeros", "bias_initializer": "zeros"}
    layer_seed = _layer_seed(seed, layer_name)
    return {
        "kernel_initializer": (keras.initializers.GlorotUniform() if layer_seed is None
                               else SeededGlorotUniform(layer_seed)),
        "bias_initializer": "zeros",
    }


def build_vgg(
    arch="vgg16",
    *,
    form="standard",
    include_top=True,
    input_size=224,
    classes=1000,
    classifier_activation="softmax",
    dropout=0.5,
    seed=None,
    dtype=None,
    fc6_kernel=7,
    name=None,
):
    """Build a VGG network of the paper's Table 1 (weights initialised, not loaded).

    Args:
        arch: `vgg11`, `vgg11-lrn`, `vgg13`, `vgg16c`, `vgg16`, `vgg19`, or the letters A to E.
        form: `standard` (Flatten + Dense, fixed input size), `fully_conv` (no FC layers, any size
            >= 32) or `dense` (FC layers as convolutions, any size >= 224).
        include_top: with `standard`, whether fc6/fc7/fc8 are built.
        input_size: side of the square input of the standard form (ignored by the other forms,
            whose input is `(None, None, 3)`).
        classes: width of fc8.
        classifier_activation: activation of fc8 (`softmax`, or None for logits).
        dropout: dropout rate after fc6 and fc7 (active only in training).
        seed: integer for reproducible initial weights (same seed, same weights), None for random,
            or `"zeros"` (`NO_INIT`) for a network whose weights are loaded next, or a weight source
            (an object whose `initializers(layer_name)` gives the layer's kernel and bias initializers:
            each variable is then made from the stored values, never held twice).
        dtype: a Keras dtype policy name such as `mixed_bfloat16`, or None for the global policy.
        fc6_kernel: with `dense`, the side of fc6's kernel: pool5's side in the standard form whose
            weights it will carry (7 for 224x224 input, 2 for 64x64).
        name: model name; defaults to the architecture name.

    Returns:
        A `keras.Model` whose layers carry `keras.applications` names.

    Examples:
        >>> model = build_vgg("vgg16", input_size=64, classes=10, seed=0)
        >>> model.get_layer("fc2").output.shape
        (None, 4096)
    """
    spec = get_arch(arch)
    if form not in FORMS:
        raise ArchitectureError(f"unknown form {form!r}; choose one of {', '.join(FORMS)}")
    if form == "standard":
        if input_size < 32:
            raise ArchitectureError(f"input size must be at least 32 pixels. Received: input_size={input_size}")
        shape = (input_size, input_size, 3)
    else:
        shape = (None, None, 3)

    inputs = keras.Input(shape=shape, name="image")
    x = inputs
    for b, kernels in enumerate(spec.kernels, start=1):
        for i, k in enumerate(kernels, start=1):
            lname = f"block{b}_conv{i}"
            x = keras.layers.Conv2D(BLOCK_WIDTHS[b - 1], k, padding="same", activation=None if spec.bn else "relu",
                                    name=lname, dtype=dtype, **_init_kwargs(seed, lname))(x)
            if spec.bn:  # torchvision's order: conv (with bias), batch norm, ReLU
                x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=f"block{b}_bn{i}",
                                                    dtype=dtype, **_bn_init_kwargs(seed, f"block{b}_bn{i}"))(x)
                x = keras.layers.ReLU(name=f"block{b}_relu{i}", dtype=dtype)(x)
            if spec.lrn and b == 1 and i == 1:
                x = LocalResponseNormalization(name="block1_lrn", dtype=dtype)(x)
        x = keras.layers.MaxPooling2D(2, strides=2, name=f"block{b}_pool", dtype=dtype)(x)

    if form == "standard" and include_top:
        x = keras.layers.Flatten(name="flatten", dtype=dtype)(x)
        x = keras.layers.Dense(FC_WIDTH, activation="relu", name="fc1", dtype=dtype, **_init_kwargs(seed, "fc1"))(x)
        x = keras.layers.Dropout(dropout, name="fc1_dropout", dtype=dtype)(x)
        x = keras.layers.Dense(FC_WIDTH, activation="relu", name="fc2", dtype=dtype, **_init_kwargs(seed, "fc2"))(x)
        x = keras.layers.Dropout(dropout, name="fc2_dropout", dtype=dtype)(x)
        x = keras.layers.Dense(classes, activation=classifier_activation, name="predictions", dtype=dtype,
                               **_init_kwargs(seed, "predictions"))(x)
    elif form == "dense":
        x = keras.layers.Conv2D(FC_WIDTH, fc6_kernel, activation="relu", name="fc1", dtype=dtype, **_init_kwargs(seed, "fc1"))(x)
        x = keras.layers.Dropout(dropout, name="fc1_dropout", dtype=dtype)(x)
        x = keras.layers.Conv2D(FC_WIDTH, 1, activation="relu", name="fc2", dtype=dtype, **_init_kwargs(seed, "fc2"))(x)
        x = keras.layers.Dropout(dropout, name="fc2_dropout", dtype=dtype)(x)
        x = keras.layers.Conv2D(classes, 1, activation=classifier_activation, name="predictions", dtype=dtype,
                                **_init_kwargs(seed, "predictions"))(x)
    return keras.Model(inputs, x, name=name or spec.name.replace("-", "_"))


def dense_kernel_to_conv(kernel, conv_shape):
    """Reshape a Dense kernel `(h*w*c_in, c_out)` into the equivalent conv kernel `(h, w, c_in, c_out)`.

    Keras's Flatten (channels_last) orders its output as (H, W, C), row-major, so a plain C-order
    reshape gives the kernel of a convolution over the unflattened map.
    """
    kernel = np.asarray(kernel)
    if int(np.prod(conv_shape)) != kernel.size:
        raise ArchitectureError(
            f"cannot turn a Dense kernel of shape {kernel.shape} into a conv kernel of shape {tuple(conv_shape)}"
        )
    return kernel.reshape(conv_shape)


def copy_weights(source, target):
    """Copy weights by layer name from `source` to `target`, converting Dense kernels to conv kernels.

    Every layer of `target` that has weights must exist in `source` with fitting shapes; dtype
    policies may differ (the variables of mixed-precision models stay float32).
    """
    for layer in target.layers:
        if not layer.weights:
            continue
        try:
            src = source.get_layer(layer.name)
        except ValueError:
            raise ArchitectureError(f"the source network has no layer {layer.name!r}") from None
        values = src.get_weights()
        targets = layer.get_weights()
        if len(values) != len(targets):
            raise ArchitectureError(f"layer {layer.name!r} has {len(values)} weights, expected {len(targets)}")
        converted = []
        for v, t in zip(values, targets):
            if v.shape != t.shape:
                if v.ndim == 2 and t.ndim == 4:
                    v = dense_kernel_to_conv(v, t.shape)
                else:
                    raise ArchitectureError(
                        f"layer {layer.name!r}: weight of shape {v.shape} does not fit {t.shape}"
                    )
            converted.append(v)
        layer.set_weights(converted)


def feature_model(network, layers, *, pooling="avg", output_names=None, preprocessing=None):
    """Cut `network` at one or several layers: one forward pass returns all of them.

    Args:
        network: a model from `build_vgg` (any form) or a loaded VGG model with the standard names.
        layers: layer names, Keras or paper spelling (`fc7`, `conv5_3`, `pool5`, `block5_pool`).
        pooling: `avg`, `max` or `none`: global pooling of spatial maps (conv layers, and the FC
            layers of the dense form); vectors from Dense layers pass unchanged.
        output_names: keys of the returned dict; defaults to the names as given in `layers`.
        preprocessing: None (the model takes preprocessed float input) or a mode of
            `vggfeat.preprocessing` (`caffe`...): the model then takes raw RGB uint8 pixels and
            preprocesses them itself.

    Returns:
        A `keras.Model` from images (already preprocessed) to a dict {name: float32 features}.
        Every output is taken after the layer's activation (after the ReLU for convs, fc6 and fc7).

    Examples:
        >>> net = build_vgg("vgg11", form="fully_conv", seed=0)
        >>> fm = feature_model(net, ["conv5_2", "pool5"], pooling="avg")
        >>> sorted(fm.output)
        ['conv5_2', 'pool5']
    """
    if pooling not in ("avg", "max", "none", None):
        raise ArchitectureError(f"unknown pooling {pooling!r}; choose avg, max or none")
    spec = get_arch(infer_arch(network))
    has_top = any(layer.name == "fc2" for layer in network.layers)
    output_names = list(output_names or layers)
    if len(output_names) != len(layers):
        raise ValueError("output_names must have one name per layer")
    if len(set(output_names)) != len(output_names):
        raise LayerError(f"a layer is named twice: {', '.join(output_names)}")
    outputs = {}
    seen = set()
    for requested, key in zip(layers, output_names):
        kname = resolve_layer(spec, requested, include_top=has_top)
        if kname in seen:
            raise LayerError(f"layer {requested!r} is requested twice (under another name)")
        seen.add(kname)
        t = network.get_layer(kname).output
        if len(t.shape) == 4 and pooling in ("avg", "max"):
            pool = keras.layers.GlobalAveragePooling2D if pooling == "avg" else keras.layers.GlobalMaxPooling2D
            t = pool(name=f"{key}_{pooling}pool", dtype=network.get_layer(kname).dtype_policy)(t)
        outputs[key] = keras.layers.Activation("linear", dtype="float32", name=f"{key}_out")(t)
    features = keras.Model(network.input, outputs, name=f"{network.name}_features")
    if preprocessing is None:
        return features
    from .layers import Preprocess

    raw = keras.Input(shape=network.input.shape[1:], dtype="uint8", name="pixels")
    return keras.Model(raw, features(Preprocess(preprocessing, name="preprocess")(raw)),
                       name=f"{network.name}_features_from_pixels")


def infer_arch(model):
    """Name the configuration of a VGG model from its convolution layers (e.g. a loaded `.keras` file)."""
    kernels = {}
    has_lrn = has_bn = False
    for layer in model.layers:
        if layer.name == "block1_lrn":
            has_lrn = True
        if layer.name.startswith("block") and "_bn" in layer.name:
            has_bn = True
        if layer.name.startswith("block") and "_conv" in layer.name:
            b = int(layer.name[5])
            kernels.setdefault(b, []).append(int(layer.kernel_size[0]))
    found = tuple(tuple(kernels.get(b, ())) for b in range(1, 6))
    return arch_from_kernels(found, has_lrn, has_bn)


def arch_from_kernels(kernels, lrn=False, bn=False):
    from .specs import ARCHS

    for name, spec in ARCHS.items():
        if spec.kernels == tuple(tuple(k) for k in kernels) and spec.lrn == lrn and spec.bn == bn:
            return name
    raise ArchitectureError(
        "the network is not one of the VGG configurations (conv layers per block: "
        + ", ".join(str(len(k)) for k in kernels) + ")"
    )


__all__ = ["FORMS", "build_vgg", "copy_weights", "dense_kernel_to_conv", "feature_model", "infer_arch",
           "is_conv_layer"]
