"""The HDF5 layout of a vggfeat file: its format, opening, the commit records and their checksums, the
seals over what a row means (settings, class names, input identities), and `verify`."""

from __future__ import annotations

import json
import logging
import os
import re
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone

import h5py
import numpy as np

from .._version import __version__
from ..config import ExtractorConfig, attr_value
from ..errors import InputError, OutputError
from ..redact import redact_urls
from .guard import HDF5_SIGNATURE, first_line, h5_error

attr = attr_value


log = logging.getLogger("vggfeat")


FORMAT = "vggfeat"


FORMAT_VERSION = 3


READABLE_VERSIONS = (1, 2, 3)


#: The HDF5 type of every string dataset (paths, reasons, class names).
STRING = h5py.string_dtype(encoding="utf-8")


STRING_ = STRING


BASE_COLUMNS = ("start", "stop", "failed_stop")


@dataclass
class OutputSpec:
    """What every file of a run records: its settings, layers (row shapes), class names and storage."""

    settings: dict
    feature_shapes: dict
    class_names: list
    dtype: str = "float32"
    compression: str | None = None


class DamagedFile(OutputError):
    """A vggfeat file whose structure cannot be read (what a write cut short can leave): `--resume`
    keeps its intact rows, or starts it again when none can be read."""


def check_format(f, path, versions=READABLE_VERSIONS):
    """The format_version of open file `f`; one-line errors for another format or version, and
    `DamagedFile` for a structure that cannot be read."""
    try:
        return _check_format(f, path, versions)
    except OutputError:
        raise
    except Exception as exc:  # noqa: BLE001 - h5py's RuntimeError/OSError/KeyError on broken metadata
        raise DamagedFile(f"{path} is damaged: its structure cannot be read ({first_line(exc)}); `vggfeat "
                          "extract --resume` rebuilds it from what is intact") from None


def _check_format(f, path, versions):
    fmt = attr(f.attrs.get("format", ""))
    version = attr(f.attrs.get("format_version", -1))
    if fmt != FORMAT:
        raise OutputError(f"{path} is not a vggfeat file (format={fmt!r})")
    if version not in versions:
        raise OutputError(f"{path} has format_version {version}; this vggfeat reads versions "
                          f"{', '.join(map(str, versions))}")
    missing = [name for name in ("paths", "labels", "class_names", "features", "failed/paths", "failed/reasons")
               if name not in f]
    if version >= 2 and "commits" not in f:
        missing.append("commits")
    if missing:
        raise DamagedFile(f"{path} is damaged: it lacks {', '.join('/' + m for m in missing)}")
    return version


def open_error(path, exc) -> OutputError:
    """The one-line error for a file h5py cannot open. A vggfeat file whose writing was cut short (a full
    disk, a kill) can leave HDF5's own structures pointing past its end; its first bytes still carry
    the marks every vggfeat file starts with, and it is `DamagedFile`, which `--resume` starts again.
    Any other file is said to be what it is (not HDF5, empty, truncated, in use)."""
    text = first_line(exc)
    if not re.search(r"\block(ing)?\b|signature|not an hdf5", text.lower()) and _marked_as_ours(path):
        what = ("is truncated (its end is missing" if "truncated file" in text.lower()
                else f"is damaged: HDF5 cannot open it ({text}")
        return DamagedFile(f"{path} {what}: a write cut short by a full disk or a kill leaves this, as does a "
                           "copy cut short); `vggfeat extract --resume` writes it again")
    return h5_error(path, exc)


def _marked_as_ours(path, span=1 << 20) -> bool:
    """Whether `path` starts as a vggfeat file: HDF5's signature, then (in its first MiB, where the root
    attributes written at creation lie) the names of vggfeat's format attributes."""
    try:
        with open(path, "rb") as f:
            head = f.read(span)
    except OSError:
        return False
    return head.startswith(HDF5_SIGNATURE) and b"format_version" in head and b"vggfeat_version" in head


