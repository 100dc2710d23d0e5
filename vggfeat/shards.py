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
import json
import os
import re
import tarfile
from dataclasses import dataclass, field

from .errors import ImageError, InputError
from .images import escape_path, is_image_name, normalize_extensions

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")
#: Label files read beside an image (by key): `.cls` holds an integer class index.
LABEL_EXTENSIONS = (".cls", ".json", ".txt")


def is_url(s) -> bool:
    return isinstance(s, str) and bool(_URL.match(s))


def has_braces(s) -> bool:
    return isinstance(s, str) and any(_RANGE.match(m) or "," in m for m in _BRACE.findall(s))


def is_shard_name(name: str) -> bool:
    return name.lower().endswith((".tar", ".tar.gz", ".tgz"))


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
    """The URL without any user:password@ part (never stored or shown)."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@", r"\1", url)


def _filesystem(url):
    """(fsspec filesystem, path) for a URL, with the standard configuration of its protocol."""
    try:
        import fsspec
    except ImportError:
        raise InputError(f"reading {safe_url(url)} needs fsspec: pip install \"vggfeat[s3]\"") from None
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as exc:
        proto = url.split("://", 1)[0]
        need = "s3fs" if proto in ("s3", "s3a") else (getattr(exc, "name", None) or f"fsspec's {proto} filesystem")
        raise InputError(f"reading {proto}:// URLs needs {need}: pip install \"vggfeat[s3]\"") from None
    except ValueError as exc:
        raise InputError(f"cannot read {safe_url(url)}: {_reason(exc)}") from None


def _reason(exc) -> str:
    """One line for a filesystem error (S3's included), never naming credentials."""
    name = type(exc).__name__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else name
    if isinstance(exc, FileNotFoundError):
        return f"not found ({text})" if "not found" not in text.lower() and "not exist" not in text.lower() else text
    if isinstance(exc, PermissionError):
        return f"access denied ({text}); check the credentials"
    if "EndpointConnectionError" in name or "ConnectionError" in name or "ConnectTimeout" in name:
        return f"cannot reach the storage endpoint: {text}"
    if "NoCredentials" in name:
        return "no credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE)"
    return f"{name}: {text}"


@dataclass(frozen=True)
class Source:
    """One unit of input: a shard (`kind="shard"`) or one loose image (`kind="image"`).

    `url` is what is opened (a local path or a URL); `name` the stored row id (an image) or the row id
    prefix (a shard); `missing`: a shard of a brace range that does not exist (recorded as failed)."""

    kind: str
    url: str
    name: str
    missing: bool = False


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

    @property
    def shards(self) -> int:
        return sum(1 for s in self.sources if s.kind == "shard")

    def found(self) -> str:
        n_img = len(self.sources) - self.shards
        missing = sum(1 for s in self.sources if s.missing)
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
    return given.replace(os.sep, "/") if not is_url(given) else safe_url(given)


def _list_prefix(given, extensions):
    """Sorted (url, relative name) of the shards and images under a prefix (URL) or local folder."""
    if is_url(given):
        fs, path = _filesystem(given)
        try:
            found = fs.find(path, detail=False)
        except Exception as exc:  # noqa: BLE001 - every filesystem error is the input's
            raise InputError(f"cannot list {safe_url(given)}: {_reason(exc)}") from None
        base = path.rstrip("/") + "/"
        proto = given.split("://", 1)[0]
        out = [(f"{proto}://{p}", p[len(base):]) for p in sorted(found) if p.startswith(base)]
    else:
        top = os.path.abspath(given)
        out = []
        for folder, dirs, names in os.walk(top):  # links to folders are not followed
            dirs.sort()
            out.extend((p, os.path.relpath(p, top).replace(os.sep, "/"))
                       for p in (os.path.join(folder, n) for n in names) if os.path.isfile(p))
        out.sort(key=lambda item: item[1].split("/"))
    return [(u, r) for u, r in out if is_shard_name(r) or is_image_name(r, extensions)]


def _existing(urls) -> set:
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
        try:
            listed = {p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False, refresh=True)}
        except FileNotFoundError:
            listed = set()
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"cannot list {safe_url(parent)}/: {_reason(exc)}") from None
        out.update(u for u in names if u.rsplit("/", 1)[-1] in listed)
    return out


