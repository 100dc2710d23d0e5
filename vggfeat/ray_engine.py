"""`engine="ray"`: extraction on a Ray cluster into HDF5 shards, merged into one exact output file.

How a run goes:

1. The driver scans the inputs and writes the run's list of images (the *manifest*: file, stored path
   and label per image) into a work folder next to the output, `<output>.shards/`.
2. Ray Data reads that list in blocks; a fixed pool of extractor actors, each building the network
   once, decodes the images of a block, runs them and appends the rows to the actor's own shard
   (`shard-<host>-<pid>-<id>.h5`: the output's layout plus `/index`, each row's position in the list).
   Ray restarts an actor that dies and runs its block again on it; the restarted actor starts a new
   shard, so nothing committed is ever rewritten.
3. The driver merges the shards into the output by streaming them in the manifest's order: one row
   per image (a block that was run twice gives duplicate rows, taken once), failures under /failed,
   then checks that every image has a row or a failure and removes the work folder.

An interrupted run leaves the work folder; `resume=True` reads which images the shards already hold,
runs the rest and merges everything. Nothing here imports Keras: the actors do, on their machines.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
import uuid

import numpy as np

from .errors import InputError, OutputError, VggfeatError

MANIFEST = "manifest.h5"
#: Environment given to the actors (with KERAS_BACKEND and KERAS_HOME as the driver has them).
ACTOR_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "3",
    # Several actors may share a GPU (--gpus-per-worker 0.5): no framework may take all its memory.
    "TF_FORCE_GPU_ALLOW_GROWTH": "true",
    "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
}
_MERGE_BYTES = 64 << 20  # feature bytes held at once while merging
_LOCK_RETRIES = 60  # half-seconds to wait for a shard that a stopping worker still holds


class RayRunError(VggfeatError):
    """The Ray run failed for a reason other than the images (a worker could not start, the cluster
    went away); what the shards hold is kept for `--resume`."""

    exit_code = 1


def work_dir(output) -> str:
    """The folder next to `output` that holds the manifest and shards of a run in progress."""
    return os.fspath(output) + ".shards"


def import_ray():
    """Ray, or a one-line error that says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise InputError(f"--engine ray needs Ray Data ({exc}); install it with: pip install \"vggfeat[ray]\"") from None
    return ray


# ---------------------------------------------------------------------------------------------
# The manifest: the run's list of images, fixed when the run starts.


class Manifest:
    """The images of one sharded run, in output order, and the settings it was started with."""

    def __init__(self, folder, files, paths, labels, class_names):
        self.folder = folder
        self.files = files
        self.paths = paths
        self.labels = labels
        self.class_names = class_names

    def __len__(self):
        return len(self.paths)

    @classmethod
    def create(cls, folder, images, indices, settings, dtype):
        import h5py

        from .store import STRING as _STR

        os.makedirs(folder, exist_ok=True)
        files = [images.files[i] for i in indices]
        paths = [images.paths[i] for i in indices]
        labels = np.asarray([images.labels[i] for i in indices], dtype=np.int64)
        tmp = os.path.join(folder, MANIFEST + ".tmp")
        with h5py.File(tmp, "w") as f:
            for k, v in settings.items():
                if v is not None:
                    f.attrs[k] = v
            f.attrs["dtype"] = dtype
            f.attrs["class_names"] = json.dumps(list(images.class_names))
            # File names as bytes: a name that is not UTF-8 is still a name the workers must open.
            f.create_dataset("files", data=np.array([os.fsencode(p) for p in files], dtype=object),
                             dtype=h5py.string_dtype(encoding="ascii"))
            f.create_dataset("paths", data=np.array(paths, dtype=object), dtype=_STR)
            f.create_dataset("labels", data=labels)
        os.replace(tmp, os.path.join(folder, MANIFEST))  # a manifest is whole or absent
        return cls(folder, files, paths, labels, list(images.class_names))

    @classmethod
    def open(cls, folder, settings, dtype):
        """The manifest of an interrupted run, checking that it was started with the same settings."""
        import h5py

        from .config import attr_value as _attr

        path = os.path.join(folder, MANIFEST)
        if not os.path.exists(path):
            return None
        try:
            f = h5py.File(path, "r")
        except OSError as exc:
            raise OutputError(f"cannot read {path}: {str(exc).splitlines()[0]}; remove {folder} to start over") from None
        with f:
            from .store import settings_differences

            diffs = settings_differences({k: _attr(v) for k, v in f.attrs.items()}, settings, dtype, path)
            if diffs:
                raise OutputError(f"cannot resume the sharded run in {folder}: its settings differ from this run's: "
                                  + "; ".join(diffs))
            files = [os.fsdecode(b) for b in f["files"][()]]
            paths = list(f["paths"].asstr()[()])
            labels = f["labels"][()]
            class_names = json.loads(_attr(f.attrs["class_names"]))
        return cls(folder, files, paths, labels, class_names)


