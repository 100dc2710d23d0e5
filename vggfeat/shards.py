"""Tar shards (the WebDataset convention) and object storage (`s3://...`) as inputs of `extract` and `predict`.

A WebDataset shard is a tar file whose members are grouped by key: `000001.jpg` with `000001.cls`,
`000001.json`, `000001.txt` beside it (what img2dataset writes). Inputs are:

- local shards, `shards/00000.tar`, or the brace notation `shards/{00000..00009}.tar` (expanded in
  order, as WebDataset's `braceexpand` does);
- URLs read through fsspec: `s3://bucket/x.tar`, `s3://bucket/{00000..00009}.tar`, or a prefix
  `s3://bucket/prefix/`, whose objects (tar shards and loose images, at any depth) are read in sorted
  order. The S3 endpoint, region and credentials come from the standard configuration (botocore's
  chain: `AWS_ENDPOINT_URL`, `AWS_PROFILE`, `~/.aws/config`...; fsspec's `FSSPEC_S3_*` variables and
  config files); nothing of it is stored in the output.

A shard is streamed member by member (`tarfile` in stream mode over the file object: no listing of
its members, nothing written to disk), by a reader thread a bounded number of images ahead. Rows are
`SHARD/KEY.ext` (the shard as given; relative to the prefix when a single prefix is the input).
What cannot be read is recorded, like an unreadable file, and the run goes on: a shard that cannot be
opened or is not a tar, an empty shard, a truncated member, a sample with no image member, an image
member that does not decode.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import os
import re
import tarfile
from dataclasses import dataclass, field

from . import braces, faults
from .errors import ImageError, InputError
from .faults import is_transient
from .images import escape_path, is_image_name, normalize_extensions
from .io.layout import local_identity
from .redact import has_credentials, redact, redact_url, remember, split_userinfo

log = logging.getLogger("vggfeat")

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")
#: Label files read beside an image (by key): `.cls` holds an integer class index.
LABEL_EXTENSIONS = (".cls", ".json", ".txt")
#: The largest tar member read (`--max-member-size`): one larger is recorded as failed and skipped
#: without being read (memory stays flat whatever a member's size). A 100-megapixel JPEG is about 30 MB.
MAX_MEMBER_BYTES = 256 * 1024 * 1024
#: The largest label member (.cls, .json) read.
MAX_LABEL_BYTES = 1024 * 1024
#: The bytes of recent members kept to resolve a hard link to them at once; a link to an older member is
#: resolved by a second pass over the shard after its other members.
LINK_CACHE_BYTES = 64 * 1024 * 1024


def is_url(s) -> bool:
    return isinstance(s, str) and bool(_URL.match(s))


def has_braces(s) -> bool:
    return isinstance(s, str) and any(_RANGE.match(m) or "," in m for m in _BRACE.findall(s))


def url_path(name: str) -> str:
    """A URL without its query and fragment (a pre-signed URL's signature): what names the object."""
    return name.split("?", 1)[0].split("#", 1)[0] if "://" in name else name


def is_shard_name(name: str) -> bool:
    return url_path(name).lower().endswith((".tar", ".tar.gz", ".tgz"))


def is_shard_input(given) -> bool:
    """True for an input read by this module: a URL, a brace pattern, or a tar file."""
    given = os.fspath(given)
    return is_url(given) or has_braces(given) or is_shard_name(given)


def expand_braces(pattern: str) -> list:
    """WebDataset's brace notation, in order: `a{00..02}.tar` -> `a00.tar a01.tar a02.tar` (numbers
    keep the width of the first bound when it is zero-padded); `{x,y}` lists; several braces give
    every combination, the leftmost varying slowest.

    Raises:
        InputError: a range that goes downwards or holds more than ten million names.
    """
    m = next((m for m in _BRACE.finditer(pattern) if _RANGE.match(m.group(1)) or "," in m.group(1)), None)
    if m is None:
        return [pattern]
    body = m.group(1)
    r = _RANGE.match(body)
    if r:
        a, b = r.group(1), r.group(2)
        lo, hi = int(a), int(b)
        if hi < lo:
            raise InputError(f"brace range {{{body}}} in {pattern} goes downwards; write {{{b}..{a}}}")
        if hi - lo >= 10_000_000:
            raise InputError(f"brace range {{{body}}} in {pattern} names more than ten million shards")
        width = len(a.lstrip("-")) if a.lstrip("-").startswith("0") else 0
        parts = [str(i).zfill(width) for i in range(lo, hi + 1)]
    else:
        parts = body.split(",")
    head, tail = pattern[:m.start()], pattern[m.end():]
    return [head + p + rest for p in parts for rest in expand_braces(tail)]


def safe_url(url: str) -> str:
    """The URL as it may be stored or shown: no user information, no signature (`vggfeat.redact`)."""
    return redact_url(url)


#: Protocols whose URLs may carry user information (HTTP basic authentication); others take their
#: credentials from their own configuration.
USERINFO_PROTOCOLS = ("http", "https")


def check_url(url: str) -> None:
    """Refuse credentials where they are not taken, and remember the secrets of the others (`redact`).

    Raises:
        InputError: `s3://KEY:SECRET@bucket/...` and the like: object stores take no credentials in URLs.
    """
    remember(url)
    proto = url.split("://", 1)[0].lower()
    if proto not in USERINFO_PROTOCOLS and has_credentials(url):
        raise InputError(f"{redact_url(url)}: {proto}:// URLs take no credentials in the URL (removed here, never "
                         "stored); S3 credentials come from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                         "AWS_PROFILE or ~/.aws/credentials (fsspec's FSSPEC_S3_* variables work too)")
    userinfo = split_userinfo(url)[1]
    if userinfo and (any(c in userinfo for c in "/?#@ ") or not userinfo.isascii()):
        raise InputError(f"{redact_url(url)}: the user name or password in this URL holds characters a URL cannot "
                         "carry as they are (/ ? # @, spaces, non-ASCII): percent-encode them (%2F for /, %3F for ?, "
                         "%23 for #, %40 for @; python -c \"import urllib.parse; print(urllib.parse.quote('PASSWORD', "
                         "safe=''))\")")


def _filesystem(url):
    """(fsspec filesystem, path) for a URL, with the standard configuration of its protocol."""
    try:
        import fsspec
    except ImportError:
        raise InputError(f"reading {safe_url(url)} needs fsspec: pip install \"vggfeat[s3]\"") from None
    try:
        # an HTTP URL is sent as it is written: a pre-signed URL's signature covers its encoding (%2F...)
        return fsspec.core.url_to_fs(url, **({"encoded": True} if _is_http(url) else {}))
    except ImportError as exc:
        proto = url.split("://", 1)[0]
        need = "s3fs" if proto in ("s3", "s3a") else (getattr(exc, "name", None) or f"fsspec's {proto} filesystem")
        raise InputError(f"reading {proto}:// URLs needs {need}: pip install \"vggfeat[s3]\"") from None
    except Exception as exc:  # noqa: BLE001 - a bad URL, a bad option in it: the input's
        raise InputError(f"cannot read {safe_url(url)}: {_reason(exc)}") from None


def _reason(exc) -> str:
    """One line for a filesystem error (S3's included), never naming credentials."""
    return faults.describe(exc)


@dataclass(frozen=True)
class Source:
    """One unit of input: a shard (`kind="shard"`) or one loose image (`kind="image"`).

    `url` is what is opened (a local path or a URL); `name` the stored row id (an image) or the row id
    prefix (a shard); `missing`: a shard of a brace range that does not exist (recorded as failed)."""

    kind: str
    url: str
    name: str
    missing: bool = False
    label: int = -1  # a loose image in a first-level subfolder of a prefix: that class's index
    count: int = 1  # missing: the consecutive names of the brace range it stands for (one failure for all)


@dataclass
class ShardInputs:
    """The inputs of a run that reads shards or URLs (see `scan_inputs`); what `iter_features` reads."""

    sources: list
    class_names: list = field(default_factory=list)
    label_field: str | None = None
    extensions: tuple = ()
    exclude: tuple = ()
    root: str | None = None
    excluded: int = 0
    previous_failed: dict = field(default_factory=dict)  # resuming: {row: reason} of the earlier run
    shards_skipped: int = 0  # resuming: shards not read again
    warn_unlabelled: bool = True  # False: a unit of a run in parts, whose caller sums `unlabelled` and says it
    unlabelled: int = 0  # after reading: shard images with no usable label, and with one
    labelled: int = 0
    max_member_bytes: int = MAX_MEMBER_BYTES  # a larger tar member (or object) fails unread
    retries: int = faults.RETRIES  # of a transient fault, before it is recorded (as transient)
    retry_delay: float = faults.DELAY  # the first wait, in seconds (doubled each retry)
    reread: int = 0  # resuming: shards read again for a transient failure of the earlier run
    identities: dict = field(default_factory=dict)  # {shard name: `identity`}, recorded with its rows

    @property
    def shards(self) -> int:
        return sum(s.count for s in self.sources if s.kind == "shard")

    def found(self) -> str:
        n_img = sum(1 for s in self.sources if s.kind == "image")
        missing = sum(s.count for s in self.sources if s.missing)
        parts = [f"{self.shards} shard{'' if self.shards == 1 else 's'}"]
        if n_img:
            parts.append(f"{n_img} loose image{'' if n_img == 1 else 's'}")
        extra = f" ({missing} of the range not found, recorded as failed)" if missing else ""
        classes = f" in {len(self.class_names)} classes" if self.class_names else ""
        return f"Found {' and '.join(parts)}{classes}{extra}"


def read_class_names(value) -> list:
    """Class names from a list, a file (one name a line) or a comma-separated string."""
    if value is None:
        return []
    if isinstance(value, str) and is_url(value):  # not read from a URL, nor kept as a name (its credentials)
        raise InputError(f"--class-names takes names or a local file, not a URL: {redact_url(value)}")
    if isinstance(value, (list, tuple)):
        names = [str(v) for v in value]
    elif os.path.isfile(os.fspath(value)):
        try:
            with open(value, encoding="utf-8") as f:
                names = [line.strip() for line in f if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read the class names file {value}: {exc}") from None
    else:
        names = [n.strip() for n in str(value).split(",") if n.strip()]
    if not names:
        raise InputError(f"no class name in {value!r}")
    if len(set(names)) != len(names):
        raise InputError(f"class names repeat: {value!r}")
    return names


def _display(given: str) -> str:
    """An input as it is stored and shown: a local path with `/`, a URL without credentials (and without
    its query when that holds a signature: a pre-signed URL is named by its object)."""
    if not is_url(given):
        return given.replace(os.sep, "/")
    return safe_url(url_path(given)) if has_credentials(given.split("@", 1)[-1]) else safe_url(given)


#: Retries of a transient fault while listing, before anything is read (at most; `--retries` 0 makes none):
#: an unreachable endpoint at the start is more often a wrong setting than a passing fault.
LISTING_RETRIES = 2


def _list_prefix(given, extensions, retries=LISTING_RETRIES):
    """Sorted (url, relative name) of the shards and images under a prefix (URL) or local folder."""
    if is_url(given):
        fs, path = _filesystem(given)
        try:
            found = faults.retry(lambda: fs.find(path, detail=False), retries=retries,
                                 what=f"listing {safe_url(given)}")
        except Exception as exc:  # noqa: BLE001 - every filesystem error is the input's
            raise InputError(f"cannot list {safe_url(given)}: {_reason(exc)}") from None
        base = path.rstrip("/") + "/"
        # s3fs lists `bucket/key`, fsspec's HTTP whole URLs: the protocol is put back only where it is missing
        out = [(fs.unstrip_protocol(p), p[len(base):]) for p in sorted(found) if p.startswith(base)]
    else:
        top = os.path.abspath(given)
        out = []
        for folder, dirs, names in os.walk(top):  # links to folders are not followed
            dirs.sort()
            out.extend((p, os.path.relpath(p, top).replace(os.sep, "/"))
                       for p in (os.path.join(folder, n) for n in names) if os.path.isfile(p))
        out.sort(key=lambda item: item[1].split("/"))
    return [(u, r) for u, r in out if is_shard_name(r) or is_image_name(r, extensions)]


def _existing(urls, retries=LISTING_RETRIES) -> set:
    """Which of these shard names exist: local ones by `os.path.isfile`, remote ones by listing each
    parent once (one request per folder, not one per shard)."""
    out, remote = set(), {}
    for u in urls:
        if is_url(u):
            remote.setdefault(u.rsplit("/", 1)[0], []).append(u)
        elif os.path.isfile(u):
            out.add(u)
    for parent, names in remote.items():
        fs, path = _filesystem(parent + "/")
        if _is_http(parent):  # an HTTP server need not list its folders: each shard is tried when read
            out.update(names)
            continue
        try:
            listed = {p.rstrip("/").rsplit("/", 1)[-1] for p in faults.retry(
                lambda: fs.ls(path, detail=False, refresh=True), retries=retries, what=f"listing {safe_url(parent)}/")}
        except FileNotFoundError:
            listed = set()
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"cannot list {safe_url(parent)}/: {_reason(exc)}") from None
        out.update(u for u in names if u.rsplit("/", 1)[-1] in listed)
    return out


#: The most names of a brace range over HTTP, whose folders are not listed (each name is tried when read).
MAX_HTTP_RANGE = 1_000_000


def _list_folder(folder, retries=LISTING_RETRIES):
    """The file names in one folder of a brace range (`braces.resolve`): None when it does not exist."""
    if not is_url(folder):
        try:
            return os.listdir(folder or ".")
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise InputError(f"cannot list {folder}: {exc.strerror or exc}") from None
    fs, path = _filesystem(folder)
    try:
        found = faults.retry(lambda: fs.ls(path, detail=False, refresh=True), retries=retries,
                             what=f"listing {safe_url(folder)}")
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"cannot list {safe_url(folder)}: {_reason(exc)}") from None
    return [p.rstrip("/").rsplit("/", 1)[-1] for p in found]


def _range_sources(given, shown, retries=LISTING_RETRIES):
    """The sources of a brace range, resolved without expanding it (`vggfeat.braces`): a shard per name
    that exists, one missing source per run of names that do not (one failure recorded for the run)."""
    n = braces.count(given)
    ends = [braces.name_at(given, 0), braces.name_at(given, -1)]
    bad = next((x for x in itertools.chain(ends, itertools.islice(braces.iter_names(given), 1000))
                if not is_shard_name(x)), None)
    if bad is not None:
        raise InputError(f"{shown}: a brace pattern names tar shards (.tar); {_display(bad)} is not one")
    if _is_http(given):  # an HTTP server need not list its folders: each shard is tried when read
        if n > MAX_HTTP_RANGE:
            raise InputError(f"{shown} names {n} shards; over HTTP (not listed) at most {MAX_HTTP_RANGE}")
        return [Source("shard", x, _display(x)) for x in braces.iter_names(given)]
    items = braces.resolve(given, lambda folder: _list_folder(folder, retries))
    if braces.none_exists(items):
        raise InputError(f"no shard matches {shown} ({n} names, from {_display(ends[0])} to {_display(ends[1])}, "
                         "none exists)")
    out = []
    for item in items:
        if item[0] == "shard":
            out.append(Source("shard", item[1], _display(item[1])))
        elif item[3] == 1:
            out.append(Source("shard", item[1], _display(item[1]), missing=True))
        else:
            first, last = _display(item[1]), _display(item[2])
            out.append(Source("shard", item[1], f"{first} .. {last}", missing=True, count=item[3]))
    return out


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.I)


def parse_size(value, what="--max-member-size") -> int:
    """Bytes from an int or a string with an optional unit: `256M`, `1.5G`, `512KiB`, `4096` (K, M, G, T
    are powers of 1024, with or without `B`/`iB`).

    >>> parse_size("256M"), parse_size("1GiB"), parse_size(4096)
    (268435456, 1073741824, 4096)
    """
    if isinstance(value, bool):
        raise InputError(f"{what} takes a size such as 256M. Received: {value!r}")
    if isinstance(value, int):
        n = value
    else:
        m = _SIZE.match(str(value))
        if not m:
            raise InputError(f"{what} takes a size such as 256M, 1G or a number of bytes. Received: {value!r}")
        n = int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2).lower() or " "))
    if n < 1:
        raise InputError(f"{what} must be at least 1 byte. Received: {value!r}")
    return n


