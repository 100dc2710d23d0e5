"""The paper's transfer descriptor (Appendix B): dense, multi-scale, flip-averaged, pooled features.

For each scale Q the whole image is rescaled so that its shorter side is Q (no crop), the dense network
runs over it and each requested map is globally pooled; with `flip` the descriptor is averaged with that
of the horizontally flipped image; the scales are then averaged (`mean`, the paper's choice for VOC),
concatenated (`stack`, its choice for Caltech) or max-pooled (`max`), and optionally L2-normalised.

Batching: images of one scale share a forward pass only when their resized shapes are equal, so
`FeatureExtractor.predict` groups each batch by shape (photos from one camera share one shape); an
image whose shape is unique runs alone. The cost of this strategy is measured in docs/benchmarks.md.
"""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from .errors import InputError

AGGREGATES = ("mean", "stack", "max")


def _short_side(image, side):
    h, w = image.shape[:2]
    if min(h, w) == side:
        return image
    if w <= h:
        nw, nh = side, max(side, int(round(h * side / w)))
    else:
        nw, nh = max(side, int(round(w * side / h))), side
    return np.asarray(Image.fromarray(image).resize((nw, nh), Image.Resampling.BILINEAR))


class MultiScaleExtractor:
    """Wraps a fully-convolutional or dense `FeatureExtractor` to compute the multi-scale descriptor.

    Args:
        extractor: a `FeatureExtractor` with form `dense` or `fully_conv`, pooling `avg` or `max`,
            built with `input_size=max(scales)` and `resize="short"`.
        scales: shorter sides Q, e.g. (256, 384, 512).
        flip: average each scale's descriptor with the horizontally flipped image's.
        aggregate: `mean`, `stack` or `max` over scales.
        l2: L2-normalise the final descriptor of each layer.

    It offers the interface `extract`/`iter_features` use: `geometry` (decode to the largest scale),
    `predict`, `output_shapes`, `feature_dims`, `settings`, `batch_size`, `layers`.
    """

    def __init__(self, extractor, scales, *, flip=False, aggregate="mean", l2=False):
        scales = [int(s) for s in scales]
        if not scales:
            raise InputError("--scales needs at least one scale")
        if aggregate not in AGGREGATES:
            raise InputError(f"unknown aggregation {aggregate!r}; choose one of {', '.join(AGGREGATES)}")
        if extractor.form == "standard":
            raise InputError("--scales needs --dense (FC layers at any size) or --fully-convolutional")
        if extractor.pooling == "none":
            raise InputError("--scales needs --pooling avg or max (maps of different scales differ in size)")
        if extractor.geometry.resize != "short":
            raise InputError("--scales rescales whole images (shorter side to each scale); drop --resize")
        minimum = 224 if extractor.form == "dense" else 32
        if min(scales) < minimum:
            raise InputError(f"scales must be at least {minimum} pixels with this form. Received: {min(scales)}")
        if extractor.geometry.size != max(scales):
            raise InputError("build the extractor with input_size=max(scales)")
        self.extractor = extractor
        self.scales = scales
        self.flip = bool(flip)
        self.aggregate = aggregate
        self.l2 = bool(l2)
        self.geometry = extractor.geometry
        self.batch_size = extractor.batch_size
        self.layers = extractor.layers
        factor = len(scales) if aggregate == "stack" else 1
        self.output_shapes = {k: (int(np.prod(s)) * factor,) for k, s in extractor.output_shapes.items()}

    @property
    def feature_dims(self):
        return {k: s[0] for k, s in self.output_shapes.items()}

    @property
    def config(self):
        """The `ExtractorConfig` of this descriptor (its base's, with the scales)."""
        return self.extractor.config.replace(input_size=None, scales=tuple(self.scales), flip=self.flip,
                                             aggregate=self.aggregate, l2=self.l2)

    def settings(self):
        out = self.extractor.settings()
        out.update(self.config.to_attrs())
        out["input_size"] = max(self.scales)  # as format 1 recorded it; from_attrs reads it back as None
        out["geometry"] = ("shorter side to each of " + ", ".join(map(str, self.scales)) + ", no crop"
                           + (", averaged with the flipped image" if self.flip else ""))
        return out

    def predict(self, images):
        """Descriptors of RGB uint8 images (decoded with `self.geometry`, i.e. at the largest scale)."""
        images = [self.extractor._as_pixels(im) for im in images]
        if not images:  # the last images of a folder all unreadable, --strict, a Ray block of failures
            return {k: np.empty((0,) + s, dtype=np.float32) for k, s in self.output_shapes.items()}
        per_scale = []
        for q in self.scales:
            resized = [_short_side(im, q) for im in images]
            feats = self.extractor.predict(resized)
            if self.flip:
                flipped = self.extractor.predict([np.ascontiguousarray(im[:, ::-1]) for im in resized])
                feats = {k: (feats[k] + flipped[k]) / 2 for k in feats}
            per_scale.append({k: v.reshape(len(images), -1) for k, v in feats.items()})
        out = {}
        for k in self.output_shapes:
            stacked = np.stack([p[k] for p in per_scale])  # (scales, n, d)
            if self.aggregate == "mean":
                v = stacked.mean(axis=0)
            elif self.aggregate == "max":
                v = stacked.max(axis=0)
            else:
                v = np.concatenate(list(stacked), axis=1)
            if self.l2:
                v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
            out[k] = v.astype(np.float32)
        return out