# ---------------------------------------------------------------------------------------------
# The actors.


class ShardWorker:
    """A Ray Data actor: builds the extractor once, then extracts blocks of the manifest into its shard.

    Ray Data makes one per pool slot (and a new one when an actor dies); each instance writes a shard
    of its own, so two processes never write one file.
    """

    def __init__(self, folder, config, batch_size, settings, class_names, dtype, decode_workers, max_pixels, env):
        os.environ.update(env)
        from .store import FeatureWriter

        host = socket.gethostname()
        self.extractor = _worker_extractor(config, batch_size)
        self.decode_workers = decode_workers
        self.max_pixels = max_pixels
        self.shard = os.path.join(folder, f"shard-{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}.h5")
        writer = FeatureWriter.create(self.shard, settings=settings, feature_shapes=self.extractor.output_shapes,
                                      class_names=class_names, dtype=dtype, index=True)
        writer.set_attrs(shard_host=host, shard_pid=os.getpid())
        writer.close()

    def __call__(self, batch):
        from .images import ImageList
        from .stream import iter_features
        from .store import FeatureWriter

        index = np.asarray(batch["index"], dtype=np.int64)
        files = [os.fsdecode(bytes(b)) for b in batch["file"]]
        paths = [str(p) for p in batch["path"]]
        labels = [int(x) for x in batch["label"]]
        position = {}
        for i, p in zip(index.tolist(), paths):
            position.setdefault(p, []).append(i)
        reasons = {}
        images = ImageList(files, paths, labels, [], None)
        # The shard is open only while a block is written, so that it is closed (and readable by the
        # merge) whenever the actor is idle, and a killed actor leaves at most one block uncommitted.
        with FeatureWriter.reopen(self.shard) as writer:
            for fb in iter_features(images, self.extractor, workers=self.decode_workers, progress=False,
                                    max_pixels=self.max_pixels):
                rows = [position[p].pop(0) for p in fb.paths]
                failed_rows = [position[p].pop(0) for p, _ in fb.failed]
                writer.append(fb.paths, fb.labels, fb.features, fb.failed, index=rows, failed_index=failed_rows)
                reasons.update(zip(failed_rows, (r for _, r in fb.failed)))
        return {"index": index, "path": np.asarray(paths, dtype=object),
                "failed": np.asarray([reasons.get(i, "") for i in index.tolist()], dtype=object)}


def _worker_extractor(config, batch_size):
    """The run's extractor, built on a worker and checked against the driver's settings."""
    host = socket.gethostname()
    try:
        from .extractor import build_extractor

        extractor = build_extractor(config, batch_size=batch_size)
    except VggfeatError as exc:  # e.g. a node whose weight file differs from the driver's
        raise OutputError(f"the worker on {host} cannot build the run's extractor: {exc}") from None
    diffs = extractor.config.differences(config)
    if diffs:
        # A node with another weight file or vggfeat version would mix features silently.
        raise OutputError(f"the worker on {host} computes other settings than the driver ({'; '.join(diffs)}): "
                          "install the same vggfeat and weights on every node")
    return extractor