def check_retries(retries) -> int:
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 100:
        raise InputError(f"retries must be an integer from 0 to 100. Received: {retries!r}")
    return retries


def scan_inputs(inputs, *, extensions=None, exclude=(), class_names=None, label_field=None, max_member_size=None,
                retries=None):
    """What `extract` and `iter_features` read: an `ImageList` (`scan_images`) for folders, files and
    lists; a `ShardInputs` when any input is a tar shard, a brace pattern or a URL.

    In a run with shards, a local folder or a URL prefix is listed (recursively, sorted) for tar shards
    and images; an image file or object given on its own is one row named as given. Rows of a single
    prefix (or folder) are named relative to it.

    `max_member_size` (bytes, or a string such as `256M`; default `MAX_MEMBER_BYTES`): a larger tar
    member or object fails unread. `retries` (default `vggfeat.faults.RETRIES`): how often a transient
    fault is retried, with exponential backoff, before it is recorded as transient.

    Raises:
        InputError: shards mixed with list files; an input that does not exist; a brace range that
            matches nothing; a prefix that cannot be listed (missing bucket, unreachable endpoint...);
            credentials in an `s3://` URL; a bad `max_member_size` or `retries`.
    """
    from .images import scan_images

    max_bytes = MAX_MEMBER_BYTES if max_member_size is None else parse_size(max_member_size)
    retries = faults.RETRIES if retries is None else check_retries(retries)
    listing = min(retries, LISTING_RETRIES)

    given_list = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    given_list = [os.fspath(g) for g in given_list]
    if not any(is_shard_input(g) for g in given_list):
        if class_names is not None or label_field is not None:
            raise InputError("--class-names and --label-field (class_names, label_field) are for tar shards "
                             "(.tar, s3://...); folders take classes from their subfolders")
        try:
            return scan_images(given_list, extensions=extensions, exclude=exclude)
        except InputError as exc:
            tars = [g for g in given_list if os.path.isdir(g) and any(is_shard_name(n) for n in os.listdir(g))]
            if not str(exc).startswith("no images found") or not tars:
                raise
            raise InputError(f"{exc}; {tars[0]} holds tar shards: name them ({tars[0].rstrip(os.sep)}/*.tar or "
                             f"the brace notation, {tars[0].rstrip(os.sep)}/{{00000..00009}}.tar)") from None
    extensions = normalize_extensions(extensions)
    exclude = tuple([exclude] if isinstance(exclude, str) else [str(p) for p in (exclude or ())])
    sources, root = [], None
    single_prefix = len(given_list) == 1
    folder_class = {}  # source index -> the first-level subfolder of its prefix (a class, as on disk)
    for given in given_list:
        if is_url(given):
            check_url(given)
        shown = _display(given)
        if has_braces(given):
            sources.extend(_range_sources(given, shown, listing))
            continue
        remote_prefix = is_url(given) and (url_path(given).endswith("/") or url_path(given).count("/") == 2)
        if is_url(given) and not remote_prefix and not is_shard_name(given) \
                and not is_image_name(url_path(given), extensions):
            fs, path = _filesystem(given)
            try:
                remote_prefix = fs.isdir(path)  # a prefix written without its final slash
            except Exception as exc:  # noqa: BLE001
                raise InputError(f"cannot read {shown}: {_reason(exc)}") from None
            if remote_prefix:
                given, shown = given + "/", shown + "/"
        if remote_prefix and "?" in given:
            raise InputError(f"{shown}: a prefix with a query (a pre-signed or token URL) cannot be listed: name its "
                             "shards, one URL each or with the brace notation")
        if remote_prefix or (not is_url(given) and os.path.isdir(given)):
            listed = _list_prefix(given, extensions, listing)
            if not listed:
                raise InputError(f"no tar shard or image found under {shown}")
            if single_prefix:
                root = shown if shown.endswith("/") else shown + "/"
                prefix = ""
            else:
                prefix = shown.rstrip("/") + "/"
            for url, rel in listed:
                kind = "shard" if is_shard_name(rel) else "image"
                if kind == "image" and _excluded(exclude, rel, rel.rsplit("/", 1)[-1]):
                    continue
                if kind == "image" and "/" in rel:
                    folder_class[len(sources)] = escape_path(rel.split("/", 1)[0])
                sources.append(Source(kind, url, escape_path(prefix + rel)))
            continue
        if is_url(given):
            if not _existing([given], listing):
                raise InputError(f"input not found: {shown}")
        elif not os.path.exists(given):
            raise InputError(f"input not found: {given}")
        elif os.path.isfile(given) and given.lower().endswith((".txt", ".csv")) and not is_image_name(given, extensions):
            raise InputError(f"{given}: lists of images cannot be mixed with tar shards or URLs in one run")
        kind = "shard" if is_shard_name(given) else "image"
        sources.append(Source(kind, given, escape_path(shown)))
    names = read_class_names(class_names)
    # shards' .cls indices and subfolder names are two class lists: subfolders are classes of their own only
    # when no tar shard is read, or through the class names given
    if folder_class and (class_names is not None or not any(s.kind == "shard" for s in sources)):
        names, sources = _folder_labels(sources, folder_class, names, class_names is not None)
    seen, unique = set(), []
    for s in sources:
        if s.url not in seen:
            seen.add(s.url)
            unique.append(s)
    return ShardInputs(unique, names, label_field, extensions, exclude, root if single_prefix else None,
                       max_member_bytes=max_bytes, retries=retries)


