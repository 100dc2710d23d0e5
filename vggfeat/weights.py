"""Weights, given as one argument: `imagenet`, `random` (with a seed), or a path.

- `imagenet`: Keras's own files for vgg16/vgg19 (converted from the authors' Caffe release), fetched once
  into the Keras cache (~/.keras/models) with Keras's hash check, without Keras (so that a missing file is
  reported before TensorFlow is imported: `imagenet_weights_path`). No such files exist for the
  other configurations, and without network the error names the file, where to put it, and the
  `--weights PATH` alternative. There is never a silent fallback to random weights.
- a path: the legacy `.h5` file that `keras.applications` downloads (with or without top), a Keras 3
  `.weights.h5`, or a whole `.keras` model (a fine-tuned one, say), loaded in Keras's safe mode.
- `random`: Glorot-uniform kernels from a seed; the same seed gives the same weights.
- torchvision's and timm's weights (`timm:NAME`, `PATH.safetensors`; `.pth` refused): `vggfeat.torch_weights`,
  which `load_network` and `describe_weights` hand them to.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import os
import re
import struct
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field

import h5py
import numpy as np

from .buffers import adoptable as _adoptable
from .buffers import aligned_empty as _aligned_empty
from .config import MAX_INPUT_SIZE, MIN_INPUT_SIZE
from .errors import VggfeatError, WeightsError
from .specs import ARCHS, BLOCK_WIDTHS, FC_WIDTH, MAX_CLASSES, conv_weight_shapes, get_arch, paper_name
from .torch_weights import check_finite
from .weight_source import weight_source

_KERAS_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/"

#: (arch, with_top) -> (file name, URL, md5 as checked by keras.applications)
IMAGENET_FILES = {
    ("vgg16", True): ("vgg16_weights_tf_dim_ordering_tf_kernels.h5",
                      _KERAS_BASE + "vgg16/vgg16_weights_tf_dim_ordering_tf_kernels.h5",
                      "64373286793e3c8b2b4e3219cbf3544b"),
    ("vgg16", False): ("vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
                       _KERAS_BASE + "vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
                       "6d6bbae143d832006294945121d1f1fc"),
    ("vgg19", True): ("vgg19_weights_tf_dim_ordering_tf_kernels.h5",
                      _KERAS_BASE + "vgg19/vgg19_weights_tf_dim_ordering_tf_kernels.h5",
                      "cbe5617147190e668d6c5d5026f83318"),
    ("vgg19", False): ("vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
                       _KERAS_BASE + "vgg19/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
                       "253f8cb515780f3b799900260a226db6"),
}

#: Name of the metadata entry vggfeat adds to the `.keras` files it saves (class names, preprocessing).
KERAS_METADATA_ENTRY = "vggfeat.json"


@dataclass
class WeightsInfo:
    """Where a network's weights came from; recorded in every output file."""

    kind: str  # "imagenet" | "random" | "file" | "model"
    name: str  # "imagenet", "random", or the file's base name
    preprocessing: str = "caffe"
    seed: int | None = None
    path: str | None = None
    sha256: str | None = None
    class_names: list = field(default_factory=list)
    metadata: dict = field(default_factory=dict)

    def attrs(self) -> dict:
        out = {"weights": self.name}
        if self.sha256:
            out["weights_sha256"] = self.sha256
        if self.kind == "random":
            out["seed"] = int(self.seed)
        return out


_HASHES = {}  # (algorithm, real path, size, mtime_ns) -> hex digest: a file is hashed once per process


def _file_digest(path, algorithm, chunk=1 << 22) -> str:
    st = os.stat(path)
    key = (algorithm, os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.new(algorithm)
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(chunk), b""):
                h.update(block)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def file_sha256(path, chunk=1 << 22) -> str:
    """The SHA-256 of a file (computed once per process for an unchanged file)."""
    return _file_digest(path, "sha256", chunk)


def keras_home() -> str:
    """Keras's home folder, read now (`$KERAS_HOME`, default ~/.keras) as Keras itself resolves it."""
    return os.path.expanduser(os.environ.get("KERAS_HOME") or os.path.join("~", ".keras"))


def keras_cache_dir() -> str:
    """The folder where Keras keeps downloaded weight files (`$KERAS_HOME/models`, default ~/.keras/models)."""
    return os.path.join(keras_home(), "models")


def imagenet_file(arch: str, include_top: bool = True) -> tuple:
    """`(file name, URL, md5, path in the Keras cache)` of Keras's ImageNet weights for `arch`.

    Raises:
        WeightsError: no ImageNet weights exist for `arch` (only vgg16 and vgg19 have them).
    """
    spec = get_arch(arch)
    key = (spec.name, bool(include_top))
    if key not in IMAGENET_FILES:
        raise WeightsError(
            f"no ImageNet weights exist for {spec.name} ({spec.letter}): Keras publishes them for vgg16 and "
            "vgg19 only; use --weights random, --weights PATH, or train it with `vggfeat finetune`"
        )
    fname, url, md5 = IMAGENET_FILES[key]
    return fname, url, md5, os.path.join(keras_cache_dir(), fname)


def imagenet_weights_path(arch: str, include_top: bool = True) -> str:
    """Path of Keras's ImageNet weight file for `arch`, downloading it once if needed.

    The file lives where `keras.applications` keeps it (`$KERAS_HOME/models`, default ~/.keras/models),
    under Keras's name, checked against Keras's MD5 (a cached file is checked once per process; a cached
    file that fails the check is downloaded again). The download needs no Keras (Python's own `urllib`),
    so a missing file and no network are reported before TensorFlow is imported; it is written beside
    its final name and renamed into place when complete and checked. Progress goes to the `vggfeat`
    logger.

    Raises:
        WeightsError: no ImageNet weights for `arch`, or the file is not cached and cannot be downloaded
            (the message names the file, the URL, the folder to put it in, and `--weights PATH`).
    """
    fname, url, md5, _ = imagenet_file(arch, include_top)
    spec = get_arch(arch)
    try:
        return keras_cache_file(fname, url, md5)
    except Exception as exc:  # noqa: BLE001 - any failure to fetch means the same thing to the user
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WeightsError(
            f"cannot get ImageNet weights for {spec.name}: {fname} is not in {keras_cache_dir()} and "
            f"downloading it failed ({reason}); fetch {url} on a machine with network and put it in "
            f"{keras_cache_dir()}, or pass --weights PATH to a local copy"
        ) from None


def keras_cache_file(fname, url, md5) -> str:
    """Path of `fname` in Keras's cache (`keras_cache_dir()`), fetched from `url` once: a cached file is
    checked against `md5` (once per process), one that fails the check is fetched again; the download
    (urllib, no Keras) goes to a temporary file beside it, renamed into place when complete and checked.
    Progress on the `vggfeat` logger. Raises whatever the download raised (callers say it in one line)."""
    import logging

    target = os.path.join(keras_cache_dir(), fname)
    log = logging.getLogger("vggfeat")
    if os.path.isfile(target):
        if _file_digest(target, "md5") == md5:
            return target
        log.warning(f"{target} does not have the expected MD5 (a partial or damaged download); downloading it again")
    _download(url, target, md5, log)
    return target