class PartWorker:
    """A Ray Data actor over units of input (a tar shard, or a run of loose images; see `vggfeat.parts`):
    builds the extractor once, then writes the whole part of each unit it is given, streaming the
    shard. A part is renamed into place only when complete, so a unit whose worker died is written
    again from its start by the next one: never half, never twice."""

    def __init__(self, folder, config, batch_size, settings, class_names, dtype, compression, decode_workers,
                 max_pixels, strict, env, run_id=""):
        os.environ.update(env)
        self.extractor = _worker_extractor(config, batch_size)
        self.run_id = run_id
        self.folder, self.settings, self.class_names = folder, settings, class_names
        self.dtype, self.compression, self.decode_workers = dtype, compression, decode_workers
        self.max_pixels, self.strict = max_pixels, strict

    def __call__(self, batch):
        import pickle

        from .parts import part_name, write_part

        numbers, results = [], []
        for blob in batch["unit"]:
            unit = pickle.loads(bytes(blob))
            paths = []
            r = write_part(unit, os.path.join(self.folder, part_name(unit.number)), self.extractor,
                           settings=self.settings, class_names=self.class_names, dtype=self.dtype,
                           compression=self.compression, workers=self.decode_workers, strict=self.strict,
                           max_pixels=self.max_pixels, on_batch=lambda b: paths.extend(b.paths), run_id=self.run_id)
            numbers.append(unit.number)
            results.append(json.dumps({"rows": r.rows, "failed": r.failures, "paths": paths,
                                       "unlabelled": r.unlabelled, "labelled": r.labelled,
                                       "host": socket.gethostname(), "pid": os.getpid()}))
        return {"number": np.asarray(numbers, np.int64), "result": np.asarray(results, dtype=object)}


# ---------------------------------------------------------------------------------------------
# The driver.


def shard_files(folder) -> list:
    return sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.startswith("shard-") and n.endswith(".h5"))


def _open_shards(folder):
    """The shards of `folder` that can be read (one that a worker died creating holds no rows)."""
    import h5py

    out = []
    for path in shard_files(folder):
        f = None
        for _ in range(_LOCK_RETRIES):
            try:
                f = h5py.File(path, "r")
                break
            except OSError as exc:
                if "lock" not in str(exc).lower():
                    break  # not an HDF5 file any more: nothing committed in it
                time.sleep(0.5)  # a worker that was just stopped may still be closing it
        else:
            raise OutputError(f"{path} stays locked by another process: is another run writing into {folder}?")
        if f is None:
            continue
        if "index" not in f:
            f.close()
            continue
        out.append(f)
    return out


def committed(folder) -> np.ndarray:
    """Sorted positions that some shard of `folder` holds a committed row for."""
    from .store import committed_counts

    parts = []
    for f in _open_shards(folder):
        with f:
            n, _ = committed_counts(f)
            parts.append(f["index"][:n])
    return np.unique(np.concatenate(parts)) if parts else np.empty(0, np.int64)


def _index_of(shards, which):
    """(sorted unique positions, shard number, row) of the rows (`which="rows"`) or failures."""
    from .store import committed_counts

    pos, sid, row = [], [], []
    for s, f in enumerate(shards):
        rows, failures = committed_counts(f)
        if which == "rows":
            n = rows
            ix = f["index"][:n]
        else:
            n = failures
            ix = f["failed/index"][:n]
        pos.append(ix)
        sid.append(np.full(n, s, np.int64))
        row.append(np.arange(n, dtype=np.int64))
    if not pos:
        empty = np.empty(0, np.int64)
        return empty, empty, empty
    pos, sid, row = np.concatenate(pos), np.concatenate(sid), np.concatenate(row)
    order = np.argsort(pos, kind="stable")
    pos, sid, row = pos[order], sid[order], row[order]
    first = np.ones(len(pos), bool)
    first[1:] = pos[1:] != pos[:-1]  # a block run twice: the first copy
    return pos[first], sid[first], row[first]