def _folder_labels(sources, folder_class, names, given):
    """Loose images in a first-level subfolder of a prefix are of that subfolder's class, as in a folder
    on disk (`scan_images`): the class names are the subfolders' names, sorted, unless `class_names` was
    given, to which the subfolders are matched (one not in it: label -1, counted). With tar shards among
    the inputs and no class names given, the shards' `.cls` indices are the labels and subfolders none."""
    from dataclasses import replace

    if not given:
        names = sorted(set(folder_class.values()))
    index = {c: i for i, c in enumerate(names)}
    unknown = sorted({c for c in folder_class.values() if c not in index})
    if unknown:
        log.warning("%d subfolders are not among the class names (%s%s): their images are stored with label -1",
                    len(unknown), ", ".join(unknown[:3]), ", ..." if len(unknown) > 3 else "")
    out = [replace(s, label=index.get(folder_class[i], -1)) if i in folder_class else s for i, s in enumerate(sources)]
    return names, out


# ---- reading -------------------------------------------------------------------------------------------


@dataclass
class Sample:
    """One row to decode: `data` is bytes, a local path, or an `ImageError` (recorded as failed)."""

    path: str
    label: int
    data: object
    unit: int = 0  # the unit of input (`vggfeat.run.units`) it belongs to: a batch never spans two


