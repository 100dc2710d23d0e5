"""The HDF5 layout of vggfeat's output files: writing (append-only, crash-safe) and reading.

Layout (format "vggfeat", format_version 1; documented in the README):

    /                   attrs: format, format_version, arch, weights[, weights_sha256, seed],
                        preprocessing, form, resize, input_size, geometry, layers (JSON list),
                        keras_layers, pooling, precision, dtype, vggfeat_version, created (ISO 8601),
                        inputs (JSON list), complete (bool)
    /paths              (N,)  UTF-8   relative to the given folder (absolute with several inputs)
    /labels             (N,)  int64   -1 where unlabelled
    /class_names        (K,)  UTF-8
    /features/<layer>   (N, ...) float32 or float16, chunked, resizable
    /failed/paths       (M,)  UTF-8
    /failed/reasons     (M,)  UTF-8

The shards of a distributed run (`--engine ray`, see `vggfeat.ray_engine`) have the same layout plus
`/index` and `/failed/index` (int64): each row's position in the run's list of images, which the merge
orders and deduplicates by.

Row i of every dataset belongs to /paths[i]. Each batch is written features first and /paths last,
then flushed, so /paths holds exactly the committed rows: after a crash, longer datasets are cut
back to len(/paths) when the file is resumed.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone

import h5py
import numpy as np

from ._version import __version__
from .errors import InputError, LayerError, OutputError

FORMAT = "vggfeat"
FORMAT_VERSION = 1

#: Settings that must be equal for `--resume` to append to a file.
RESUME_KEYS = ("arch", "weights", "weights_sha256", "seed", "preprocessing", "form", "resize", "input_size",
               "layers", "pooling", "precision", "dtype", "inputs", "scales", "flip", "aggregate", "l2")

_STR = h5py.string_dtype(encoding="utf-8")
_CHUNK_BYTES = 1 << 20


def _chunk_rows(row_shape, itemsize):
    row_bytes = max(1, int(np.prod(row_shape)) * itemsize)
    return int(min(1024, max(1, _CHUNK_BYTES // row_bytes)))


def _attr(value):
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_attrs(path) -> dict:
    """The root attributes (settings) of a vggfeat file, checking its format."""
    with _open_checked(path) as f:
        return {k: _attr(v) for k, v in f.attrs.items()}


def _open_checked(path, mode="r"):
    if not os.path.exists(path):
        raise InputError(f"file not found: {path}")
    try:
        f = h5py.File(path, mode)
    except OSError as exc:
        raise OutputError(f"cannot open {path} as HDF5: {str(exc).splitlines()[0]}") from None
    fmt = _attr(f.attrs.get("format", ""))
    version = _attr(f.attrs.get("format_version", -1))
    if fmt != FORMAT:
        f.close()
        raise OutputError(f"{path} is not a vggfeat file (format={fmt!r})")
    if version != FORMAT_VERSION:
        f.close()
        raise OutputError(f"{path} has format_version {version}; this vggfeat reads version {FORMAT_VERSION}")
    return f


class FeatureWriter:
    """Append-only writer of the vggfeat HDF5 layout.

    Use `FeatureWriter.create(...)` for a new file or `FeatureWriter.resume(...)` to continue one;
    then `append` batches and `close(complete=True)` at the end.
    """

    def __init__(self, f: h5py.File, path):
        self._f = f
        self.path = path

    # -----------------------------------------------------------------------------------------
    @classmethod
    def create(cls, path, *, settings: dict, feature_shapes: dict, class_names, dtype="float32",
               compression=None, overwrite=False, index=False):
        """Create `path`; refuses an existing file unless `overwrite`. With `index`, rows and failures
        also carry their position in the run's image list (the shards of a distributed run)."""
        path = os.fspath(path)
        if os.path.exists(path):
            if not overwrite:
                raise OutputError(f"{path} exists; pass --resume to continue it or --overwrite to replace it")
            os.remove(path)
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise OutputError(f"the output folder does not exist: {parent}")
        if dtype not in ("float32", "float16"):
            raise InputError(f"unknown storage dtype {dtype!r}; choose float32 or float16")
        if compression not in (None, "gzip", "lzf"):
            raise InputError(f"unknown compression {compression!r}; choose gzip or lzf")
        f = h5py.File(path, "w")
        try:
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            for k, v in settings.items():
                if v is not None:
                    f.attrs[k] = v
            f.attrs["dtype"] = dtype
            f.attrs["compression"] = compression or "none"
            f.attrs["vggfeat_version"] = __version__
            f.attrs["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            f.attrs["complete"] = False
            f.create_dataset("paths", shape=(0,), maxshape=(None,), dtype=_STR, chunks=(1024,))
            f.create_dataset("labels", shape=(0,), maxshape=(None,), dtype="int64", chunks=(4096,))
            f.create_dataset("class_names", data=np.array(list(class_names), dtype=object), dtype=_STR)
            g = f.create_group("features")
            np_dtype = np.dtype(dtype)
            for name, shape in feature_shapes.items():
                shape = tuple(int(s) for s in shape)
                g.create_dataset(name, shape=(0,) + shape, maxshape=(None,) + shape, dtype=np_dtype,
                                 chunks=(_chunk_rows(shape, np_dtype.itemsize),) + shape,
                                 compression=compression)
            fg = f.create_group("failed")
            fg.create_dataset("paths", shape=(0,), maxshape=(None,), dtype=_STR, chunks=(256,))
            fg.create_dataset("reasons", shape=(0,), maxshape=(None,), dtype=_STR, chunks=(256,))
            if index:
                f.create_dataset("index", shape=(0,), maxshape=(None,), dtype="int64", chunks=(4096,))
                fg.create_dataset("index", shape=(0,), maxshape=(None,), dtype="int64", chunks=(256,))
            f.flush()
        except BaseException:
            f.close()
            os.remove(path)
            raise
        return cls(f, path)

    @classmethod
    def resume(cls, path, *, settings: dict, dtype="float32"):
        """Reopen `path` to continue it: checks that its settings equal `settings`, cuts rows of an
        interrupted batch, and clears /failed so that failed images are tried again."""
        path = os.fspath(path)
        f = _open_checked(path, "r+")
        try:
            wanted = dict(settings)
            wanted["dtype"] = dtype
            diffs = []
            for key in RESUME_KEYS:
                have = _attr(f.attrs.get(key))
                want = wanted.get(key)
                if have is None and want is None:
                    continue
                if have != want:
                    diffs.append(f"{key}={have!r} in the file, {want!r} now")
            if diffs:
                raise OutputError(f"cannot resume {path}: its settings differ from this run's: " + "; ".join(diffs))
            n = f["paths"].shape[0]
            for ds in [f["labels"]] + list(f["features"].values()):
                if ds.shape[0] != n:
                    ds.resize(n, axis=0)
            f["failed/paths"].resize(0, axis=0)
            f["failed/reasons"].resize(0, axis=0)
            f.attrs["complete"] = False
            f.flush()
        except BaseException:
            f.close()
            raise
        return cls(f, path)

    @classmethod
    def reopen(cls, path):
        """Open a file to append more rows as they come, without `resume`'s checks (a shard that
        only its own worker writes)."""
        return cls(_open_checked(os.fspath(path), "r+"), os.fspath(path))

    # -----------------------------------------------------------------------------------------
    @property
    def rows(self) -> int:
        return int(self._f["paths"].shape[0])

    def written_paths(self) -> list:
        return list(self._f["paths"].asstr()[()]) if self.rows else []

    def feature_layout(self) -> dict:
        """{layer: (shape of one row, numpy dtype)} as stored."""
        return {k: (tuple(ds.shape[1:]), ds.dtype) for k, ds in self._f["features"].items()}

    def failed_count(self) -> int:
        return int(self._f["failed/paths"].shape[0])

    @property
    def class_names(self) -> list:
        return list(self._f["class_names"].asstr()[()])

    def append(self, paths, labels, features: dict, failed=(), *, index=None, failed_index=None):
        """Write one batch: rows for `paths` (features and labels), plus failures `(path, reason)`;
        `index` and `failed_index` are their positions in the run (files created with `index=True`)."""
        f = self._f
        n = len(paths)
        start = self.rows
        indexed = "index" in f
        if indexed:
            failed_index = () if failed_index is None else failed_index
            if index is None or len(index) != n or len(failed_index) != len(failed):
                raise ValueError("a file created with index=True needs one index per row and per failure")
        elif index is not None or failed_index is not None:
            raise ValueError("index and failed_index need a file created with index=True")
        if n:
            if indexed:
                f["index"].resize(start + n, axis=0)
                f["index"][start:start + n] = np.asarray(index, dtype=np.int64)
            for name, ds in f["features"].items():
                values = features[name]
                if len(values) != n:
                    raise ValueError(f"{len(values)} rows of {name} for {n} paths")
                ds.resize(start + n, axis=0)
                ds[start:start + n] = np.asarray(values, dtype=ds.dtype)
            f["labels"].resize(start + n, axis=0)
            f["labels"][start:start + n] = np.asarray(labels, dtype=np.int64)
        if failed:
            m = f["failed/paths"].shape[0]
            k = len(failed)
            if indexed:
                f["failed/index"].resize(m + k, axis=0)
                f["failed/index"][m:m + k] = np.asarray(failed_index, dtype=np.int64)
            for ds, values in ((f["failed/reasons"], [r for _, r in failed]), (f["failed/paths"], [p for p, _ in failed])):
                ds.resize(m + k, axis=0)
                ds[m:m + k] = np.array(values, dtype=object)
        if n:
            # /paths last: it is the commit of this batch's rows.
            f["paths"].resize(start + n, axis=0)
            f["paths"][start:start + n] = np.array(list(paths), dtype=object)
        f.flush()

    def set_attrs(self, **attrs):
        for k, v in attrs.items():
            self._f.attrs[k] = v
        self._f.flush()

    def close(self, complete=False):
        if self._f.id.valid:
            if complete:
                self._f.attrs["complete"] = True
            self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close(complete=False)


def load_features(path, layer=None, *, return_X_y=False):
    """Read a vggfeat file: features of one layer, labels, paths and class names.

    Args:
        path: a file written by `vggfeat extract`.
        layer: the layer as named at extraction (`fc7`); may be omitted when the file has one.
        return_X_y: return `(features, labels)` only, as scikit-learn's loaders do.

    Returns:
        A `sklearn.utils.Bunch` with `features` (N, ...) as stored, `labels` (N,) int64 (-1 where
        unlabelled), `paths` (N,) str, `class_names` (K,) str, `failed` (list of (path, reason)),
        `layer`, and `attrs` (the settings the file was made with). Row i belongs to `paths[i]`.

    Examples:
        >>> data = load_features("features.h5", "fc7")          # doctest: +SKIP
        >>> from sklearn.svm import LinearSVC
        >>> LinearSVC().fit(data.features, data.labels)         # doctest: +SKIP
    """
    import warnings

    from sklearn.utils import Bunch

    with _open_checked(os.fspath(path)) as f:
        names = list(f["features"].keys())
        if layer is None:
            if len(names) != 1:
                raise LayerError(f"{path} holds several layers ({', '.join(names)}); name one")
            layer = names[0]
        if layer not in f["features"]:
            raise LayerError(f"layer {layer!r} is not in {path}; it holds: {', '.join(names) or 'none'}")
        n = f["paths"].shape[0]
        features = f["features"][layer][:n]
        labels = f["labels"][:n]
        paths = np.array(f["paths"].asstr()[()], dtype=object) if n else np.array([], dtype=object)
        class_names = list(f["class_names"].asstr()[()])
        failed = list(zip(f["failed/paths"].asstr()[()], f["failed/reasons"].asstr()[()]))
        attrs = {k: _attr(v) for k, v in f.attrs.items()}
    if not attrs.get("complete", False):
        warnings.warn(f"{path} is incomplete (the run was interrupted); `vggfeat extract --resume` completes it",
                      stacklevel=2)
    if return_X_y:
        return features, labels
    return Bunch(features=features, labels=labels, paths=paths, class_names=class_names, failed=failed,
                 layer=layer, attrs=attrs)