def _download(url, target, md5, log, timeout=30):
    """Fetch `url` to `target` through a temporary file beside it, checking the MD5 before the rename."""
    import urllib.request

    folder = os.path.dirname(target)
    os.makedirs(folder, exist_ok=True)
    with urllib.request.urlopen(url, timeout=timeout) as response:
        size = int(response.headers.get("Content-Length") or 0)
        log.info(f"downloading {os.path.basename(target)}{f' ({size / 1e6:.0f} MB)' if size else ''} from {url} "
                 f"into {folder} (once)")
        fd, partial = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".part", dir=folder)
        try:
            h = hashlib.md5()
            with os.fdopen(fd, "wb") as out:
                for block in iter(lambda: response.read(1 << 20), b""):
                    h.update(block)
                    out.write(block)
            if h.hexdigest() != md5:
                raise WeightsError(f"the downloaded file's MD5 is {h.hexdigest()}, not {md5}")
            os.replace(partial, target)
        except BaseException:
            if os.path.exists(partial):
                os.remove(partial)
            raise


# ---------------------------------------------------------------------------------------------
# Reading weight files without building a model
#
# Everything a weight file declares is checked here, from the shapes and dtypes stored in it (h5py
# metadata and zip directories only, no weight data is read), before Keras builds a network from it:
# a file declaring a conv kernel of a billion channels or fc8 with 0 classes must give a one-line
# error, not a TensorFlow allocation failure.
# ---------------------------------------------------------------------------------------------

#: Names of the classifier layers, in order (fc6, fc7, fc8).
_FC_NAMES = ("fc1", "fc2", "predictions")
#: Bounds on what a file may list: layers, weights per layer (a VGG has about 40 layers, 2 weights each).
_MAX_LAYERS = 1000
_MAX_WEIGHTS_PER_LAYER = 16
#: The most bytes of JSON (config.json, vggfeat.json) read from a `.keras` file.
_MAX_JSON_BYTES = 64 << 20
#: A tensor declaring more than this many bytes must store at least 1/_MAX_EXPANSION of them: HDF5
#: allocates chunked datasets lazily, so a tiny file can declare a terabyte of zeros.
_LAZY_FLOOR = 64 << 20
_MAX_EXPANSION = 100
#: The largest pool5 side fc6 may be made for (an input of MAX_INPUT_SIZE).
_MAX_FC6_SIDE = MAX_INPUT_SIZE // 32


@dataclass
class WeightFileLayout:
    """What a weight file holds, after every tensor's shape was checked against the architecture.

    `fc_form` is `dense` (fc6-fc8 as Dense layers, the standard form), `conv` (as convolutions, the
    dense form) or None (no classifier); `fc1_inputs` is the number of values fc6 takes (pool5's side
    squared times 512) and `archs` the configurations the file fits (vgg11 and vgg11-lrn share weights).
    """

    conv_kernels: tuple  # per block, kernel sizes
    has_top: bool
    fc1_inputs: int | None
    classes: int | None
    legacy: bool
    fc_form: str | None = None
    archs: tuple = ()


@dataclass
class _Tensor:
    path: str
    shape: tuple
    declared: int  # bytes the shape and dtype declare
    stored: int  # bytes HDF5 has allocated for it


def input_size_error(value):
    """Why `value` is not an input size vggfeat accepts (an integer in MIN_INPUT_SIZE..MAX_INPUT_SIZE,
    the range of `--input-size`), or None when it is one."""
    if isinstance(value, bool) or not isinstance(value, int):
        return f"is not a whole number of pixels ({MIN_INPUT_SIZE}..{MAX_INPUT_SIZE})"
    if not MIN_INPUT_SIZE <= value <= MAX_INPUT_SIZE:
        return f"is out of range ({MIN_INPUT_SIZE}..{MAX_INPUT_SIZE})"
    return None


def _natural_key(name):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _fail(base, message):
    raise WeightsError(f"weight file {base}: {message}")


def _label(name):
    return f"{name} ({paper_name(name)})"


def _names_attr(obj, name, base, what):
    """A list-of-names attribute (`layer_names`, `weight_names`), its size checked before it is read."""
    try:
        aid = h5py.h5a.open(obj.id, name.encode())
    except KeyError:
        return []
    count = math.prod(aid.shape) if aid.shape else 1
    limit = _MAX_LAYERS if name == "layer_names" else _MAX_WEIGHTS_PER_LAYER
    if count > limit:
        _fail(base, f"{what} lists {count:,} entries (at most {limit:,} expected)")
    out = []
    for value in np.atleast_1d(obj.attrs[name]).ravel():
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        if not isinstance(value, str):
            _fail(base, f"{what} holds {type(value).__name__} values, not names")
        out.append(str(value))
    return out


def _tensor(obj, path, base) -> _Tensor:
    if not isinstance(obj, h5py.Dataset):
        _fail(base, f"tensor {path!r} is listed but missing")
    if obj.shape is None:
        _fail(base, f"tensor {path!r} has no shape")
    shape = tuple(int(s) for s in obj.shape)
    dtype = obj.dtype
    if dtype.kind != "f" and not (dtype.itemsize == 2 and "dtype" in obj.attrs and obj.attrs["dtype"] == "bfloat16"):
        _fail(base, f"tensor {path!r} holds {dtype} values, not floating-point weights")
    return _Tensor(path, shape, math.prod(shape) * dtype.itemsize, int(obj.id.get_storage_size()))


def read_weight_file_layout(path) -> WeightFileLayout:
    """Inspect a legacy `.h5` or a `.weights.h5` file: which VGG it holds, with or without top, every
    tensor's shape checked against that configuration (shapes and dtypes only, no weights are read).

    Raises `WeightsError` naming the tensor, the shape found and the shape expected."""
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise WeightsError(f"cannot read weight file {path}: {exc}") from None
    with f:
        return _guarded(_layout_of_h5, f, os.path.basename(os.fspath(path)))


def _guarded(func, *args):
    """Run a reader, turning whatever a damaged file makes h5py or zipfile raise into one line."""
    base = args[-1]
    try:
        return func(*args)
    except VggfeatError:
        raise
    except (OSError, KeyError, ValueError, TypeError, AttributeError, RuntimeError, EOFError,
            zipfile.BadZipFile, zlib.error, RecursionError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WeightsError(f"cannot read weight file {base}: {reason}") from None


def _layout_of_h5(f, base) -> WeightFileLayout:
    group = f
    if "layer_names" not in f.attrs and isinstance(f.get("model_weights"), h5py.Group):
        group = f["model_weights"]
    if "layer_names" in group.attrs:
        layout = _legacy_layout(group, base)
    elif isinstance(f.get("layers"), h5py.Group):
        layout = _keras3_layout(f["layers"], base)
    else:
        raise WeightsError(f"{base} is not a Keras weight file (no layer_names and no layers group)")
    recorded = _recorded_arch(f, base)
    if recorded is not None:
        if recorded not in layout.archs:
            _fail(base, f"it records the architecture {recorded}, but its tensors are those of "
                        f"{' or '.join(layout.archs)}")
        layout.archs = (recorded,)
    return layout


#: Root attribute of the weight files vggfeat writes (`save_weights`): the configuration's name, which
#: the tensors alone cannot always tell (vgg11 and vgg11-lrn have the same weights).
ARCH_ATTR = "vggfeat_arch"


def _recorded_arch(f, base):
    if ARCH_ATTR not in f.attrs:
        return None
    value = f.attrs[ARCH_ATTR]
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str) or value not in ARCHS:
        _fail(base, f"its {ARCH_ATTR} attribute {str(value)[:40]!r} is not one of {', '.join(ARCHS)}")
    return value