def _key_ext(name):
    """WebDataset's split of a member name: key = up to the first dot of the file name."""
    d, _, base = name.rpartition("/")
    if "." not in base:
        return name, ""
    stem, ext = base.split(".", 1)
    return (f"{d}/{stem}" if d else stem), ext


#: Labels are class indices below 2**31 (stored as int32 by scikit-learn's estimators; HDF5 /labels is
#: int64): a larger value, as a negative one or one outside the class names, is no label (-1, counted).
MAX_LABEL = 2 ** 31 - 1


class _Labels:
    def __init__(self, class_names, label_field):
        self.class_names = list(class_names)
        self.index = {c: i for i, c in enumerate(self.class_names)}
        self.label_field = label_field
        self.unlabelled = self.labelled = 0

    def __call__(self, members: dict) -> int:
        """The label of a sample from its `.cls` (an integer) or, with `label_field`, its `.json`;
        -1 when it has none or it cannot be read."""
        label = None
        try:
            if self.label_field is not None:
                raw = members.get("json")
                if isinstance(raw, bytes):
                    value = json.loads(raw.decode("utf-8"))
                    for part in self.label_field.split("."):
                        value = value.get(part) if isinstance(value, dict) else None
                    label = self._of(value)
            elif isinstance(members.get("cls"), bytes):
                label = self._of(members["cls"].decode("utf-8").strip())
        except (ValueError, UnicodeDecodeError, OverflowError, TypeError, RecursionError):
            label = None
        if label is None:
            self.unlabelled += 1
            return -1
        self.labelled += 1
        return label

    def _of(self, value):
        if isinstance(value, bool) or value is None:
            return None
        if isinstance(value, str) and value in self.index:
            return self.index[value]
        if isinstance(value, float) and not value.is_integer():
            return None
        if isinstance(value, str) and len(value) > 12:  # past 2**31 whatever it spells; int() of 5000 digits is slow
            return None
        try:
            i = int(value)
        except (TypeError, ValueError, OverflowError):
            return None
        if i < 0 or i > MAX_LABEL or (self.class_names and i >= len(self.class_names)):
            return None
        return i