def open_read(path, *, meaning=True):
    """Open a vggfeat file for reading (any readable version); one-line errors. With `meaning`, a file
    whose settings, class names or input identities were changed after it was written is refused."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"file not found: {path}")
    if os.path.isdir(path):
        raise InputError(f"{path} is a folder, not a vggfeat file")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise open_error(path, exc) from None
    try:
        check_format(f, path)
        if meaning:
            check_meaning(f, path)
    except BaseException:
        f.close()
        raise
    return f


def read_file_attrs(path) -> dict:
    """The root attributes (settings) of a vggfeat file, checking its format (`vggfeat.read_attrs` reads
    an index of parts too)."""
    with open_read(path, meaning=False) as f:
        try:
            return {k: attr(v) for k, v in f.attrs.items()}
        except (OSError, RuntimeError, KeyError) as exc:
            raise OutputError(f"{path} is damaged: its attributes cannot be read ({first_line(exc)})") from None


#: root attributes that are not part of what a row means (the run's state, or when it was written)
_NOT_MEANING = ("complete", "clean_rows", "writing", "created", "vggfeat_version", "meaning_keys", "meaning_crc32")


def _meaning_parts(f, keys, sealed=()) -> dict:
    """{kind: CRC-32} of what decides what the rows of open file (or index) `f` mean. A part that
    `sealed` names (the kinds the seal holds) but `f` lacks is damage, not a change: KeyError."""
    settings = [[k, attr(f.attrs[k]) if k in f.attrs else None] for k in keys]
    if "class_names" in sealed and "class_names" not in f:
        raise KeyError("/class_names is missing")
    names = decode_strings(f["class_names"][()]) if "class_names" in f else []
    out = {"settings": zlib.crc32(json.dumps(settings, sort_keys=True, default=str).encode("utf-8")),
           "class_names": crc_strings(names) ^ len(names)}
    if "sources" in sealed and "sources" not in f:
        raise KeyError("/sources is missing")
    if "sources" in f:
        shards, identities = decode_strings(f["sources/names"][()]), decode_strings(f["sources/identities"][()])
        out["sources"] = crc_strings(shards + identities)
    return out


def seal_meaning(f):
    """Record the checksums of what the rows of `f` mean: every root attribute set so far (but the run's
    state), /class_names and /sources (each input shard's identity). Called once, at creation."""
    keys = sorted(k for k in f.attrs if k not in _NOT_MEANING)
    f.attrs["meaning_keys"] = json.dumps(keys)
    f.attrs["meaning_crc32"] = json.dumps(_meaning_parts(f, keys))


def meaning_problem(f, path=None) -> str | None:
    """None when the settings, class names and input identities of `f` are as written (or `f` predates
    their checksums), else what was changed. `DamagedFile` when they cannot be read (a write cut short
    leaves that, and no hand edit)."""
    if "meaning_crc32" not in f.attrs:
        return None
    try:
        want = json.loads(attr(f.attrs["meaning_crc32"]))
        have = _meaning_parts(f, json.loads(attr(f.attrs["meaning_keys"])), sealed=want)
    except Exception as exc:  # noqa: BLE001 - what the seal covers cannot be read: a damaged structure
        raise DamagedFile(f"{path or f.filename} is damaged: what its rows mean cannot be read ({first_line(exc)}); "
                          "`vggfeat extract --resume` writes it again") from None
    what = {"settings": "its settings (root attributes)", "class_names": "its /class_names",
            "sources": "its /sources (the inputs' identities)"}
    changed = [what.get(k, k) for k in sorted(set(want) | set(have)) if want.get(k) != have.get(k)]
    if changed:
        return (f"{' and '.join(changed)} were changed after its rows were written: its rows cannot be trusted "
                "to mean what it says")
    return None


def check_meaning(f, path):
    """Raise OutputError when `meaning_problem(f)`."""
    problem = meaning_problem(f, path)
    if problem:
        raise OutputError(f"{path} is damaged: {problem} (`vggfeat extract --overwrite` writes it again)")


def read_sources(f) -> dict:
    """{input shard: identity} recorded in open file `f` (empty for files without /sources)."""
    if "sources" not in f:
        return {}
    return dict(zip(decode_strings(f["sources/names"][()]), decode_strings(f["sources/identities"][()])))


def local_identity(path) -> str | None:
    """A local file's identity as `vggfeat.shards.identity` records it (None: not a local file here)."""
    if "://" in path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"size={st.st_size} mtime_ns={st.st_mtime_ns}"


def local_sources_changed(recorded: dict) -> tuple[list, int]:
    """(the recorded shards that are local files here and changed, how many could not be looked at)."""
    changed, unchecked = [], 0
    for name, was in recorded.items():
        now = local_identity(name)
        if now is None or was.startswith("unknown"):
            unchecked += 1
        elif now != was:
            changed.append(name)
    return changed, unchecked


def changed_sources(recorded: dict, now: dict) -> list:
    """The shards whose identity differs from the one recorded (one that could not be asked either
    time is not called changed)."""
    out = []
    for name, was in recorded.items():
        is_now = now.get(name)
        if is_now is None or was.startswith("unknown") or is_now.startswith("unknown"):
            continue
        if is_now != was:
            out.append(name)
    return out


def crc(values) -> int:
    a = np.ascontiguousarray(values)
    return zlib.crc32(a.view(np.uint8).reshape(-1)) if a.size else 0


def crc_strings(values) -> int:
    return zlib.crc32("\0".join(values).encode("utf-8", "surrogateescape"))


def decode_strings(values):
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def commit_columns(f) -> list:
    return json.loads(attr(f["commits"].attrs["columns"]))


def new_commit_columns(layers, indexed) -> list:
    cols = list(BASE_COLUMNS) + ["paths", "labels", "failed"] + [f"features/{k}" for k in layers]
    if indexed:
        cols.append("index")
    return cols


def committed_counts(f) -> tuple[int, int]:
    """(rows, failures) that the commit records of open file `f` cover (version 1: all rows)."""
    if "commits" not in f:
        return int(f["paths"].shape[0]), int(f["failed/paths"].shape[0])
    c = f["commits"]
    if c.shape[0] == 0:
        return 0, 0
    last = c[c.shape[0] - 1]
    return int(last[1]), int(last[2])


def check_commit(f, cols, record, failed_start) -> str | None:
    """None when the rows and failures of one commit record match their checksums, else what does not."""
    start, stop, failed_stop = (int(x) for x in record[:3])
    try:
        rows, failures = f["paths"].shape[0], f["failed/paths"].shape[0]
    except Exception as exc:  # noqa: BLE001 - a dataset that cannot be opened: the commit is damaged
        return f"rows {start}-{stop} cannot be read ({first_line(exc)})"
    if not (0 <= start <= stop <= rows) or not (0 <= failed_start <= failed_stop <= failures):
        return f"rows {start}-{stop} lie outside the file's {rows} rows"
    for name, expected in zip(cols[3:], record[3:]):
        try:
            if name == "paths":
                got = crc_strings(decode_strings(f["paths"][start:stop]))
            elif name == "failed":
                got = crc_strings(decode_strings(f["failed/paths"][failed_start:failed_stop])
                                   + decode_strings(f["failed/reasons"][failed_start:failed_stop]))
            else:
                got = crc(f[name][start:stop])
        except Exception as exc:  # any read failure of a damaged file is a damaged commit
            return f"{name} rows {start}-{stop} cannot be read ({first_line(exc)})"
        if got != int(expected):
            return f"{name} rows {start}-{stop} do not match their checksum"
    return None


@dataclass
class VerifyReport:
    """What `verify` found.

    Attributes:
        path: the file.
        version: its format_version.
        rows: rows its commit records cover (what readers see).
        intact_rows: rows of the commits before the first damaged one.
        commits: number of commit records.
        damaged: (first row, end row, reason) of each commit that failed its check.
        unverifiable: True for format 1 files, which hold no checksums.
        complete: the run that wrote it finished.
        meaning: what of its settings, class names or input identities was changed after its rows
            were written (None: nothing; files of format 3 and later hold their checksums).
        changed: the input shards found where they were read (local files) whose size or modification
            time is not what /sources recorded: their rows no longer describe them.
        unchecked: the recorded shards that could not be looked at here (URLs; local paths not found).
    """

    path: str
    version: int
    rows: int
    intact_rows: int
    commits: int
    damaged: list = field(default_factory=list)
    unverifiable: bool = False
    complete: bool = False
    meaning: str | None = None
    changed: list = field(default_factory=list)
    unchecked: int = 0

    @property
    def ok(self) -> bool:
        return not self.damaged and not self.meaning and not self.changed

    def line(self) -> str:
        if self.unverifiable:
            return (f"{self.path}: format 1 (written before vggfeat kept checksums): {self.rows} rows read without "
                    "error, but they cannot be verified")
        state = "complete" if self.complete else "incomplete (`vggfeat extract --resume` completes it)"
        if self.meaning:
            return (f"{self.path}: DAMAGED: {self.meaning} ({self.rows} rows; restore the original, or "
                    "`vggfeat extract --overwrite` writes it again)")
        if self.changed:
            more = f" (and {len(self.changed) - 1} more)" if len(self.changed) > 1 else ""
            return (f"{self.path}: DAMAGED: the shard {self.changed[0]}{more} changed since its rows were written "
                    "(size or modification time); `vggfeat extract --overwrite` writes them again (an index of "
                    "parts: `--resume --output-shards` reads that shard again)")
        if self.ok:
            unchecked = (f"; {self.unchecked} input shards not looked at (URLs, or not found from here)"
                         if self.unchecked else "")
            return f"{self.path}: intact: {self.rows} rows in {self.commits} commits verified; {state}{unchecked}"
        ranges = ", ".join(f"{a}-{b}" for a, b, _ in self.damaged)
        return (f"{self.path}: DAMAGED: rows {ranges} fail their check ({self.damaged[0][2]}); the first "
                f"{self.intact_rows} rows are intact (`vggfeat verify {self.path} --repair OUT` keeps them)")


def verify_file(path, *, start_row=0) -> VerifyReport:
    """Read every committed row of a vggfeat file and check it against its commit record.

    Args:
        path: the file.
        start_row: check only the commits that end after this row (`--resume` checks the rows of the
            last runs that did not close cleanly; `vggfeat verify` checks all).

    Returns:
        `VerifyReport`. Raises OutputError when the file cannot be opened or its structure is broken.
    """
    path = os.fspath(path)
    with open_read(path, meaning=False) as f:
        return verify_open(f, path, start_row)


def verify_open(f, path, start_row=0) -> VerifyReport:
    version = attr(f.attrs.get("format_version", 1))
    complete = bool(attr(f.attrs.get("complete", False)))
    if "commits" not in f:
        n = int(f["paths"].shape[0])
        for ds in [f["labels"]] + list(f["features"].values()):
            for s in range(0, n, 4096):
                ds[s:s + 4096]
        return VerifyReport(path, version, n, n, 0, unverifiable=True, complete=complete)
    try:
        cols = commit_columns(f)
        records = f["commits"][()]
    except Exception as exc:
        raise DamagedFile(f"{path} is damaged: its commit records cannot be read ({first_line(exc)}); `vggfeat "
                          "extract --resume` rebuilds it from what is intact") from None
    damaged, intact, previous, previous_failed = [], 0, 0, 0
    for record in records:
        start, stop = int(record[0]), int(record[1])
        problem = None
        if start != previous:
            problem = f"a commit starts at row {start}, after row {previous}"
        elif stop > start_row or (start == stop == start_row):
            problem = check_commit(f, cols, record, previous_failed)
        if problem:
            damaged.append((start, stop, problem))
        elif not damaged:
            intact = stop
        previous, previous_failed = stop, int(record[2])
    rows = int(records[-1][1]) if len(records) else 0
    changed, unchecked = local_sources_changed(read_sources(f))
    return VerifyReport(path, version, rows, intact, len(records), damaged, complete=complete,
                        meaning=meaning_problem(f, path), changed=changed, unchecked=unchecked)


def write_root_attrs(f, fmt, version, settings, dtype, compression):
    """The root attributes every vggfeat output starts with: its format, the run's settings, the storage
    dtype and compression, the version of vggfeat and the time (a file's, and an index's of parts)."""
    f.attrs["format"] = fmt
    f.attrs["format_version"] = version
    for k, v in settings.items():
        if v is not None:
            f.attrs[k] = redact_urls(v) if isinstance(v, str) else v
    f.attrs["dtype"] = dtype
    f.attrs["compression"] = compression or "none"
    f.attrs["vggfeat_version"] = __version__
    f.attrs["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")


def settings_differences(have: dict, settings: dict, dtype, source) -> list:
    """What differs between the settings recorded in `have` and this run's `settings` and `dtype`: the
    `ExtractorConfig` of each (every setting that decides a feature), the inputs and the storage dtype."""
    try:
        stored = ExtractorConfig.from_attrs(have, source=source)
        wanted = ExtractorConfig.from_attrs(settings, source="this run")
    except ValueError as exc:
        raise OutputError(f"cannot resume {source}: {exc}") from None
    diffs = wanted.differences(stored)
    for key, want in (("inputs", settings.get("inputs")), ("dtype", dtype)):
        if have.get(key) != want and not (have.get(key) is None and want is None):
            diffs.append(f"{key}={have.get(key)!r} in the file, {want!r} now")
    return diffs


def check_settings(f, path, settings, dtype):
    """Refuse to resume `f` with other settings: one message naming every setting that differs."""
    diffs = settings_differences({k: attr(v) for k, v in f.attrs.items()}, settings, dtype, path)
    if diffs:
        raise OutputError(f"cannot resume {path}: its settings differ from this run's: " + "; ".join(diffs))


def check_structure(f):
    """Walk every dataset's chunk index and read /paths: raises on a damaged structure."""
    for name in ["paths", "labels", "failed/paths", "failed/reasons"] + [f"features/{k}" for k in f["features"]]:
        ds = f[name]
        if ds.chunks is not None and ds.shape[0]:
            ds.id.chunk_iter(lambda info: None)
    n = f["paths"].shape[0]
    for s in range(0, n, 65536):
        f["paths"][s:s + 65536]
