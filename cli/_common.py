"""What the commands share: turning library errors into one-line messages, and quiet imports."""

from __future__ import annotations

import contextlib
import functools
import logging
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
    _steady_malloc()
    with _interrupts_after_import():
        _import_backend_muted()


def _steady_malloc():
    """On glibc, fix malloc's mmap threshold at 32 MB (the most its dynamic rule would reach), unless the
    user set MALLOC_MMAP_THRESHOLD_. Measured with VGG-16 fc7 at batch 32 (docs/benchmarks.md): the
    dynamic rule, raised or not by what loading happens to free, moved the steady peak by about 200 MB."""
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        pass


@contextlib.contextmanager
def _interrupts_after_import():
    """Hold Ctrl-C and SIGTERM while TensorFlow imports; deliver them once the import is complete.

    An import interrupted half way leaves TensorFlow's C++ runtime half initialised: seen here, the
    interrupt swallowed by an import fallback (the run went on), a crash at exit (SIGSEGV), or a second
    SIGINT at exit after the message. The import takes seconds, so waiting for it costs little.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []

    def hold(signum, frame):
        received.append(signum)

    # a signal the process was started with ignored (a background job's SIGINT, nohup) stays ignored
    previous = {sig: signal.signal(sig, hold) for sig in (signal.SIGINT, signal.SIGTERM)
                if signal.getsignal(sig) is not signal.SIG_IGN}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        raise Terminated() if received[0] == signal.SIGTERM else KeyboardInterrupt()


def _import_backend_muted():
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


class Terminated(KeyboardInterrupt):
    """SIGTERM (timeout, systemd, Kubernetes), delivered as an interrupt so that it stops a run cleanly."""


_SIGTERMS = []  # when the handler ran: a library between it and us may raise an interrupt of its own


def _on_sigterm(signum, frame):
    _SIGTERMS.append(signum)
    raise Terminated()


def _terminated(exc) -> bool:
    """Whether a SIGTERM is what stopped the run: `exc`, or one it was raised while handling (Ray's
    iterators, for one, turn the interrupt into their own)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, Terminated):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def reports_errors(func):
    """Run a command, reporting vggfeat's user-facing errors as `Error: ...` without a traceback.

    Ctrl-C and SIGTERM stop the command the same way: what was written is committed and kept, and the
    message says what (exit 130 for Ctrl-C, 143 for SIGTERM). vggfeat's warnings (a file rolled back
    or rebuilt by --resume) are printed as one line each.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        import logging
        import signal
        import threading

        from vggfeat.errors import VggfeatError
        from vggfeat.redact import redact

        logger = logging.getLogger("vggfeat")
        if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
            handler = _StderrHandler()
            handler.setFormatter(_LineFormatter())
            logger.addHandler(handler)
        logger.propagate = False
        level = logger.level
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _on_sigterm)
            _SIGTERMS.clear()
        try:
            return func(*args, **kwargs)
        except VggfeatError as exc:
            raise UserError(redact(exc), getattr(exc, "exit_code", 2)) from None
        except KeyboardInterrupt as exc:
            terminated = _terminated(exc) or bool(_SIGTERMS) or getattr(exc, "signal", None) == "SIGTERM"
            what = "terminated (SIGTERM)" if terminated else "interrupted"
            detail = redact(exc) or "stopped"
            raise UserError(f"{what}; {detail}", 143 if terminated else 130) from None
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Exception:  # a bug: its traceback, with every credential redacted, then exit 1
            import traceback

            sys.stderr.write(redact("".join(traceback.format_exc())))
            sys.stderr.flush()
            raise SystemExit(1) from None
        finally:
            logger.setLevel(level)
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    return wrapper


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a record is emitted (not the stream of the first command
    run in this process: click's test runner and notebooks swap it), as logging's own last resort does."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


class _LineFormatter(logging.Formatter):
    """Warnings as `vggfeat: ...`; what a command found and is doing (INFO) as plain lines."""

    def format(self, record):
        import logging

        from vggfeat.redact import redact

        message = redact(record.getMessage())
        return message if record.levelno == logging.INFO else f"vggfeat: {message}"


def show_progress_lines(quiet):
    """Let the library's INFO lines through (what was found, what is loaded), unless -q."""
    logging.getLogger("vggfeat").setLevel(logging.WARNING if quiet else logging.INFO)


def arch_option(func):
    """--arch, the same names everywhere."""
    return click.option("--arch", default=None, metavar="NAME",
                        help="vgg11, vgg11-lrn, vgg13, vgg16c, vgg16, vgg19 (or A, A-LRN, B, C, D, E), and "
                             "with batch norm vgg11-bn, vgg13-bn, vgg16-bn, vgg19-bn. "
                             "Default: from the weight file, else vgg16.")(func)