def _is_http(url) -> bool:
    return str(url).lower().startswith(("http://", "https://"))


def _open(url):
    if is_url(url):
        remember(url)
        fs, path = _filesystem(url)
        if _is_http(url):
            # streamed GET: no HEAD first (a pre-signed URL signs GET only), and the server's status as it
            # is (fsspec's size probe turns any failure, a 500 too, into "not found")
            return fs.open(path, "rb", block_size=0, size=1)
        try:  # the listing may have cached a key that is also a "folder" as a folder of 0 bytes
            fs.invalidate_cache(path)
        except Exception:  # noqa: BLE001 - a filesystem without a cache
            pass
        return fs.open(path, "rb", block_size=8 * 1024 * 1024)
    return open(url, "rb")


#: what of an object store's listing entry says which version of an object it is
_IDENTITY_KEYS = ("ETag", "etag", "VersionId", "version_id", "generation", "size", "LastModified", "mtime")


def identity(source: Source, retries=LISTING_RETRIES) -> str:
    """What a shard is now, to tell whether it changed since its rows were written: a local file's size
    and modification time (ns); an object's ETag, version and size (one HEAD request); an HTTP file's
    ETag, Last-Modified and Content-Length (the headers of a GET whose body is not read: a pre-signed
    URL signs GET only). "missing" for a shard that does not exist; "unknown: ..." when it cannot be
    asked now (then it cannot be told to have changed either)."""
    if source.missing:
        return "missing"
    url = source.url
    if not is_url(url):
        if not os.path.lexists(url):
            return "missing"
        return local_identity(url) or "unknown: cannot stat it"
    remember(url)
    try:
        fs, path = _filesystem(url)
        if _is_http(url):
            def ask():
                with fs.open(path, "rb", block_size=0, size=1) as f:
                    return {k: f.r.headers.get(k) for k in ("ETag", "Last-Modified", "Content-Length")}
        else:
            def ask():
                info = fs.info(path, refresh=True) if "refresh" in _parameters(fs.info) else fs.info(path)
                return {k: info.get(k) for k in _IDENTITY_KEYS}
        found = faults.retry(ask, retries=retries, what=f"asking what {safe_url(url)} is")
    except FileNotFoundError:
        return "missing"
    except Exception as exc:  # noqa: BLE001 - asked again at the next resume
        return f"unknown: {_reason(exc)}"
    return " ".join(f"{k}={v}" for k, v in found.items() if v not in (None, "")) or "unknown: no version given"


