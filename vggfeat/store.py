"""The HDF5 layout of vggfeat's output files: writing (append-only, verifiable commits) and reading.

Layout (format "vggfeat", format_version 3; versions 1 and 2 are read too):

    /                   attrs: format, format_version, arch, weights[, weights_sha256, seed],
                        preprocessing, form, resize, input_size, geometry, layers (JSON list),
                        keras_layers, pooling, precision, dtype, compression, vggfeat_version,
                        created (ISO 8601), inputs (JSON list), complete (bool), chunk_rows,
                        clean_rows (rows written by runs that closed cleanly),
                        meaning_keys (JSON list), meaning_crc32 (JSON {settings, class_names[, sources]}:
                        CRC-32s of those attributes, /class_names and /sources, sealed at creation;
                        format 3)
    /paths              (N,)  UTF-8   relative to the given folder (absolute with several inputs)
    /labels             (N,)  int64   -1 where unlabelled
    /class_names        (K,)  UTF-8
    /features/<layer>   (N, ...) float32 or float16, chunked (chunk_rows rows a chunk), resizable
    /failed/paths       (M,)  UTF-8
    /failed/reasons     (M,)  UTF-8
    /sources/names      (S,)  UTF-8   the input tar shards (format 3, runs over shards)
    /sources/identities (S,)  UTF-8   each one's size and mtime, or ETag/version (`vggfeat.shards.identity`)
    /commits            (C, 3 + D) int64: one record per commit: first row, end row, end of /failed,
                        then a CRC-32 per column named in its attribute `columns` (paths, labels,
                        failed, each features/<layer>[, index])

The shards of a distributed run (`--engine ray`, see `vggfeat.ray_engine`) have the same layout plus
`/index` and `/failed/index` (int64): each row's position in the run's list of images.

Why the file survives faults (README, "Nothing lost"):

- Rows are committed in whole chunks: the writer holds rows until a chunk of every feature dataset
  is full and writes it once; a chunk is never rewritten, so a compressed chunk is never moved.
  (The last, partial chunk of a run is written at close; a resume rolls back to the last whole
  chunk and recomputes those few rows.)
- A commit writes and flushes the rows first, then its record (row range and checksums) and flushes
  again. Only rows that a record covers exist for readers; a record whose rows do not match their
  checksums (a crash that left metadata half-written) is found by `verify` and by `--resume`, which
  rolls back to the last intact commit, or rebuilds the intact prefix into a new file when the
  file's structure itself is damaged.
- All writes go through `_GuardedIO` (h5py's file-object driver): the first failed write (a full
  disk, an I/O error) stops every later write of the file, so the file on disk is the state before
  that write (what a kill -9 at that moment leaves), HDF5 never sees an error, and the run stops
  with one line instead of HDF5's crash on a failed flush.
- A writer holds an exclusive lock (flock, the lock HDF5 itself takes) for its whole run; a second
  writer or `--overwrite` of a file in use is refused. `--overwrite` writes a new file beside the
  old one and renames it over the old one when done.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import stat
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone

import h5py
import numpy as np

from ._version import __version__
from .config import attr_value
from .errors import InputError, LayerError, OutputError, VggfeatError, WriteFailed
from .redact import redact, redact_urls
from .specs import canonical_layer

_attr = attr_value

log = logging.getLogger("vggfeat")

FORMAT = "vggfeat"
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)

#: Suffix of the new file that `--overwrite` writes beside the old one until it is complete.
OVERWRITE_SUFFIX = ".vggfeat-tmp"

#: The HDF5 type of every string dataset (paths, reasons, class names).
STRING = h5py.string_dtype(encoding="utf-8")
_STR = STRING
_CHUNK_BYTES = 1 << 20
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_BASE_COLUMNS = ("start", "stop", "failed_stop")


def _chunk_rows(row_shape, itemsize):
    row_bytes = max(1, int(np.prod(row_shape)) * itemsize)
    return int(min(1024, max(1, _CHUNK_BYTES // row_bytes)))


def _first_line(exc) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# Opening files: locks, guarded writes, one-line errors.


class _GuardedIO:
    """A file object for h5py's file-object driver that turns the first failed write into a stop.

    After a write fails (ENOSPC, EIO, EDQUOT...), this and every later write or truncate of the file
    is dropped and reported to HDF5 as done: the bytes on disk stay those written before the failure,
    as if the process had been killed there (which `--resume` repairs), and HDF5 closes cleanly
    instead of failing its flush. `error` holds the first failure; the writer checks it after each
    flush and stops the run with it.
    """

    def __init__(self, fd):
        self._f = os.fdopen(fd, "r+b", buffering=0)
        self.error: Exception | None = None  # an OSError, or what HDF5 raised while writing

    def fileno(self):
        return self._f.fileno()

    def seek(self, offset, whence=0):
        return self._f.seek(offset, whence)

    def tell(self):
        return self._f.tell()

    def readinto(self, b):
        return self._f.readinto(b)

    def read(self, n=-1):
        return self._f.read(n)

    def write(self, b):
        view = memoryview(b).cast("B")
        if self.error is None:
            try:
                done = 0
                while done < len(view):
                    done += self._f.write(view[done:])
            except OSError as exc:
                self.error = exc
        return len(view)

    def truncate(self, size=None):
        if self.error is None:
            try:
                return self._f.truncate(size)
            except OSError as exc:
                self.error = exc
        return size

    def flush(self):
        pass

    def sync(self):
        if self.error is None:
            try:
                os.fsync(self._f.fileno())
            except OSError as exc:
                self.error = exc

    def close(self):
        self._f.close()


def _holder_of_lock(fd) -> str:
    """' (pid N)' of the process holding a lock on the file of `fd`, where Linux says (/proc/locks)."""
    try:
        st = os.fstat(fd)
        with open("/proc/locks") as locks:
            for line in locks:
                parts = line.split()
                if len(parts) < 6:
                    continue
                dev_inode = parts[5].split(":")
                if len(dev_inode) == 3 and int(dev_inode[2]) == st.st_ino and parts[4].isdigit() \
                        and int(parts[4]) != os.getpid():
                    return f" (pid {parts[4]})"
    except (OSError, ValueError):
        pass
    return ""


def _lock(fd, path, shared=False):
    """Take the lock HDF5 takes (flock), without waiting; a held lock is a one-line error."""
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise OutputError(f"{path} is in use by another process{_holder_of_lock(fd)}: another vggfeat "
                              "run is writing it; wait for it to finish") from None
        if exc.errno not in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP):  # no locks on this filesystem
            raise OutputError(f"cannot lock {path}: {exc.strerror}") from None


def _refuse_parts_run(path):
    """Refuse to write the single file `path` while an `--output-shards` run writes `path` as an index:
    that run holds a lock (flock) on `path`.parts for its whole run (one writer per output name)."""
    folder = os.fspath(path) + ".parts"
    if not os.path.isdir(folder):
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise OutputError(f"{path} is being written by an --output-shards run{_holder_of_lock(fd)} (its parts "
                              f"folder {folder} is locked); wait for it to finish") from None
    finally:
        os.close(fd)


def _os_error(path, exc, doing="write") -> OutputError:
    reason = getattr(exc, "strerror", None) or _first_line(exc)
    if getattr(exc, "errno", None) in (errno.EROFS, errno.EACCES, errno.EPERM):
        return OutputError(f"cannot {doing} {path}: {reason}; choose a folder you can write to")
    hint = "; the rows committed before it are kept: fix the cause and run again with --resume"
    if doing != "write":
        hint = "; free some space first" if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) else ""
    elif getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        hint = "; the rows committed before it are kept: free some space (or copy the file elsewhere) and run " \
               "again with --resume"
    return WriteFailed(f"cannot {doing} {path}: {reason}{hint}")


def _open_fd(path, flags, doing):
    try:
        return os.open(path, flags | getattr(os, "O_CLOEXEC", 0), 0o666)
    except FileExistsError:
        raise OutputError(f"{path} exists; pass --resume to continue it or --overwrite to replace it") from None
    except FileNotFoundError:
        raise InputError(f"file not found: {path}") from None
    except IsADirectoryError:
        raise OutputError(f"{path} is a folder") from None
    except OSError as exc:
        raise _os_error(path, exc, doing) from None


def _h5_error(path, exc) -> OutputError:
    text = _first_line(exc)
    if "signature" in text.lower() or "not an hdf5" in text.lower():
        try:
            size = os.path.getsize(path)
        except OSError:
            size = -1
        what = "an empty file (0 bytes)" if size == 0 else "not an HDF5 file"
        return OutputError(f"{path} is {what}")
    if "truncated file" in text.lower():  # HDF5's own words; "sblock" below is not a lock
        return OutputError(f"{path} is truncated (its end is missing: a copy or a download cut short?); it "
                           "cannot be opened")
    if re.search(r"\block(ing)?\b", text.lower()):
        return OutputError(f"{path} is in use by another process: another program is writing it")
    return OutputError(f"cannot open {path} as HDF5: {text}")


def _check_format(f, path, versions=READABLE_VERSIONS):
    fmt = _attr(f.attrs.get("format", ""))
    version = _attr(f.attrs.get("format_version", -1))
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
        raise OutputError(f"{path} is damaged: it lacks {', '.join('/' + m for m in missing)}")
    return version


def _open_read(path, *, meaning=True):
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
        raise _h5_error(path, exc) from None
    try:
        _check_format(f, path)
        if meaning:
            check_meaning(f, path)
    except BaseException:
        f.close()
        raise
    return f


def read_attrs(path) -> dict:
    """The root attributes (settings) of a vggfeat file, checking its format (`vggfeat.read_attrs` reads
    an index of parts too)."""
    with _open_read(path, meaning=False) as f:
        try:
            return {k: _attr(v) for k, v in f.attrs.items()}
        except (OSError, RuntimeError, KeyError) as exc:
            raise OutputError(f"{path} is damaged: its attributes cannot be read ({_first_line(exc)})") from None


# ---------------------------------------------------------------------------------------------
# What rows mean: the settings, class names and input identities, under one checksum per kind.

#: root attributes that are not part of what a row means (the run's state, or when it was written)
_NOT_MEANING = ("complete", "clean_rows", "created", "vggfeat_version", "meaning_keys", "meaning_crc32")


def _meaning_parts(f, keys) -> dict:
    """{kind: CRC-32} of what decides what the rows of open file (or index) `f` mean."""
    settings = [[k, _attr(f.attrs[k]) if k in f.attrs else None] for k in keys]
    names = _decode(f["class_names"][()]) if "class_names" in f else []
    out = {"settings": zlib.crc32(json.dumps(settings, sort_keys=True, default=str).encode("utf-8")),
           "class_names": _crc_strings(names) ^ len(names)}
    if "sources" in f:
        out["sources"] = _crc_strings(_decode(f["sources/names"][()]) + _decode(f["sources/identities"][()]))
    return out


def seal_meaning(f):
    """Record the checksums of what the rows of `f` mean: every root attribute set so far (but the run's
    state), /class_names and /sources (each input shard's identity). Called once, at creation."""
    keys = sorted(k for k in f.attrs if k not in _NOT_MEANING)
    f.attrs["meaning_keys"] = json.dumps(keys)
    f.attrs["meaning_crc32"] = json.dumps(_meaning_parts(f, keys))


def meaning_problem(f) -> str | None:
    """None when the settings, class names and input identities of `f` are as written (or `f` predates
    their checksums), else what was changed."""
    if "meaning_crc32" not in f.attrs:
        return None
    try:
        want = json.loads(_attr(f.attrs["meaning_crc32"]))
        have = _meaning_parts(f, json.loads(_attr(f.attrs["meaning_keys"])))
    except Exception as exc:  # noqa: BLE001 - unreadable metadata is changed metadata
        return f"its settings cannot be checked ({_first_line(exc)})"
    what = {"settings": "its settings (root attributes)", "class_names": "its /class_names",
            "sources": "its /sources (the inputs' identities)"}
    changed = [what.get(k, k) for k in sorted(set(want) | set(have)) if want.get(k) != have.get(k)]
    if changed:
        return (f"{' and '.join(changed)} were changed after its rows were written: its rows cannot be trusted "
                "to mean what it says")
    return None


def check_meaning(f, path):
    """Raise OutputError when `meaning_problem(f)`."""
    problem = meaning_problem(f)
    if problem:
        raise OutputError(f"{path} is damaged: {problem} (`vggfeat extract --overwrite` writes it again)")


def read_sources(f) -> dict:
    """{input shard: identity} recorded in open file `f` (empty for files without /sources)."""
    if "sources" not in f:
        return {}
    return dict(zip(_decode(f["sources/names"][()]), _decode(f["sources/identities"][()])))


# ---------------------------------------------------------------------------------------------
# Commit records.


def _crc(values) -> int:
    a = np.ascontiguousarray(values)
    return zlib.crc32(a.view(np.uint8).reshape(-1)) if a.size else 0


def _crc_strings(values) -> int:
    return zlib.crc32("\0".join(values).encode("utf-8", "surrogateescape"))


def _decode(values):
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def _columns(f) -> list:
    return json.loads(_attr(f["commits"].attrs["columns"]))


def _commit_columns(layers, indexed) -> list:
    cols = list(_BASE_COLUMNS) + ["paths", "labels", "failed"] + [f"features/{k}" for k in layers]
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


def _check_commit(f, cols, record, failed_start) -> str | None:
    """None when the rows and failures of one commit record match their checksums, else what does not."""
    start, stop, failed_stop = (int(x) for x in record[:3])
    if not (0 <= start <= stop <= f["paths"].shape[0]) or not (0 <= failed_start <= failed_stop <= f["failed/paths"].shape[0]):
        return f"rows {start}-{stop} lie outside the file's {f['paths'].shape[0]} rows"
    for name, expected in zip(cols[3:], record[3:]):
        try:
            if name == "paths":
                got = _crc_strings(_decode(f["paths"][start:stop]))
            elif name == "failed":
                got = _crc_strings(_decode(f["failed/paths"][failed_start:failed_stop])
                                   + _decode(f["failed/reasons"][failed_start:failed_stop]))
            else:
                got = _crc(f[name][start:stop])
        except Exception as exc:  # any read failure of a damaged file is a damaged commit
            return f"{name} rows {start}-{stop} cannot be read ({_first_line(exc)})"
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

    @property
    def ok(self) -> bool:
        return not self.damaged and not self.meaning

    def line(self) -> str:
        if self.unverifiable:
            return (f"{self.path}: format 1 (written before vggfeat kept checksums): {self.rows} rows read without "
                    "error, but they cannot be verified")
        state = "complete" if self.complete else "incomplete (`vggfeat extract --resume` completes it)"
        if self.meaning:
            return (f"{self.path}: DAMAGED: {self.meaning} ({self.rows} rows; restore the original, or "
                    "`vggfeat extract --overwrite` writes it again)")
        if self.ok:
            return f"{self.path}: intact: {self.rows} rows in {self.commits} commits verified; {state}"
        ranges = ", ".join(f"{a}-{b}" for a, b, _ in self.damaged)
        return (f"{self.path}: DAMAGED: rows {ranges} fail their check ({self.damaged[0][2]}); the first "
                f"{self.intact_rows} rows are intact (`vggfeat verify {self.path} --repair OUT` keeps them)")


def verify(path, *, start_row=0) -> VerifyReport:
    """Read every committed row of a vggfeat file and check it against its commit record.

    Args:
        path: the file.
        start_row: check only the commits that end after this row (`--resume` checks the rows of the
            last runs that did not close cleanly; `vggfeat verify` checks all).

    Returns:
        `VerifyReport`. Raises OutputError when the file cannot be opened or its structure is broken.
    """
    path = os.fspath(path)
    with _open_read(path, meaning=False) as f:
        return _verify_open(f, path, start_row)


def _verify_open(f, path, start_row=0) -> VerifyReport:
    version = _attr(f.attrs.get("format_version", 1))
    complete = bool(_attr(f.attrs.get("complete", False)))
    if "commits" not in f:
        n = int(f["paths"].shape[0])
        for ds in [f["labels"]] + list(f["features"].values()):
            for s in range(0, n, 4096):
                ds[s:s + 4096]
        return VerifyReport(path, version, n, n, 0, unverifiable=True, complete=complete)
    try:
        cols = _columns(f)
        records = f["commits"][()]
    except Exception as exc:
        raise OutputError(f"{path} is damaged: its commit records cannot be read ({_first_line(exc)})") from None
    damaged, intact, previous, previous_failed = [], 0, 0, 0
    for record in records:
        start, stop = int(record[0]), int(record[1])
        problem = None
        if start != previous:
            problem = f"a commit starts at row {start}, after row {previous}"
        elif stop > start_row or (start == stop == start_row):
            problem = _check_commit(f, cols, record, previous_failed)
        if problem:
            damaged.append((start, stop, problem))
        elif not damaged:
            intact = stop
        previous, previous_failed = stop, int(record[2])
    rows = int(records[-1][1]) if len(records) else 0
    return VerifyReport(path, version, rows, intact, len(records), damaged, complete=complete,
                        meaning=meaning_problem(f))


# ---------------------------------------------------------------------------------------------
# Writing.


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


class FeatureWriter:
    """Append-only writer of the vggfeat HDF5 layout, committing whole chunks with checksums.

    Use `FeatureWriter.create(...)` for a new file or `FeatureWriter.resume(...)` to continue one;
    then `append` batches and `close(complete=True)` at the end. Rows appended are buffered until a
    whole chunk can be written; `flush()` (and `close`) commits what is buffered.
    """

    def __init__(self, f: h5py.File, io: _GuardedIO, path, *, final_path=None):
        self._f = f
        self._io = io
        self.path = path  # where the rows go now
        self.final_path = final_path or path  # where they end up (differs while --overwrite writes beside)
        self._cols = _columns(f)
        self._chunk = int(_attr(f.attrs.get("chunk_rows", 1)))
        self._indexed = "index" in f
        self._rows, self._failed = committed_counts(f)
        self._buf = {"paths": [], "labels": [], "index": [], "failed": [], "failed_index": [],
                     **{k: [] for k in f["features"]}}
        self._buffered = 0
        self.recovered: str | None = None  # one line about rows rolled back or rebuilt at resume

    # -----------------------------------------------------------------------------------------
    @staticmethod
    def check_output(path, *, resume=False, overwrite=False):
        """Cheap checks of an output before any model is built: the folder exists and can be written,
        an existing file is refused unless resumed or overwritten, a file in use is refused."""
        path = os.fspath(path)
        if path.endswith(("/", os.sep)):  # `-o newdir/`: a folder meant, whether it exists or not
            there = "" if os.path.isdir(path) else ", which does not exist"
            raise OutputError(f"the output {path} names a folder{there}; give the file to write, e.g. "
                              f"{os.path.join(path, 'features.h5')}")
        if os.path.isdir(path):
            raise OutputError(f"the output is a folder: {path}")
        _check_suffix(path)
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise OutputError(f"the output folder does not exist: {parent}")
        exists = os.path.lexists(path)
        if exists and not (resume or overwrite):
            raise OutputError(f"{path} exists; pass --resume to continue it or --overwrite to replace it")
        if exists:
            fd = _open_fd(path, os.O_RDONLY, "open")
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise OutputError(f"{path} is not a regular file")
                _lock(fd, path)
                if resume:
                    head = os.pread(fd, 8, 0)
                    if head != _HDF5_SIGNATURE:
                        what = "an empty file (0 bytes)" if not head else "not an HDF5 file"
                        raise OutputError(f"cannot resume {path}: it is {what}; it was left as it is "
                                          "(--overwrite replaces it)")
            finally:
                os.close(fd)
        if not (exists and resume):
            # create and remove a probe: a read-only or full folder is an error now, not after the model
            probe = os.path.join(parent, f".{os.path.basename(path)}.{os.getpid()}.probe")
            fd = _open_fd(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, "create a file beside")
            try:
                try:
                    os.write(fd, b"\0" * 4096)
                except OSError as exc:
                    raise _os_error(path, exc) from None
            finally:
                os.close(fd)
                os.remove(probe)
        elif not os.access(path, os.W_OK):
            raise OutputError(f"cannot write {path}: permission denied")

    @classmethod
    def create(cls, path, *, settings: dict, feature_shapes: dict, class_names, dtype="float32",
               compression=None, overwrite=False, index=False, beside=False, sources=None):
        """Create `path`; refuses an existing file unless `overwrite`, in which case the new file is
        written beside it (`path` + OVERWRITE_SUFFIX) and renamed over it by `close(complete=True)`.
        With `beside`, a new file is written beside its name that way too: nothing is at `path` until
        `close` puts it there (a run cut short leaves no file; `vggfeat merge`). With `index`, rows and
        failures also carry their position in the run's image list (the shards of a distributed run).
        `sources` ({input shard: identity}, see `vggfeat.shards.identities`) is recorded in /sources; it
        and the settings and class names are sealed under checksums (`seal_meaning`)."""
        path = os.fspath(path)
        if dtype not in ("float32", "float16"):
            raise InputError(f"unknown storage dtype {dtype!r}; choose float32 or float16")
        if compression not in (None, "gzip", "lzf"):
            raise InputError(f"unknown compression {compression!r}; choose gzip or lzf")
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise OutputError(f"the output folder does not exist: {parent}")
        old_fd = None
        target = path
        if os.path.lexists(path):
            if not overwrite:
                raise OutputError(f"{path} exists; pass --resume to continue it or --overwrite to replace it")
            old_fd = _open_fd(path, os.O_RDONLY, "open")
            try:
                _lock(old_fd, path)  # held until the new file replaces it: no one else writes it meanwhile
            except BaseException:
                os.close(old_fd)
                raise
            target = path + OVERWRITE_SUFFIX
            _remove_stale(target)
        elif beside:
            target = path + OVERWRITE_SUFFIX
            _remove_stale(target)  # the temporary of a run killed before it was complete
        try:
            fd = _open_fd(target, os.O_RDWR | os.O_CREAT | os.O_EXCL, "create")
        except BaseException:
            if old_fd is not None:
                os.close(old_fd)
            raise
        io = _GuardedIO(fd)
        f = None
        try:
            _lock(fd, target)
            _refuse_parts_run(path)
            f = h5py.File(io, "w")
            write_root_attrs(f, FORMAT, FORMAT_VERSION, settings, dtype, compression)
            f.attrs["complete"] = False
            f.attrs["clean_rows"] = 0
            np_dtype = np.dtype(dtype)
            shapes = {name: tuple(int(s) for s in shape) for name, shape in feature_shapes.items()}
            chunk = min([_chunk_rows(s, np_dtype.itemsize) for s in shapes.values()] or [1024])
            f.attrs["chunk_rows"] = chunk
            f.create_dataset("paths", shape=(0,), maxshape=(None,), dtype=_STR, chunks=(1024,))
            f.create_dataset("labels", shape=(0,), maxshape=(None,), dtype="int64", chunks=(4096,))
            f.create_dataset("class_names", data=np.array(list(class_names), dtype=object), dtype=_STR)
            g = f.create_group("features")
            for name, shape in shapes.items():
                g.create_dataset(name, shape=(0,) + shape, maxshape=(None,) + shape, dtype=np_dtype,
                                 chunks=(chunk,) + shape, compression=compression)
            fg = f.create_group("failed")
            fg.create_dataset("paths", shape=(0,), maxshape=(None,), dtype=_STR, chunks=(256,))
            fg.create_dataset("reasons", shape=(0,), maxshape=(None,), dtype=_STR, chunks=(256,))
            if index:
                f.create_dataset("index", shape=(0,), maxshape=(None,), dtype="int64", chunks=(4096,))
                fg.create_dataset("index", shape=(0,), maxshape=(None,), dtype="int64", chunks=(256,))
            cols = _commit_columns(shapes, index)
            c = f.create_dataset("commits", shape=(0, len(cols)), maxshape=(None, len(cols)), dtype="int64",
                                 chunks=(256, len(cols)))
            c.attrs["columns"] = json.dumps(cols)
            if sources:
                sg = f.create_group("sources")
                for name, values in (("names", list(sources)), ("identities", list(sources.values()))):
                    sg.create_dataset(name, data=np.array([redact_urls(v) for v in values], dtype=object), dtype=_STR)
            seal_meaning(f)
            f.flush()
            if io.error is not None:
                raise _os_error(target, io.error, "create")
        except BaseException:
            if f is not None:
                f.close()
            io.close()
            os.remove(target)
            if old_fd is not None:
                os.close(old_fd)
            raise
        writer = cls(f, io, target, final_path=path)
        writer._old_fd = old_fd
        return writer

    @classmethod
    def resume(cls, path, *, settings: dict, dtype="float32", verify_all=False):
        """Reopen `path` to continue it: checks that its settings equal `settings`, verifies the rows
        written since the last clean close (all rows with `verify_all`), rolls back to the last intact
        commit (and to a whole chunk), and clears /failed so that failed images are tried again.
        A file whose structure is damaged, or a format 1 file, is rebuilt from its intact rows into
        a new file that then replaces it. `recovered` says what was done, when anything was."""
        path = os.fspath(path)
        fd = _open_fd(path, os.O_RDWR, "open")
        io = _GuardedIO(fd)
        f = None
        try:
            _lock(fd, path)
            _refuse_parts_run(path)
            try:
                f = h5py.File(io, "r+")
            except OSError as exc:
                raise _h5_error(path, exc) from None
            version = _check_format(f, path)
            _check_settings(f, path, settings, dtype)
            problem = meaning_problem(f)
            if problem:
                raise OutputError(f"cannot resume {path}: {problem}; restore the original, or --overwrite "
                                  "starts again")
            rebuild_reason = "it was written in format 1" if version == 1 else None
            report = None
            if rebuild_reason is None:
                try:
                    _check_structure(f)
                    clean = int(_attr(f.attrs.get("clean_rows", 0)))
                    chunk = int(_attr(f.attrs.get("chunk_rows", 1)))
                    # the chunk that holds the clean end is rewritten by the next commit: check it too
                    start = 0 if verify_all else clean - clean % chunk
                    report = _verify_open(f, path, start_row=start)
                except Exception as exc:
                    rebuild_reason = f"its structure is damaged ({_first_line(exc)})"
        except BaseException:
            if f is not None:
                f.close()
            io.close()
            raise
        if rebuild_reason is not None:
            f.close()
            io.close()
            return cls._rebuild(path, settings, dtype, rebuild_reason)
        writer = cls(f, io, path)
        writer._old_fd = None
        try:
            writer._roll_back(report)
        except BaseException:
            writer._abandon()
            raise
        return writer

    @classmethod
    def _rebuild(cls, path, settings, dtype, reason):
        tmp = path + ".rebuild" + OVERWRITE_SUFFIX
        _remove_stale(tmp)
        kept, claimed = repair(path, tmp)
        os.replace(tmp, path)
        writer = cls.resume(path, settings=settings, dtype=dtype)
        writer.recovered = (f"{path} was rebuilt because {reason}: kept {kept} intact rows of {claimed}; "
                            f"the other {claimed - kept} images will be extracted again")
        log.warning(writer.recovered)
        return writer

    def _roll_back(self, report):
        """Keep the intact commits up to the last whole chunk; clear /failed; persist that state."""
        f = self._f
        records = f["commits"][()]
        keep_rows = report.intact_rows
        k = 0
        while k < len(records) and int(records[k][1]) <= keep_rows:
            k += 1
        rows = int(records[k - 1][1]) if k else 0
        lost = report.rows - rows
        if report.damaged:
            self.recovered = (f"{self.path}: rows {report.damaged[0][0]}-{report.rows} failed their check "
                              f"({report.damaged[0][2]}); rolled back to the {rows} intact rows, the other "
                              f"{lost} images will be extracted again")
            log.warning(self.recovered)
        if k != len(records) or any(ds.shape[0] != rows for ds in self._row_datasets()):
            f["commits"].resize(k, axis=0)
            for ds in self._row_datasets():
                ds.resize(rows, axis=0)
        if f["failed/paths"].shape[0] or (k and records[:k, 2].any()):
            # failed images are tried again: the records vouch for no failure any more
            kept = records[:k].copy()
            kept[:, 2] = 0
            kept[:, self._cols.index("failed")] = _crc_strings([])
            if k:
                f["commits"][:k] = kept
            if "failed/index" in f:
                f["failed/index"].resize(0, axis=0)
        self._renew_strings(rows)
        self._rows, self._failed = rows, 0
        f.attrs["complete"] = False
        f.attrs["clean_rows"] = rows
        self._flush_checked()

    def _renew_strings(self, rows):
        """Give /paths (its first `rows` values kept) and /failed/paths, /failed/reasons fresh storage.

        A string dataset holds references into HDF5's global heap, and HDF5 frees the object an
        element refers to before it overwrites the element. A run killed after a chunk of references
        reached the disk but before the heap objects did leaves references to nothing beyond the
        committed rows (and beyond the recorded extent, where shrinking does not clear them);
        overwriting one crashes HDF5 ("bad heap index", or a segfault). New datasets hold no stale
        reference. The old storage is not reused (a few bytes per row; `vggfeat verify --repair`
        writes a compact copy)."""
        f = self._f
        for name, keep in (("paths", rows), ("failed/paths", 0), ("failed/reasons", 0)):
            old = f[name]
            values = old[:keep] if keep else np.empty(0, dtype=object)
            chunks = old.chunks
            del f[name]
            f.create_dataset(name, shape=(keep,), maxshape=(None,), dtype=_STR, chunks=chunks)
            if keep:
                f[name][:] = values

    def _row_datasets(self):
        f = self._f
        out = [f["paths"], f["labels"]] + list(f["features"].values())
        if self._indexed:
            out.append(f["index"])
        return out

    @classmethod
    def reopen(cls, path):
        """Open a file to append more rows as they come, without `resume`'s checks (a shard that
        only its own worker writes)."""
        path = os.fspath(path)
        fd = _open_fd(path, os.O_RDWR, "open")
        io = _GuardedIO(fd)
        try:
            _lock(fd, path)
            f = h5py.File(io, "r+")
        except BaseException:
            io.close()
            raise
        writer = cls(f, io, path)
        writer._old_fd = None
        return writer

    # -----------------------------------------------------------------------------------------
    @property
    def rows(self) -> int:
        """Rows written (committed, plus those buffered until their chunk is full)."""
        return self._rows + self._buffered

    def written_paths(self) -> list:
        return _decode(self._f["paths"][:self._rows]) + list(self._buf["paths"]) if self.rows else []

    def feature_layout(self) -> dict:
        """{layer: (shape of one row, numpy dtype)} as stored."""
        return {k: (tuple(ds.shape[1:]), ds.dtype) for k, ds in self._f["features"].items()}

    def failed_count(self) -> int:
        return self._failed + len(self._buf["failed"])

    @property
    def class_names(self) -> list:
        return list(self._f["class_names"].asstr()[()])

    def append(self, paths, labels, features: dict, failed=(), *, index=None, failed_index=None):
        """Add one batch: rows for `paths` (features and labels), plus failures `(path, reason)`;
        `index` and `failed_index` are their positions in the run (files created with `index=True`).
        Whole chunks are committed at once; the rest waits for the next batch or `flush()`."""
        n = len(paths)
        if self._indexed:
            failed_index = () if failed_index is None else failed_index
            if index is None or len(index) != n or len(failed_index) != len(failed):
                raise ValueError("a file created with index=True needs one index per row and per failure")
        elif index is not None or failed_index is not None:
            raise ValueError("index and failed_index need a file created with index=True")
        if len(labels) != n:
            raise ValueError(f"{len(labels)} labels for {n} paths")
        b = self._buf
        for name, ds in self._f["features"].items():
            # a file written before layer names were stored in one spelling (block5_pool) takes pool5
            key = name if name in features else canonical_layer(name)
            values = np.asarray(features[key], dtype=ds.dtype)
            if len(values) != n:
                raise ValueError(f"{len(values)} rows of {name} for {n} paths")
            if values.shape[1:] != ds.shape[1:]:
                raise ValueError(f"rows of {name} have shape {values.shape[1:]}, the file {ds.shape[1:]}")
            if n:
                b[name].append(values)
        b["paths"].extend(redact_urls(p) for p in paths)  # credentials never reach the file
        b["labels"].extend(int(x) for x in labels)
        if self._indexed:
            b["index"].extend(int(i) for i in index)
            b["failed_index"].extend(int(i) for i in failed_index)
        b["failed"].extend((redact_urls(p), redact(r)) for p, r in failed)
        self._buffered += n
        whole = self._buffered - (self._rows + self._buffered) % self._chunk
        if whole > 0:
            self._commit(whole)

    def flush(self):
        """Commit every buffered row and failure (a partial chunk too)."""
        if self._buffered or self._buf["failed"]:
            self._commit(self._buffered)

    def _take(self, n):
        b = self._buf
        out = {"paths": b["paths"][:n], "labels": b["labels"][:n], "index": b["index"][:n],
               "failed": b["failed"], "failed_index": b["failed_index"]}
        b["paths"], b["labels"], b["index"] = b["paths"][n:], b["labels"][n:], b["index"][n:]
        b["failed"], b["failed_index"] = [], []
        for name in self._f["features"]:
            arrays = b[name]
            joined = np.concatenate(arrays) if len(arrays) > 1 else (arrays[0] if arrays else None)
            if joined is None:
                out[name] = None
                continue
            out[name] = joined[:n]
            b[name] = [joined[n:]] if len(joined) > n else []
        self._buffered -= n
        return out

    def _commit(self, n):
        """Write the first `n` buffered rows and all buffered failures, flush, then their record.

        Any failure stops the writes to the file (as a failed disk write does): what HDF5 had not
        written stays unwritten, the commits before stay intact, and `--resume` continues from them."""
        if self._io.error is not None:
            raise _os_error(self.final_path, self._io.error)
        try:
            self._commit_rows(n)
        except VggfeatError:
            raise
        except Exception as exc:  # HDF5 failed on its own (a damaged structure it met while writing)
            if self._io.error is None:
                self._io.error = exc
            raise WriteFailed(f"cannot write {self.final_path}: {_first_line(exc)}; the rows committed "
                              "before it are kept: run again with --resume, which checks the file and "
                              "repairs it") from None

    def _commit_rows(self, n):
        f = self._f
        data = self._take(n)
        start, stop = self._rows, self._rows + n
        crcs = {}
        if n:
            for name, ds in f["features"].items():
                ds.resize(stop, axis=0)
                ds[start:stop] = data[name]
                crcs[f"features/{name}"] = _crc(data[name])
            labels = np.asarray(data["labels"], dtype=np.int64)
            f["labels"].resize(stop, axis=0)
            f["labels"][start:stop] = labels
            if self._indexed:
                f["index"].resize(stop, axis=0)
                f["index"][start:stop] = np.asarray(data["index"], dtype=np.int64)
            f["paths"].resize(stop, axis=0)
            f["paths"][start:stop] = np.array(data["paths"], dtype=object)
        else:
            labels = np.empty(0, np.int64)
            crcs.update({f"features/{name}": 0 for name in f["features"]})
        crcs["labels"] = _crc(labels)
        crcs["paths"] = _crc_strings(data["paths"])
        if self._indexed:
            crcs["index"] = _crc(np.asarray(data["index"], dtype=np.int64))
        failed_start = self._failed
        failed_stop = failed_start + len(data["failed"])
        if data["failed"]:
            m = self._failed
            for name, values in (("failed/paths", [p for p, _ in data["failed"]]),
                                 ("failed/reasons", [r for _, r in data["failed"]])):
                f[name].resize(failed_stop, axis=0)
                f[name][m:failed_stop] = np.array(values, dtype=object)
            if self._indexed:
                f["failed/index"].resize(failed_stop, axis=0)
                f["failed/index"][m:failed_stop] = np.asarray(data["failed_index"], dtype=np.int64)
        crcs["failed"] = _crc_strings([p for p, _ in data["failed"]] + [r for _, r in data["failed"]])
        self._flush_checked()  # the rows reach the file before the record that vouches for them
        record = [start, stop, failed_stop] + [crcs[c] for c in self._cols[3:]]
        c = f["commits"]
        k = c.shape[0]
        c.resize(k + 1, axis=0)
        c[k] = np.asarray(record, dtype=np.int64)
        self._flush_checked()
        self._rows, self._failed = stop, failed_stop

    def _flush_checked(self):
        try:
            self._f.flush()
        except Exception as exc:  # HDF5 never sees our write errors; anything else is reported as is
            if self._io.error is None:
                raise OutputError(f"cannot write {self.final_path}: {_first_line(exc)}") from None
        if self._io.error is not None:
            raise _os_error(self.final_path, self._io.error)

    def set_attrs(self, **attrs):
        for k, v in attrs.items():
            self._f.attrs[k] = v
        self._flush_checked()

    def close(self, complete=False, *, place=None):
        """Commit what is buffered and close; with `complete`, mark the file complete and, for an
        `--overwrite` (or a file created `beside`), put it in place of the old file, once flushed to
        disk (fsync). Without `complete`, an `--overwrite`'s new file is removed and the old one left as
        it was. `place` (default: `complete`) decides the latter apart from the `complete` mark."""
        place = complete if place is None else place
        if not self._f.id.valid:
            return
        failure = None
        try:
            if self._io.error is None:
                self.flush()
                self._f.attrs["complete"] = bool(complete)
                self._f.attrs["clean_rows"] = self._rows
                self._flush_checked()
                self._io.sync()
                if self._io.error is not None:
                    raise _os_error(self.final_path, self._io.error)
        except BaseException as exc:
            failure = exc
        replacing = self.path != self.final_path
        self._abandon()
        if replacing:
            if place and failure is None:
                os.replace(self.path, self.final_path)
                _sync_folder(self.final_path)
            else:
                _remove_stale(self.path)
        if getattr(self, "_old_fd", None) is not None:
            os.close(self._old_fd)
            self._old_fd = None
        if failure is not None:
            raise failure

    def _abandon(self):
        """Close without writing anything more (after a failed write)."""
        try:
            self._f.close()
        except Exception:
            pass
        self._io.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close(complete=False)


#: suffixes of other formats: an output named so would be an HDF5 file under a misleading name
_OTHER_FORMATS = {".npy": "NumPy", ".npz": "NumPy", ".csv": "CSV", ".tsv": "TSV", ".txt": "text", ".json": "JSON",
                  ".pkl": "pickle", ".pickle": "pickle", ".parquet": "Parquet", ".pt": "PyTorch", ".pth": "PyTorch",
                  ".safetensors": "safetensors", ".mat": "MATLAB", ".feather": "Feather", ".arrow": "Arrow",
                  ".zarr": "Zarr", ".keras": "Keras", ".joblib": "joblib", ".skops": "skops"}


def _check_suffix(path):
    """Refuse an output named like another format: vggfeat writes HDF5 (.h5)."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix in _OTHER_FORMATS:
        raise OutputError(f"{path}: vggfeat writes HDF5, not {_OTHER_FORMATS[suffix]}; name the output "
                          f"{os.path.splitext(os.path.basename(path))[0]}.h5 (load_features then gives NumPy "
                          "arrays)")


def _sync_folder(path):
    """fsync the folder of `path` (a rename in it reaches the disk); best effort."""
    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_stale(path):
    """Remove a leftover temporary file of an interrupted run, unless a running one holds it."""
    if not os.path.lexists(path):
        return
    fd = _open_fd(path, os.O_RDONLY, "open")
    try:
        _lock(fd, path)
    finally:
        os.close(fd)
    os.remove(path)


def settings_differences(have: dict, settings: dict, dtype, source) -> list:
    """What differs between the settings recorded in `have` and this run's `settings` and `dtype`: the
    `ExtractorConfig` of each (every setting that decides a feature), the inputs and the storage dtype."""
    from .config import ExtractorConfig

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


def _check_settings(f, path, settings, dtype):
    """Refuse to resume `f` with other settings: one message naming every setting that differs."""
    diffs = settings_differences({k: _attr(v) for k, v in f.attrs.items()}, settings, dtype, path)
    if diffs:
        raise OutputError(f"cannot resume {path}: its settings differ from this run's: " + "; ".join(diffs))


def _check_structure(f):
    """Walk every dataset's chunk index and read /paths: raises on a damaged structure."""
    for name in ["paths", "labels", "failed/paths", "failed/reasons"] + [f"features/{k}" for k in f["features"]]:
        ds = f[name]
        if ds.chunks is not None and ds.shape[0]:
            ds.id.chunk_iter(lambda info: None)
    n = f["paths"].shape[0]
    for s in range(0, n, 65536):
        f["paths"][s:s + 65536]


def repair(src, dst) -> tuple[int, int]:
    """Write the intact rows of `src` (every commit before the first damaged one; all rows of a
    format 1 file) into a new file `dst`. Returns (rows kept, rows `src` claims).

    `src` is only read. Raises OutputError when `src` cannot be opened at all or `dst` exists.
    """
    src, dst = os.fspath(src), os.fspath(dst)
    if os.path.lexists(dst):
        raise OutputError(f"{dst} exists; choose a new file for the repaired copy")
    with _open_read(src, meaning=False) as f:
        problem = meaning_problem(f)
        if problem:  # its intact rows would be copied under the changed meaning
            raise OutputError(f"cannot repair {src}: {problem}; restore the original settings first")
        try:
            sources = read_sources(f)
            attrs = {k: _attr(v) for k, v in f.attrs.items()}
            class_names = _decode(f["class_names"][()])
            layout = {k: (ds.shape[1:], ds.dtype, ds.compression) for k, ds in f["features"].items()}
        except Exception as exc:
            raise OutputError(f"cannot repair {src}: its settings cannot be read ({_first_line(exc)})") from None
        indexed = "index" in f
        if "commits" in f:
            try:
                cols = _columns(f)
                records = list(f["commits"][()])
            except Exception:
                records, cols = [], []
        else:  # format 1: every row, as written
            n = int(f["paths"].shape[0])
            records = [np.asarray([0, n, int(f["failed/paths"].shape[0])])]
            cols = None
        claimed = int(records[-1][1]) if records else 0
        dtype = str(next(iter(layout.values()))[1]) if layout else "float32"
        compression = next(iter(layout.values()))[2] if layout else None
        settings = {k: v for k, v in attrs.items() if k not in (
            "format", "format_version", "dtype", "compression", "vggfeat_version", "created", "complete",
            "chunk_rows", "clean_rows", "meaning_keys", "meaning_crc32")}
        out = FeatureWriter.create(dst, settings=settings, feature_shapes={k: v[0] for k, v in layout.items()},
                                   class_names=class_names, dtype=dtype, compression=compression, index=indexed,
                                   sources=sources)
        kept = 0
        try:
            failed_done = 0
            for record in records:
                start, stop, failed_stop = (int(x) for x in record[:3])
                if start != kept or (cols is not None and _check_commit(f, cols, record, failed_done) is not None):
                    break
                try:
                    paths = _decode(f["paths"][start:stop])
                    labels = f["labels"][start:stop]
                    feats = {k: f["features"][k][start:stop] for k in layout}
                    failed = list(zip(_decode(f["failed/paths"][failed_done:failed_stop]),
                                      _decode(f["failed/reasons"][failed_done:failed_stop])))
                    extra = {}
                    if indexed:
                        extra = {"index": f["index"][start:stop],
                                 "failed_index": f["failed/index"][failed_done:failed_stop]}
                except Exception:
                    break
                out.append(paths, labels, feats, failed, **extra)
                kept, failed_done = stop, failed_stop
            out.set_attrs(created=attrs.get("created", ""), repaired_from=os.path.abspath(src))
            out.close(complete=bool(attrs.get("complete", False)) and kept == claimed)
        except BaseException:
            out._abandon()
            if os.path.exists(dst):
                os.remove(dst)
            raise
    return kept, claimed


# ---------------------------------------------------------------------------------------------
# Reading.


def load_features(path, layer=None, *, return_X_y=False, verify=True):
    """Read one vggfeat file whole (not an index of parts). The public `vggfeat.load_features`
    (`vggfeat.parts.load_features`, which documents the arguments and what is returned) reads either."""
    path = os.fspath(path)
    with _open_read(path, meaning=verify) as f:
        names = list(f["features"].keys())
        if layer is None:
            if len(names) != 1:
                raise LayerError(f"{path} holds several layers ({', '.join(names)}); name one")
            layer = names[0]
        if layer not in f["features"]:  # any spelling of a stored layer: FC7, fc2, block5_pool...
            layer = next((x for x in names if canonical_layer(x) == canonical_layer(layer)), layer)
        if layer not in f["features"]:
            raise LayerError(f"layer {layer!r} is not in {path}; it holds: {', '.join(names) or 'none'}")
        try:
            n, m = committed_counts(f)
            features = f["features"][layer][:n]
            labels = f["labels"][:n]
            paths = np.array(_decode(f["paths"][:n]), dtype=object) if n else np.array([], dtype=object)
            class_names = _decode(f["class_names"][()])
            failed = list(zip(_decode(f["failed/paths"][:m]), _decode(f["failed/reasons"][:m])))
            attrs = {k: _attr(v) for k, v in f.attrs.items()}
            if verify and "commits" in f:
                _verify_loaded(f, path, layer, features, labels, paths)
        except OutputError:
            raise
        except Exception as exc:
            raise OutputError(f"{path} is damaged: {_first_line(exc)}; `vggfeat verify {path}` tells which rows") \
                from None
    return _loaded(path, features, labels, paths, class_names, failed, layer, attrs, return_X_y,
                   complete=attrs.get("complete", False))


def _loaded(path, features, labels, paths, class_names, failed, layer, attrs, return_X_y, complete):
    import warnings

    from sklearn.utils import Bunch

    if not complete:
        warnings.warn(f"{path} is incomplete (the run was interrupted); `vggfeat extract --resume` completes it",
                      stacklevel=3)
    if return_X_y:
        unlabelled = int(np.count_nonzero(labels < 0))
        if unlabelled:
            warnings.warn(f"{path}: {unlabelled} of {len(labels)} rows are unlabelled (label -1: images at the top "
                          "of the folder, not in a class subfolder); return_X_y=True leaves them out "
                          "(load_features(...) without it keeps every row)", UserWarning, stacklevel=3)
            keep = labels >= 0
            features, labels = features[keep], labels[keep]
        return features, labels
    return Bunch(features=features, labels=labels, paths=paths, class_names=class_names, failed=failed,
                 layer=layer, attrs=attrs)


def _verify_loaded(f, path, layer, features, labels, paths):
    cols = _columns(f)
    for record in f["commits"][()]:
        start, stop = int(record[0]), int(record[1])
        checks = {"paths": lambda: _crc_strings(list(paths[start:stop])),
                  "labels": lambda: _crc(labels[start:stop]),
                  f"features/{layer}": lambda: _crc(features[start:stop])}
        for name, expected in zip(cols[3:], record[3:]):
            if name in checks and checks[name]() != int(expected):
                raise OutputError(f"{path} is damaged: {name} rows {start}-{stop} do not match their checksum; "
                                  f"`vggfeat verify {path} --repair OUT` keeps the intact rows "
                                  "(or load_features(..., verify=False) reads them as they are)")


# What `vggfeat.parts` (outputs in parts, read lazily) shares with this module's reading and writing.
open_read = _open_read
remove_stale = _remove_stale
decode_strings = _decode
commit_columns = _columns
crc = _crc
crc_strings = _crc_strings
as_bunch = _loaded
lock = _lock
refuse_parts_run = _refuse_parts_run
verify_file = verify
