"""`ExtractorConfig`: the one home of the settings that decide a feature vector.

Every entry point builds its extractor from one of these (`extract` on both engines, `iter_features`,
`VGGFeaturizer`, `predict`'s rebuilt extractor, `--resume`'s check), validates it with the same rules,
and writes it to (and reads it from) HDF5 attributes and classifier files with the same pair of
functions, `to_attrs` and `from_attrs`. Batch size and worker counts are not part of it: they do not
change a feature.

Nothing here imports Keras, so a configuration is checked in well under a second, before any model is
built.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, fields, replace

from .errors import ArchitectureError, InputError, LayerError
from .specs import canonical_layer

FORMS = ("standard", "fully_conv", "dense")
POOLINGS = ("avg", "max", "none")
PRECISIONS = ("float32", "bfloat16", "float16")
RESIZE_MODES = ("crop", "squash", "short")
AGGREGATES = ("mean", "stack", "max")
JPEG_DECODES = ("full", "reduced")
#: What `from_attrs` reads for a file written before `jpeg_decode` was recorded: those were decoded reduced.
JPEG_DECODE_BEFORE_RECORDED = "reduced"

#: The input sizes (crop side, or shorter side) and scales vggfeat accepts, in pixels.
MIN_INPUT_SIZE = 32
MAX_INPUT_SIZE = 4096
#: The dense form's smallest input: fc6 is a 7x7 convolution over pool5 (224 / 32 = 7).
MIN_DENSE_SIZE = 224

_NAMED_WEIGHTS = ("imagenet", "random")


@dataclass(frozen=True, eq=False)
class ExtractorConfig:
    """The settings that decide the features an extractor computes.

    Attributes:
        layers: layer names, Keras or paper spelling (`fc7`, `conv5_3`, `pool5`...), after the ReLU.
        arch: `vgg11`, `vgg11-lrn`, `vgg13`, `vgg16c`, `vgg16`, `vgg19` (or A..E); None: from the
            weight file, else vgg16.
        weights: `imagenet`, `random`, or a weight file's path.
        weights_sha256: the SHA-256 of the weight file (its identity; filled in when the extractor is
            built, and checked against the file when given).
        seed: seed of `random` weights.
        form: `standard`, `fully_conv` (no FC layers, conv maps at any size) or `dense` (the paper's
            Sect. 3.2: fc6-fc8 as convolutions, any size >= 224).
        pooling: `avg`, `max` or `none` (global pooling of spatial maps).
        input_size: crop side (standard form), or shorter side (other forms); None: the weights' size.
        resize: `crop`, `squash` or `short`; None: `crop` for the standard form, `short` otherwise.
        precision: compute precision, `float32`, `bfloat16` or `float16` (mixed precision).
        scales: the paper's multi-scale descriptor (Appendix B): shorter sides Q, e.g. (256, 384, 512).
        flip: with scales, average with the horizontally flipped image.
        aggregate: with scales, `mean`, `stack` or `max` over scales.
        l2: with scales, L2-normalise the descriptor.
        jpeg_decode: `full` (default): a JPEG file is decoded at its own size and then resized, so a path
            and its decoded array give exactly the same features; `reduced`: a JPEG over twice the target
            size is decoded at a 1/2, 1/4 or 1/8 DCT scale first (Pillow's `draft`), faster to decode but
            with slightly different pixels, so different features (docs/benchmarks.md measures both). A
            file written before this setting was recorded was decoded `reduced`, and is read so.

    A config is validated when it is made (`ValueError` subclasses with one-line messages naming the
    setting); `ExtractorConfig(**c.to_kwargs()) == c` and `from_attrs(to_attrs(c)) == c`.

    Two configs are equal when they give the same features: a default that the weights decide compares
    as what it resolves to (with `imagenet` and `random` weights, `arch=None` is vgg16 and, without
    scales, `input_size=None` is 224), and a weight file by its absolute path. So the config read back
    from an output file (`from_attrs(read_attrs(path))`, which records the resolved values) equals the
    one it was extracted with; for a weight file, whose architecture, size and SHA-256 are known only once
    it is read, it equals the built extractor's (`build_extractor(config).config`).
    `vggfeat.build_extractor(config)` builds the extractor it describes.

    Examples:
        >>> from vggfeat import ExtractorConfig
        >>> c = ExtractorConfig(layers=["fc7"], weights="random", form="dense", scales=[256, 384])
        >>> c.form, c.scales, c.resize
        ('dense', (256, 384), 'short')
        >>> ExtractorConfig(layers=["fc7"], flip=True)
        Traceback (most recent call last):
        ...
        vggfeat.errors.InputError: flip=True belongs to the multi-scale descriptor: give scales
    """

    layers: tuple = ("fc7",)
    arch: str | None = None
    weights: str = "imagenet"
    weights_sha256: str | None = None
    seed: int = 0
    form: str = "standard"
    pooling: str = "avg"
    input_size: int | None = None
    resize: str | None = None
    precision: str = "float32"
    scales: tuple | None = None
    flip: bool = False
    aggregate: str = "mean"
    l2: bool = False
    jpeg_decode: str = "full"

    def __post_init__(self):
        set_ = object.__setattr__
        layers = [self.layers] if isinstance(self.layers, str) else list(self.layers or ())
        set_(self, "layers", tuple(canonical_layer(x) for x in layers))  # stored as `fc7` however spelled
        set_(self, "weights", "imagenet" if self.weights is None else str(os.fspath(self.weights)))
        if self.scales is not None:
            scales = [self.scales] if isinstance(self.scales, (int, str)) else list(self.scales)
            set_(self, "scales", tuple(_int("scales", q) for q in scales) or None)
        if self.input_size is not None:
            set_(self, "input_size", _int("input_size", self.input_size))
        set_(self, "seed", _int("seed", self.seed) if self.weights == "random" else 0)  # only random uses it
        if self.scales is not None and self.input_size == max(self.scales):
            set_(self, "input_size", None)  # the scales decide the sizes (format 1 stored the largest)
        if self.pooling is None:
            set_(self, "pooling", "none")
        if self.arch is not None:
            from .specs import get_arch

            set_(self, "arch", get_arch(self.arch).name)
        if self.resize is None:
            set_(self, "resize", "crop" if self.form == "standard" else "short")
        for name in ("flip", "l2"):
            set_(self, name, bool(getattr(self, name)))
        self.validate()

    # -----------------------------------------------------------------------------------------
    def validate(self) -> "ExtractorConfig":
        """Check every rule that does not need the weights; raise a one-line error naming the setting."""
        from .specs import get_arch, resolve_layer

        if not self.layers:
            raise LayerError("no layer given: name at least one, e.g. fc7")
        if len(set(self.layers)) != len(self.layers):
            raise LayerError(f"a layer is named twice: {', '.join(self.layers)}")
        _choice("form", self.form, FORMS, ArchitectureError)
        _choice("pooling", self.pooling, POOLINGS)
        _choice("precision", self.precision, PRECISIONS)
        _choice("resize", self.resize, RESIZE_MODES)
        _choice("jpeg_decode", self.jpeg_decode, JPEG_DECODES)
        if self.seed < 0:
            raise InputError(f"seed must be 0 or more. Received: seed={self.seed}")
        if self.input_size is not None and not MIN_INPUT_SIZE <= self.input_size <= MAX_INPUT_SIZE:
            raise InputError(f"input_size must be between {MIN_INPUT_SIZE} and {MAX_INPUT_SIZE} pixels. "
                             f"Received: input_size={self.input_size}")
        if self.form == "standard" and self.resize == "short":
            raise InputError("resize=short gives images of different shapes, which the FC layers of the "
                             "standard form cannot take; use form fully_conv or dense (--fully-convolutional, "
                             "--dense), or resize crop/squash")
        if self.form == "dense" and self.input_size is not None and self.input_size < MIN_DENSE_SIZE:
            raise InputError(f"the dense form needs input of at least {MIN_DENSE_SIZE} pixels. "
                             f"Received: input_size={self.input_size}")
        if self.weights_sha256 is not None and self.weights in _NAMED_WEIGHTS:
            raise InputError(f"weights_sha256 belongs to a weight file, not weights={self.weights}")
        if self.scales is None:
            for name, value, default in (("flip", self.flip, False), ("l2", self.l2, False),
                                         ("aggregate", self.aggregate, "mean")):
                if value != default:
                    raise InputError(f"{name}={value} belongs to the multi-scale descriptor: give scales")
        else:
            self._validate_scales()
        if self.arch is not None or self.weights in _NAMED_WEIGHTS:
            spec = get_arch(self.arch or "vgg16")
            for name in self.layers:
                resolve_layer(spec, name, include_top=self.form != "fully_conv")
        return self

    def _validate_scales(self):
        _choice("aggregate", self.aggregate, AGGREGATES)
        if self.form == "standard":
            raise InputError("scales need form dense (FC layers at any size, --dense) or fully_conv "
                             "(--fully-convolutional)")
        if self.input_size is not None and self.input_size != max(self.scales):
            raise InputError("scales replace input_size: each scale is a shorter side")
        if self.resize != "short":
            raise InputError("scales rescale whole images (shorter side to each scale): resize must be short")
        if self.pooling == "none":
            raise InputError("scales need pooling avg or max (maps of different scales differ in size)")
        low = MIN_DENSE_SIZE if self.form == "dense" else MIN_INPUT_SIZE
        for q in self.scales:
            if not low <= q <= MAX_INPUT_SIZE:
                raise InputError(f"each scale must be between {low} and {MAX_INPUT_SIZE} pixels with form "
                                 f"{self.form}. Received: scales={list(self.scales)}")
        if len(set(self.scales)) != len(self.scales):
            raise InputError(f"a scale is given twice. Received: scales={list(self.scales)}")

    # -----------------------------------------------------------------------------------------
    def _resolved(self, name):
        """The value of setting `name` as it decides features: what a default resolves to where the
        config alone says (see the class docstring), a weight file's absolute path."""
        value = getattr(self, name)
        if name == "weights" and self.weights_is_file:
            return os.path.abspath(value)
        if self.weights in _NAMED_WEIGHTS:
            if name == "arch" and value is None:
                return "vgg16"
            if name == "input_size" and value is None and self.scales is None:
                return 224
        return value

    def _key(self):
        return tuple(self._resolved(f.name) for f in fields(self))

    def __eq__(self, other):
        if not isinstance(other, ExtractorConfig):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    @property
    def multiscale(self) -> bool:
        return self.scales is not None

    @property
    def weights_is_file(self) -> bool:
        return self.weights not in _NAMED_WEIGHTS and not self.weights.lower().startswith("timm:")

    def to_kwargs(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def replace(self, **changes) -> "ExtractorConfig":
        return replace(self, **changes)

    def to_attrs(self) -> dict:
        """The attributes that record this config in an HDF5 file or a classifier file.

        `weights` is the name (`imagenet`, `random`) or the file's base name, as format 1 stored it;
        a file's full path is kept in `weights_path` and its identity in `weights_sha256`.
        """
        out = {"layers": json.dumps(list(self.layers)), "weights": self.weights, "form": self.form, "pooling": self.pooling, "resize": self.resize, "precision": self.precision, "jpeg_decode": self.jpeg_decode}
        if self.weights == "random":
            out["seed"] = self.seed
        if self.weights_is_file:
            out["weights"] = os.path.basename(self.weights)
            out["weights_path"] = os.path.abspath(self.weights)
        for key in ("arch", "weights_sha256", "input_size"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.scales is not None:
            out.update(scales=json.dumps(list(self.scales)), flip=self.flip, aggregate=self.aggregate, l2=self.l2)
        return out

    @classmethod
    def from_attrs(cls, attrs, *, weights=None, source="the file") -> "ExtractorConfig":
        """The config recorded in `attrs` (from `to_attrs`, an HDF5 file's or a classifier file's
        settings). `weights`: the path of the weight file, when the stored one is a file and its
        recorded path is not the one to use. Stored values are input: each is validated, and an
        error names the setting and `source`."""
        a = {k: attr_value(v) for k, v in dict(attrs).items()}
        try:
            layers = a.get("layers", a.get("layer", "fc7"))
            if isinstance(layers, str) and layers.startswith("["):
                layers = json.loads(layers)
            scales = a.get("scales")
            if isinstance(scales, str):
                scales = json.loads(scales)
            stored = a.get("weights", "imagenet")
            if weights is None:
                named = stored in _NAMED_WEIGHTS or str(stored).lower().startswith("timm:")
                weights = stored if named else a.get("weights_path", stored)
            seed = a.get("seed", 0) if stored == "random" else 0
            return cls(layers=layers, arch=a.get("arch"), weights=weights, weights_sha256=a.get("weights_sha256"),
                       seed=seed, form=a.get("form", "standard"), pooling=a.get("pooling", "avg"),
                       input_size=a.get("input_size"), resize=a.get("resize"),
                       precision=a.get("precision", "float32"), scales=scales, flip=bool(a.get("flip", False)),
                       aggregate=a.get("aggregate", "mean"), l2=bool(a.get("l2", False)),
                       jpeg_decode=a.get("jpeg_decode", JPEG_DECODE_BEFORE_RECORDED))
        except (InputError, LayerError, ArchitectureError) as exc:
            raise type(exc)(f"{source}: stored settings: {exc}") from None
        except (ValueError, TypeError) as exc:
            raise InputError(f"{source}: stored settings cannot be read: {exc}") from None

    def differences(self, other: "ExtractorConfig") -> list:
        """`name=value` pairs of the settings that differ, for one error message (weights by identity)."""
        return [f"{name}={theirs!r} in the file, {mine!r} now" for name, mine, theirs in self.differing(other)]

    def differing(self, other: "ExtractorConfig") -> list:
        """`(name, value here, value in other)` of every setting that differs (weight files by identity:
        the same SHA-256 under another path is the same weights)."""
        out = []
        for f in fields(self):
            mine, theirs = self._resolved(f.name), other._resolved(f.name)
            if f.name == "weights" and self.weights_is_file and other.weights_is_file:
                mine, theirs = os.path.basename(mine), os.path.basename(theirs)
                if self.weights_sha256 and self.weights_sha256 == other.weights_sha256:
                    continue
            if mine != theirs:
                out.append((f.name, mine, theirs))
        return out


def _choice(name, value, allowed, error=InputError):
    if value not in allowed:
        raise error(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")


def _int(name, value):
    if isinstance(value, bool):
        raise InputError(f"{name} must be a whole number. Received: {name}={value!r}")
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a whole number. Received: {name}={value!r}") from None
    if not math.isfinite(f) or f != int(f):
        raise InputError(f"{name} must be a whole number. Received: {name}={value!r}")
    return int(f)


def attr_value(value):
    """A stored attribute as a plain Python value (bytes decoded, NumPy scalars and arrays unwrapped)."""
    import numpy as np

    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value
