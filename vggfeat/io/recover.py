"""Recovery, in one place: resuming a file (its settings and seals checked, the rows since its last clean
close verified, rolled back to the last intact commit), rebuilding one whose structure is damaged, and
`repair` (its intact rows into a new file)."""

from __future__ import annotations

import logging
import os

import h5py
import numpy as np

from ..errors import OutputError
from .guard import (
    TMP_SUFFIX,
    GuardedIO,
    first_line,
    lock,
    open_fd,
    os_error,
    remove_stale,
)
from .layout import (
    STRING_,
    DamagedFile,
    open_error,
    attr,
    check_commit,
    check_format,
    check_settings,
    check_structure,
    commit_columns,
    crc_strings,
    decode_strings,
    meaning_problem,
    open_read,
    read_sources,
    verify_open,
)
from .writer import FeatureWriter

log = logging.getLogger("vggfeat")


def resume_file(path, *, settings: dict, dtype="float32", verify_all=False) -> FeatureWriter:
    """Reopen `path` to continue it: checks that its settings equal `settings`, verifies the rows
    written since the last clean close (all rows with `verify_all`), rolls back to the last intact
    commit (and to a whole chunk), and clears /failed so that failed images are tried again.
    A file that was not closed cleanly (a kill, a crash, a full disk), whose structure is damaged, or
    of format 1, is only read: its intact rows are copied into a new file that then replaces it.
    `recovered` says what was done, when anything was."""
    path = os.fspath(path)
    fd = open_fd(path, os.O_RDWR, "open")
    io = GuardedIO(fd)
    try:
        lock(fd, path)
        try:  # decided on a read-only view: HDF5 writes nothing to a file it may not trust
            f = h5py.File(io, "r")
        except OSError as exc:
            raise open_error(path, exc) from None
        try:
            rebuild_reason, report = _resume_plan(f, path, settings, dtype, verify_all)
        finally:
            f.close()
        if rebuild_reason is None:
            f = h5py.File(io, "r+")
    except BaseException:
        io.close()
        raise
    if rebuild_reason is not None:
        io.close()
        return _rebuild(path, settings, dtype, rebuild_reason)
    writer = FeatureWriter(f, io, path)
    writer._old_fd = None
    try:
        _roll_back(writer, report)
    except BaseException as exc:
        writer._abandon()
        if io.error is not None and not isinstance(exc, OutputError):  # the disk failed first: say that
            raise os_error(path, io.error) from None
        raise
    return writer


def _resume_plan(f, path, settings, dtype, verify_all):
    """(why file `f` must be rebuilt or None, the VerifyReport of its rows to check when it need not)."""
    try:
        version = check_format(f, path)
    except DamagedFile as exc:  # rebuilt, once its settings are known to be this run's
        version, rebuild_reason = None, str(exc).split(": ", 1)[-1]
    try:
        check_settings(f, path, settings, dtype)
        problem = meaning_problem(f, path)
    except OutputError:
        raise
    except Exception:  # noqa: BLE001 - settings unreadable: the rebuild reads what it can
        problem = None
    if problem:
        raise OutputError(f"cannot resume {path}: {problem}; restore the original, or --overwrite "
                          "starts again")
    if version is not None:
        rebuild_reason = "it was written in format 1" if version == 1 else None
        if rebuild_reason is None and bool(attr(f.attrs.get("writing", False))):
            # stopped mid-write: HDF5's own structures on disk are from different moments, and changing
            # them in place (freeing, shrinking, allocating past a stale end) can corrupt the file or
            # crash HDF5 (a segfault freeing /failed of a file a full disk stopped)
            rebuild_reason = "it was not closed cleanly (a kill, a crash or a full disk stopped its writing)"
    if rebuild_reason is not None:
        return rebuild_reason, None
    try:
        check_structure(f)
        clean = int(attr(f.attrs.get("clean_rows", 0)))
        chunk = int(attr(f.attrs.get("chunk_rows", 1)))
        # the chunk that holds the clean end is rewritten by the next commit: check it too
        start = 0 if verify_all else clean - clean % chunk
        return None, verify_open(f, path, start_row=start)
    except Exception as exc:  # noqa: BLE001 - h5py's errors on broken metadata
        return f"its structure is damaged ({first_line(exc)})", None


def _rebuild(path, settings, dtype, reason):
    tmp = path + ".rebuild" + TMP_SUFFIX
    remove_stale(tmp)
    try:
        kept, claimed = repair(path, tmp, mark=False)
    except DamagedFile:  # nothing of it can be read: the caller starts it again
        remove_stale(tmp)
        raise
    os.replace(tmp, path)
    writer = resume_file(path, settings=settings, dtype=dtype)
    lost = (f"kept {kept} intact rows of {claimed}; the other {claimed - kept} images will be extracted again"
            if kept < claimed else f"all {kept} rows were intact and are kept")
    writer.recovered = f"{path} was rebuilt because {reason}: {lost}"
    log.warning(writer.recovered)
    return writer