def save_weights(model, path) -> None:
    """Save a VGG network's weights as a Keras 3 `.weights.h5` file that also records its configuration,
    so that loading it needs no `arch` and refuses a wrong one (LRN has no weights: without the record a
    vgg11-lrn file could only be taken for vgg11).

    Examples:
        >>> import os, tempfile
        >>> from vggfeat.models import build_vgg
        >>> path = os.path.join(tempfile.mkdtemp(), "mine.weights.h5")
        >>> save_weights(build_vgg("vgg11-lrn", input_size=32, classes=2, seed=0), path)
        >>> describe_weights(path)["arch"]
        'vgg11-lrn'
    """
    from .models import infer_arch

    path = os.fspath(path)
    if not path.endswith(".weights.h5"):
        raise WeightsError(f"a weights file is named *.weights.h5 (Keras's rule). Received: {path!r}")
    arch = infer_arch(model)
    model.save_weights(path)
    with h5py.File(path, "a") as f:
        f.attrs[ARCH_ATTR] = arch


def _legacy_layout(group, base) -> WeightFileLayout:
    """The layout `keras.applications` downloads: `layer_names`, one group per layer, by name."""
    convs, fcs, bns = {}, {}, {}
    for name in _names_attr(group, "layer_names", base, "layer_names"):
        layer = group.get(name) if name else None
        if not isinstance(layer, h5py.Group):
            _fail(base, f"layer {name!r} is listed in layer_names but has no group")
        prefix = layer.name.lstrip("/")
        tensors = [_tensor(layer.get(w) if w else None, f"{prefix}/{w}", base)
                   for w in _names_attr(layer, "weight_names", base, f"weight_names of {name}")]
        if not tensors:
            continue
        m = re.fullmatch(r"block([1-5])_conv([1-9])", name)
        n = re.fullmatch(r"block([1-5])_bn([1-9])", name)
        if m:
            convs[(int(m.group(1)), int(m.group(2)))] = tensors
        elif n:
            bns[(int(n.group(1)), int(n.group(2)))] = tensors
        elif name in _FC_NAMES:
            fcs[name] = tensors
        else:
            _fail(base, f"layer {name!r} has weights, and no VGG network has such a layer")
    counts = []
    for b in range(1, 6):
        numbers = sorted(i for bb, i in convs if bb == b)
        if numbers != list(range(1, len(numbers) + 1)):
            _fail(base, f"the convolutions of block {b} are not numbered 1..n: "
                        + ", ".join(f"block{b}_conv{i}" for i in numbers))
        counts.append(len(numbers))
    trunk = [convs[key] for key in sorted(convs)]
    if bns and sorted(bns) != sorted(convs):
        missing = sorted(set(convs) ^ set(bns))[0]
        _fail(base, f"batch norm must follow every convolution; block{missing[0]}_conv{missing[1]} and "
                    f"block{missing[0]}_bn{missing[1]} do not come in pairs")
    norms = [bns[key] for key in sorted(convs)] if bns else None
    return _check_layout(base, trunk, tuple(counts), [fcs.get(n) for n in _FC_NAMES], legacy=True, bns=norms)


def _keras3_layout(layers, base) -> WeightFileLayout:
    """The Keras 3 layout (`.weights.h5`, and `model.weights.h5` inside `.keras`): layers by position,
    `layers/conv2d_<i>/vars/<j>` and `layers/dense_<i>/vars/<j>`, in the order Keras loads them."""
    keys = list(layers.keys())
    if len(keys) > _MAX_LAYERS:
        _fail(base, f"it lists {len(keys):,} layers (at most {_MAX_LAYERS:,} expected)")
    convs, denses, bns = [], [], []
    for key in sorted(keys, key=_natural_key):
        group = layers[key]
        if not isinstance(group, h5py.Group):
            _fail(base, f"'layers/{key}' is not a group")
        tensors = []
        found = group.get("vars")
        if isinstance(found, h5py.Group):
            names = list(found.keys())
            if len(names) > _MAX_WEIGHTS_PER_LAYER or not all(n.isdigit() for n in names):
                _fail(base, f"'layers/{key}/vars' holds {len(names)} entries that are not numbered weights")
            tensors = [_tensor(found[n], f"layers/{key}/vars/{n}", base) for n in sorted(names, key=int)]
        if not tensors:
            continue
        kind = re.sub(r"_\d+$", "", key)
        if kind == "conv2d":
            convs.append(tensors)
        elif kind == "dense":
            denses.append(tensors)
        elif kind == "batch_normalization":
            bns.append(tensors)
        else:
            _fail(base, f"layer 'layers/{key}' has weights, and no VGG network has such a layer")
    if denses:
        if len(denses) > 3:
            _fail(base, f"it holds {len(denses)} Dense layers; a VGG has three (fc6, fc7, fc8) or none")
        trunk, fc = convs, denses + [None] * (3 - len(denses))
    elif len(convs) >= 3 and len(convs[-2]) and convs[-2][0].shape == (1, 1, FC_WIDTH, FC_WIDTH):
        trunk, fc = convs[:-3], convs[-3:]  # fc6-fc8 as convolutions (the dense form)
    else:
        trunk, fc = convs, [None] * 3
    if bns and len(bns) != len(trunk):
        _fail(base, f"it holds {len(bns)} batch norm layers for {len(trunk)} convolutions; a batch-norm VGG has "
                    "one after every convolution")
    return _check_layout(base, trunk, None, fc, legacy=False, bns=bns or None)


def _check_tensors(base, name, tensors, expected):
    """`expected`: (role, shape) per tensor, in the order Keras stores them (kernel, bias)."""
    if len(tensors) != len(expected):
        _fail(base, f"{_label(name)} has {len(tensors)} weight tensors, expected {len(expected)} "
                    f"({' and '.join(role for role, _ in expected)})")
    for t, (role, shape) in zip(tensors, expected):
        if t.shape != tuple(shape):
            _fail(base, f"tensor {t.path!r} ({name} {role}) has shape {t.shape}, expected {tuple(shape)}")


