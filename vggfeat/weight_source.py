"""Which kind of weights a `weights` value names: the one dispatch of the extractor, finetune, `info` and
`load_network`, its rules checked once, before Keras (no import here is heavier than `os`).

Kinds (`WeightSource.kind`):

- `random`: a network initialised from `seed`;
- `imagenet`: Keras's ImageNet file (`keras.applications`' download, or its cache);
- `torch`: torchvision's or timm's weights: `timm:NAME` or `PATH.safetensors` (`vggfeat.torch_weights`;
  a pickled `.pth`/`.pt`/`.ckpt` is this kind too, and refused there with how to convert it);
- `keras`: a whole model saved by Keras (`.keras`, what `vggfeat finetune` writes);
- `h5`: a weight file in Keras's legacy layout or `.weights.h5` (`.h5`, `.hdf5`).

Adding a kind is a line in `weight_source` and a branch where each consumer builds or reads it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import WeightsError

NAMED = ("random", "imagenet")
TIMM_PREFIX = "timm:"
TORCH_SUFFIXES = (".safetensors", ".pth", ".pt", ".pth.tar", ".ckpt")
KERAS_SUFFIXES = (".keras",)
H5_SUFFIXES = (".h5", ".hdf5")  # `.weights.h5` included


@dataclass(frozen=True)
class WeightSource:
    """A checked `weights` value: its `kind`, the value as given, and the file (`path`, `name`) if any."""

    kind: str
    value: str
    path: str | None = None

    @property
    def name(self) -> str:
        """What messages call it: a file's base name, else the value."""
        return os.path.basename(self.path) if self.path else self.value

    @property
    def is_file(self) -> bool:
        return self.kind in ("keras", "h5") or (self.kind == "torch" and self.path is not None)


def weight_source(weights) -> WeightSource:
    """The `WeightSource` of `weights`; `WeightsError` in one line for a value no kind takes: None, a
    missing file, a folder, a file of another type. (A `torch` value is checked further by
    `vggfeat.torch_weights.check`: the file's tensors, a timm name's fetch.)"""
    if weights is None or isinstance(weights, bool):
        raise WeightsError("weights must be 'imagenet', 'random' or a path; there is no default of no weights")
    value = str(os.fspath(weights))
    if value in NAMED:
        return WeightSource(value, value)
    lower = value.lower()
    if lower.strip().startswith(TIMM_PREFIX):
        return WeightSource("torch", value)
    if lower.endswith(TORCH_SUFFIXES):
        return WeightSource("torch", value, value)
    if not os.path.exists(value):
        raise WeightsError(f"weights must be 'imagenet', 'random' or an existing file. Received: {value!r}")
    if os.path.isdir(value):
        raise WeightsError(f"weights path is a folder, not a file: {value}")
    if lower.endswith(KERAS_SUFFIXES):
        return WeightSource("keras", value, value)
    if lower.endswith(H5_SUFFIXES):
        return WeightSource("h5", value, value)
    raise WeightsError(f"unknown weight file type {os.path.basename(value)}: expected .h5, .weights.h5, .keras or "
                       ".safetensors (or 'imagenet', 'random', timm:NAME)")