def input_options(func):
    """--ext and --exclude: which files of the input folders (and lists) are read."""
    options = [
        click.option("--ext", multiple=True, metavar="EXT",
                     help="File name extension that counts as an image in folders (repeat for several; "
                          "any letter case). Default: jpg, jpeg, png, bmp, gif, webp, tif, tiff."),
        click.option("--exclude", multiple=True, metavar="GLOB",
                     help="Leave out images whose path (relative to its folder, or as written in a list) or "
                          "file name matches this pattern, e.g. '*/thumbs/*' or '*.gif' (repeatable)."),
    ]
    return _apply(func, options)


def shard_label_options(func):
    """--label-field and --class-names: the labels of tar shards' samples; --max-member-size and
    --retries: how shards and URLs are read (extract, predict)."""
    options = [
        click.option("--max-member-size", default=None, metavar="SIZE",
                     help="With tar shards and URLs: the largest member or object read, e.g. 64M or 1G; a larger "
                          "one is recorded as failed, unread. Default: 256M."),
        click.option("--retries", type=click.IntRange(0, 100), default=None, metavar="N",
                     help="With URLs: retries of a transient fault (throttling, 5xx, timeout, reset connection), "
                          "waiting 1, 2, 4... s; past them it is recorded as transient and --resume reads it "
                          "again. Default: 5."),
        click.option("--label-field", default=None, metavar="FIELD",
                     help="With tar shards: the field of each sample's .json holding its label (a class index or "
                          "name; a.b for a nested field). Default: the sample's .cls."),
        click.option("--class-names", default=None, metavar="NAMES|FILE",
                     help="With tar shards: class names, comma-separated or a file with one a line, that labels "
                          "refer to."),
    ]
    return _apply(func, options)


def model_options(func):
    """Options that choose the network and its weights, shared by several commands."""
    options = [
        arch_option,
        click.option("--weights", default="imagenet", show_default=True, metavar="imagenet|random|timm:NAME|PATH",
                     help="Keras's ImageNet weights (vgg16/vgg19; downloaded once), random weights from "
                          "--seed, a .h5 / .weights.h5 / .keras file, or torchvision's ImageNet weights: "
                          "timm:vgg11 .. timm:vgg19_bn (from the Hugging Face cache, downloaded once) or a "
                          "torchvision/timm .safetensors file."),
        click.option("--seed", default=0, show_default=True, type=int,
                     help="The seed of what is random in the run: --weights random (and, in finetune, the "
                          "validation split, shuffling and augmentation). classify's fold seed is --split-seed."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


# ---------------------------------------------------------------------------------------------
# Options that several commands share, defined once (same name, same values, same meaning).


def _apply(func, options):
    for option in reversed(options):
        func = option(func)
    return func


def precision_option(func):
    """--precision: the compute precision, the same three values in every command."""
    from vggfeat.config import PRECISIONS

    return click.option("--precision", type=click.Choice(list(PRECISIONS)), default="float32", show_default=True,
                        help="Compute precision (bfloat16/float16: mixed precision: float32 weights, "
                             "low-precision compute, faster on GPUs).")(func)


def jpeg_decode_option(func):
    """--jpeg-decode: how JPEG files are decoded (ExtractorConfig.jpeg_decode), recorded in the output."""
    from vggfeat.config import JPEG_DECODES

    return click.option("--jpeg-decode", type=click.Choice(list(JPEG_DECODES)), default="full", show_default=True,
                        help="full: decode every JPEG at its own size, then resize (the same features as the "
                             "decoded image given as an array); reduced: decode a JPEG over twice the target "
                             "size at 1/2, 1/4 or 1/8 scale first (Pillow's draft): faster, slightly different "
                             "features, and a JPEG over Pillow's 89-megapixel limit is judged at that scale. "
                             "Recorded in the output; a file written before this option existed was decoded "
                             "reduced: --resume it with --jpeg-decode reduced.")(func)


def input_size_option(help, default=None):
    """--input-size, bounded as ExtractorConfig bounds it."""
    from vggfeat.config import MAX_INPUT_SIZE, MIN_INPUT_SIZE

    def decorate(func):
        return click.option("--input-size", type=click.IntRange(MIN_INPUT_SIZE, MAX_INPUT_SIZE), default=default,
                            show_default=default is not None, help=help)(func)

    return decorate


def local_output(ctx, param, value):
    """Outputs are local paths: a URL is refused as itself (redacted), never turned into a path that would
    show its credentials in a later message."""
    import re

    if value is not None and re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", str(value)):
        from vggfeat.redact import redact_url

        raise UserError(f"the output must be a local path; vggfeat writes no URL (got {redact_url(value)})")
    return value


def output_options(what, *, resume=True, required=True,
                   overwrite_help="Replace an existing output (only once the new one is complete)."):
    """-o/--output, --overwrite and (where a run can be continued) --resume."""

    def decorate(func):
        options = [click.option("-o", "--output", required=required, type=click.Path(dir_okay=False), help=what,
                                callback=local_output)]
        if resume:
            options.append(click.option("--resume", is_flag=True,
                                        help="Continue an existing output (same settings): skip what is done."))
        options.append(click.option("--overwrite", is_flag=True, help=overwrite_help))
        return _apply(func, options)

    return decorate


def quiet_option(func):
    return click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary.")(func)
