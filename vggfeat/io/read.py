"""Reading features: one file or an index of parts, whole (`load_features`) or lazily (`open_features`)."""

from __future__ import annotations

import bisect
import os
import warnings
import zlib
from collections import OrderedDict
from dataclasses import dataclass

import h5py
import numpy as np

from ..config import attr_value
from ..errors import InputError, LayerError, OutputError
from ..specs import canonical_layer
from .guard import first_line
from .index import check_part, is_index, part_complete, part_counts, read_index, verify_index
from .layout import (
    attr,
    commit_columns,
    committed_counts,
    crc,
    crc_strings,
    decode_strings,
    open_read,
    read_file_attrs,
    verify_file,
)


def load_file(path, layer=None, *, return_X_y=False, verify=True):
    """Read one vggfeat file whole (not an index of parts). The public `vggfeat.load_features`
    (`vggfeat.io.read.load_features`, which documents the arguments and what is returned) reads either."""
    path = os.fspath(path)
    with open_read(path, meaning=verify) as f:
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
            paths = np.array(decode_strings(f["paths"][:n]), dtype=object) if n else np.array([], dtype=object)
            class_names = decode_strings(f["class_names"][()])
            failed = list(zip(decode_strings(f["failed/paths"][:m]), decode_strings(f["failed/reasons"][:m])))
            attrs = {k: attr(v) for k, v in f.attrs.items()}
            if verify and "commits" in f:
                _verify_loaded(f, path, layer, features, labels, paths)
        except OutputError:
            raise
        except Exception as exc:
            raise OutputError(f"{path} is damaged: {first_line(exc)}; `vggfeat verify {path}` tells which rows") \
                from None
    return as_bunch(path, features, labels, paths, class_names, failed, layer, attrs, return_X_y,
                   complete=attrs.get("complete", False))


def as_bunch(path, features, labels, paths, class_names, failed, layer, attrs, return_X_y, complete):
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
    cols = commit_columns(f)
    for record in f["commits"][()]:
        start, stop = int(record[0]), int(record[1])
        checks = {"paths": lambda: crc_strings(list(paths[start:stop])),
                  "labels": lambda: crc(labels[start:stop]),
                  f"features/{layer}": lambda: crc(features[start:stop])}
        for name, expected in zip(cols[3:], record[3:]):
            if name in checks and checks[name]() != int(expected):
                raise OutputError(f"{path} is damaged: {name} rows {start}-{stop} do not match their checksum; "
                                  f"`vggfeat verify {path} --repair OUT` keeps the intact rows "
                                  "(or load_features(..., verify=False) reads them as they are)")


@dataclass
class Rows:
    """Rows read by `FeatureSet.iter_batches`: consecutive ones in file order, or, shuffled, rows from
    anywhere (`index` says which: `features[k]`, `labels[k]` and `paths[k]` are row `index[k]`)."""

    features: np.ndarray
    labels: np.ndarray
    paths: list
    start: int  # the first row's number in the whole dataset (-1 when shuffled: see `index`)
    index: np.ndarray = None  # each row's number in the whole dataset

    def __post_init__(self):
        if self.index is None:
            self.index = np.arange(self.start, self.start + len(self.labels), dtype=np.int64)


#: The default shuffle buffer (`shuffle=True`): rows in this many bytes, or 4 batches if more.
SHUFFLE_BYTES = 256 << 20


def _check(path, record, cols, got):
    """Raise if a commit record's checksums differ from `got` ({column: CRC-32})."""
    for name, expected in zip(cols[3:], record[3:]):
        if name in got and got[name] != int(expected):
            raise OutputError(f"{path} is damaged: {name} rows {int(record[0])}-{int(record[1])} do not match their "
                              f"checksum; `vggfeat verify {path}` tells which rows")


