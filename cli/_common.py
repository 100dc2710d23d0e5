"""What the commands share: turning library errors into one-line messages, and quiet imports."""

from __future__ import annotations

import functools
import os
import sys

import click


class UserError(click.ClickException):
    """`Error: ...` on stderr, no traceback; exit code 2 for user mistakes, as the library says."""

    def __init__(self, message, exit_code=2):
        super().__init__(message)
        self.exit_code = exit_code


def quiet_backend():
    """Import Keras (and start its backend) without TensorFlow's start-up chatter on the terminal.

    TensorFlow 2.20+ prints absl/oneDNN/CUDA notices from C++ before any setting can silence them, so
    the import runs with file descriptor 2 pointed at /dev/null; Python errors still surface, since
    the descriptor is restored before any exception propagates.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "keras" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import keras

        if keras.backend.backend() == "tensorflow":
            import logging

            import tensorflow as tf

            tf.config.list_physical_devices()  # device discovery logs here, while muted
            # Images of several shapes (the convolutional forms) retrace the forward pass once per shape,
            # by design; TensorFlow's advice about it is noise on a user's terminal.
            logging.getLogger("tensorflow").setLevel(logging.ERROR)
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def reports_errors(func):
    """Run a command, reporting vggfeat's user-facing errors as `Error: ...` without a traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from vggfeat.errors import VggfeatError

        try:
            return func(*args, **kwargs)
        except VggfeatError as exc:
            raise UserError(str(exc), getattr(exc, "exit_code", 2)) from None
        except KeyboardInterrupt:
            raise UserError("interrupted; what was written is kept (--resume continues)", 130) from None

    return wrapper


def model_options(func):
    """Options that choose the network and its weights, shared by several commands."""
    options = [
        click.option("--arch", default=None, metavar="NAME",
                     help="vgg11, vgg11-lrn, vgg13, vgg16c, vgg16, vgg19 (or A, A-LRN, B, C, D, E). "
                          "Default: from the weight file, else vgg16."),
        click.option("--weights", default="imagenet", show_default=True, metavar="imagenet|random|PATH",
                     help="Keras's ImageNet weights (vgg16/vgg19; downloaded once), random weights from "
                          "--seed, or a .h5 / .weights.h5 / .keras file."),
        click.option("--seed", default=0, show_default=True, type=int, help="Seed of --weights random."),
    ]
    for option in reversed(options):
        func = option(func)
    return func
