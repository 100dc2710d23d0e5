"""Weights, given as one argument: `imagenet`, `random` (with a seed), or a path.

- `imagenet`: Keras's own files for vgg16/vgg19 (converted from the authors' Caffe release), fetched once
  into the Keras cache by `keras.utils.get_file` with Keras's hash check. No such files exist for the
  other configurations, and without network the error names the file, where to put it, and the
  `--weights PATH` alternative. There is never a silent fallback to random weights.
- a path: the legacy `.h5` file that `keras.applications` downloads (with or without top), a Keras 3
  `.weights.h5`, or a whole `.keras` model (a fine-tuned one, say), loaded in Keras's safe mode.
- `random`: Glorot-uniform kernels from a seed; the same seed gives the same weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
from dataclasses import dataclass, field

import h5py

from .errors import WeightsError
from .specs import ARCHS, get_arch

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


def file_sha256(path, chunk=1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def keras_home() -> str:
    """Keras's home folder, read now (`$KERAS_HOME`, default ~/.keras) as Keras itself resolves it."""
    return os.path.expanduser(os.environ.get("KERAS_HOME") or os.path.join("~", ".keras"))


def keras_cache_dir() -> str:
    """The folder where Keras keeps downloaded weight files (`$KERAS_HOME/models`, default ~/.keras/models)."""
    return os.path.join(keras_home(), "models")


def imagenet_weights_path(arch: str, include_top: bool = True) -> str:
    """Path of Keras's ImageNet weight file for `arch`, downloading it once (hash-checked) if needed."""
    import keras

    spec = get_arch(arch)
    key = (spec.name, bool(include_top))
    if key not in IMAGENET_FILES:
        raise WeightsError(
            f"no ImageNet weights exist for {spec.name} ({spec.letter}): Keras publishes them for vgg16 and "
            "vgg19 only; use --weights random, --weights PATH, or train it with `vggfeat finetune`"
        )
    fname, url, md5 = IMAGENET_FILES[key]
    try:
        return keras.utils.get_file(fname, url, cache_dir=keras_home(), cache_subdir="models", file_hash=md5)
    except Exception as exc:  # noqa: BLE001 - any failure to fetch means the same thing to the user
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WeightsError(
            f"cannot get ImageNet weights for {spec.name}: {fname} is not in {keras_cache_dir()} and "
            f"downloading it failed ({reason}); fetch {url} on a machine with network and put it in "
            f"{keras_cache_dir()}, or pass --weights PATH to a local copy"
        ) from None


# ---------------------------------------------------------------------------------------------
# Reading weight files without building a model
# ---------------------------------------------------------------------------------------------


@dataclass
class WeightFileLayout:
    """What a weight file holds: conv kernel sizes per block, and the classifier if any."""

    conv_kernels: tuple  # per block, kernel sizes
    has_top: bool
    fc1_inputs: int | None
    classes: int | None
    legacy: bool