def _check_layout(base, trunk, counts, fc, legacy, bns=None) -> WeightFileLayout:
    """Check the convolutions (`trunk`, in order), their batch norms (`bns`, one per convolution, or None)
    and fc6/fc7/fc8 (`fc`, None where absent) against the configuration they fit; `counts` (convolutions
    per block) is known for legacy files only."""
    bn = bool(bns)
    if counts is not None:
        candidates = [s for s in ARCHS.values() if tuple(len(k) for k in s.kernels) == counts and s.bn == bn]
        found = f"convolutions per block: {list(counts)}"
    else:
        candidates = [s for s in ARCHS.values() if sum(len(k) for k in s.kernels) == len(trunk) and s.bn == bn]
        found = f"{len(trunk)} convolutions; the configurations have 8, 10, 13 or 16"
    if not candidates:
        raise WeightsError(f"weight file {base} does not hold a VGG network of the paper's Table 1 ({found})")

    def fits(spec):
        return sum(bool(t) and t[0].shape == kernel for t, (_, kernel, _) in zip(trunk, conv_weight_shapes(spec)))

    best = max(fits(s) for s in candidates)
    chosen = [s for s in candidates if fits(s) == best]
    spec = next((s for s in chosen if s.name == "vgg16"), chosen[0])  # D before C when neither fits
    for tensors, (name, kernel, bias) in zip(trunk, conv_weight_shapes(spec)):
        _check_tensors(base, name, tensors, [("kernel", kernel), ("bias", bias)])
    for tensors, (name, _, bias) in zip(bns or (), conv_weight_shapes(spec)):
        _check_tensors(base, name.replace("_conv", "_bn"), tensors,
                       [("gamma", bias), ("beta", bias), ("moving mean", bias), ("moving variance", bias)])

    fc1, fc2, fc8 = fc
    form = fc1_inputs = classes = None
    if fc1 is not None:
        kernel = fc1[0].shape if fc1 else ()
        form = "conv" if len(kernel) == 4 else "dense"
        side = kernel[0] if len(kernel) == 4 else math.isqrt(kernel[0] // 512) if len(kernel) == 2 else 0
        want = (side, side, 512, FC_WIDTH) if form == "conv" else (side * side * 512, FC_WIDTH)
        if not 1 <= side <= _MAX_FC6_SIDE or kernel != want:
            example = "(7, 7, 512, 4096)" if form == "conv" else "(25088, 4096)"
            shape = "(s, s, 512, 4096)" if form == "conv" else "(512*s*s, 4096)"
            _fail(base, f"tensor {fc1[0].path!r} (fc1 kernel) has shape {kernel}, expected {shape} for an input "
                        f"of 32*s pixels, {MIN_INPUT_SIZE}..{MAX_INPUT_SIZE} ({example} at 224)")
        _check_tensors(base, "fc1", fc1, [("kernel", kernel), ("bias", (FC_WIDTH,))])
        fc1_inputs = side * side * 512
    if fc2 is not None:
        form2 = form or ("conv" if fc2 and len(fc2[0].shape) == 4 else "dense")
        kernel = (1, 1, FC_WIDTH, FC_WIDTH) if form2 == "conv" else (FC_WIDTH, FC_WIDTH)
        _check_tensors(base, "fc2", fc2, [("kernel", kernel), ("bias", (FC_WIDTH,))])
    if fc8 is not None:
        form8 = form or ("conv" if fc8 and len(fc8[0].shape) == 4 else "dense")
        prefix = (1, 1, FC_WIDTH) if form8 == "conv" else (FC_WIDTH,)
        kernel = fc8[0].shape if fc8 else ()
        if len(kernel) != len(prefix) + 1 or kernel[:-1] != prefix:
            want = "(1, 1, 4096, classes)" if form8 == "conv" else "(4096, classes)"
            _fail(base, f"tensor {fc8[0].path!r} (predictions kernel) has shape {kernel}, expected {want}")
        classes = kernel[-1]
        if not 1 <= classes <= MAX_CLASSES:
            _fail(base, f"tensor {fc8[0].path!r} (predictions kernel) has shape {kernel}: {classes:,} classes, "
                        f"expected 1..{MAX_CLASSES:,}")
        _check_tensors(base, "predictions", fc8, [("kernel", kernel), ("bias", (classes,))])

    for tensors in [*trunk, *(bns or ()), *(t for t in fc if t)]:
        for t in tensors:
            if t.declared > _LAZY_FLOOR and t.stored * _MAX_EXPANSION < t.declared:
                _fail(base, f"tensor {t.path!r} declares {t.declared:,} bytes of weights but the file stores "
                            f"only {t.stored:,} bytes of them")
    has_top = all(t is not None for t in fc)
    return WeightFileLayout(spec.kernels, has_top, fc1_inputs if has_top else None,
                            classes if has_top else None, legacy=legacy, fc_form=form if has_top else None,
                            archs=tuple(n for n, s in ARCHS.items() if s.kernels == spec.kernels and s.bn == bn))


def _arch_of_layout(layout: WeightFileLayout, path) -> list[str]:
    names = [n for n in layout.archs if ARCHS[n].kernels == layout.conv_kernels]
    if not names:
        raise WeightsError(
            f"weight file {os.path.basename(str(path))} does not hold a VGG network of the paper's Table 1 "
            f"(convolutions per block: {[len(b) for b in layout.conv_kernels]})"
        )
    return names


# ---------------------------------------------------------------------------------------------
# .keras files: a zip of config.json (the model Keras will build) and model.weights.h5
# ---------------------------------------------------------------------------------------------

#: Layer classes a VGG `.keras` model may hold (keras.applications' and vggfeat's networks).
_KERAS_LAYER_CLASSES = ("InputLayer", "Conv2D", "Dense", "MaxPooling2D", "Flatten", "Dropout", "Activation",
                        "GlobalAveragePooling2D", "GlobalMaxPooling2D", "LocalResponseNormalization",
                        "BatchNormalization", "ReLU")


@dataclass
class KerasFileInfo:
    """What a `.keras` file holds, checked: `arch`, `input_size` (None: any size), `classes` (None: no
    top), `fc_form` (`dense`, `conv` or None) and vggfeat's `metadata` (empty for other files)."""

    arch: str
    input_size: int | None
    classes: int | None
    fc_form: str | None
    metadata: dict


def _read_json_member(zf, name, base):
    info = zf.getinfo(name)
    if info.file_size > _MAX_JSON_BYTES:
        raise WeightsError(f"{base}: {name} holds {info.file_size:,} bytes (at most {_MAX_JSON_BYTES:,} expected)")
    try:
        with zf.open(name) as fh:
            data = fh.read(_MAX_JSON_BYTES + 1)
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WeightsError(f"{base}: {name} cannot be read ({reason})") from None
    if len(data) > _MAX_JSON_BYTES:
        raise WeightsError(f"{base}: {name} holds more than {_MAX_JSON_BYTES:,} bytes")
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise WeightsError(f"{base}: {name} is not valid JSON") from None


def _int_list(value, n):
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value] * n
    if not isinstance(value, (list, tuple)) or len(value) != n:
        return None
    if any(isinstance(v, bool) or not isinstance(v, int) for v in value):
        return None
    return list(value)