def _parameters(fn) -> tuple:
    import inspect

    try:
        return tuple(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return ()


def identities(inputs) -> dict:
    """{shard name: `identity`} of every tar shard of `inputs` (a `ShardInputs`; {} for anything else)."""
    if not isinstance(inputs, ShardInputs):
        return {}
    shards = [s for s in inputs.sources if s.kind == "shard" and not s.missing]
    remote = [s for s in shards if is_url(s.url)]
    found = {}
    if len(remote) > 1:  # one request each: asked 16 at a time
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(16) as pool:
            found = dict(zip((s.name for s in remote), pool.map(identity, remote)))
    return {s.name: found[s.name] if s.name in found else identity(s) for s in shards}


def _excluded(patterns, *names):
    """As for folders (`scan_images`): a glob pattern matches a name, in any letter case."""
    import fnmatch

    return any(fnmatch.fnmatchcase(n, p) or fnmatch.fnmatchcase(n.lower(), p.lower()) for p in patterns for n in names)




class _Transient(Exception):
    """A transient fault while reading a shard: the shard is opened again and read on (`iter_shard`)."""

    def __init__(self, exc, what):
        super().__init__(what)
        self.exc, self.what = exc, what


@dataclass
class _Deferred:
    target: str  # a hard link to a member whose data is no longer held: read by a second pass
    limit: int  # the most bytes read for it


class _Cache:
    """Member bytes by name, the most recent first, up to `limit` bytes."""

    def __init__(self, limit):
        from collections import OrderedDict

        self.limit, self.size, self.data = limit, 0, OrderedDict()

    def put(self, name, data):
        if not isinstance(data, bytes) or len(data) > self.limit:
            return
        old = self.data.pop(name, None)
        self.size += len(data) - (len(old) if old is not None else 0)
        self.data[name] = data
        while self.size > self.limit:
            self.size -= len(self.data.popitem(last=False)[1])

    def get(self, name):
        return self.data.get(name)


def _norm(name):
    return os.path.normpath(name).replace(os.sep, "/").lstrip("/") if name else name


class _ShardPass:
    """One pass over a shard: its samples in member order (a hard link to a member no longer held is
    left for `second_pass`). Raises `_Transient` on a transient fault; a permanent one is a failed sample."""

    def __init__(self, source, *, extensions, exclude, labels, skip, max_bytes):
        self.source, self.extensions, self.exclude = source, extensions, exclude
        self.labels, self.skip, self.max_bytes = labels, skip, max_bytes
        self.name = source.name
        self.members = 0  # members seen (1-based numbers in messages)
        self.folders = 0  # of which folders (no input unit)
        self.seen_rows = set()  # row names given, for duplicates (the first member of a name is kept)
        self.names = {}  # member name -> its number, for duplicates
        self.kinds = {}  # normalised member name -> ("file", size) | ("link", target) | ("dir",) | ("other",)
        self.cache = _Cache(LINK_CACHE_BYTES)
        self.deferred = []  # (row, label, target member name)

    def fail(self, row, why):
        return Sample(row, -1, ImageError(why))

    def wanted(self, member_name, ext):
        if is_image_name(member_name, self.extensions):
            return self.max_bytes
        if ext == "cls" or (ext == "json" and self.labels.label_field is not None):
            return min(self.max_bytes, MAX_LABEL_BYTES)
        return 0  # not read: tarfile skips its data block by block

    def open(self):
        try:
            f = _open(self.source.url)
        except Exception as exc:  # noqa: BLE001 - any failure to open is this shard's
            if is_transient(exc):
                raise _Transient(exc, "cannot open shard") from None
            return None, self.fail(self.name, faults.reason(exc, "cannot open shard"))
        return f, None

    def samples(self):
        f, failure = self.open()
        if failure is not None:
            yield failure
            return
        with f:
            try:
                tar = tarfile.open(fileobj=f, mode="r|*")
            except tarfile.ReadError as exc:
                cause = exc.__cause__ or exc.__context__
                if cause is not None and is_transient(cause):
                    raise _Transient(cause, "cannot open shard") from None
                why = "empty shard (0 bytes)" if "empty file" in str(exc) else f"not a tar file ({exc})"
                yield self.fail(self.name, why)
                return
            except Exception as exc:  # noqa: BLE001
                if is_transient(exc):
                    raise _Transient(exc, "cannot open shard") from None
                yield self.fail(self.name, faults.reason(exc, "cannot read shard"))
                return
            with tar:
                yield from self._members(tar)
        if self.members == self.folders:
            yield self.fail(self.name, "empty shard: a tar with no member" if not self.members else
                            f"empty shard: a tar of {self.members} folders and no file")

    def _read(self, tar, m):
        """The member's bytes; a transient fault raises `_Transient`, a permanent one `ImageError`."""
        try:
            data = tar.extractfile(m).read()
            if len(data) != m.size:
                raise EOFError(f"{len(data)} of {m.size} bytes")
            return data
        except Exception as exc:  # noqa: BLE001
            if is_transient(exc):
                raise _Transient(exc, f"read failed in member {self.members}") from None
            raise ImageError(f"truncated member: {type(exc).__name__}: {redact(exc)}") from None

    def _members(self, tar):
        current, group, order = None, {}, []
        it = iter(tar)
        while True:
            try:
                m = next(it)
            except StopIteration:
                break
            except Exception as exc:  # noqa: BLE001 - tarfile's errors, and the transport's
                if is_transient(exc):
                    raise _Transient(exc, f"read failed after {self.members} members") from None
                yield from self._emit(current, group, order)
                yield self.fail(self.name, f"truncated or damaged shard after {self.members} members: "
                                           f"{type(exc).__name__}: {redact(exc)}")
                return
            self.members += 1
            number = self.members
            self.kinds.setdefault(_norm(m.name), ("dir",) if m.isdir() else ("file", m.size) if m.isfile() else
                                  ("link", _norm(m.linkname)) if m.islnk() else ("other",))
            if m.isdir():
                self.folders += 1
                continue
            key, ext = _key_ext(m.name)
            if key != current:
                yield from self._emit(current, group, order)
                current, group, order = key, {}, []
            row = escape_path(f"{self.name}/{m.name}")
            first = self.names.setdefault(m.name, number)
            if not (m.isfile() or m.islnk()):  # a symbolic link, a device, a FIFO: never followed nor read
                why = (f"symbolic link to {m.linkname!r}: links are not followed" if m.issym() else
                       "not a regular file ({})".format({tarfile.CHRTYPE: "character device", tarfile.BLKTYPE:
                                                         "block device", tarfile.FIFOTYPE: "FIFO"}.get(m.type, "tar "
                                                         f"type {m.type!r}")))
                if is_image_name(m.name, self.extensions) and ext not in group:
                    order.append((ext, m.name, number))  # fails as this sample's image, with its label
                    group[ext] = (ImageError(why), number)
                else:
                    yield self.fail(row if first == number else f"{row} (member {number})", why)
                continue
            limit = self.wanted(m.name, ext)
            order.append((ext, m.name, number))
            if not limit:
                continue
            if ext in group:  # the same name twice in a row: the first is kept
                order.pop()
                yield self.fail(f"{row} (member {number})",
                                f"duplicate member name: member {group[ext][1]} of that name is kept")
                continue
            if m.islnk():
                target, size = self._link_target(m)
                if target is None:
                    data, size = ImageError(size), None
                else:
                    data = self.cache.get(target)
                    if data is None and size <= limit:
                        data = _Deferred(target, limit)
            else:
                size = m.size
                data = None
            if size is not None and size > limit:
                data = ImageError(f"member of {size} bytes is over the limit of {limit} bytes "
                                  "(--max-member-size); not read")
            elif data is None:
                try:
                    data = self._read(tar, m)
                except ImageError as exc:
                    yield from self._emit(current, group, order[:-1])
                    yield self.fail(row, str(exc))
                    return
                self.cache.put(_norm(m.name), data)
            group[ext] = (data, number)
        yield from self._emit(current, group, order)

    def _link_target(self, m):
        """(the regular member a hard link stands for, its size), through chains of links; or (None, why)."""
        target, seen = _norm(m.linkname), {_norm(m.name)}
        while True:
            kind = self.kinds.get(target)
            if kind is None or target in seen:
                return None, f"hard link to {m.linkname!r}, which is no earlier member of the shard"
            if kind[0] == "link":
                seen.add(target)
                target = kind[1]
                continue
            if kind[0] != "file":
                what = "a folder" if kind[0] == "dir" else "no regular file"
                return None, f"hard link to {m.linkname!r}, {what}"
            return target, kind[1]

    def _emit(self, key, group, order):
        images = [(ext, n, k) for ext, n, k in order if is_image_name(n, self.extensions) and ext in group
                  and group[ext][1] == k]
        if not images:
            if order:
                exts = ", ".join(sorted(f".{e}" for e, _, _ in order))
                yield self.fail(escape_path(f"{self.name}/{key}"), f"no image in this sample (members: {exts})")
            return
        label = self.labels({e: d for e, (d, _) in group.items()})
        for ext, n, k in images:
            row = escape_path(f"{self.name}/{n}")
            if row in self.seen_rows:  # a name seen before in the shard: the first member is kept
                yield self.fail(f"{row} (member {k})", f"duplicate member name: member {self.names[n]} of that "
                                                      "name is kept")
                continue
            self.seen_rows.add(row)
            if row in self.skip or _excluded(self.exclude, n, n.rsplit("/", 1)[-1]):
                continue
            data = group[ext][0]
            if isinstance(data, _Deferred):
                self.deferred.append((row, label, data.target, data.limit))
                continue
            yield Sample(row, label, data)

    def second_pass(self):
        """The hard links left for later: the shard read again for their targets' bytes, one at a time."""
        if not self.deferred:
            return
        wanted = {}
        for row, label, target, limit in self.deferred:
            wanted.setdefault(target, []).append((row, label, limit))
        f, failure = self.open()
        if failure is not None:
            for rows in wanted.values():
                for row, _, _ in rows:
                    yield self.fail(row, f"hard link: {failure.data}")
            return
        with f:
            try:
                tar = tarfile.open(fileobj=f, mode="r|*")
                for m in tar:
                    name = _norm(m.name)
                    if name in wanted and m.isfile():
                        rows = wanted.pop(name)
                        try:  # the limit was checked against the size the first pass saw; checked again
                            data = self._read(tar, m) if m.size <= max(r[2] for r in rows) else ImageError(
                                f"member of {m.size} bytes is over the limit (--max-member-size); not read")
                        except ImageError as exc:
                            data = exc
                        for row, label, limit in rows:
                            ok = isinstance(data, bytes) and len(data) <= limit
                            yield Sample(row, label, data) if ok else self.fail(row, str(data) if not isinstance(
                                data, bytes) else f"member of {len(data)} bytes is over the limit of {limit} bytes")
                        if not wanted:
                            break
            except _Transient:
                raise
            except Exception as exc:  # noqa: BLE001
                if is_transient(exc):
                    raise _Transient(exc, "read failed (second pass for hard links)") from None
        for target, rows in wanted.items():
            for row, _, _ in rows:
                yield self.fail(row, f"hard link to {target!r}, whose data could not be read again")


def iter_shard(source: Source, *, extensions, exclude=(), labels=None, skip=frozenset(),
               max_member_bytes=MAX_MEMBER_BYTES, retries=faults.RETRIES, retry_delay=faults.DELAY):
    """Yield the `Sample`s of one shard in member order, streaming it (never listing it first).

    Every member ends as a row or a failure: a shard that cannot be opened or read as a tar, or that
    holds no member, is one failed sample named after the shard; a truncated member fails as itself and
    ends the shard; a sample with no image member fails as `SHARD/KEY`; a symbolic link or a member that
    is no regular file fails as itself (links are never followed); a hard link is read as its target's
    bytes under its own name; a name met a second time fails as `ROW (member N)`, the first member of
    that name being kept; a member over `max_member_bytes` fails unread. Only image members and label
    members are read. A transient fault (throttling, a 5xx answer, a timeout, a reset connection) opens
    the shard again after a wait, up to `retries` times, and goes on where it was; past that the shard's
    failure is recorded as transient (`vggfeat.faults`), which `--resume` reads again."""
    labels = labels or _Labels([], None)
    if source.missing:
        why = ("shard not found (named by the brace range)" if source.count == 1 else
               f"{source.count} consecutive shards of the brace range not found (from the first to the last named)")
        yield Sample(source.name, -1, ImageError(why))
        return
    given, attempt = set(), 0  # rows and failures given: a pass after a transient fault gives each once
    while True:
        reader = _ShardPass(source, extensions=extensions, exclude=exclude, labels=_Labels(labels.class_names,
                            labels.label_field), skip=skip, max_bytes=max_member_bytes)
        try:
            for sample in itertools.chain(reader.samples(), reader.second_pass()):
                if sample.path not in given:  # a pass after a retry may end otherwise: its failure is given
                    given.add(sample.path)
                    yield sample
            labels.unlabelled += reader.labels.unlabelled
            labels.labelled += reader.labels.labelled
            return
        except _Transient as t:
            if attempt >= retries:
                labels.unlabelled += reader.labels.unlabelled
                labels.labelled += reader.labels.labelled
                yield Sample(source.name, -1, ImageError(faults.reason(t.exc, t.what)))
                return
            log.info("%s: %s (%s); retry %d of %d", source.name, t.what, faults.describe(t.exc), attempt + 1, retries)
            faults.wait(attempt, retry_delay)
            attempt += 1


def _last_source_with_rows(sources, done) -> int:
    """The index of the last source that has a row in `done` (-1: none)."""
    index = {s.name: i for i, s in enumerate(sources)}
    last = -1
    for p in done:
        if p in index:
            last = max(last, index[p])
            continue
        k = p.find("/")
        while k > 0:
            i = index.get(p[:k])
            if i is not None:
                last = max(last, i)
                break
            k = p.find("/", k + 1)
    return last


#: Loose images (not in a tar shard) per unit of input (`vggfeat.run.units`: a part of `--output-shards`).
LOOSE_PER_UNIT = 4096


def unit_numbers(sources) -> list:
    """The unit of input of each source: one per tar shard, one per run of up to `LOOSE_PER_UNIT`
    consecutive loose images."""
    out, unit, run = [], -1, LOOSE_PER_UNIT
    for s in sources:
        if s.kind == "shard":
            unit += 1
            run = LOOSE_PER_UNIT  # the next loose image starts a unit
        else:
            if run >= LOOSE_PER_UNIT:
                unit += 1
                run = 0
            run += 1
        out.append(unit)
    return out


def _by_source(sources, rows) -> dict:
    """{source index: [row, ...]} for rows named after a source (the source itself or `SOURCE/...`)."""
    index = {s.name: i for i, s in enumerate(sources)}
    out = {}
    for p in rows:
        i = index.get(p)
        k = p.find("/")
        while i is None and k > 0:
            i = index.get(p[:k])
            k = p.find("/", k + 1)
        if i is not None:
            out.setdefault(i, []).append(p)
    return out


def _read_object(source, inputs):
    """The bytes of a loose image in object storage (at most `max_member_bytes`), or an `ImageError`;
    transient faults retried, then recorded as transient."""

    def read():
        with _open(source.url) as f:
            size = getattr(f, "size", None)  # known from the listing for object stores: not read when over
            what = f"{size} bytes"
            if not (isinstance(size, int) and size > inputs.max_member_bytes):
                data = f.read(inputs.max_member_bytes + 1)
                size, what = len(data), f"more than {inputs.max_member_bytes} bytes"
        if size > inputs.max_member_bytes:
            return ImageError(f"object of {what} is over the limit of {inputs.max_member_bytes} bytes "
                              "(--max-member-size); not read")
        return data

    try:
        return faults.retry(read, retries=inputs.retries, delay=inputs.retry_delay, what=source.name)
    except Exception as exc:  # noqa: BLE001 - permanent, or transient past the retries: recorded
        return ImageError(faults.reason(exc, "cannot read"))


def iter_samples(inputs: ShardInputs, skip=frozenset()):
    """Every `Sample` of the inputs, in order: shard by shard, member by member.

    Resuming (`skip`: the rows already written), a shard before the last source that has a written row
    was read to its end by the earlier run (rows are written in order), so it is not read again: its
    failures of that run (`inputs.previous_failed`, {row: reason}) are given again as they were, unless
    one of them is transient (`vggfeat.faults`): that shard is read again, its written rows skipped."""
    labels = _Labels(inputs.class_names, inputs.label_field)
    complete_before = _last_source_with_rows(inputs.sources, skip) if skip else -1
    previous = inputs.previous_failed or {}
    earlier = _by_source(inputs.sources, previous) if previous else {}
    inputs.shards_skipped = inputs.reread = 0
    units = unit_numbers(inputs.sources)
    for i, s in enumerate(inputs.sources):
        if s.kind == "shard" and i < complete_before:
            if not any(faults.is_transient_reason(previous[p]) for p in earlier.get(i, ())):
                inputs.shards_skipped += 1
                for p in earlier.get(i, ()):
                    yield Sample(p, -1, ImageError(previous[p]), units[i])
                continue
            inputs.reread += 1
        if s.kind == "shard":
            for sample in iter_shard(s, extensions=inputs.extensions, exclude=inputs.exclude, labels=labels,
                                     skip=skip, max_member_bytes=inputs.max_member_bytes, retries=inputs.retries,
                                     retry_delay=inputs.retry_delay):
                sample.unit = units[i]
                yield sample
        elif s.name in skip:
            continue
        elif is_url(s.url):
            yield Sample(s.name, s.label, _read_object(s, inputs), units[i])
        else:
            yield Sample(s.name, s.label, s.url, units[i])
    if inputs.shards_skipped or inputs.reread:
        again = (f"; {inputs.reread} with a transient failure were read again" if inputs.reread else "")
        log.info("resumed: %d shards read to their end by the earlier run were not read again%s",
                 inputs.shards_skipped, again)
    inputs.unlabelled, inputs.labelled = labels.unlabelled, labels.labelled
    if inputs.warn_unlabelled:
        warn_unlabelled(inputs, labels.unlabelled, labels.labelled)


def warn_unlabelled(inputs, unlabelled, labelled):
    """Say how many shard images were stored with label -1 for want of a label, when some had one or
    labels were asked for."""
    import logging

    if unlabelled and (labelled or inputs.label_field or inputs.class_names):
        where = f"field {inputs.label_field!r} of its .json" if inputs.label_field else ".cls"
        logging.getLogger("vggfeat").warning(
            "%d shard images had no usable label (no %s, or a value outside the class names): stored with "
            "label -1", unlabelled, where)


def as_image_source(data):
    """What `load_image` reads for a sample's data: a file object over bytes, or the path."""
    return io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
