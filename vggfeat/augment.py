"""Training-time augmentation. All use of keras-cv lives in this module, so it can be swapped.

Each policy is `(load_geometry, layers)`: images are decoded by the shared loader (`vggfeat.images`) at
`load_geometry`, then the layers run on uint8-valued batches (0-255) before preprocessing.

- `none`: the extraction geometry itself (shorter side to size*256/224, centre crop).
- `light` (finetune's default): shorter side to size*256/224, random `size` crop, brightness +-10%; no flip
  (a flip changes the meaning of digits, text, anything with a handedness).
- `flip`: `light` plus random horizontal flips.
- `paper`: Sect. 3.1: scale jittering (training scale S in [256, 512] for 224 crops, via keras-cv's
  `JitteredResize`), random crops, flips, and an RGB colour shift (keras-cv's `RandomChannelShift`).
- `randaugment`: random crops and flips plus keras-cv's `RandAugment`.
"""

from __future__ import annotations

from .errors import InputError
from .images import Geometry

POLICIES = ("none", "light", "flip", "paper", "randaugment")  # the keys of vggfeat.finetuning.AUGMENTS


def augmentation(policy, size, seed=0):
    """Return `(load_geometry, [keras layers])` for an augmentation policy at crop `size`."""
    import keras

    if policy not in POLICIES:
        raise InputError(f"unknown augmentation {policy!r}; choose one of {', '.join(POLICIES)}")
    base = Geometry("crop", size)
    if policy == "none":
        return base, []
    flip = keras.layers.RandomFlip("horizontal", seed=seed)
    crop = keras.layers.RandomCrop(size, size, seed=seed)
    light_geometry = Geometry("crop", base.resize_side)
    if policy in ("light", "flip"):
        light = [crop, keras.layers.RandomBrightness(0.1, value_range=(0, 255), seed=seed)]
        return light_geometry, light + ([flip] if policy == "flip" else [])
    import keras_cv

    if policy == "randaugment":
        return light_geometry, [crop, flip, keras_cv.layers.RandAugment(value_range=(0, 255), seed=seed)]
    # paper: decode at S_max = 512/224 * size, jitter the scale to [256, 512]/224 * size, crop `size`.
    big = Geometry("crop", int(round(size * 512 / 224)))
    jitter = keras_cv.layers.JitteredResize(target_size=(size, size), scale_factor=(256 / 512, 1.0),
                                            seed=seed)
    colour = keras_cv.layers.RandomChannelShift(value_range=(0, 255), factor=0.1, seed=seed)
    return big, [jitter, flip, colour]