def _natural_key(name):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def read_weight_file_layout(path) -> WeightFileLayout:
    """Inspect a legacy `.h5` or a `.weights.h5` file: which VGG it holds, with or without top."""
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise WeightsError(f"cannot read weight file {path}: {exc}") from None
    with f:
        group = f
        if "layer_names" not in f.attrs and "model_weights" in f:
            group = f["model_weights"]
        if "layer_names" in group.attrs:
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in group.attrs["layer_names"]]
            blocks = {}
            fc = {}
            for name in names:
                wnames = group[name].attrs.get("weight_names", [])
                shapes = [group[name][w.decode() if isinstance(w, bytes) else w].shape for w in wnames]
                kernels = [s for s in shapes if len(s) >= 2]
                if not kernels:
                    continue
                m = re.fullmatch(r"block(\d)_conv(\d)", name)
                if m:
                    blocks.setdefault(int(m.group(1)), []).append(int(kernels[0][0]))
                elif name in ("fc1", "fc2", "predictions"):
                    fc[name] = kernels[0]
            conv = tuple(tuple(blocks.get(b, ())) for b in range(1, 6))
            has_top = "fc1" in fc and "fc2" in fc and "predictions" in fc
            return WeightFileLayout(conv, has_top, int(fc["fc1"][0]) if has_top else None,
                                    int(fc["predictions"][-1]) if has_top else None, legacy=True)
        if "layers" in f:
            conv_shapes, dense_shapes = [], []
            for lname in sorted(f["layers"].keys(), key=_natural_key):
                g = f["layers"][lname]
                if "vars" not in g or "0" not in g["vars"]:
                    continue
                shape = g["vars"]["0"].shape
                (conv_shapes if len(shape) == 4 else dense_shapes).append(shape)
            # Keras 3 files keep no layer names, only positions: blocks 1-3 are told apart by width;
            # the 512-wide convs belong half to block 4 and half to block 5 in every configuration.
            by_width = {w: [int(k[0]) for k in conv_shapes if k[-1] == w] for w in (64, 128, 256, 512)}
            wide = by_width[512]
            conv = (tuple(by_width[64]), tuple(by_width[128]), tuple(by_width[256]),
                    tuple(wide[: len(wide) // 2]), tuple(wide[len(wide) // 2:]))
            has_top = len(dense_shapes) == 3
            return WeightFileLayout(tuple(conv), has_top, int(dense_shapes[0][0]) if has_top else None,
                                    int(dense_shapes[-1][-1]) if has_top else None, legacy=False)
    raise WeightsError(f"{path} is not a Keras weight file (no layer_names and no layers group)")


def _arch_of_layout(layout: WeightFileLayout, path) -> list[str]:
    names = [n for n, s in ARCHS.items() if s.kernels == layout.conv_kernels]
    if not names:
        raise WeightsError(
            f"weight file {os.path.basename(str(path))} does not hold a VGG network of the paper's Table 1 "
            f"(convolutions per block: {[len(b) for b in layout.conv_kernels]})"
        )
    return names


def describe_weights(path) -> dict:
    """What a weight file or a vggfeat `.keras` model holds, read with h5py/zipfile only (no Keras):
    `weights` (file name), `arch`, `classes`, `has_top`, `input_size`, and for `.keras` files saved by
    `vggfeat finetune` also `class_names` and `preprocessing`."""
    from .specs import fc_input_side

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WeightsError(f"weight file not found: {path}")
    base = os.path.basename(path)
    if path.endswith(".keras"):
        meta = read_keras_metadata(path)
        if not meta:
            raise WeightsError(f"{base} was not saved by `vggfeat finetune` (it has no {KERAS_METADATA_ENTRY})")
        names = list(meta.get("class_names", []))
        return {"weights": base, "arch": meta["arch"], "classes": len(names) or None, "class_names": names,
                "input_size": meta.get("input_size"), "preprocessing": meta.get("preprocessing"), "has_top": True}
    layout = read_weight_file_layout(path)
    return {"weights": base, "arch": _arch_of_layout(layout, path)[0], "classes": layout.classes,
            "has_top": layout.has_top, "input_size": fc_input_side(layout.fc1_inputs) if layout.has_top else None}


def read_keras_metadata(path) -> dict:
    """The metadata vggfeat stores inside the `.keras` files it writes (empty for other files)."""
    try:
        with zipfile.ZipFile(path) as z:
            if KERAS_METADATA_ENTRY in z.namelist():
                return json.loads(z.read(KERAS_METADATA_ENTRY).decode("utf-8"))
    except (zipfile.BadZipFile, OSError, ValueError):
        pass
    return {}


def write_keras_metadata(path, metadata: dict) -> None:
    """Add vggfeat's metadata entry to a saved `.keras` file (Keras ignores entries it does not know)."""
    with zipfile.ZipFile(path, "a") as z:
        z.writestr(KERAS_METADATA_ENTRY, json.dumps(metadata, indent=1))


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def load_network(arch=None, weights="imagenet", *, seed=0, include_top=True, input_size=224, dtype=None):
    """Build the standard-form network of `arch` and load `weights` into it.

    Args:
        arch: configuration name or letter; None means "from the weight file", else vgg16.
        weights: `imagenet`, `random`, or a path to `.h5` / `.weights.h5` / `.keras`.
        seed: seed for `random`.
        include_top: whether fc6-fc8 are needed. With a weight file this is decided by the file
            (a file without top cannot give fc layers: asking for them is an error).
        input_size: input side for `random`/`imagenet` (ignored when a file fixes it).
        dtype: dtype policy for the built model.

    Returns:
        `(model, WeightsInfo)`.
    """
    import keras

    from .models import build_vgg, infer_arch

    if weights is None:
        raise WeightsError("weights must be 'imagenet', 'random' or a path; there is no default of no weights")
    w = str(weights)
    if w == "random":
        spec = get_arch(arch or "vgg16")
        if seed is None:
            raise WeightsError("random weights need a seed (an integer) to be reproducible")
        model = build_vgg(spec.name, include_top=include_top, input_size=input_size, seed=int(seed), dtype=dtype)
        return model, WeightsInfo("random", "random", seed=int(seed))
    if w == "imagenet":
        spec = get_arch(arch or "vgg16")
        path = imagenet_weights_path(spec.name, include_top)
        model = _load_h5_file(spec.name, path, include_top, input_size, dtype)
        return model, WeightsInfo("imagenet", "imagenet", path=path)

    path = os.fspath(weights)
    if not os.path.exists(path):
        raise WeightsError(f"weights must be 'imagenet', 'random' or an existing file. Received: {path!r}")
    if os.path.isdir(path):
        raise WeightsError(f"weights path is a folder, not a file: {path}")
    sha = file_sha256(path)
    base = os.path.basename(path)
    if path.endswith(".keras"):
        from .layers import LocalResponseNormalization

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
        meta = read_keras_metadata(path)
        return model, WeightsInfo("model", base, preprocessing=meta.get("preprocessing", "caffe"), path=path,
                                  sha256=sha, class_names=list(meta.get("class_names", [])), metadata=meta)
    if not (path.endswith(".h5") or path.endswith(".hdf5")):
        raise WeightsError(f"unknown weight file type {base}: expected .h5, .weights.h5 or .keras")

    model = _load_h5_file(arch, path, include_top, input_size, dtype)
    return model, WeightsInfo("file", base, path=path, sha256=sha)


def _load_h5_file(arch, path, include_top, input_size, dtype):
    """Build the network a legacy `.h5` or `.weights.h5` file holds and load the file into it."""
    from .models import build_vgg, copy_weights
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
    if include_top:
        side = fc_input_side(layout.fc1_inputs)
        model = build_vgg(name, include_top=True, input_size=side, classes=layout.classes, dtype=dtype)
    else:
        model = build_vgg(name, include_top=False, input_size=input_size, dtype=dtype)
    if layout.legacy:
        _load_legacy(model, path, name)
        return model
    try:
        if layout.has_top and not include_top:
            # Keras 3 files load by position: load into the full network, then keep the trunk.
            full = build_vgg(name, include_top=True, input_size=fc_input_side(layout.fc1_inputs),
                             classes=layout.classes)
            full.load_weights(path)
            copy_weights(full, model)
        else:
            model.load_weights(path)
    except Exception as exc:  # noqa: BLE001
        raise WeightsError(f"weight file {base} does not fit {name}: {str(exc).splitlines()[0]}") from None
    return model


def _load_legacy(model, path, arch_name):
    """Load a legacy `.h5` by layer name, after checking that every layer of `model` is in the file."""
    base = os.path.basename(path)
    with h5py.File(path, "r") as f:
        group = f["model_weights"] if ("layer_names" not in f.attrs and "model_weights" in f) else f
        present = {n.decode() if isinstance(n, bytes) else str(n) for n in group.attrs.get("layer_names", [])}
    missing = [layer.name for layer in model.layers if layer.weights and layer.name not in present]
    if missing:
        raise WeightsError(f"weight file {base} has no weights for layers {', '.join(missing)} of {arch_name}")
    try:
        model.load_weights(path, by_name=True)
    except Exception as exc:  # noqa: BLE001
        raise WeightsError(f"weight file {base} does not fit {arch_name}: {str(exc).splitlines()[0]}") from None