def _roll_back(self, report):
    """Keep the intact commits up to the last whole chunk; clear /failed; persist that state. The file
    is marked as holding no cleanly closed row first: /paths is written anew below, and a run cut short
    in the middle must leave every row to be checked by the next resume, not trusted."""
    f = self._f
    cols = commit_columns(f)
    f.attrs["clean_rows"] = 0
    f.attrs.modify("writing", True)  # until the clean close: stopped before it, it is rebuilt
    self._flush_checked()
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
    if k != len(records) or any(ds.shape[0] != rows for ds in self.row_datasets()):
        f["commits"].resize(k, axis=0)
        for ds in self.row_datasets():
            ds.resize(rows, axis=0)
    if f["failed/paths"].shape[0] or (k and records[:k, 2].any()):
        # failed images are tried again: the records vouch for no failure any more
        kept = records[:k].copy()
        kept[:, 2] = 0
        kept[:, cols.index("failed")] = crc_strings([])
        if k:
            f["commits"][:k] = kept
        if "failed/index" in f:
            f["failed/index"].resize(0, axis=0)
    _renew_strings(f, rows)
    self._rows, self._failed = rows, 0
    f.attrs["complete"] = False
    f.attrs["clean_rows"] = rows
    self._flush_checked()

def _renew_strings(f, rows):
    """Give /paths (its first `rows` values kept) and /failed/paths, /failed/reasons fresh storage.

    A string dataset holds references into HDF5's global heap, and HDF5 frees the object an
    element refers to before it overwrites the element. A run killed after a chunk of references
    reached the disk but before the heap objects did leaves references to nothing beyond the
    committed rows (and beyond the recorded extent, where shrinking does not clear them);
    overwriting one crashes HDF5 ("bad heap index", or a segfault). New datasets hold no stale
    reference. The old storage is not reused (a few bytes per row; `vggfeat verify --repair`
    writes a compact copy)."""
    for name, keep in (("paths", rows), ("failed/paths", 0), ("failed/reasons", 0)):
        old = f[name]
        values = old[:keep] if keep else np.empty(0, dtype=object)
        chunks = old.chunks
        del f[name]
        f.create_dataset(name, shape=(keep,), maxshape=(None,), dtype=STRING_, chunks=chunks)
        if keep:
            f[name][:] = values


def repair(src, dst, *, mark=True) -> tuple[int, int]:
    """Write the intact rows of `src` (every commit before the first damaged one; all rows of a
    format 1 file) into a new file `dst`. Returns (rows kept, rows `src` claims).

    `src` is only read. Raises OutputError when `src` cannot be opened at all or `dst` exists. With
    `mark`, `dst` records `repaired_from` (not when `--resume` rebuilds a file in its own place).
    """
    src, dst = os.fspath(src), os.fspath(dst)
    if os.path.lexists(dst):
        raise OutputError(f"{dst} exists; choose a new file for the repaired copy")
    with open_read(src, meaning=False) as f:
        problem = meaning_problem(f, src)
        if problem:  # its intact rows would be copied under the changed meaning
            raise OutputError(f"cannot repair {src}: {problem}; restore the original settings first")
        out, attrs = _copy_of(f, src, dst)
        records, cols = _records_of(f)
        claimed = int(records[-1][1]) if records else 0
        kept = failed_done = 0
        try:
            for record in records:
                start, stop, failed_stop = (int(x) for x in record[:3])
                if start != kept or (cols is not None and check_commit(f, cols, record, failed_done) is not None):
                    break
                try:
                    rows = _rows_of(f, start, stop, failed_done, failed_stop)
                except Exception:  # noqa: BLE001 - unreadable: the rows before it are kept
                    break
                out.append(*rows)
                kept, failed_done = stop, failed_stop
            out.set_attrs(created=attrs.get("created", ""), **({"repaired_from": os.path.abspath(src)} if mark else {}))
            out.close(complete=bool(attrs.get("complete", False)) and kept == claimed)
        except BaseException:
            out._abandon()
            if os.path.exists(dst):
                os.remove(dst)
            raise
    return kept, claimed


_NOT_COPIED = ("format", "format_version", "dtype", "compression", "vggfeat_version", "created", "complete",
               "chunk_rows", "clean_rows", "writing", "meaning_keys", "meaning_crc32")


def _copy_of(f, src, dst):
    """(a new empty file `dst` with the settings, layers, class names and sources of open file `f`, its
    root attributes)."""
    try:
        attrs = {k: attr(v) for k, v in f.attrs.items()}
        layout = {k: (ds.shape[1:], ds.dtype, ds.compression) for k, ds in f["features"].items()}
        first = next(iter(layout.values()), (None, "float32", None))
        out = FeatureWriter.create(dst, settings={k: v for k, v in attrs.items() if k not in _NOT_COPIED},
                                   feature_shapes={k: v[0] for k, v in layout.items()},
                                   class_names=decode_strings(f["class_names"][()]), dtype=str(first[1]),
                                   compression=first[2], sources=read_sources(f))
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        raise DamagedFile(f"cannot repair {src}: its settings cannot be read ({first_line(exc)})") from None
    return out, attrs


def _records_of(f):
    """(commit records, their columns) of `f`; a format 1 file's rows as one record without checksums."""
    if "commits" not in f:  # format 1: every row, as written
        return [np.asarray([0, int(f["paths"].shape[0]), int(f["failed/paths"].shape[0])])], None
    try:
        return list(f["commits"][()]), commit_columns(f)
    except Exception:  # noqa: BLE001 - unreadable records: nothing can be vouched for
        return [], []


def _rows_of(f, start, stop, failed_start, failed_stop):
    """(paths, labels, features, failures) of one commit, for `FeatureWriter.append`."""
    failed = list(zip(decode_strings(f["failed/paths"][failed_start:failed_stop]),
                      decode_strings(f["failed/reasons"][failed_start:failed_stop])))
    return (decode_strings(f["paths"][start:stop]), f["labels"][start:stop],
            {k: f["features"][k][start:stop] for k in f["features"]}, failed)
