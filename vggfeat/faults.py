"""Transient or permanent: what a failure to read an input says about the input, and retrying.

A read can fail because of the input (not found, access denied, not a tar, a damaged member: permanent)
or because of the way to it (throttling such as S3's `503 SlowDown`, a server error, a timeout, a
connection reset or refused: transient). A transient fault says nothing about the data, so it is
retried here with exponential backoff (`retry`), and when it outlasts the retries it is recorded with
the reason prefixed `transient: `. `--resume` reads every input whose failure is transient again (shards
and images, single files and parts, both engines); a permanent failure is kept as it was.

Only the standard library: exceptions are recognised by type, errno, HTTP status and error code, walking
the chain of causes (s3fs raises `OSError(EBUSY)` from botocore's `ClientError("SlowDown")`; fsspec's
HTTP filesystem raises aiohttp's `ClientResponseError(status=503)`).
"""

from __future__ import annotations

import errno
import logging
import random
import time

from .redact import redact

#: The prefix of a recorded failure reason whose cause was transient (`--resume` tries it again).
TRANSIENT = "transient: "
#: Retries of a transient fault before it is recorded (`--retries`), and the first wait in seconds
#: (doubled each time, at most `MAX_DELAY`, with up to 25% random jitter).
RETRIES = 5
DELAY = 1.0
MAX_DELAY = 30.0

_TRANSIENT_ERRNOS = {errno.EBUSY, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNABORTED, errno.ECONNREFUSED,
                     errno.EAGAIN, errno.EPIPE, errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN,
                     errno.ENETRESET, getattr(errno, "EREMOTEIO", 121)}
_TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504, 509}
_TRANSIENT_CODES = {"slowdown", "throttling", "throttlingexception", "throttled", "requestlimitexceeded",
                    "requestthrottled", "requestthrottledexception", "toomanyrequestsexception",
                    "provisionedthroughputexceededexception", "serviceunavailable", "internalerror",
                    "requesttimeout", "requesttimeoutexception", "priorrequestnotcomplete", "bandwidthlimitexceeded",
                    "ec2throttledexception", "transactioninprogressexception"}
_TRANSIENT_NAMES = ("Timeout", "EndpointConnectionError", "ConnectionClosedError", "ResponseStreamingError",
                    "IncompleteReadError", "ServerDisconnectedError", "ClientPayloadError", "ClientConnectionError",
                    "ClientConnectorError", "ClientOSError", "ProtocolError", "ReadTimeoutError",
                    "ConnectTimeoutError", "ServerTimeoutError", "FSTimeoutError", "ContentLengthError")
_PERMANENT_STATUS = {400, 401, 403, 404, 405, 410, 416}

log = logging.getLogger("vggfeat")


def _chain(exc):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _status(exc):
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        return status
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        meta = response.get("ResponseMetadata") or {}
        code = meta.get("HTTPStatusCode")
        return code if isinstance(code, int) else None
    return None


def _code(exc):
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str((response.get("Error") or {}).get("Code") or "")
    return ""


def is_transient(exc) -> bool:
    """Whether `exc` (or an exception it was raised from) is a fault of the way to the data, not of the
    data: throttling, a 5xx answer, a timeout, a connection reset or refused."""
    for e in _chain(exc):  # fsspec's HTTP raises FileNotFoundError from a 500: the cause decides
        status, code = _status(e), _code(e).lower()
        if code in _TRANSIENT_CODES or status in _TRANSIENT_STATUS:
            return True
        if status in _PERMANENT_STATUS:
            return False
        if isinstance(e, (ConnectionError, TimeoutError)):
            return True
        if isinstance(e, OSError) and e.errno in _TRANSIENT_ERRNOS:
            return True
        name = type(e).__name__
        if any(n in name for n in _TRANSIENT_NAMES):
            return True
    return False


def describe(exc) -> str:
    """One line for an error reading an input, never naming credentials (`vggfeat.redact`), saying what
    it means: not found, access denied, a server error with its status, throttling..."""
    name = type(exc).__name__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else name
    status = next((s for s in map(_status, _chain(exc)) if s), None)
    code = next((c for c in map(_code, _chain(exc)) if c), "")
    if code.lower() in ("slowdown", "throttling", "throttlingexception") or status in (429, 503):
        out = f"throttled or unavailable ({code or status}): {text}"
    elif status and status >= 500:
        out = f"server error {status}: {text}"
    elif isinstance(exc, FileNotFoundError) or status == 404 or code in ("NoSuchKey", "NoSuchBucket", "404"):
        out = text if ("not found" in text.lower() or "not exist" in text.lower()) else f"not found ({text})"
    elif isinstance(exc, PermissionError) or status in (401, 403):
        out = f"access denied ({text}); check the credentials"
    elif "NoCredentials" in name:
        out = "no credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE)"
    elif any(n in name for n in ("EndpointConnectionError", "ConnectorError")) or isinstance(exc, ConnectionRefusedError):
        out = f"cannot reach the storage endpoint: {text}"
    else:
        out = f"{name}: {text}"
    return redact(out)


def reason(exc, what: str) -> str:
    """The failure reason to record: `what: description`, prefixed `transient: ` when it is."""
    line = f"{what}: {describe(exc)}"
    return TRANSIENT + line if is_transient(exc) else line


def is_transient_reason(text) -> bool:
    """Whether a recorded failure reason is a transient one (tried again by `--resume`)."""
    return str(text).startswith(TRANSIENT)


def wait(attempt: int, delay: float = DELAY) -> float:
    """Sleep before retry number `attempt` (0-based): `delay * 2**attempt`, at most `MAX_DELAY`, with
    jitter. Returns the seconds slept."""
    seconds = min(MAX_DELAY, delay * (2 ** attempt)) * (1 + 0.25 * random.random())
    time.sleep(seconds)
    return seconds


def retry(fn, *, retries: int = RETRIES, delay: float = DELAY, what: str = "read"):
    """`fn()`, tried again after a transient fault up to `retries` times (backoff: `wait`). A permanent
    fault, or a transient one after the last retry, is raised as it is."""
    attempt = 0
    while True:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified; anything else is raised unchanged
            if attempt >= retries or not is_transient(exc):
                raise
            log.debug("%s: transient fault (%s), retry %d of %d", redact(what), describe(exc), attempt + 1, retries)
            wait(attempt, delay)
            attempt += 1
