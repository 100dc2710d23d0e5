"""Custom layers, written with `keras.ops` so they run on every Keras backend."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="vggfeat")
class LocalResponseNormalization(keras.layers.Layer):
    """Krizhevsky et al. (2012) local response normalisation across channels.

    `b_c = a_c / (k + alpha * sum_{c' in window(c)} a_{c'}^2) ** beta`, the window holding `size`
    neighbouring channels centred on c (clipped at the ends). Note that alpha multiplies the plain sum
    (AlexNet's and TensorFlow's convention), not the mean over the window as in Caffe.

    Args:
        size: number of channels in the window (n, odd). Default 5.
        alpha: scale of the sum of squares. Default 1e-4.
        beta: exponent. Default 0.75.
        k: additive constant. Default 2.0.

    Examples:
        >>> import numpy as np
        >>> lrn = LocalResponseNormalization()
        >>> tuple(lrn(np.ones((1, 2, 2, 8), "float32")).shape)
        (1, 2, 2, 8)
    """

    def __init__(self, size=5, alpha=1e-4, beta=0.75, k=2.0, **kwargs):
        super().__init__(**kwargs)
        if size < 1 or size % 2 == 0:
            raise ValueError(f"size must be a positive odd number. Received: size={size}")
        self.size = size
        self.alpha = alpha
        self.beta = beta
        self.k = k

    def call(self, inputs):
        half = self.size // 2
        squared = ops.square(inputs)
        channels = inputs.shape[-1]
        padded = ops.pad(squared, [[0, 0]] * (len(inputs.shape) - 1) + [[half, half]])
        window_sum = padded[..., 0:channels]
        for offset in range(1, self.size):
            window_sum = window_sum + padded[..., offset:offset + channels]
        return inputs / ops.power(self.k + self.alpha * window_sum, self.beta)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"size": self.size, "alpha": self.alpha, "beta": self.beta, "k": self.k})
        return config


@keras.saving.register_keras_serializable(package="vggfeat")
class Preprocess(keras.layers.Layer):
    """Raw RGB pixels (0-255, any numeric dtype) to network input, inside the model.

    Doing this in the graph lets the pipeline feed uint8 batches (4x less to copy to a GPU) and keeps
    the preprocessing tied to the network. The arithmetic is that of `vggfeat.preprocessing.preprocess`.

    Args:
        mode: `caffe` (BGR, minus ImageNet means), `torch` (RGB 0-1, mean/std) or `tf` ([-1, 1]).
    """

    def __init__(self, mode="caffe", **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        from .preprocessing import MODES

        if mode not in MODES:
            raise ValueError(f"unknown preprocessing mode. Received: mode={mode!r}")
        self.mode = mode

    def call(self, inputs):
        from .preprocessing import CAFFE_MEAN_BGR, TORCH_MEAN_RGB, TORCH_STD_RGB

        x = ops.cast(inputs, "float32")
        if self.mode == "caffe":
            x = ops.flip(x, axis=-1)
            return x - ops.convert_to_tensor(CAFFE_MEAN_BGR)
        if self.mode == "torch":
            return (x / 255.0 - ops.convert_to_tensor(TORCH_MEAN_RGB)) / ops.convert_to_tensor(TORCH_STD_RGB)
        return x / 127.5 - 1.0

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"mode": self.mode})
        return config