def _check_keras_config(config, base) -> dict:
    """Check the model Keras would build from config.json (every size it allocates), without Keras.

    Returns `kernels`, `lrn`, `input_size`, `classes`, `fc_form`, `fc6_side`."""

    def bad(message):
        raise WeightsError(f"{base}: config.json {message}")

    if not (isinstance(config, dict) and config.get("class_name") in ("Functional", "Sequential")
            and isinstance(config.get("config"), dict) and isinstance(config["config"].get("layers"), list)):
        bad("does not describe a Keras Functional or Sequential model")
    layers = config["config"]["layers"]
    if len(layers) > _MAX_LAYERS:
        bad(f"lists {len(layers):,} layers (at most {_MAX_LAYERS:,} expected)")
    side = "?"  # no InputLayer seen yet
    convs, fc, lrn, bns = {}, {}, False, set()
    for entry in layers:
        if not isinstance(entry, dict) or not isinstance(entry.get("config"), dict):
            bad("holds a layer entry that is not an object")
        cls, cfg = entry.get("class_name"), entry["config"]
        name = cfg.get("name", entry.get("name"))
        if cls not in _KERAS_LAYER_CLASSES:
            bad(f"declares layer {name!r} of class {cls!r}, which no VGG network has")
        if cls == "InputLayer":
            shape = cfg.get("batch_shape", cfg.get("batch_input_shape"))
            if not isinstance(shape, list) or len(shape) != 4 or shape[3] != 3 or shape[1] != shape[2]:
                bad(f"declares input shape {shape}, expected [null, S, S, 3] or [null, null, null, 3]")
            side = shape[1]
            if side is not None:
                reason = input_size_error(side)
                if reason:
                    bad(f"declares input size {side}, which {reason}")
        elif cls in ("Conv2D", "Dense"):
            size = cfg.get("filters" if cls == "Conv2D" else "units")
            kernel = _int_list(cfg.get("kernel_size"), 2) if cls == "Conv2D" else None
            m = re.fullmatch(r"block([1-5])_conv([1-9])", str(name))
            if m and cls == "Conv2D":
                b = int(m.group(1))
                if size != BLOCK_WIDTHS[b - 1]:
                    bad(f"declares {name} with {size} filters, expected {BLOCK_WIDTHS[b - 1]}")
                if kernel not in ([3, 3], [1, 1]) or cfg.get("groups", 1) != 1:
                    bad(f"declares {name} with kernel_size {cfg.get('kernel_size')}, expected [3, 3] or [1, 1]")
                convs[(b, int(m.group(2)))] = kernel[0]
            elif name in _FC_NAMES:
                form = "conv" if cls == "Conv2D" else "dense"
                if fc.get("form", form) != form:
                    bad("declares fc6-fc8 partly as Dense layers and partly as convolutions")
                fc["form"] = form
                if name == "predictions":
                    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_CLASSES:
                        bad(f"declares {size} classes for predictions (fc8), expected 1..{MAX_CLASSES:,}")
                    fc["classes"] = size
                elif size != FC_WIDTH:
                    bad(f"declares {name} ({paper_name(name)}) with {size} units, expected {FC_WIDTH}")
                if form == "conv":
                    k = kernel[0] if kernel and kernel[0] == kernel[1] else None
                    limit = _MAX_FC6_SIDE if name == "fc1" else 1
                    if k is None or not 1 <= k <= limit or cfg.get("groups", 1) != 1:
                        want = f"[s, s] with s = input size / 32, 1..{_MAX_FC6_SIDE}" if name == "fc1" else "[1, 1]"
                        bad(f"declares {name} with kernel_size {cfg.get('kernel_size')}, expected {want}")
                    if name == "fc1":
                        fc["side"] = k
                fc[name] = True
            else:
                bad(f"declares {cls} layer {name!r}, which no VGG network has")
        elif cls == "BatchNormalization":
            m = re.fullmatch(r"block([1-5])_bn([1-9])", str(name))
            if not m or cfg.get("axis", -1) not in (-1, 3, [3], [-1]):
                bad(f"declares batch norm layer {name!r}, expected block<b>_bn<i> over the channels")
            bns.add((int(m.group(1)), int(m.group(2))))
        elif cls == "LocalResponseNormalization":
            size = cfg.get("size", 5)
            if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 127 or size % 2 == 0:
                bad(f"declares {name} with size {size}, expected an odd number 1..127")
            lrn = True
    if side == "?":
        bad("declares no InputLayer")
    counts = []
    for b in range(1, 6):
        numbers = sorted(i for bb, i in convs if bb == b)
        if numbers != list(range(1, len(numbers) + 1)):
            bad(f"numbers the convolutions of block {b} {numbers}, expected 1..n")
        counts.append(numbers)
    kernels = tuple(tuple(convs[(b, i)] for i in numbers) for b, numbers in enumerate(counts, start=1))
    if bns and bns != set(convs):
        bad("declares batch norm after some convolutions only")
    arch = next((n for n, s in ARCHS.items() if s.kernels == kernels and s.lrn == lrn and s.bn == bool(bns)), None)
    if arch is None:
        raise WeightsError(f"{base} does not hold a VGG network of the paper's Table 1 (convolutions per block: "
                           f"{[len(k) for k in kernels]})")
    has_top = all(fc.get(n) for n in _FC_NAMES)
    if any(fc.get(n) for n in _FC_NAMES) and not has_top:
        bad("declares only some of fc6, fc7, fc8")
    if has_top and fc["form"] == "dense" and side is None:
        bad("declares Dense fc6-fc8 after an input of any size; the standard form needs a fixed size")
    return {"arch": arch, "kernels": kernels, "input_size": side, "classes": fc.get("classes"),
            "fc_form": fc.get("form") if has_top else None, "fc6_side": fc.get("side")}


class _StoredMember(io.RawIOBase):
    """An uncompressed zip member read in place (h5py seeks back and forth: zipfile's own reader would
    re-read the member from its start at every backward seek)."""

    def __init__(self, path, start, size):
        self._f = open(path, "rb")
        self._start, self._size, self._pos = start, size, 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def seek(self, offset, whence=io.SEEK_SET):
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self):
        return self._pos

    def readinto(self, buffer):
        n = max(0, min(len(buffer), self._size - self._pos))
        if n == 0:
            return 0
        self._f.seek(self._start + self._pos)
        got = self._f.readinto(memoryview(buffer)[:n])
        self._pos += got
        return got

    def close(self):
        self._f.close()
        super().close()


def _member_start(path, info):
    """Offset of an uncompressed member's data in the zip file (after its local header)."""
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
        size = os.fstat(f.fileno()).st_size
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise zipfile.BadZipFile(f"bad local header of {info.filename}")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    start = info.header_offset + 30 + name_len + extra_len
    if start + info.file_size > size:
        raise zipfile.BadZipFile(f"{info.filename} runs past the end of the file (truncated)")
    return start


def _keras_weights_layout(path, zf, base) -> WeightFileLayout:
    info = zf.getinfo("model.weights.h5")
    member = f"{base}/model.weights.h5"
    if info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 0x1:
        with _StoredMember(path, _member_start(path, info), info.file_size) as raw, h5py.File(raw, "r") as f:
            return _guarded(_layout_of_h5, f, member)
    if info.file_size > 1 << 30 and info.file_size > _MAX_EXPANSION * info.compress_size:
        raise WeightsError(f"{base}: model.weights.h5 expands {info.compress_size:,} bytes to {info.file_size:,}")
    with tempfile.TemporaryDirectory() as tmp:
        zf.extract(info, tmp)
        with h5py.File(os.path.join(tmp, info.filename), "r") as f:
            return _guarded(_layout_of_h5, f, member)