class FeatureSet:
    """One dataset over a vggfeat file or an index of parts, read lazily (see `open_features`)."""

    def __init__(self, path, layer=None):

        self.path = os.fspath(path)
        self._index = None
        if is_index(self.path):
            index = self._index = read_index(self.path)
            self.attrs = index.attrs
            self.class_names = index.class_names
            shapes = index.feature_shapes
            self.parts = [index.part_path(i) for i in range(len(index.files))]
            self._numbers = list(range(len(self.parts)))
            if not index.complete:
                keep = [i for i, p in enumerate(self.parts) if part_complete(p)]
                if not keep and self.parts:  # nothing to read is no dataset: never 0 rows and a warning
                    raise OutputError(f"{self.path} is incomplete and none of its {len(self.parts)} parts is "
                                      f"written (first missing: {self.parts[0]}); `vggfeat extract --resume "
                                      "--output-shards` completes it")
                self._numbers = keep
                warnings.warn(f"{self.path} is incomplete (the run was interrupted): {len(keep)} of "
                              f"{len(self.parts)} parts are read; `vggfeat extract --resume --output-shards` "
                              "completes it", stacklevel=3)
                self.parts = [self.parts[i] for i in keep]
                counts = [part_counts(p) for p in self.parts]
                self._rows = np.array([c[0] for c in counts], np.int64)
            else:
                self._rows = index.rows.copy()
                for p in self.parts:
                    if not os.path.isfile(p):
                        raise OutputError(f"{self.path}: its part {p} is missing (an index reads its parts from "
                                          f"{os.path.dirname(p)}; move them with it, or `vggfeat extract --resume "
                                          "--output-shards` with the same inputs writes it again)")
        else:
            with open_read(self.path) as f:
                self.attrs = {k: attr_value(v) for k, v in f.attrs.items()}
                self.class_names = [v.decode() if isinstance(v, bytes) else str(v) for v in f["class_names"][()]]
                shapes = {k: tuple(f["features"][k].shape[1:]) for k in f["features"]}
                n, _ = committed_counts(f)
            self.parts = [self.path]
            self._rows = np.array([n], np.int64)
        names = list(shapes)
        if layer is None:
            if len(names) != 1:
                raise LayerError(f"{self.path} holds several layers ({', '.join(names)}); name one")
            layer = names[0]
        if layer not in shapes:
            layer = next((x for x in names if canonical_layer(x) == canonical_layer(layer)), layer)
        if layer not in shapes:
            raise LayerError(f"layer {layer!r} is not in {self.path}; it holds: {', '.join(names) or 'none'}")
        self.layer = layer
        self.row_shape = tuple(shapes[layer])
        self.dtype = np.dtype(self.attrs.get("dtype", "float32"))
        self.offsets = np.concatenate([[0], np.cumsum(self._rows)])

    def __len__(self):
        return int(self.offsets[-1])

    @property
    def shape(self):
        return (len(self),) + self.row_shape

    @property
    def classes(self) -> np.ndarray:
        """The label values, for `partial_fit(..., classes=...)`."""
        return np.arange(len(self.class_names))

    def labels(self) -> np.ndarray:
        """Every row's label (int64, -1 where unlabelled): 8 bytes a row, read part by part."""
        out = np.empty(len(self), np.int64)
        for i in range(len(self.parts)):
            a, b = self.offsets[i], self.offsets[i + 1]
            with self._open(i) as f:
                out[a:b] = f["labels"][: b - a]
        return out

    def failed(self) -> list:

        out = []
        for i in range(len(self.parts)):
            with self._open(i) as f:
                _, m = committed_counts(f)
                out.extend(zip(decode_strings(f["failed/paths"][:m]), decode_strings(f["failed/reasons"][:m])))
        return out

    def _open(self, i):
        """The `i`-th file read, opened; a part of an index is checked to be that index's part."""

        f = open_read(self.parts[i])
        if self._index is not None:
            try:
                n, _ = check_part(self._index, self._numbers[i], f)
                if n != int(self._rows[i]):
                    raise OutputError(f"{self.parts[i]} holds {n} rows, {self.path} says {int(self._rows[i])}")
            except BaseException:
                f.close()
                raise
        return f

    def shuffle_buffer(self, rows=8192, shuffle=True) -> int:
        """The rows a shuffle buffer holds for batches of `rows`: `shuffle` rows if a number (at least
        one batch), by default (`True`) as many rows as fit in `SHUFFLE_BYTES` (256 MB: about 16,000 rows
        of fc7's 4,096 float32) or 4 batches, whichever is more; 0 for file order (`shuffle=0`/`False`)."""
        if shuffle is None or shuffle is False:
            return 0
        if shuffle is True:
            row_bytes = self.dtype.itemsize * int(np.prod(self.row_shape)) + 136  # + label, number, path
            return max(4 * int(rows), SHUFFLE_BYTES // row_bytes)
        if isinstance(shuffle, (float, np.floating)) and shuffle != int(shuffle) or int(shuffle) < 0:
            raise InputError(f"shuffle must be a number of rows (0 for file order) or True. Received: {shuffle}")
        return 0 if int(shuffle) == 0 else max(int(shuffle), int(rows))

    def iter_batches(self, rows=8192, *, verify=True, shuffle=0, seed=None):
        """Yield `Rows` of at most `rows` rows, reading only them (and, with `verify`, checking them
        against their commit records' checksums).

        By default (`shuffle=0`) rows come in file order, `rows` consecutive ones at a time (`Rows.start`).
        `shuffle=N` (rows) or `True` (see `shuffle_buffer`: 256 MB of rows or 4 batches) shuffles with
        memory bounded by the buffer, never by the file: the file's checked steps are read in a random
        order (across parts) into a buffer of N rows, and each batch is a random pick from it, so
        classes stored one after another mix even when one class is larger than the buffer. Every row
        comes exactly once; `Rows.index` says which rows a batch holds (`paths[k]` is row `index[k]`'s).
        `seed`: the same seed gives the same order; None, a fresh one each time.
        """
        if int(rows) < 1:
            raise InputError(f"rows must be at least 1. Received: {rows}")
        rows = int(rows)
        buffer = self.shuffle_buffer(rows, shuffle)
        if buffer:
            yield from self._shuffled(rows, buffer, verify, seed)
            return
        for i in range(len(self.parts)):
            with self._open(i) as f:
                checker = _Checker(self.parts[i], f, int(self._rows[i]), self.layer, verify, rows)
                for start, stop, big in _reads(checker.records, int(self._rows[i]), rows):
                    feats, labels, names = checker.read(start, stop, big)
                    yield Rows(feats, labels, names, int(self.offsets[i]) + start)

    def iter_X_y(self, rows=8192, *, verify=True, shuffle=True, seed=None):
        """Yield (X, y) of the labelled rows, at most `rows` at a time, for `partial_fit`, shuffled by
        default: a file of a folder is sorted by class, and `partial_fit` on one class after another
        learns mostly the last. `shuffle=True` mixes them in a buffer of 256 MB of rows or 4 batches,
        whichever is more (`shuffle_buffer`); `shuffle=N` holds N rows; `shuffle=0` keeps file order.
        `seed` fixes the order (call again with another seed, or None, for the next epoch); see
        `open_features` for an example.
        """
        batches = self._shuffled(int(rows), self.shuffle_buffer(rows, shuffle), verify, seed, paths=False) \
            if int(rows) >= 1 and self.shuffle_buffer(rows, shuffle) else self.iter_batches(rows, verify=verify)
        for r in batches:
            keep = r.labels >= 0
            if keep.any():
                yield (r.features, r.labels) if keep.all() else (r.features[keep], r.labels[keep])

    def _shuffled(self, rows, buffer, verify, seed, paths=True):
        """`iter_batches` shuffled in a buffer of `buffer` rows (see there); `paths=False` keeps no paths
        (`iter_X_y`): they are read to check their checksums only."""
        rng = np.random.default_rng(seed)
        step = max(1, min(rows, buffer // 8))  # reads: the buffer holds at least 8 from places far apart
        reads = []  # (part, start, stop, first row of the large commit it is a piece of, or -1)
        for i in range(len(self.parts)):
            with self._open(i) as f:
                records = _records(f, int(self._rows[i]), verify)
            reads.extend((i, a, b, big) for a, b, big in _reads(records, int(self._rows[i]), step))
        checkers = _Checkers(self, verify, step)
        pool = _ShuffleBuffer(min(buffer + step, len(self)), self.row_shape, self.dtype, paths, rng)
        try:
            for k in rng.permutation(len(reads)):
                i, start, stop, big = reads[k]
                feats, labels, names = checkers.get(i).read(start, stop, big)
                pool.add(feats, labels.astype(np.int64), np.arange(start, stop) + int(self.offsets[i]), names)
                del feats, labels, names
                while pool.fill >= buffer:
                    yield pool.take(rows)
            while pool.fill:
                yield pool.take(min(rows, pool.fill))
        finally:
            checkers.close()

    def read(self, *, verify=True):
        """Every row at once: (features, labels, paths)."""
        feats = np.empty(self.shape, self.dtype)
        labels = np.empty(len(self), np.int64)
        paths = np.empty(len(self), dtype=object)
        step = max(1, (64 << 20) // max(1, self.dtype.itemsize * int(np.prod(self.row_shape))))
        for r in self.iter_batches(step, verify=verify):
            a, b = r.start, r.start + len(r.labels)
            feats[a:b], labels[a:b], paths[a:b] = r.features, r.labels, r.paths
        return feats, labels, paths


def load_features(path, layer=None, *, return_X_y=False, verify=True):
    """Read a vggfeat file, or the index of an `--output-shards` run, whole: features of one layer,
    labels, paths and class names.

    Args:
        path: a file written by `vggfeat extract`, or the index of `vggfeat extract --output-shards`
            (its parts are read in order, as one dataset; `open_features` reads them lazily instead).
        layer: the layer as named at extraction (`fc7`); may be omitted when the file has one.
        return_X_y: return `(features, labels)` only, as scikit-learn's loaders do: the labelled rows
            only. Unlabelled rows (label -1: images at the top of the folder, or with no label in a
            list) are left out with a warning that says how many, so that scikit-learn never takes
            -1 for a class; the Bunch (the default) keeps every row.
        verify: check every row read against its commit record's checksum (CRC-32; costs about as
            much as reading the file once more from the page cache). Damaged rows raise
            `OutputError` naming them; `verify=False` skips the check.

    Returns:
        A `sklearn.utils.Bunch` with `features` (N, ...) as stored, `labels` (N,) int64 (-1 where
        unlabelled), `paths` (N,) str, `class_names` (K,) str, `failed` (list of (path, reason)),
        `layer`, and `attrs` (the settings the file was made with). Row i belongs to `paths[i]`.
        Only committed rows are returned: rows of a batch that a crash cut short are not.

    Examples:
        >>> import os, tempfile
        >>> import numpy as np
        >>> from PIL import Image
        >>> import vggfeat
        >>> images = tempfile.mkdtemp()  # a folder of 4 images in 2 classes (subfolders)
        >>> for i, name in enumerate(["cat", "cat", "dog", "dog"]):
        ...     os.makedirs(os.path.join(images, name), exist_ok=True)
        ...     pixels = np.random.default_rng(i).integers(0, 256, (48, 48, 3), dtype=np.uint8)
        ...     Image.fromarray(pixels).save(os.path.join(images, name, f"{i}.png"))
        >>> out = os.path.join(tempfile.mkdtemp(), "features.h5")
        >>> summary = vggfeat.extract([images], out, ["fc7"], arch="vgg11", weights="random", input_size=32,
        ...                           progress=False)  # ImageNet weights: weights="imagenet" (the default)
        >>> data = vggfeat.load_features(out, "fc7")
        >>> list(data.paths), data.labels.tolist()
        (['cat/0.png', 'cat/1.png', 'dog/2.png', 'dog/3.png'], [0, 0, 1, 1])
        >>> from sklearn.svm import LinearSVC
        >>> clf = LinearSVC().fit(data.features, data.labels)
        >>> X, y = vggfeat.load_features(out, "fc7", return_X_y=True)  # as scikit-learn's loaders
    """
    path = os.fspath(path)
    if not (os.path.isfile(path) and is_index(path)):
        return load_file(path, layer, return_X_y=return_X_y, verify=verify)
    index = read_index(path)
    if not index.complete:  # read whole, an index lacking parts is not the dataset: open_features reads them
        missing = [index.part_path(i) for i in range(len(index.files)) if not part_complete(index.part_path(i))]
        if missing:
            raise OutputError(f"{path} is incomplete (the run was interrupted): its part {missing[0]} is missing "
                              f"({len(missing)} of {len(index.files)}); `vggfeat extract --resume --output-shards` "
                              "completes it (open_features reads the parts written so far)")
    fs = open_features(path, layer)
    features, labels, paths = fs.read(verify=verify)
    return as_bunch(path, features, labels, paths, fs.class_names, fs.failed(), fs.layer, dict(fs.attrs),
                         return_X_y, complete=True)


def read_attrs(path) -> dict:
    """The root attributes (settings) of a vggfeat file or of an index of parts, checking its format."""
    if os.path.isfile(os.fspath(path)) and is_index(path):
        return dict(read_index(path).attrs)
    return read_file_attrs(path)


def open_features(path, layer=None) -> FeatureSet:
    """Open a vggfeat file, or the index of an `--output-shards` run, as one dataset read lazily.

    Args:
        path: a file of `vggfeat extract`, or an index (`extract --output-shards`).
        layer: the layer to read; may be omitted when there is one.

    Returns:
        A `FeatureSet`: `len()`, `shape`, `class_names`, `classes`, `attrs`, `labels()`, `failed()`,
        `iter_batches(rows)` (at most `rows` rows in memory at once, in row order unless `shuffle=N`,
        checksums checked), `iter_X_y(rows)` (labelled rows for scikit-learn's `partial_fit`, shuffled
        by default in a bounded buffer; `shuffle=0` for file order) and `read()`.

    Examples:
        >>> import os, tempfile
        >>> import numpy as np
        >>> from PIL import Image
        >>> import vggfeat
        >>> images = tempfile.mkdtemp()  # a folder of 4 images in 2 classes (subfolders)
        >>> for i, name in enumerate(["cat", "cat", "dog", "dog"]):
        ...     os.makedirs(os.path.join(images, name), exist_ok=True)
        ...     pixels = np.random.default_rng(i).integers(0, 256, (48, 48, 3), dtype=np.uint8)
        ...     Image.fromarray(pixels).save(os.path.join(images, name, f"{i}.png"))
        >>> out = os.path.join(tempfile.mkdtemp(), "features.h5")
        >>> summary = vggfeat.extract([images], out, ["fc7"], arch="vgg11", weights="random", input_size=32,
        ...                           progress=False)  # ImageNet weights: weights="imagenet" (the default)
        >>> fs = vggfeat.open_features(out, "fc7")
        >>> len(fs), fs.shape, fs.classes.tolist()
        (4, (4, 4096), [0, 1])
        >>> from sklearn.linear_model import SGDClassifier
        >>> clf = SGDClassifier(random_state=0)
        >>> for X, y in fs.iter_X_y(2, seed=0):  # 2 rows at a time, classes mixed by the shuffle
        ...     clf = clf.partial_fit(X, y, classes=fs.classes)
    """
    return FeatureSet(path, layer)


def verify(path):
    """Check a vggfeat file (`vggfeat.io.layout.VerifyReport`: every committed row against its checksum, and
    its settings, class names and input identities against theirs) or an index of parts (`IndexReport`:
    every part so, and that each is there and the index's own). `.ok` and `.line()` on both."""

    if os.path.isfile(os.fspath(path)) and is_index(path):
        return verify_index(path)
    return verify_file(path)


def read_failed(output) -> dict:
    """{path: reason} under /failed of an existing output ({} when it cannot be read)."""
    try:
        with h5py.File(output, "r") as f:
            return dict(zip((p.decode() if isinstance(p, bytes) else p for p in f["failed/paths"][:]),
                            (r.decode() if isinstance(r, bytes) else r for r in f["failed/reasons"][:])))
    except Exception:  # noqa: BLE001 - a damaged file: the writer decides; its shards are read again
        return {}


def _records(f, n, verify):
    """The commit records of open file `f` that cover its first `n` rows (None: not verified)."""
    if not (verify and "commits" in f):
        return None
    records = f["commits"][()]
    return records[(records[:, 1] > records[:, 0]) & (records[:, 1] <= n)]


def _reads(records, n, step) -> list:
    """(start, stop, big) of reads of at most `step` rows over `n` rows: whole commits grouped (big = -1),
    or a commit of more than `step` rows in pieces (big = its first row: checked whole, once)."""
    ends = records[:, 1] if records is not None else np.arange(0, n, step)
    bounds = np.unique(np.concatenate([[0, n], ends[(ends > 0) & (ends < n)]])).tolist()
    out, start = [], 0
    while start < n:
        j = bisect.bisect_right(bounds, start + step) - 1
        if bounds[j] > start:
            out.append((start, bounds[j], -1))
            start = bounds[j]
        else:
            stop = bounds[bisect.bisect_right(bounds, start)]
            out.extend((a, min(stop, a + step), start) for a in range(start, stop, step))
            start = stop
    return out


class _Checker:
    """Reads rows of one open file and checks them against their commit records (`verify`)."""

    def __init__(self, path, f, n, layer, verify, step):
        self.path, self.f, self.step = path, f, step
        self.key = f"features/{layer}"
        self.records = _records(f, n, verify)
        self.cols = commit_columns(f) if self.records is not None else []
        self.checked = set()  # first rows of the large commits checked whole

    def read(self, start, stop, big):
        f, key = self.f, self.key
        if self.records is not None and big >= 0 and big not in self.checked:
            # the whole commit, in steps, before any of its rows is given
            self._check_large(self.records[int(np.searchsorted(self.records[:, 0], big, "left"))])
            self.checked.add(big)
        feats, labels, names = f[key][start:stop], f["labels"][start:stop], decode_strings(f["paths"][start:stop])
        if self.records is not None and big < 0:
            lo = int(np.searchsorted(self.records[:, 0], start, "left"))
            hi = int(np.searchsorted(self.records[:, 0], stop, "left"))
            for r in self.records[lo:hi]:
                a, b = int(r[0]) - start, int(r[1]) - start
                _check(self.path, r, self.cols, {"paths": crc_strings(names[a:b]), "labels": crc(labels[a:b]),
                                                 key: crc(feats[a:b])})
        return feats, labels, names

    def _check_large(self, r):
        f, key = self.f, self.key
        running = {"paths": 0, "labels": 0, key: 0}
        first, end = int(r[0]), int(r[1])
        for a in range(first, end, self.step):
            b = min(end, a + self.step)
            text = ("\0" if a > first else "") + "\0".join(decode_strings(f["paths"][a:b]))
            for name, data in (("paths", text.encode("utf-8", "surrogateescape")),
                               ("labels", f["labels"][a:b]), (key, f[key][a:b])):
                if not isinstance(data, bytes):
                    data = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
                running[name] = zlib.crc32(data, running[name])
        _check(self.path, r, self.cols, running)


class _Checkers:
    """A `_Checker` per part of a `FeatureSet`, at most 16 files open at once."""

    def __init__(self, fs, verify, step):
        self.fs, self.verify, self.step = fs, verify, step
        self.open = OrderedDict()

    def get(self, i) -> _Checker:
        if i in self.open:
            self.open.move_to_end(i)
            return self.open[i]
        if len(self.open) >= 16:
            self.open.popitem(last=False)[1].f.close()
        fs = self.fs
        self.open[i] = _Checker(fs.parts[i], fs._open(i), int(fs._rows[i]), fs.layer, self.verify, self.step)
        return self.open[i]

    def close(self):
        for c in self.open.values():
            c.f.close()


class _ShuffleBuffer:
    """Rows held for a shuffle: `add` appends, `take(m)` gives `m` picked at random and fills their places
    from the buffer's end (memory: the buffer's rows, never the file's)."""

    def __init__(self, size, row_shape, dtype, paths, rng):
        self.rng, self.paths, self.fill = rng, paths, 0
        self.features = np.empty((size,) + tuple(row_shape), dtype)
        self.labels = np.empty(size, np.int64)
        self.index = np.empty(size, np.int64)
        self.names = np.empty(size, dtype=object) if paths else None

    def add(self, feats, labels, index, names):
        a, b = self.fill, self.fill + len(labels)
        self.features[a:b], self.labels[a:b], self.index[a:b] = feats, labels, index
        if self.paths:
            self.names[a:b] = names
        self.fill = b

    def take(self, m) -> Rows:
        fill, rng = self.fill, self.rng
        pick = np.sort(rng.choice(fill, size=m, replace=False))
        rng.shuffle(pick)
        out = Rows(self.features[pick], self.labels[pick], self.names[pick].tolist() if self.paths else [], -1,
                   self.index[pick])
        gone = np.zeros(m, bool)
        tail = pick >= fill - m
        gone[pick[tail] - (fill - m)] = True
        holes = pick[~tail]
        src = np.flatnonzero(~gone) + (fill - m)
        for a in (self.features, self.labels, self.index) + ((self.names,) if self.paths else ()):
            a[holes] = a[src]
        if self.paths:
            self.names[fill - m:fill] = None
        self.fill -= m
        return out
