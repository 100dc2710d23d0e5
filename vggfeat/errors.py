"""Errors that describe a user's mistake or an unusable input.

Every one of them carries a one-line message that names the bad value; the CLI prints it as
`Error: ...` with exit code 2 and no traceback. Anything else that escapes is a bug in vggfeat.
"""


from .redact import redact


class VggfeatError(Exception):
    """Base class of the errors vggfeat reports to users as a one-line message. The message never names
    a credential: URLs in it are redacted when the error is made (`vggfeat.redact`)."""

    def __init__(self, *args):
        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))


class ArchitectureError(VggfeatError, ValueError):
    """Unknown architecture, or an option that does not fit it."""


class LayerError(VggfeatError, ValueError):
    """A layer name that does not exist in the network; the message lists the valid ones."""


class WeightsError(VggfeatError, ValueError):
    """Weights that cannot be had or do not fit the architecture."""


class InputError(VggfeatError, ValueError):
    """Missing input paths, no images found, bad option values."""


class OutputError(VggfeatError):
    """An existing output that would be overwritten, or a file that cannot be resumed."""


class WriteFailed(OutputError):
    """Writing the output failed (a full disk, an I/O error): the run stops; what was committed is kept
    and `--resume` continues once the cause is fixed. Exit code 1: a fault, not a user mistake."""

    exit_code = 1


class ExtractFailed(VggfeatError):
    """The run could not produce features (no image readable, or a failure under `strict`)."""

    exit_code = 1


class ExtractInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM, in the CLI) stopped `extract`; the message says what was kept."""


class ImageError(Exception):
    """One image could not be read; the run records it and goes on (not a user-facing error). Its reason
    never names a credential (redacted when it is made)."""

    def __init__(self, *args):
        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))
