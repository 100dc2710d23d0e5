"""`FeatureWriter`: append-only writes of the vggfeat layout in whole, checksummed commits; resume,
roll back, rebuild and `repair`."""

from __future__ import annotations

import json
import logging
import os

import h5py
import numpy as np

from ..errors import InputError, OutputError, VggfeatError, WriteFailed
from ..redact import redact, redact_urls
from ..specs import canonical_layer
from . import COMPRESSIONS, DTYPES
from .guard import (
    TMP_SUFFIX,
    GuardedIO,
    first_line,
    lock,
    open_fd,
    os_error,
    remove_stale,
    sync_folder,
)
from .layout import (
    FORMAT,
    FORMAT_VERSION,
    STRING_,
    attr,
    commit_columns,
    committed_counts,
    crc,
    crc_strings,
    decode_strings,
    new_commit_columns,
    seal_meaning,
    write_root_attrs,
)

log = logging.getLogger("vggfeat")


_CHUNK_BYTES = 1 << 20


def _chunk_rows(row_shape, itemsize):
    row_bytes = max(1, int(np.prod(row_shape)) * itemsize)
    return int(min(1024, max(1, _CHUNK_BYTES // row_bytes)))


class FeatureWriter:
    """Append-only writer of the vggfeat HDF5 layout, committing whole chunks with checksums.

    Use `FeatureWriter.create(...)` for a new file or `vggfeat.io.recover.resume_file(...)` to continue one;
    then `append` batches and `close(complete=True)` at the end. Rows appended are buffered until a
    whole chunk can be written; `flush()` (and `close`) commits what is buffered.
    """

    def __init__(self, f: h5py.File, io: GuardedIO, path, *, final_path=None):
        self._f = f
        self._io = io
        self.path = path  # where the rows go now
        self.final_path = final_path or path  # where they end up (differs while --overwrite writes beside)
        self._cols = commit_columns(f)
        self._chunk = int(attr(f.attrs.get("chunk_rows", 1)))
        self._rows, self._failed = committed_counts(f)
        self._buf = {"paths": [], "labels": [], "failed": [], **{k: [] for k in f["features"]}}
        self._buffered = 0
        self.recovered: str | None = None  # one line about rows rolled back or rebuilt at resume

    # -----------------------------------------------------------------------------------------
    @classmethod
    def create(cls, path, *, settings: dict, feature_shapes: dict, class_names, dtype="float32",
               compression=None, overwrite=False, beside=False, sources=None):
        """Create `path`; refuses an existing file unless `overwrite`, in which case the new file is
        written beside it (`path` + TMP_SUFFIX) and renamed over it by `close(complete=True)`.
        With `beside`, a new file is written beside its name that way too: nothing is at `path` until
        `close` puts it there (a run cut short leaves no file; a part; `vggfeat merge`).
        `sources` ({input shard: identity}, see `vggfeat.shards.identities`) is recorded in /sources; it
        and the settings and class names are sealed under checksums (`seal_meaning`)."""
        path = os.fspath(path)
        if dtype not in DTYPES:
            raise InputError(f"unknown storage dtype {dtype!r}; choose {' or '.join(DTYPES)}")
        if compression not in (None,) + COMPRESSIONS:
            raise InputError(f"unknown compression {compression!r}; choose {' or '.join(COMPRESSIONS)}")
        target, old_fd = _target(path, overwrite, beside)
        try:
            fd = open_fd(target, os.O_RDWR | os.O_CREAT | os.O_EXCL, "create")
        except BaseException:
            if old_fd is not None:
                os.close(old_fd)
            raise
        io = GuardedIO(fd)
        f = None
        try:
            lock(fd, target)
            f = h5py.File(io, "w")
            write_root_attrs(f, FORMAT, FORMAT_VERSION, settings, dtype, compression)
            _new_layout(f, feature_shapes, class_names, np.dtype(dtype), compression, sources)
            f.flush()
            if io.error is not None:
                raise os_error(target, io.error, "create")
        except BaseException as exc:
            if f is not None:
                try:
                    f.close()
                except Exception:  # noqa: BLE001 - HDF5 meeting what the failed write left out
                    pass
            io.close()
            os.remove(target)
            if old_fd is not None:
                os.close(old_fd)
            if io.error is not None and not isinstance(exc, VggfeatError):  # the disk failed first: say that
                raise os_error(target, io.error, "create") from None
            raise
        writer = cls(f, io, target, final_path=path)
        writer._old_fd = old_fd
        return writer

    def row_datasets(self):
        """The datasets that hold one value a row (as `commits` records them)."""
        f = self._f
        return [f[name] for name in ("paths", "labels", "index") if name in f] + list(f["features"].values())

    # -----------------------------------------------------------------------------------------
    @property
    def rows(self) -> int:
        """Rows written (committed, plus those buffered until their chunk is full)."""
        return self._rows + self._buffered

    def written_paths(self) -> list:
        return decode_strings(self._f["paths"][:self._rows]) + list(self._buf["paths"]) if self.rows else []

    def feature_layout(self) -> dict:
        """{layer: (shape of one row, numpy dtype)} as stored."""
        return {k: (tuple(ds.shape[1:]), ds.dtype) for k, ds in self._f["features"].items()}

    def failed_count(self) -> int:
        return self._failed + len(self._buf["failed"])

    @property
    def class_names(self) -> list:
        return list(self._f["class_names"].asstr()[()])

    def append(self, paths, labels, features: dict, failed=()):
        """Add one batch: rows for `paths` (features and labels), plus failures `(path, reason)`.
        Whole chunks are committed at once; the rest waits for the next batch or `flush()`."""
        n = len(paths)
        if "index" in self._f:
            raise ValueError(f"{self.path} holds /index (a shard of an older Ray run): it is read, not written")
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
        out = {"paths": b["paths"][:n], "labels": b["labels"][:n], "failed": b["failed"]}
        b["paths"], b["labels"], b["failed"] = b["paths"][n:], b["labels"][n:], []
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
            raise os_error(self.final_path, self._io.error)
        try:
            self._commit_rows(n)
        except VggfeatError:
            raise
        except Exception as exc:  # HDF5 failed: after a failed write of ours (said as such), or on its own
            if self._io.error is not None:
                raise os_error(self.final_path, self._io.error) from None
            self._io.error = exc
            raise WriteFailed(f"cannot write {self.final_path}: {first_line(exc)}; the rows committed "
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
                crcs[f"features/{name}"] = crc(data[name])
            labels = np.asarray(data["labels"], dtype=np.int64)
            f["labels"].resize(stop, axis=0)
            f["labels"][start:stop] = labels
            f["paths"].resize(stop, axis=0)
            f["paths"][start:stop] = np.array(data["paths"], dtype=object)
        else:
            labels = np.empty(0, np.int64)
            crcs.update({f"features/{name}": 0 for name in f["features"]})
        crcs["labels"] = crc(labels)
        crcs["paths"] = crc_strings(data["paths"])
        failed_start = self._failed
        failed_stop = failed_start + len(data["failed"])
        if data["failed"]:
            m = self._failed
            for name, values in (("failed/paths", [p for p, _ in data["failed"]]),
                                 ("failed/reasons", [r for _, r in data["failed"]])):
                f[name].resize(failed_stop, axis=0)
                f[name][m:failed_stop] = np.array(values, dtype=object)
        crcs["failed"] = crc_strings([p for p, _ in data["failed"]] + [r for _, r in data["failed"]])
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
                raise OutputError(f"cannot write {self.final_path}: {first_line(exc)}") from None
        if self._io.error is not None:
            raise os_error(self.final_path, self._io.error)

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
        reported = self._io.error is not None  # a failed write already raised: nothing is written any more
        failure = None
        try:
            if self._io.error is None:
                self.flush()
                self._f.attrs["complete"] = bool(complete)
                self._f.attrs["clean_rows"] = self._rows
                self._flush_checked()
                self._io.sync()
                if self._io.error is not None:
                    raise os_error(self.final_path, self._io.error)
                # marked closed last and alone (in place, once all else is on disk): a file whose mark
                # reached the disk holds no other write in flight
                self._f.attrs.modify("writing", False)
                self._flush_checked()
                self._io.sync()
                if self._io.error is not None:
                    raise os_error(self.final_path, self._io.error)
        except BaseException as exc:
            failure = exc
        replacing = self.path != self.final_path
        self._abandon()
        if failure is None and self._io.error is not None and not reported:  # a write of HDF5's own close failed
            failure = os_error(self.final_path, self._io.error)
        if replacing:
            if place and failure is None:
                os.replace(self.path, self.final_path)
                sync_folder(self.final_path)
            else:
                remove_stale(self.path)
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


def _target(path, overwrite, beside) -> tuple:
    """(the file to write, a descriptor locking the old file `path` or None): `path` itself, or a
    temporary beside it (`--overwrite`, `beside`), a stale one of a killed run removed first."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise OutputError(f"the output folder does not exist: {parent}")
    if os.path.lexists(path):
        if not overwrite:
            raise OutputError(f"{path} exists; pass --resume to continue it or --overwrite to replace it")
        old_fd = open_fd(path, os.O_RDONLY, "open")
        try:
            lock(old_fd, path)  # held until the new file replaces it: no one else writes it meanwhile
            remove_stale(path + TMP_SUFFIX)
        except BaseException:
            os.close(old_fd)
            raise
        return path + TMP_SUFFIX, old_fd
    if beside:
        remove_stale(path + TMP_SUFFIX)  # the temporary of a run killed before it was complete
        return path + TMP_SUFFIX, None
    return path, None


def _new_layout(f, feature_shapes, class_names, np_dtype, compression, sources):
    """The datasets of an empty file, its chunking, /sources, then the seal over its meaning."""
    f.attrs["complete"] = False
    f.attrs["clean_rows"] = 0
    f.attrs["writing"] = True  # until a clean close: a file found so was stopped mid-write (`resume_file`)
    shapes = {name: tuple(int(s) for s in shape) for name, shape in feature_shapes.items()}
    chunk = min([_chunk_rows(s, np_dtype.itemsize) for s in shapes.values()] or [1024])
    f.attrs["chunk_rows"] = chunk
    f.create_dataset("paths", shape=(0,), maxshape=(None,), dtype=STRING_, chunks=(1024,))
    f.create_dataset("labels", shape=(0,), maxshape=(None,), dtype="int64", chunks=(4096,))
    f.create_dataset("class_names", data=np.array(list(class_names), dtype=object), dtype=STRING_)
    g = f.create_group("features")
    for name, shape in shapes.items():
        g.create_dataset(name, shape=(0,) + shape, maxshape=(None,) + shape, dtype=np_dtype,
                         chunks=(chunk,) + shape, compression=compression)
    fg = f.create_group("failed")
    for name in ("paths", "reasons"):
        fg.create_dataset(name, shape=(0,), maxshape=(None,), dtype=STRING_, chunks=(256,))
    cols = new_commit_columns(shapes, False)
    c = f.create_dataset("commits", shape=(0, len(cols)), maxshape=(None, len(cols)), dtype="int64",
                         chunks=(256, len(cols)))
    c.attrs["columns"] = json.dumps(cols)
    if sources:
        sg = f.create_group("sources")
        for name, values in (("names", list(sources)), ("identities", list(sources.values()))):
            sg.create_dataset(name, data=np.array([redact_urls(v) for v in values], dtype=object), dtype=STRING_)
    seal_meaning(f)