def _lookup(sorted_pos, wanted):
    """(whether each of `wanted` is in `sorted_pos`, and where)."""
    if not len(sorted_pos):
        return np.zeros(len(wanted), bool), np.zeros(len(wanted), np.int64)
    at = np.minimum(np.searchsorted(sorted_pos, wanted), len(sorted_pos) - 1)
    return sorted_pos[at] == wanted, at


def _read_rows(ds, rows):
    """ds[rows] for any row numbers, reading each run of consecutive rows as one slice."""
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    breaks = np.flatnonzero(np.diff(sorted_rows) != 1) + 1
    parts = [ds[int(run[0]):int(run[-1]) + 1] for run in np.split(sorted_rows, breaks)]
    data = np.concatenate(parts) if len(parts) > 1 else parts[0]
    out = np.empty_like(data)
    out[order] = data
    return out


def merge(manifest, writer, pending):
    """Append the rows and failures of positions `pending` (ascending) from the shards of
    `manifest.folder` to `writer`, in that order. Returns (rows written, failures written).

    Raises OutputError, before writing anything, if a position has neither a row nor a failure.
    """
    shards = _open_shards(manifest.folder)
    try:
        rpos, rsid, rrow = _index_of(shards, "rows")
        fpos, fsid, frow = _index_of(shards, "failed")
        has_row, rat = _lookup(rpos, pending)
        has_fail, fat = _lookup(fpos, pending)
        missing = pending[~has_row & ~has_fail]
        if missing.size:
            raise OutputError(f"{missing.size} images of the run have no result in {manifest.folder} (first: "
                              f"{manifest.paths[missing[0]]}); `--resume` extracts them")
        layout = writer.feature_layout()
        row_bytes = sum(int(np.prod(shape)) * dtype.itemsize for shape, dtype in layout.values())
        step = int(max(1, min(8192, _MERGE_BYTES // max(1, row_bytes))))
        rows = failures = 0
        for start in range(0, len(pending), step):
            sl = slice(start, start + step)
            chunk, ok, at = pending[sl], has_row[sl], rat[sl]
            take = chunk[ok]
            sid, row = rsid[at[ok]], rrow[at[ok]]
            feats = {k: np.empty((len(take),) + shape, dtype) for k, (shape, dtype) in layout.items()}
            for s in np.unique(sid):
                mine = sid == s
                f = shards[s]
                stored = _read_rows(f["paths"], row[mine])
                expect = [manifest.paths[i] for i in take[mine]]
                if [p.decode("utf-8") if isinstance(p, bytes) else p for p in stored] != expect:
                    raise OutputError(f"shard {f.filename} does not match the run's list of images; remove "
                                      f"{manifest.folder} and run again")
                for k in layout:
                    feats[k][mine] = _read_rows(f["features"][k], row[mine])
            failed, failed_index = [], chunk[~ok]
            for i, a in zip(failed_index, fat[sl][~ok]):
                f = shards[fsid[a]]
                reason = f["failed/reasons"][int(frow[a])]
                failed.append((manifest.paths[i], reason.decode("utf-8") if isinstance(reason, bytes) else reason))
            writer.append([manifest.paths[i] for i in take], manifest.labels[take], feats, failed)
            rows += len(take)
            failures += len(failed)
        return rows, failures
    finally:
        for f in shards:
            f.close()


class Cluster:
    """This process's connection to Ray, with the size of the actor pool it will use.

    `Cluster.join` connects to `address` (default: Ray's own rule, `RAY_ADDRESS` or else a new local
    instance) unless Ray is already initialised (a notebook, a Ray job), and checks what the run asks
    for against what the cluster has, before any file is written.
    """

    def __init__(self, ray, workers, gpus_per_worker, owned):
        self.ray = ray
        self.workers = workers
        self.gpus_per_worker = gpus_per_worker
        self.owned = owned

    @classmethod
    def join(cls, address=None, workers=None, gpus_per_worker=0):
        import logging

        ray = import_ray()
        owned = False
        if not ray.is_initialized():
            # The workers' output (TensorFlow's start-up notices among it) goes to Ray's log files, not
            # to the terminal; errors come back as exceptions. Ray's start-up notices are cut to errors.
            logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)
            try:
                ray.init(address=address, include_dashboard=False, logging_level=logging.ERROR,
                         log_to_driver=False)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                text = str(exc).strip().splitlines()
                raise InputError(f"cannot connect to Ray at {address or 'the default address'}: "
                                 f"{text[0] if text else type(exc).__name__}") from None
            owned = True
        try:
            size = cls._pool_size(ray, workers, gpus_per_worker)
        except BaseException:
            if owned:
                ray.shutdown()
            raise
        return cls(ray, size, gpus_per_worker, owned)

    @staticmethod
    def _pool_size(ray, workers, gpus_per_worker):
        resources = ray.cluster_resources()
        if gpus_per_worker:
            gpus = float(resources.get("GPU", 0))
            if gpus < gpus_per_worker:
                raise InputError(f"--gpus-per-worker {gpus_per_worker:g}: the Ray cluster has {gpus:g} GPUs")
            return int(workers or max(1, int(gpus // gpus_per_worker)))
        if workers:
            return int(workers)
        return max(1, sum(1 for node in ray.nodes() if node.get("Alive")))

    def close(self):
        if self.owned:
            self.ray.shutdown()
            self.owned = False


class RayEngine:
    """`extract`'s engine for a Ray cluster (see the module's docstring); the same interface as
    `vggfeat.pipeline.LocalEngine`."""

    name = "ray"

    def __init__(self, *, address=None, workers=None, gpus_per_worker=0, block_size=None, decode_workers=None):
        import_ray()  # a missing extra is a one-line error before anything is written
        if gpus_per_worker < 0 or (workers is not None and workers < 1):
            raise InputError("--ray-workers must be at least 1 and --gpus-per-worker at least 0")
        if block_size is not None and block_size < 1:
            raise InputError(f"block size must be at least 1. Received: {block_size}")
        self.address, self.workers, self.gpus_per_worker = address, workers, gpus_per_worker
        self.block_size, self.decode_workers = block_size, decode_workers
        self.cluster = None

    def check(self, output, *, resume, overwrite):
        work = work_dir(output)
        if os.path.exists(work) and not (resume or overwrite):
            raise OutputError(f"{work} holds an unfinished sharded run; pass --resume to finish it or "
                              "--overwrite to start again")

    def start(self):
        self.cluster = Cluster.join(self.address, self.workers, self.gpus_per_worker)

    def run(self, images, writer, extractor, *, output, config, batch_size, settings, dtype, done, resume,
            overwrite, strict, progress, max_pixels, on_batch) -> dict:
        from .shards import ShardInputs

        work = work_dir(output)
        if overwrite and os.path.exists(work):
            shutil.rmtree(work)
        if isinstance(images, ShardInputs):
            return self._run_units(images, writer, extractor, folder=work, settings=settings, dtype=dtype,
                                   resume=resume, strict=strict, progress=progress, max_pixels=max_pixels,
                                   on_batch=on_batch, batch_size=batch_size)
        del extractor  # the workers build their own from the config; the driver only merges
        return run(images, writer, self.cluster, output=output, config=config, batch_size=batch_size,
                   settings=settings, dtype=dtype, decode_workers=self.decode_workers, block_size=self.block_size,
                   resume=resume, strict=strict, progress=progress, max_pixels=max_pixels, on_batch=on_batch)

    def run_parts(self, units, folder, extractor, *, settings, class_names, dtype, compression, strict, progress,
                  max_pixels, on_batch, batch_size, report, run_id="", **_) -> list:
        """Write the part of each of `units` into `folder` on the cluster's workers (see `vggfeat.parts`)."""
        if not units:
            return []
        reports, used = _extract_units(self.cluster, units, os.path.abspath(folder), config=extractor.config,
                                       batch_size=batch_size, settings=settings, class_names=class_names, dtype=dtype,
                                       compression=compression, decode_workers=self.decode_workers, strict=strict,
                                       progress=progress, max_pixels=max_pixels, on_batch=on_batch, run_id=run_id)
        report["workers"] = max(report.get("workers", 0), used)
        return reports

    def _run_units(self, images, writer, extractor, *, folder, settings, dtype, resume, strict, progress, max_pixels,
                   on_batch, batch_size):
        """Tar shards and URLs into one output: each unit (a shard) is extracted into a part in the work
        folder by a worker, then the parts are appended to `writer` in order (rows it holds skipped)."""
        from .parts import reusable_part, append_part, part_name, units_of

        units = units_of(images)
        os.makedirs(folder, exist_ok=True)
        # a part complete, of the same unit and settings, is kept (parts of the work folder have no run id:
        # the output's own lock already keeps a second run out)
        todo = [u for u in units if not (resume and reusable_part(os.path.join(folder, part_name(u.number)), "", u,
                                                                settings, dtype))]
        report = {"written": 0, "failed": 0, "workers": 0, "shards": len(units)}
        if todo:
            from .shards import warn_unlabelled

            done_reports = self.run_parts(todo, folder, extractor, settings=settings,
                                          class_names=list(images.class_names), dtype=dtype, compression=None,
                                          strict=strict, progress=progress, max_pixels=max_pixels,
                                          on_batch=on_batch, batch_size=batch_size, report=report)
            warn_unlabelled(images, sum(r.unlabelled for r in done_reports), sum(r.labelled for r in done_reports))
        done = set(writer.written_paths())
        layers = list(writer.feature_layout())
        for u in units:
            rows, failures = append_part(writer, os.path.join(folder, part_name(u.number)), layers, skip=done)
            report["written"] += rows
            report["failed"] += failures
        shutil.rmtree(folder)
        return report

    def close(self):
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None


def run(images, writer, cluster, *, output, config, batch_size, settings, dtype, decode_workers=None,
        block_size=None, resume=False, strict=False, progress=None, max_pixels=None, on_batch=None):
    """Extract `images` not yet in `writer` on `cluster` (a `Cluster`), through shards in
    `work_dir(output)`.

    Returns a dict: written, failed (rows and failures merged into the output), workers (the largest
    pool started; 0 when the shards already held everything), shards (shard files merged: more than
    the workers when actors were restarted).
    """
    folder = work_dir(output)
    done = set(writer.written_paths())
    report = {"written": 0, "failed": 0, "workers": 0, "shards": 0}
    tried = set()  # paths that failed in this call: not tried twice

    def one_round(manifest):
        pending = np.asarray([i for i, p in enumerate(manifest.paths) if p not in done], dtype=np.int64)
        todo = np.setdiff1d(pending, committed(manifest.folder))
        if todo.size:
            used = _extract_blocks(cluster, manifest, todo, config=config, batch_size=batch_size, settings=settings,
                            dtype=dtype, decode_workers=decode_workers, block_size=block_size or 8 * int(batch_size),
                            strict=strict, progress=progress, max_pixels=max_pixels, on_batch=on_batch)
            report["workers"] = max(report["workers"], used)
        report["shards"] += len(shard_files(manifest.folder))
        rows, failures = merge(manifest, writer, pending)
        report["written"] += rows
        report["failed"] += failures
        done.update(manifest.paths[i] for i in pending)
        tried.update(manifest.paths[i] for i in pending)
        shutil.rmtree(manifest.folder)

    if resume and os.path.isdir(folder):
        manifest = Manifest.open(folder, settings, dtype)
        if manifest is not None:
            if manifest.class_names != list(images.class_names):
                raise OutputError(f"cannot resume the sharded run in {folder}: its classes {manifest.class_names} "
                                  f"differ from the folder's {list(images.class_names)}")
            one_round(manifest)
        else:
            shutil.rmtree(folder)  # stopped before its list was written: nothing in it
    rest = [i for i, p in enumerate(images.paths) if p not in done and p not in tried]
    if rest:
        one_round(Manifest.create(folder, images, rest, settings, dtype))
    return report


_ERROR_LINE = re.compile(r"^(?:\x1b\[[0-9;]*m)?([A-Za-z_][\w.]*(?:Error|Exception)): (.+)$", re.M)


def _root_cause(exc, folder):
    """`_cause`, with every credential redacted from its message (Ray's texts quote workers' errors)."""
    from .redact import redact

    found = _cause(exc, folder)
    try:
        found.args = (redact(found),) + tuple(found.args[1:])
    except Exception:  # noqa: BLE001 - an exception whose args are fixed: a new one of its class
        found = type(found)(redact(found)) if isinstance(found, VggfeatError) else RayRunError(redact(found))
    return found


def _cause(exc, folder):
    """The error a Ray failure stands for, in one line: a vggfeat error raised on a worker as itself
    (Ray passes some as objects and some only as text: a worker's constructor), anything else as
    `RayRunError` naming the worker's exception rather than Ray's wrapper."""
    from . import errors

    seen, todo = set(), [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, VggfeatError):
            return e
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]
    kept = f"what the shards in {folder} hold is kept, `--resume` continues"
    found = _ERROR_LINE.findall(str(exc))
    if found:
        # the worker's own vggfeat error, when the text holds one, rather than Ray's wrappers around it
        name, message = next((f for f in reversed(found) if f[0].startswith("vggfeat.")), found[-1])
        cls = getattr(errors, name.rsplit(".", 1)[-1], None) if name.startswith("vggfeat.") else None
        if isinstance(cls, type) and issubclass(cls, VggfeatError):
            return cls(message.strip())
        return RayRunError(f"a Ray worker failed: {name.rsplit('.', 1)[-1]}: {message.strip()}; {kept}")
    first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    return RayRunError(f"the Ray run failed: {first}; {kept}")


class _DropNotice:
    """A logging filter that drops Ray Data's notices about what vggfeat chose on purpose."""

    NOTICES = ("Progress bars disabled",)

    def filter(self, record):
        return not str(record.msg).startswith(self.NOTICES)


def _quiet_ray_data():
    import logging

    logging.getLogger("ray.data").setLevel(logging.WARNING)
    progress = logging.getLogger("ray.data._internal.progress")
    if not any(isinstance(f, _DropNotice) for f in progress.filters):
        progress.addFilter(_DropNotice())


def _extract_blocks(cluster, manifest, todo, *, config, batch_size, settings, dtype, decode_workers, block_size,
                    strict, progress, max_pixels, on_batch):
    import pyarrow as pa
    from ray.exceptions import RayError

    from .errors import ExtractFailed
    from .stream import FeatureBatch, progress_bar

    ray, size = cluster.ray, cluster.workers
    env = dict(ACTOR_ENV)
    for key in ("KERAS_BACKEND", "KERAS_HOME"):
        if os.environ.get(key):
            env[key] = os.environ[key]
    table = pa.table({
        "index": pa.array(todo, pa.int64()),
        "file": pa.array([os.fsencode(manifest.files[i]) for i in todo], pa.binary()),
        "path": pa.array([manifest.paths[i] for i in todo], pa.string()),
        "label": pa.array(manifest.labels[todo], pa.int64()),
    })
    # Blocks of at most `block_size` images, and at least one per worker so that none is left idle.
    block_size = max(1, min(block_size, -(-len(todo) // size)))
    blocks = [table.slice(s, block_size) for s in range(0, len(todo), block_size)]
    size = min(size, len(blocks))  # no worker started for nothing (a resumed run with little left)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # vggfeat's own bar counts images
    _quiet_ray_data()
    ds = ray.data.from_arrow(blocks).map_batches(
        ShardWorker,
        fn_constructor_kwargs=dict(folder=os.path.abspath(manifest.folder), config=config, batch_size=batch_size,
                                   settings=settings,
                                   class_names=manifest.class_names, dtype=dtype, decode_workers=decode_workers,
                                   max_pixels=max_pixels, env=env),
        batch_size=block_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=size),
        num_gpus=cluster.gpus_per_worker or None, num_cpus=1,
    )
    bar = progress_bar(len(todo), progress)
    results = iter(ds.iter_batches(batch_size=None, batch_format="numpy"))
    try:
        for out in results:
            reasons = [str(r) for r in out["failed"]]
            paths = [str(p) for p in out["path"]]
            bar.update(len(paths))
            if strict and any(reasons):
                p, r = next((p, r) for p, r in zip(paths, reasons) if r)
                raise ExtractFailed(f"cannot read {p}: {r} (--strict); `--resume` continues the sharded run")
            if on_batch is not None:
                on_batch(FeatureBatch([p for p, r in zip(paths, reasons) if not r], [], {},
                                      [(p, r) for p, r in zip(paths, reasons) if r]))
    except RayError as exc:
        raise _root_cause(exc, manifest.folder) from None
    finally:
        # Leaving early (--strict, an error, Ctrl-C) stops the execution and its actors now, so that
        # no worker still writes a shard when the run is resumed.
        close = getattr(results, "close", None)
        if close is not None:
            close()
        bar.close()
    return size


def _absolute(unit):
    """`unit` with its local shards and images named by absolute paths: a worker's folder is not the
    driver's (their row names stay as given)."""
    from dataclasses import replace

    from .shards import ShardInputs, is_url

    if isinstance(unit.inputs, ShardInputs):
        sources = [s if is_url(s.url) else replace(s, url=os.path.abspath(s.url)) for s in unit.inputs.sources]
        return replace(unit, inputs=replace(unit.inputs, sources=sources))
    return unit


def _extract_units(cluster, units, folder, *, config, batch_size, settings, class_names, dtype, compression,
                   decode_workers, strict, progress, max_pixels, on_batch, run_id=""):
    """Run `units` on a pool of `PartWorker`s, one unit per task; returns (part reports, pool size)."""
    import pickle

    import pyarrow as pa
    from ray.exceptions import RayError

    from .errors import ExtractFailed
    from .parts import PartReport
    from .stream import FeatureBatch, progress_bar

    ray = cluster.ray
    env = dict(ACTOR_ENV)
    for key in ("KERAS_BACKEND", "KERAS_HOME"):
        if os.environ.get(key):
            env[key] = os.environ[key]
    table = pa.table({"number": pa.array([u.number for u in units], pa.int64()),
                      "unit": pa.array([pickle.dumps(_absolute(u)) for u in units], pa.binary())})
    blocks = [table.slice(i, 1) for i in range(len(units))]
    size = min(cluster.workers, len(units))
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    _quiet_ray_data()
    ds = ray.data.from_arrow(blocks).map_batches(
        PartWorker,
        fn_constructor_kwargs=dict(folder=folder, config=config, batch_size=batch_size, settings=settings,
                                   class_names=class_names, dtype=dtype, compression=compression,
                                   decode_workers=decode_workers, max_pixels=max_pixels, strict=False, env=env,
                                   run_id=run_id),
        batch_size=1, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=size),
        num_gpus=cluster.gpus_per_worker or None, num_cpus=1,
    )
    known = [u.images for u in units]
    bar = progress_bar(sum(known) if all(k is not None for k in known) else None, progress)
    reports = []
    results = iter(ds.iter_batches(batch_size=None, batch_format="numpy"))
    try:
        for out in results:
            for number, text in zip(out["number"], out["result"]):
                r = json.loads(str(text))
                failed = [tuple(x) for x in r["failed"]]
                if strict and failed:
                    # as the local engine: nothing of a shard with a failure is kept, `--resume` reads it again
                    from .parts import part_name

                    os.remove(os.path.join(folder, part_name(int(number))))
                    raise ExtractFailed(f"cannot read {failed[0][0]}: {failed[0][1]} (--strict); `--resume` "
                                        "continues")
                reports.append(PartReport(int(number), int(r["rows"]), len(failed), 0.0, failed,
                                          int(r["unlabelled"]), int(r["labelled"])))
                bar.update(int(r["rows"]) + len(failed))
                if on_batch is not None:
                    on_batch(FeatureBatch(r["paths"], [], {}, failed))
    except RayError as exc:
        raise _root_cause(exc, folder) from None
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()
        bar.close()
    return reports, size