def scan_inputs(inputs, *, extensions=None, exclude=(), class_names=None, label_field=None):
    """What `extract` and `iter_features` read: an `ImageList` (`scan_images`) for folders, files and
    lists; a `ShardInputs` when any input is a tar shard, a brace pattern or a URL.

    In a run with shards, a local folder or a URL prefix is listed (recursively, sorted) for tar shards
    and images; an image file or object given on its own is one row named as given. Rows of a single
    prefix (or folder) are named relative to it.

    Raises:
        InputError: shards mixed with list files; an input that does not exist; a brace range that
            matches nothing; a prefix that cannot be listed (missing bucket, unreachable endpoint...).
    """
    from .images import scan_images

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
    for given in given_list:
        shown = _display(given)
        if has_braces(given):
            names = expand_braces(given)
            if not all(is_shard_name(n) for n in names):
                raise InputError(f"{shown}: a brace pattern names tar shards (.tar); {names[0]} is not one")
            there = _existing(names)
            if not there:
                raise InputError(f"no shard matches {shown} ({len(names)} names, from {_display(names[0])} to "
                                 f"{_display(names[-1])}, none exists)")
            sources.extend(Source("shard", n, _display(n), missing=n not in there) for n in names)
            continue
        remote_prefix = is_url(given) and (given.endswith("/") or given.count("/") == 2)
        if is_url(given) and not remote_prefix and not is_shard_name(given) and not is_image_name(given, extensions):
            fs, path = _filesystem(given)
            try:
                remote_prefix = fs.isdir(path)  # a prefix written without its final slash
            except Exception as exc:  # noqa: BLE001
                raise InputError(f"cannot read {shown}: {_reason(exc)}") from None
            if remote_prefix:
                given, shown = given + "/", shown + "/"
        if remote_prefix or (not is_url(given) and os.path.isdir(given)):
            listed = _list_prefix(given, extensions)
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
                sources.append(Source(kind, url, escape_path(prefix + rel)))
            continue
        if is_url(given):
            if not _existing([given]):
                raise InputError(f"input not found: {shown}")
        elif not os.path.exists(given):
            raise InputError(f"input not found: {given}")
        elif os.path.isfile(given) and given.lower().endswith((".txt", ".csv")) and not is_image_name(given, extensions):
            raise InputError(f"{given}: lists of images cannot be mixed with tar shards or URLs in one run")
        kind = "shard" if is_shard_name(given) else "image"
        sources.append(Source(kind, given, escape_path(shown)))
    seen, unique = set(), []
    for s in sources:
        if s.url not in seen:
            seen.add(s.url)
            unique.append(s)
    names = read_class_names(class_names)
    return ShardInputs(unique, names, label_field, extensions, exclude, root if single_prefix else None)


# ---- reading -------------------------------------------------------------------------------------------


@dataclass
class Sample:
    """One row to decode: `data` is bytes, a local path, or an `ImageError` (recorded as failed)."""

    path: str
    label: int
    data: object
    unit: int = 0  # the unit of input (`vggfeat.parts`) it belongs to: a batch never spans two


def _key_ext(name):
    """WebDataset's split of a member name: key = up to the first dot of the file name."""
    d, _, base = name.rpartition("/")
    if "." not in base:
        return name, ""
    stem, ext = base.split(".", 1)
    return (f"{d}/{stem}" if d else stem), ext


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
                if raw is not None:
                    value = json.loads(raw.decode("utf-8"))
                    for part in self.label_field.split("."):
                        value = value.get(part) if isinstance(value, dict) else None
                    label = self._of(value)
            elif members.get("cls") is not None:
                label = self._of(members["cls"].decode("utf-8").strip())
        except (ValueError, UnicodeDecodeError):
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
        try:
            i = int(value)
        except (TypeError, ValueError):
            return None
        if i < 0 or (self.class_names and i >= len(self.class_names)):
            return None
        return i


def _open(url):
    if is_url(url):
        fs, path = _filesystem(url)
        return fs.open(path, "rb", block_size=8 * 1024 * 1024)
    return open(url, "rb")


def _excluded(patterns, *names):
    """As for folders (`scan_images`): a glob pattern matches a name, in any letter case."""
    import fnmatch

    return any(fnmatch.fnmatchcase(n, p) or fnmatch.fnmatchcase(n.lower(), p.lower()) for p in patterns for n in names)


