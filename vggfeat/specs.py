"""The VGG configurations of Simonyan & Zisserman (ICLR 2015, Table 1) as data, and layer naming.

Pure Python: nothing here imports Keras or TensorFlow, so `vggfeat info` and the CLI's argument
checks stay instant. Every model in `vggfeat.models` is built from `ARCHS`.

Layer names follow `keras.applications` (`block{b}_conv{i}`, `block{b}_pool`, `flatten`, `fc1`, `fc2`,
`predictions`) so that Keras's ImageNet weight files load unchanged; the paper's names (`conv5_3`,
`pool5`, `fc6`, `fc7`, `fc8`) are accepted wherever a layer is named.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .errors import ArchitectureError, LayerError

#: Widths of the five convolutional blocks (Table 1).
BLOCK_WIDTHS = (64, 128, 256, 512, 512)
#: Width of fc6 and fc7.
FC_WIDTH = 4096

#: The most classes fc8 may have (ImageNet-21k has 21,841), in weight files and `.keras` models.
MAX_CLASSES = 100_000


@dataclass(frozen=True)
class ArchSpec:
    """One column of the paper's Table 1.

    Attributes:
        name: vggfeat's name (`vgg16`).
        letter: the paper's letter (`D`).
        kernels: per block, the kernel size of each convolution (3 or 1).
        lrn: whether local response normalisation follows the first convolution (A-LRN).
        bn: whether batch normalisation follows every convolution, before its ReLU (torchvision's
            `vgg*_bn`, not in the paper; Ioffe & Szegedy, 2015).
    """

    name: str
    letter: str
    kernels: tuple
    lrn: bool = False
    bn: bool = False

    @property
    def weight_layers(self) -> int:
        return sum(len(b) for b in self.kernels) + 3


_A = ((3,), (3,), (3, 3), (3, 3), (3, 3))
_B = ((3, 3), (3, 3), (3, 3), (3, 3), (3, 3))
_C = ((3, 3), (3, 3), (3, 3, 1), (3, 3, 1), (3, 3, 1))
_D = ((3, 3), (3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3))
_E = ((3, 3), (3, 3), (3, 3, 3, 3), (3, 3, 3, 3), (3, 3, 3, 3))

ARCHS = {
    "vgg11": ArchSpec("vgg11", "A", _A),
    "vgg11-lrn": ArchSpec("vgg11-lrn", "A-LRN", _A, lrn=True),
    "vgg13": ArchSpec("vgg13", "B", _B),
    "vgg16c": ArchSpec("vgg16c", "C", _C),
    "vgg16": ArchSpec("vgg16", "D", _D),
    "vgg19": ArchSpec("vgg19", "E", _E),
    # batch norm after every convolution, as torchvision builds vgg11_bn..vgg19_bn
    "vgg11-bn": ArchSpec("vgg11-bn", "A-BN", _A, bn=True),
    "vgg13-bn": ArchSpec("vgg13-bn", "B-BN", _B, bn=True),
    "vgg16-bn": ArchSpec("vgg16-bn", "D-BN", _D, bn=True),
    "vgg19-bn": ArchSpec("vgg19-bn", "E-BN", _E, bn=True),
}

#: Other spellings people use for the same networks.
ARCH_ALIASES = {
    "a": "vgg11",
    "a-lrn": "vgg11-lrn",
    "a_lrn": "vgg11-lrn",
    "alrn": "vgg11-lrn",
    "vgg11_lrn": "vgg11-lrn",
    "vgg11lrn": "vgg11-lrn",
    "b": "vgg13",
    "c": "vgg16c",
    "vgg16-c": "vgg16c",
    "vgg16_c": "vgg16c",
    "d": "vgg16",
    "e": "vgg19",
}
for _name in ("vgg11", "vgg13", "vgg16", "vgg19"):
    _letter = ARCHS[_name].letter.lower()
    for _spelling in (f"{_name}_bn", f"{_name}bn", f"{_letter}-bn", f"{_letter}_bn"):
        ARCH_ALIASES[_spelling] = f"{_name}-bn"


def get_arch(arch: str) -> ArchSpec:
    """Return the `ArchSpec` for a name or the paper's letter (case-insensitive)."""
    key = str(arch).strip().lower()
    key = ARCH_ALIASES.get(key, key)
    if key not in ARCHS:
        raise ArchitectureError(
            f"unknown architecture {arch!r}; choose one of "
            + ", ".join(f"{n} ({s.letter})" for n, s in ARCHS.items())
        )
    return ARCHS[key]


