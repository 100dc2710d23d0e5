"""Arrays that become Keras variables without a second copy (used by the weight sources that make each
variable from stored values: legacy `.h5` files, torchvision/timm safetensors files)."""

from __future__ import annotations

import math

import numpy as np


def aligned_empty(shape, alignment=64):
    """A float32 array whose data starts on a 64-byte boundary (what TensorFlow's CPU tensors need in order
    to use a buffer they did not allocate)."""
    n = math.prod(shape)
    raw = np.empty(n * 4 + alignment, dtype=np.uint8)
    offset = (-raw.ctypes.data) % alignment
    return raw[offset:offset + n * 4].view(np.float32).reshape(shape)


#: Arrays from this size up are adopted (fc6 of VGG-16 at 224 is 411 MB); smaller ones are copied into
#: TensorFlow's own memory. Measured (VGG-16 fc7 at 224, steady-state RSS after four batches of 32, glibc's
#: mmap threshold fixed): adopting every array 2435 MB, arrays >= 100 MB 2310 MB; TensorFlow's kernels seem
#: to need more working memory around variables whose buffers they did not allocate (docs/benchmarks.md).
ADOPT_MIN_BYTES = 100 << 20


def adoptable(values, dtype):
    """`values` as the initial value of a variable: on TensorFlow, for large arrays, a tensor sharing the
    array's memory (DLPack), which the variable takes over as its own buffer, so loading needs no second
    copy of the largest tensors."""
    import keras

    if keras.backend.backend() != "tensorflow" or (dtype is not None and str(dtype) != "float32") \
            or values.nbytes < ADOPT_MIN_BYTES:
        return values
    import tensorflow as tf

    try:
        return tf.experimental.dlpack.from_dlpack(values.__dlpack__())
    except Exception:  # noqa: BLE001 - an older NumPy or TensorFlow: the variable copies the array
        return values
