"""Credentials never leave the process: one place that removes them from URLs and from any text.

A URL handed to vggfeat may carry secrets: a user name and password (`http://user:pw@host/...`), or a
signature in its query (a pre-signed S3 or GCS URL, an Azure SAS token). They are needed to open the
URL and nowhere else. Everything that leaves the process goes through `redact` or `redact_url`:
messages, log lines, `/failed` reasons, stored rows and attributes, the index, error texts that come
back from Ray workers. Two layers, so that a secret is removed whatever the text around it:

- `redact_url(url)`: the URL without its user information (whatever characters it holds, `/` and `@`
  included) and with the value of every credential query parameter replaced by `REDACTED`;
- `redact(text)`: every URL found in the text redacted as above, then every secret this process has
  been handed (`remember(url)` is called wherever a URL enters: scanning inputs, opening a shard),
  in its raw, percent-encoded and decoded spellings, replaced by `***`: a library's error message may
  quote a secret out of its URL (a bucket name, a header, a repr).

Pure Python, no imports beyond the standard library: the format code and the CLI's error path use it.
"""

from __future__ import annotations

import re
import threading
from urllib.parse import quote, unquote

#: Query parameters whose value is a credential (compared in lower case); names that contain one of
#: `_SECRET_WORDS` count too.
SECRET_PARAMS = frozenset({
    "x-amz-signature", "x-amz-credential", "x-amz-security-token", "signature", "sig", "token", "access_token",
    "id_token", "refresh_token", "x-goog-signature", "x-goog-credential", "googleaccessid", "awsaccesskeyid",
    "key", "api_key", "apikey", "password", "passwd", "pwd", "secret", "client_secret", "auth", "authorization",
    "code", "sv_sig", "se_sig",
})
_SECRET_WORDS = ("token", "secret", "signature", "password", "passwd", "credential", "apikey", "api_key",
                 "access_key", "accesskey", "auth")
REDACTED = "REDACTED"
MASK = "***"

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
# a URL inside text: a scheme, then anything up to white space or a quote (braces kept: brace patterns)
_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")
_TOKEN = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")
_MIN_SECRET = 3  # shorter remembered values are not masked in free text (they would garble every word)

_lock = threading.Lock()
_secrets: set = set()


def is_secret_param(name: str) -> bool:
    n = unquote(name).strip().lower()
    return n in SECRET_PARAMS or any(w in n for w in _SECRET_WORDS)


def split_userinfo(url: str) -> tuple[str, str, str]:
    """(scheme://, user information or '', the rest) of a URL.

    The user information is what precedes the last `@` before the first `/` (the standard authority:
    `user:p@ss@host/x`). A URL whose password holds an unencoded `/` (AWS secret keys often do:
    `s3://KEY:SE/CRET@bucket/x`) has no `@` before its first `/`; then the first `@` counts whose text before
    it holds a `:` with no `/` before that `:` (a user name holds none), unless what follows the `:` up to
    the first `/` is a port (`http://host:8080/a@b.tar`: an `@` in a path). A path with an `@` after a
    `/` and no such `:` (`s3://bucket/2024-01-01T10:00/img@2x.tar`) has no user information. Text that is
    no URL gives ('', '', text)."""
    m = _SCHEME.match(url)
    if not m:
        return "", "", url
    scheme, rest = m.group(0), url[m.end():]
    slash = rest.find("/")
    head = rest if slash < 0 else rest[:slash]
    if "@" in head:
        at = head.rfind("@")
        return scheme, rest[:at], rest[at + 1:]
    for at in (i for i, ch in enumerate(rest) if ch == "@"):
        before = rest[:at]
        colon = before.find(":")
        if colon < 0 or "/" in before[:colon]:
            continue
        after = before[colon + 1:].split("/", 1)[0]
        if after.isdigit() and len(after) <= 5:  # host:port/path: the @ is in the path
            continue
        return scheme, before, rest[at + 1:]
    return scheme, "", rest


def _strip_userinfo(m) -> str:
    scheme, userinfo, rest = split_userinfo(m.group(0))
    return scheme + rest if userinfo else m.group(0)