def conv_weight_shapes(spec: ArchSpec) -> list[tuple]:
    """`(keras name, kernel shape, bias shape)` of every convolution of `spec`, in order: what a weight
    file of this configuration must hold, e.g. `("block1_conv1", (3, 3, 3, 64), (64,))`."""
    out = []
    c_in = 3
    for b, kernels in enumerate(spec.kernels, start=1):
        width = BLOCK_WIDTHS[b - 1]
        for i, k in enumerate(kernels, start=1):
            out.append((f"block{b}_conv{i}", (k, k, c_in, width), (width,)))
            c_in = width
    return out


# ---------------------------------------------------------------------------------------------
# Layer names
# ---------------------------------------------------------------------------------------------

#: Keras name -> paper name for the classifier layers.
FC_PAPER_NAMES = {"fc1": "fc6", "fc2": "fc7", "predictions": "fc8"}
_FC_KERAS_NAMES = {v: k for k, v in FC_PAPER_NAMES.items()}


def conv_feature_name(spec: ArchSpec, b: int, i: int) -> str:
    """Keras name of the layer whose output is conv{b}_{i}'s feature (after its ReLU): the convolution
    itself (its activation is the ReLU), or `block{b}_relu{i}` in a batch-norm network (conv, batch
    norm, then ReLU)."""
    return f"block{b}_relu{i}" if spec.bn else f"block{b}_conv{i}"


def conv_layer_names(spec: ArchSpec) -> list[str]:
    """Keras names of all convolutional and pooling feature layers, in order (LRN included)."""
    names = []
    for b, kernels in enumerate(spec.kernels, start=1):
        for i, _ in enumerate(kernels, start=1):
            names.append(conv_feature_name(spec, b, i))
            if spec.lrn and b == 1 and i == 1:
                names.append("block1_lrn")
        names.append(f"block{b}_pool")
    return names


def layer_names(spec: ArchSpec, include_top: bool = True) -> list[str]:
    """Keras names of every named feature layer, in forward order."""
    names = conv_layer_names(spec)
    if include_top:
        names += ["fc1", "fc2", "predictions"]
    return names


def paper_name(keras_name: str) -> str:
    """The paper's name of a Keras layer name (`block5_conv3` -> `conv5_3`, `fc2` -> `fc7`)."""
    if keras_name in FC_PAPER_NAMES:
        return FC_PAPER_NAMES[keras_name]
    m = re.fullmatch(r"block(\d)_(?:conv|relu)(\d)", keras_name)
    if m:
        return f"conv{m.group(1)}_{m.group(2)}"
    m = re.fullmatch(r"block(\d)_pool", keras_name)
    if m:
        return f"pool{m.group(1)}"
    if keras_name == "block1_lrn":
        return "lrn1"
    return keras_name


def canonical_layer(name: str) -> str:
    """The one spelling a layer is stored under: the paper's (`FC7`, `fc2` -> `fc7`; `block5_pool`,
    `Pool5` -> `pool5`; `block5_conv3` -> `conv5_3`). Names it does not know are returned stripped and
    lower-cased (`resolve_layer` then says they do not exist).

    Examples:
        >>> canonical_layer("FC7"), canonical_layer("fc2"), canonical_layer("block5_pool")
        ('fc7', 'fc7', 'pool5')
    """
    key = str(name).strip().lower()
    if key in ("norm1", "block1_lrn"):
        return "lrn1"
    return paper_name(key)


def resolve_layer(spec: ArchSpec, name: str, include_top: bool = True) -> str:
    """Map a user's layer name (Keras or paper spelling) to the Keras layer name.

    Raises `LayerError` listing the valid names when the layer does not exist in this network.
    """
    raw = str(name).strip()
    key = raw.lower()
    if key in _FC_KERAS_NAMES:
        key = _FC_KERAS_NAMES[key]
    m = re.fullmatch(r"conv(\d)_(\d)", key) or re.fullmatch(r"block(\d)_(?:conv|relu)(\d)", key)
    if m:
        key = conv_feature_name(spec, int(m.group(1)), int(m.group(2)))
    m = re.fullmatch(r"pool(\d)", key)
    if m:
        key = f"block{m.group(1)}_pool"
    if key in ("lrn1", "norm1"):
        key = "block1_lrn"
    valid = layer_names(spec, include_top)
    if key not in valid:
        hint = "" if include_top or key not in layer_names(spec, True) else (
            " (fully-convolutional without --dense has no FC layers)"
        )
        raise LayerError(
            f"unknown layer {raw!r} for {spec.name}{hint}; valid layers: "
            + ", ".join(paper_name(n) for n in valid)
        )
    return key


def is_conv_layer(keras_name: str) -> bool:
    """True for the convolutional trunk (convs, LRN, pools), False for fc1/fc2/predictions."""
    return keras_name.startswith("block")


# ---------------------------------------------------------------------------------------------
# The arithmetic of `vggfeat info`
# ---------------------------------------------------------------------------------------------