def iter_shard(source: Source, *, extensions, exclude=(), labels=None, skip=frozenset()):
    """Yield the `Sample`s of one shard in member order, streaming it (never listing it first).

    A shard that cannot be opened or read as a tar, or that holds no member, is one failed sample
    named after the shard; a truncated member fails as itself and ends the shard; a sample with no
    image member fails as `SHARD/KEY`."""
    labels = labels or _Labels([], None)
    name = source.name
    if source.missing:
        yield Sample(name, -1, ImageError("shard not found (named by the brace range)"))
        return
    try:
        f = _open(source.url)
    except Exception as exc:  # noqa: BLE001 - any failure to open is this shard's
        yield Sample(name, -1, ImageError(f"cannot open shard: {_reason(exc)}"))
        return
    members = 0
    seen = set()
    current, group = None, {}
    order = []  # (ext, member name) of the current key, in member order

    def emit():
        images = [(ext, n) for ext, n in order if is_image_name(n, extensions)]
        if not images:
            if order:
                exts = ", ".join(sorted(f".{e}" for e, _ in order))
                yield Sample(escape_path(f"{name}/{current}"), -1,
                             ImageError(f"no image in this sample (members: {exts})"))
            return
        label = labels(group)
        for ext, n in images:
            row = escape_path(f"{name}/{n}")
            if row in seen:  # a second member of the same name: one row per name
                yield Sample(row + f" (member {members})", -1, ImageError("duplicate member name in the shard"))
                continue
            seen.add(row)
            if row in skip or _excluded(exclude, n, n.rsplit("/", 1)[-1]):
                continue
            yield Sample(row, label, group[ext])

    try:
        with f:
            try:
                tar = tarfile.open(fileobj=f, mode="r|*")
            except tarfile.ReadError as exc:
                why = "empty shard (0 bytes)" if "empty file" in str(exc) else f"not a tar file ({exc})"
                yield Sample(name, -1, ImageError(why))
                return
            with tar:
                it = iter(tar)
                while True:
                    try:
                        m = next(it)
                    except StopIteration:
                        break
                    except (tarfile.TarError, EOFError, OSError) as exc:
                        yield from emit()
                        current, group, order = None, {}, []
                        yield Sample(name, -1, ImageError(f"truncated or damaged shard after {members} members: "
                                                          f"{type(exc).__name__}: {exc}"))
                        return
                    if not m.isfile():
                        continue
                    members += 1
                    key, ext = _key_ext(m.name)
                    if key != current:
                        yield from emit()
                        current, group, order = key, {}, []
                    try:
                        data = tar.extractfile(m).read()
                        if len(data) != m.size:
                            raise EOFError(f"{len(data)} of {m.size} bytes")
                    except (tarfile.TarError, EOFError, OSError) as exc:
                        yield from emit()
                        row = escape_path(f"{name}/{m.name}")
                        yield Sample(row, -1, ImageError(f"truncated member: {type(exc).__name__}: {exc}"))
                        return
                    group[ext] = data
                    order.append((ext, m.name))
                yield from emit()
    except Exception as exc:  # noqa: BLE001 - a read failing midway (the network...) is this shard's
        yield Sample(name, -1, ImageError(f"read failed after {members} members: {_reason(exc)}"))
        return
    if members == 0:
        yield Sample(name, -1, ImageError("empty shard: a tar with no member"))


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


#: Loose images (not in a tar shard) per unit of input (`vggfeat.parts`: a part of `--output-shards`).
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


def iter_samples(inputs: ShardInputs, skip=frozenset()):
    """Every `Sample` of the inputs, in order: shard by shard, member by member.

    Resuming (`skip`: the rows already written), a shard before the last source that has a written row
    was read to its end by the earlier run (rows are written in order), so it is not read again: its
    failures of that run (`inputs.previous_failed`, {row: reason}) are given again as they were."""
    labels = _Labels(inputs.class_names, inputs.label_field)
    complete_before = _last_source_with_rows(inputs.sources, skip) if skip else -1
    previous = inputs.previous_failed or {}
    inputs.shards_skipped = 0
    units = unit_numbers(inputs.sources)
    for i, s in enumerate(inputs.sources):
        if s.kind == "shard" and i < complete_before:
            inputs.shards_skipped += 1
            for p, reason in previous.items():
                if p == s.name or p.startswith(s.name + "/"):
                    yield Sample(p, -1, ImageError(reason), units[i])
            continue
        if s.kind == "shard":
            for sample in iter_shard(s, extensions=inputs.extensions, exclude=inputs.exclude, labels=labels,
                                     skip=skip):
                sample.unit = units[i]
                yield sample
        elif s.name in skip:
            continue
        elif is_url(s.url):
            try:
                fs, path = _filesystem(s.url)
                data = fs.cat_file(path)
            except Exception as exc:  # noqa: BLE001
                data = ImageError(f"cannot read: {_reason(exc)}")
            yield Sample(s.name, -1, data, units[i])
        else:
            yield Sample(s.name, -1, s.url, units[i])
    import logging

    if inputs.shards_skipped:
        logging.getLogger("vggfeat").info("resumed: %d shards read to their end by the earlier run were not "
                                          "read again", inputs.shards_skipped)
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
