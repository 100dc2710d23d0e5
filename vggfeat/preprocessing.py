"""Pixel preprocessing. It belongs to the weights, and every output file records which one was used.

- `caffe`: Keras's ImageNet VGG weights were converted from the authors' Caffe release and want BGR,
  0-255, minus the ImageNet channel means [103.939, 116.779, 123.68] (B, G, R). This is the default.
- `torch`: RGB, 0-1, minus mean [0.485, 0.456, 0.406], divided by std [0.229, 0.224, 0.225]
  (torchvision's and keras-hub's VGG weights).
- `tf`: RGB scaled to [-1, 1].

`preprocess` never modifies the caller's array (unlike the NumPy path of
`keras.applications.imagenet_utils.preprocess_input`).
"""

from __future__ import annotations

import numpy as np

from .errors import InputError

CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)
TORCH_MEAN_RGB = np.array([0.485, 0.456, 0.406], dtype=np.float32)
TORCH_STD_RGB = np.array([0.229, 0.224, 0.225], dtype=np.float32)

MODES = ("caffe", "torch", "tf")


def preprocess(images, mode="caffe"):
    """Turn RGB images with values in 0-255 (uint8 or float, channels last) into network input.

    Args:
        images: array of shape (..., H, W, 3), RGB, 0-255. It is not modified.
        mode: `caffe`, `torch` or `tf`.

    Returns:
        A new float32 array of the same shape.

    Examples:
        >>> import numpy as np
        >>> x = np.full((1, 1, 3), 128, dtype=np.uint8)
        >>> [round(float(v), 3) for v in preprocess(x, "caffe")[0, 0]]
        [24.061, 11.221, 4.32]
    """
    x = np.asarray(images)
    if x.shape[-1] != 3:
        raise InputError(f"images must have 3 channels (RGB) in the last axis. Received shape: {x.shape}")
    x = x.astype(np.float32, copy=True)
    if mode == "caffe":
        x = x[..., ::-1] - CAFFE_MEAN_BGR
        return np.ascontiguousarray(x)
    if mode == "torch":
        return (x / 255.0 - TORCH_MEAN_RGB) / TORCH_STD_RGB
    if mode == "tf":
        return x / 127.5 - 1.0
    raise InputError(f"unknown preprocessing {mode!r}; choose one of {', '.join(MODES)}")