def inspect_keras_file(path) -> KerasFileInfo:
    """Check a `.keras` file without Keras: a zip archive whose config.json declares a VGG network
    (layers, sizes, input size, classes all bounded), whose model.weights.h5 holds tensors of exactly
    that network's shapes, and whose vggfeat metadata (if any) agrees with both."""
    path = os.fspath(path)
    base = os.path.basename(path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, struct.error):
        raise WeightsError(f"{base} is not a .keras file (not a zip archive)") from None
    except OSError as exc:
        raise WeightsError(f"cannot read {base}: {exc.strerror or exc}") from None
    with zf:
        names = set(zf.namelist())
        for needed in ("config.json", "model.weights.h5"):
            if needed not in names:
                raise WeightsError(f"{base} is not a Keras model file: the archive has no {needed}")
        model = _check_keras_config(_read_json_member(zf, "config.json", base), base)
        try:
            layout = _keras_weights_layout(path, zf, base)
        except VggfeatError:
            raise
        except (OSError, zipfile.BadZipFile, zlib.error, EOFError, ValueError, KeyError, RuntimeError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise WeightsError(f"cannot read weight file {base}/model.weights.h5: {reason}") from None
        meta = _read_json_member(zf, KERAS_METADATA_ENTRY, base) if KERAS_METADATA_ENTRY in names else {}

    arch, side = model["arch"], model["input_size"]
    if layout.conv_kernels != model["kernels"] or arch not in layout.archs:
        raise WeightsError(f"{base}: model.weights.h5 holds a {layout.archs[0]} network but config.json "
                           f"declares {arch}")
    if layout.fc_form != model["fc_form"]:
        held = {"dense": "Dense fc6-fc8", "conv": "fc6-fc8 as convolutions", None: "no fc6-fc8"}
        raise WeightsError(f"{base}: model.weights.h5 holds {held[layout.fc_form]} but config.json declares "
                           f"{held[model['fc_form']]}")
    if layout.fc_form is not None and layout.classes != model["classes"]:
        raise WeightsError(f"{base}: model.weights.h5 holds {layout.classes:,} classes but config.json declares "
                           f"{model['classes']:,}")
    if layout.fc_form == "dense" and layout.fc1_inputs != (side // 32) ** 2 * 512:
        raise WeightsError(f"{base}: model.weights.h5 holds an fc6 of {layout.fc1_inputs:,} inputs but config.json "
                           f"declares input size {side} (fc6 of {(side // 32) ** 2 * 512:,} inputs)")
    if layout.fc_form == "conv" and layout.fc1_inputs != model["fc6_side"] ** 2 * 512:
        raise WeightsError(f"{base}: model.weights.h5 holds an fc6 kernel of another size than config.json declares")
    _check_metadata(meta, base, arch, side, layout.classes if layout.fc_form else None)
    return KerasFileInfo(arch, side, layout.classes if layout.fc_form else None, layout.fc_form, meta)


# ---------------------------------------------------------------------------------------------
# Non-finite weights (NaN, inf): refused where a file's values are loaded
# ---------------------------------------------------------------------------------------------

#: Bytes of a stored tensor checked at a time (as `torch_weights` converts safetensors tensors).
_FINITE_CHUNK = 32 << 20
_ROLES = {"conv2d": ("kernel", "bias"), "dense": ("kernel", "bias"),
          "batch_normalization": ("gamma", "beta", "moving_mean", "moving_variance")}


def _keras3_labels(layers, kernels, fc_form) -> dict:
    """`{'layers/conv2d_3/vars/0': 'block2_conv2 kernel', ...}` for a Keras 3 weight file of a VGG whose
    convolutions per block are `kernels`, in the order `_keras3_layout` reads them (by position)."""
    found = {"conv2d": [], "dense": [], "batch_normalization": []}
    for key in sorted(layers.keys(), key=_natural_key):
        group = layers.get(key)
        kind = re.sub(r"_\d+$", "", key)
        if kind in found and isinstance(group, h5py.Group) and isinstance(group.get("vars"), h5py.Group) \
                and len(group["vars"]):
            found[kind].append(key)
    trunk = [f"block{b}_conv{i}" for b, block in enumerate(kernels, start=1) for i in range(1, len(block) + 1)]
    convs = found["conv2d"]
    names = dict(zip(convs, trunk))
    if fc_form == "conv":
        names.update(zip(convs[len(trunk):], _FC_NAMES))
    names.update(zip(found["dense"], _FC_NAMES))
    names.update(zip(found["batch_normalization"], [n.replace("_conv", "_bn") for n in trunk]))
    labels = {}
    for key, name in names.items():
        roles = _ROLES[re.sub(r"_\d+$", "", key)]
        for n, role in enumerate(roles):
            labels[f"layers/{key}/vars/{n}"] = f"{name} {role}"
    return labels


def _finite_dataset(ds, what):
    """`check_finite` on a stored tensor, a slice of its first axis at a time (at most `_FINITE_CHUNK` bytes)."""
    if ds.dtype.kind != "f" or not ds.size:
        return
    if ds.ndim == 0:
        check_finite(ds[()], what)
        return
    rows = ds.shape[0]
    step = max(1, _FINITE_CHUNK // max(1, ds.dtype.itemsize * (ds.size // rows)))
    for start in range(0, rows, step):
        check_finite(ds[start:start + step], what)


def _finite_h5(f, kernels, fc_form, base):
    layers = f.get("layers")
    if not isinstance(layers, h5py.Group):
        return
    labels = _keras3_labels(layers, kernels, fc_form)
    for key in sorted(layers.keys(), key=_natural_key):
        group = layers.get(key)
        found = group.get("vars") if isinstance(group, h5py.Group) else None
        if not isinstance(found, h5py.Group):
            continue
        for n in sorted(found.keys(), key=_natural_key):
            ds = found.get(n)
            if isinstance(ds, h5py.Dataset):
                name = f"layers/{key}/vars/{n}"
                label = f" ({labels[name]})" if name in labels else ""
                _finite_dataset(ds, f"weight file {base}: tensor {name!r}{label}")


def check_finite_weights(path, kernels, fc_form) -> None:
    """Refuse a Keras 3 weight file (`.weights.h5`, or the `model.weights.h5` inside a `.keras` file) that holds
    NaN or inf, in one line naming the variable (its place in the file and its VGG layer and role): a
    network built from such weights gives NaN, or wrong features with no word where ReLU and max pooling
    swallow the NaN. Every tensor is read a slice at a time (32 MB) and checked with `min`/`max` (no mask of
    its size): about 0.13 s for VGG-16's 553 MB once the file is in the page cache (measured; loading it takes
    3-5 s, and the peak memory does not change). `kernels` and `fc_form` (from the file's checked layout) name
    the variables. Legacy `.h5` files are checked as they are read (`_LegacyH5Source`).
    """
    path = os.fspath(path)
    base = os.path.basename(path)
    if not path.endswith(".keras"):
        try:
            f = h5py.File(path, "r")
        except OSError as exc:
            raise WeightsError(f"cannot read weight file {path}: {exc}") from None
        with f:
            _guarded(_finite_h5, f, kernels, fc_form, base)
        return
    member = f"{base}/model.weights.h5"
    try:
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo("model.weights.h5")
            if info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 0x1:
                with _StoredMember(path, _member_start(path, info), info.file_size) as raw, h5py.File(raw, "r") as f:
                    _guarded(_finite_h5, f, kernels, fc_form, member)
                return
            with tempfile.TemporaryDirectory() as tmp:  # sizes were checked by inspect_keras_file
                zf.extract(info, tmp)
                with h5py.File(os.path.join(tmp, info.filename), "r") as f:
                    _guarded(_finite_h5, f, kernels, fc_form, member)
    except VggfeatError:
        raise
    except (OSError, zipfile.BadZipFile, zlib.error, EOFError, ValueError, KeyError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WeightsError(f"cannot read weight file {member}: {reason}") from None


def _check_metadata(meta, base, arch, side, classes):
    """vggfeat's entry in a `.keras` file (written by `vggfeat finetune`) must agree with the model."""
    from .preprocessing import MODES

    def bad(message):
        raise WeightsError(f"{base}: {KERAS_METADATA_ENTRY} {message}")

    if not isinstance(meta, dict):
        bad("is not a JSON object")
    if "arch" in meta:
        try:
            named = get_arch(str(meta["arch"])).name
        except VggfeatError:
            bad(f"names an unknown architecture {meta['arch']!r}")
        if named != arch:
            bad(f"says arch={named} but config.json declares {arch}")
    names = meta.get("class_names", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(names) > MAX_CLASSES:
        bad(f"holds class_names that are not a list of at most {MAX_CLASSES:,} names")
    if names and len(names) != classes:
        bad(f"lists {len(names):,} class names but the model has {classes or 0:,} classes")
    if "input_size" in meta and meta["input_size"] != side and side is not None:
        bad(f"says input_size={meta['input_size']!r} but config.json declares {side}")
    if "input_size" in meta and input_size_error(meta["input_size"]):
        bad(f"says input_size={meta['input_size']!r}, which {input_size_error(meta['input_size'])}")
    if meta.get("preprocessing", "caffe") not in MODES:
        bad(f"names an unknown preprocessing {meta['preprocessing']!r}; known: {', '.join(MODES)}")


def describe_weights(path, arch=None) -> dict:
    """What a weight file or a `.keras` model holds, read with h5py/zipfile only (no Keras), every shape
    checked: `weights` (file name), `arch`, `classes`, `has_top`, `input_size`, and for `.keras` files
    saved by `vggfeat finetune` also `class_names` and `preprocessing`.

    With `arch`, the file must fit that configuration (`WeightsError` otherwise) and `arch` is the one
    reported. Without it, a file whose tensors fit several configurations and that does not record its
    own (vgg11 and vgg11-lrn: LRN has no weights) is reported as the first, with `also_fits` and a `note`
    saying so."""
    from . import torch_weights
    from .specs import fc_input_side

    path = os.fspath(path)
    src = weight_source(path)
    if src.kind == "torch":  # torchvision/timm: PATH.safetensors or timm:NAME (a .pth is refused)
        return torch_weights.describe(path, arch)
    if not src.is_file:
        raise WeightsError(f"{path!r} names no weight file to describe ({src.kind} weights)")
    base = src.name
    if src.kind == "keras":
        info = inspect_keras_file(path)
        meta = info.metadata
        out = {"weights": base, "arch": info.arch, "classes": info.classes,
               "class_names": list(meta.get("class_names", [])), "input_size": info.input_size,
               "preprocessing": meta.get("preprocessing"), "has_top": info.fc_form is not None}
        candidates = [info.arch]
    else:
        layout = read_weight_file_layout(path)
        candidates = _arch_of_layout(layout, path)
        out = {"weights": base, "arch": candidates[0], "classes": layout.classes, "has_top": layout.has_top,
               "input_size": fc_input_side(layout.fc1_inputs) if layout.fc_form == "dense" else None}
    if arch is not None:
        wanted = get_arch(arch).name
        if wanted not in candidates:
            raise WeightsError(f"{path} holds a {' or '.join(candidates)} network, not {wanted}; "
                               "drop --arch or fix it")
        out["arch"] = wanted
    elif len(candidates) > 1:
        out["also_fits"] = candidates[1:]
        out["note"] = (f"the file fits {' and '.join(candidates)} (LRN has no weights, so it cannot tell); "
                       f"taken as {candidates[0]}: pass --arch to choose")
    return out


def arch_note(weights, arch=None) -> str | None:
    """A note when a weight file fits several architectures, records none and none was chosen (vgg11 and
    vgg11-lrn: LRN has no weights, so the file cannot tell); None otherwise. Reads shapes only."""
    if arch is not None:
        return None
    try:  # only a legacy or .weights.h5 file cannot tell (a .keras records its arch; torch's vgg11 has no LRN twin)
        if weight_source(weights).kind != "h5":
            return None
        meta = describe_weights(weights)
    except WeightsError:
        return None
    return f"{meta['weights']}: {meta['note']}" if meta.get("note") else None


def read_keras_metadata(path) -> dict:
    """The metadata vggfeat stores inside the `.keras` files it writes (empty for other files, and for
    files whose entry is missing, too large or not JSON; `inspect_keras_file` reports those)."""
    try:
        with zipfile.ZipFile(path) as z:
            if KERAS_METADATA_ENTRY in z.namelist():
                meta = _read_json_member(z, KERAS_METADATA_ENTRY, os.path.basename(os.fspath(path)))
                return meta if isinstance(meta, dict) else {}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        pass
    return {}


def write_keras_metadata(path, metadata: dict) -> None:
    """Add vggfeat's metadata entry to a saved `.keras` file (Keras ignores entries it does not know)."""
    with zipfile.ZipFile(path, "a") as z:
        z.writestr(KERAS_METADATA_ENTRY, json.dumps(metadata, indent=1))


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def load_network(arch=None, weights="imagenet", *, seed=0, include_top=True, input_size=224, dtype=None,
                 form="standard"):
    """Build the network of `arch` and load `weights` into it.

    Args:
        arch: configuration name or letter; None means "from the weight file", else vgg16.
        weights: `imagenet`, `random`, `timm:NAME`, or a path to `.h5` / `.weights.h5` / `.keras` /
            `.safetensors` (torchvision's or timm's layout; their preprocessing is `torch`).
        seed: seed for `random`.
        include_top: whether fc6-fc8 are needed. With a weight file this is decided by the file
            (a file without top cannot give fc layers: asking for them is an error).
        input_size: input side for `random`/`imagenet` (ignored when a file fixes it).
        dtype: dtype policy for the built model.
        form: the form wanted (`standard`, `fully_conv`, `dense`; see `build_vgg`). Weights from a legacy
            `.h5` file (ImageNet's included) are loaded straight into that form, each variable made from the
            stored values, so the largest tensor is never held twice; other weights give the standard form,
            which `copy_weights` converts. Check the returned model's form rather than assume it.

    Returns:
        `(model, WeightsInfo)`.

    A weight file is checked first (every tensor's shape against the architecture, the class count, the
    input size it implies; for `.keras` files also the model config), before Keras is even imported.
    """
    src = weight_source(weights)  # its kind, and None, a missing file, a folder or an unknown type refused
    w = src.value
    if src.kind == "random":
        spec = get_arch(arch or "vgg16")
        if seed is None:
            raise WeightsError("random weights need a seed (an integer) to be reproducible")
        from .models import build_vgg

        model = build_vgg(spec.name, include_top=include_top, input_size=input_size, seed=int(seed), dtype=dtype)
        return model, WeightsInfo("random", "random", seed=int(seed))
    if src.kind == "imagenet":
        spec = get_arch(arch or "vgg16")
        path = imagenet_weights_path(spec.name, include_top)
        model = _load_h5_file(spec.name, path, include_top, input_size, dtype, form)
        return model, WeightsInfo("imagenet", "imagenet", path=path)

    from . import torch_weights

    if src.kind == "torch":  # torchvision/timm: PATH.safetensors or timm:NAME (a .pth is refused)
        model, name, path, named = torch_weights.load_torch_network(arch, w, include_top=include_top,
                                                                    input_size=input_size, dtype=dtype, form=form)
        return model, WeightsInfo("timm" if named else "file", name, preprocessing=torch_weights.PREPROCESSING,
                                  path=path, sha256=None if named else file_sha256(path))
    path, base = src.path, src.name
    if src.kind == "keras":
        checked = inspect_keras_file(path)  # before Keras builds anything from the file
        if arch is not None and get_arch(arch).name != checked.arch:
            raise WeightsError(f"{base} holds a {checked.arch} network, not {get_arch(arch).name}; "
                               "drop --arch or fix it")
        check_finite_weights(path, ARCHS[checked.arch].kernels, checked.fc_form)
        sha = file_sha256(path)
        import keras

        from .layers import LocalResponseNormalization
        from .models import infer_arch

        try:
            model = keras.saving.load_model(
                path, compile=False, safe_mode=True,
                custom_objects={"LocalResponseNormalization": LocalResponseNormalization},
            )
        except Exception as exc:  # noqa: BLE001 - report any loading failure as one line
            raise WeightsError(f"cannot load Keras model {base}: {str(exc).splitlines()[0]}") from None
        try:
            found = infer_arch(model)
        except Exception:  # noqa: BLE001
            raise WeightsError(f"{base} is not a VGG model with vggfeat/keras.applications layer names") from None
        if arch is not None and get_arch(arch).name != found:
            raise WeightsError(f"{base} holds a {found} network, not {get_arch(arch).name}; drop --arch or fix it")
        meta = checked.metadata
        return model, WeightsInfo("model", base, preprocessing=meta.get("preprocessing", "caffe"), path=path,
                                  sha256=sha, class_names=list(meta.get("class_names", [])), metadata=meta)
    model = _load_h5_file(arch, path, include_top, input_size, dtype, form)
    return model, WeightsInfo("file", base, path=path, sha256=file_sha256(path))


def _load_h5_file(arch, path, include_top, input_size, dtype, form="standard"):
    """Build the network a legacy `.h5` or `.weights.h5` file holds and load the file into it (legacy
    files straight into `form`, others into the standard form)."""
    from .models import NO_INIT, build_vgg, copy_weights
    from .specs import fc_input_side

    base = os.path.basename(path)
    layout = read_weight_file_layout(path)
    candidates = _arch_of_layout(layout, path)
    if arch is None:
        name = candidates[0]
    else:
        name = get_arch(arch).name
        if name not in candidates:
            raise WeightsError(f"weight file {base} holds a {candidates[0]} network and does not fit {name}")
    if include_top and not layout.has_top:
        raise WeightsError(f"weight file {base} has no fc6/fc7/fc8 weights (a 'notop' file); "
                           "use a conv layer, --fully-convolutional, or a file with top")
    if include_top and layout.fc_form == "conv":
        raise WeightsError(f"weight file {base} holds fc6-fc8 as convolutions (the dense form); vggfeat reads "
                           "FC weights from .h5 files of the standard form (Dense fc6-fc8): use a conv layer, or "
                           "save the whole model as .keras")
    if not layout.legacy:  # Keras loads these itself: their values are checked first (legacy ones as read)
        check_finite_weights(path, layout.conv_kernels, layout.fc_form)
    if layout.legacy and form == "dense" and include_top:
        side = fc_input_side(layout.fc1_inputs)
        return build_vgg(name, form="dense", classes=layout.classes, fc6_kernel=side // 32, dtype=dtype,
                         seed=_LegacyH5Source(path, name))
    if layout.legacy and form != "standard" and not include_top:
        return build_vgg(name, form="fully_conv", dtype=dtype, seed=_LegacyH5Source(path, name))
    if include_top:
        side = fc_input_side(layout.fc1_inputs)
        source = _LegacyH5Source(path, name) if layout.legacy else NO_INIT
        model = build_vgg(name, include_top=True, input_size=side, classes=layout.classes, dtype=dtype, seed=source)
    else:
        source = _LegacyH5Source(path, name) if layout.legacy else NO_INIT
        model = build_vgg(name, include_top=False, input_size=input_size, dtype=dtype, seed=source)
    if layout.legacy:
        return model
    try:
        if layout.has_top and not include_top:
            # Keras 3 files load by position: load into the full network, then keep the trunk.
            if layout.fc_form == "conv":
                full = build_vgg(name, form="dense", classes=layout.classes,
                                 fc6_kernel=fc_input_side(layout.fc1_inputs) // 32, seed=NO_INIT)
            else:
                full = build_vgg(name, include_top=True, input_size=fc_input_side(layout.fc1_inputs),
                                 classes=layout.classes, seed=NO_INIT)
            full.load_weights(path)
            copy_weights(full, model)
        else:
            model.load_weights(path)
    except Exception as exc:  # noqa: BLE001
        raise WeightsError(f"weight file {base} does not fit {name}: {str(exc).splitlines()[0]}") from None
    return model


class _LegacyH5Source:
    """The weights of a legacy Keras `.h5` file as initializers: `build_vgg(..., seed=source)` makes each
    variable from its stored values (read with h5py straight into one float32 array, which the TensorFlow
    variable then adopts without a copy), so no weight is ever held twice (fc6 of VGG-16 is 411 MB) and no
    random initial values are drawn. A Dense kernel is given the shape of the convolution that replaces it
    in the dense form (the same values in the same order, see `dense_kernel_to_conv`)."""

    def __init__(self, path, arch_name):
        self.path, self.arch_name = path, arch_name
        self.base = os.path.basename(path)

    def _read(self, layer_name, index, shape, dtype):
        with h5py.File(self.path, "r") as f:
            group = f["model_weights"] if ("layer_names" not in f.attrs and "model_weights" in f) else f
            if layer_name not in group:
                raise WeightsError(f"weight file {self.base} has no weights for layer {layer_name} of {self.arch_name}")
            g = group[layer_name]
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in g.attrs.get("weight_names", [])]
            needed = 4 if "_bn" in layer_name else 2
            if len(names) != needed:
                raise WeightsError(f"weight file {self.base}: layer {layer_name} has {len(names)} weights, "
                                   f"{self.arch_name} needs {needed}")
            ds = g[names[index]]
            shape = tuple(int(d) for d in shape)
            stored = tuple(ds.shape)
            as_conv = len(stored) == 2 and len(shape) == 4 and math.prod(stored) == math.prod(shape)
            if stored != shape and not as_conv:
                raise WeightsError(f"weight file {self.base}: {names[index]} has shape {stored}, "
                                   f"{self.arch_name} needs {shape}")
            values = _aligned_empty(shape)
            ds.read_direct(values.reshape(stored))  # a view: C order, as Flatten orders fc6's inputs
        label = f"{names[index]!r}" + ("" if layer_name in names[index] else f" ({layer_name})")
        check_finite(values, f"weight file {self.base}: tensor {label}")
        return _adoptable(values, dtype)

    def initializers(self, layer_name):
        roles = _BN_ROLES if "_bn" in layer_name else ("kernel", "bias")
        return {f"{role}_initializer": functools.partial(self._initial, layer_name, index)
                for index, role in enumerate(roles)}

    def _initial(self, layer_name, index, shape, dtype=None):
        return self._read(layer_name, index, shape, dtype)


#: A Keras BatchNormalization layer's weights, in the order Keras stores them.
_BN_ROLES = ("gamma", "beta", "moving_mean", "moving_variance")