def _redact_query(rest: str) -> str:
    q = rest.find("?")
    if q < 0:
        return rest
    head, query = rest[:q], rest[q + 1:]
    frag = ""
    if "#" in query:
        query, frag = query.split("#", 1)
        frag = "#" + frag
    out = []
    for item in query.split("&"):
        name, eq, _ = item.partition("=")
        out.append(f"{name}={REDACTED}" if eq and is_secret_param(name) else item)
    return f"{head}?{'&'.join(out)}{frag}"


def redact_url(url: str) -> str:
    """`url` without its user information and with its credential query values replaced by `REDACTED`.

    >>> redact_url("http://me:pa/ss@host/d/{a,b}.tar")
    'http://host/d/{a,b}.tar'
    >>> redact_url("https://b.s3.amazonaws.com/x.tar?X-Amz-Expires=60&X-Amz-Signature=abc")
    'https://b.s3.amazonaws.com/x.tar?X-Amz-Expires=60&X-Amz-Signature=REDACTED'
    """
    scheme, _, rest = split_userinfo(str(url))
    if not scheme:
        return str(url)
    return scheme + _redact_query(rest)


def has_credentials(url: str) -> bool:
    """Whether the URL carries user information or a credential query parameter."""
    url = str(url)
    return bool(split_userinfo(url)[1]) or redact_url(url) != url


def secrets_of(url: str) -> set:
    """The secret values a URL carries: its user information (whole and each part) and the values of
    its credential query parameters, each in its raw, decoded and percent-encoded spellings."""
    scheme, userinfo, rest = split_userinfo(str(url))
    if not scheme:
        return set()
    found = set()
    if userinfo:
        found.add(userinfo)
        user, _, password = userinfo.partition(":")
        found.update(v for v in (password, user if len(user) >= 12 else "") if v)
    for text in {rest, str(url)[len(scheme):]}:  # the query read with and without a user part (a raw @ in it)
        q = text.find("?")
        if q >= 0:
            for item in text[q + 1:].split("#", 1)[0].split("&"):
                name, eq, value = item.partition("=")
                if eq and value and is_secret_param(name):
                    found.add(value)
    spelled = set()
    for v in found:
        spelled.update({v, unquote(v), unquote(v.replace("+", " ")), quote(v, safe=""), quote(unquote(v), safe="")})
    return {v for v in spelled if len(v) >= _MIN_SECRET}


def remember(url) -> None:
    """Remember the secrets a URL carries, so that `redact` masks them in any text from now on."""
    values = secrets_of(str(url))
    if values:
        with _lock:
            _secrets.update(values)


def forget_all() -> None:
    """Forget every remembered secret (tests)."""
    with _lock:
        _secrets.clear()


def redact_urls(text) -> str:
    """`text` with every URL in it redacted (`redact_url`), nothing else changed: for data (row names,
    attributes), which remembered secrets must not garble (a password `png` would mask every `.png`)."""
    text = str(text)
    return _IN_TEXT.sub(lambda m: redact_url(m.group(0)), text) if "://" in text else text


def redact(text) -> str:
    """`text` (any object, as `str`) with every URL in it redacted (`redact_url`) and every remembered
    secret masked as `***`."""
    text = str(text)
    if "://" in text:
        # user information first, over the whole run of non-blank characters (a password may hold quotes,
        # which end a URL in the second pass), then each URL's query
        text = _TOKEN.sub(_strip_userinfo, text)
        text = _IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)
    with _lock:
        known = sorted(_secrets, key=len, reverse=True)
    for value in known:
        if value in text:
            text = text.replace(value, MASK)
    return text


class RedactingFilter:
    """A `logging` filter that redacts a record's message (its arguments merged in first): installed on
    the `vggfeat` logger, so that no log line of vggfeat's names a credential, whatever the handler."""

    def filter(self, record) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a record whose arguments do not fit: left to logging
            return True
        clean = redact(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        return True


def install_log_filter(logger_name="vggfeat") -> None:
    """Put a `RedactingFilter` on the logger (once)."""
    import logging

    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, RedactingFilter) for f in logger.filters):
        logger.addFilter(RedactingFilter())