@dataclass
class LayerRow:
    name: str
    alias: str
    kind: str
    output_shape: tuple
    params: int
    macs: int
    receptive_field: int | None
    stride: int | None

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "alias": self.alias,
            "kind": self.kind,
            "output_shape": list(self.output_shape),
            "params": self.params,
            "macs": self.macs,
            "receptive_field": self.receptive_field,
            "stride": self.stride,
        }


def layer_table(arch: str, input_size: int = 224, dense: bool = False, include_top: bool = True,
                classes: int = 1000) -> list[LayerRow]:
    """One row per layer: output shape, parameters, multiply-accumulates, receptive field, stride.

    The receptive field and stride are in input pixels. In the standard form the FC layers see the
    whole (fixed-size) input; in the dense form (Sect. 3.2) fc6 is a 7x7 convolution over pool5 and
    fc7/fc8 are 1x1 convolutions, so they have a finite receptive field and work at any input size
    >= 224. (`vggfeat info` prints this table; no TensorFlow is needed.)

    Examples:
        >>> from vggfeat import layer_table
        >>> rows = layer_table("vgg16")
        >>> [(r.name, r.alias, r.receptive_field, r.stride) for r in rows if r.alias in ("conv5_3", "pool5")]
        [('block5_conv3', 'conv5_3', 196, 16), ('block5_pool', 'pool5', 212, 32)]
        >>> f"{sum(r.params for r in rows):,} parameters, {sum(r.macs for r in rows) / 1e9:.2f} G MACs"
        '138,357,544 parameters, 15.47 G MACs'
    """
    spec = get_arch(arch)
    if input_size < 32:
        raise ArchitectureError(f"input size must be at least 32 pixels. Received: input_size={input_size}")
    rows: list[LayerRow] = []
    h = w = input_size
    c = 3
    rf, jump = 1, 1
    for b, kernels in enumerate(spec.kernels, start=1):
        width = BLOCK_WIDTHS[b - 1]
        for i, k in enumerate(kernels, start=1):
            params = k * k * c * width + width
            macs = h * w * k * k * c * width
            rf += (k - 1) * jump
            name = f"block{b}_conv{i}"
            kind = f"conv{k}x{k}"
            if spec.bn:  # batch norm's scale and offset (its moving statistics are not parameters)
                params += 2 * width
                kind += "+bn"
            rows.append(LayerRow(name, paper_name(name), kind, (h, w, width), params, macs, rf, jump))
            c = width
            if spec.lrn and b == 1 and i == 1:
                rows.append(LayerRow("block1_lrn", "lrn1", "lrn", (h, w, c), 0, 0, rf, jump))
        h, w = h // 2, w // 2
        rf += jump
        jump *= 2
        name = f"block{b}_pool"
        rows.append(LayerRow(name, paper_name(name), "maxpool2x2", (h, w, c), 0, 0, rf, jump))
    if not include_top:
        return rows
    if dense:
        if h < 7:
            raise ArchitectureError(
                f"the dense form needs an input of at least 224 pixels. Received: input_size={input_size}"
            )
        for name, k, width in (("fc1", 7, FC_WIDTH), ("fc2", 1, FC_WIDTH), ("predictions", 1, classes)):
            h, w = h - k + 1, w - k + 1
            params = k * k * c * width + width
            macs = h * w * k * k * c * width
            rf += (k - 1) * jump
            rows.append(LayerRow(name, paper_name(name), f"conv{k}x{k}", (h, w, width), params, macs, rf, jump))
            c = width
    else:
        n_in = h * w * c
        rows.append(LayerRow("flatten", "flatten", "flatten", (n_in,), 0, 0, input_size, None))
        for name, width in (("fc1", FC_WIDTH), ("fc2", FC_WIDTH), ("predictions", classes)):
            rows.append(LayerRow(name, paper_name(name), "dense", (width,), n_in * width + width,
                                 n_in * width, input_size, None))
            n_in = width
    return rows


def count_params(arch: str, input_size: int = 224, include_top: bool = True, classes: int = 1000) -> int:
    """Exact parameter count, from the arithmetic alone (no model is built)."""
    return sum(r.params for r in layer_table(arch, input_size, include_top=include_top, classes=classes))


def fc_input_side(fc1_inputs: int) -> int:
    """Input size whose pool5 flattens to `fc1_inputs` values (e.g. 25088 -> 224)."""
    side = math.isqrt(fc1_inputs // BLOCK_WIDTHS[-1])
    if side * side * BLOCK_WIDTHS[-1] != fc1_inputs:
        raise ArchitectureError(f"fc1 with {fc1_inputs} inputs does not come from a square pool5 map")
    return side * 32
