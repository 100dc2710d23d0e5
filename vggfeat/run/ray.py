"""`engine="ray"`: extraction on a Ray cluster, written unit by unit into the run's sink.

How a run goes: the driver cuts the inputs into units (a tar shard, or a run of loose images: for an
index of parts, its own units; for one file, units of `--block-size` images, default 8 batches). Ray Data
hands the units to a fixed pool of `PartWorker` actors, each building the network once; an actor writes
the whole part of each unit it is given (`vggfeat.run.units.write_part`: put in place only when
complete). Ray restarts an actor that dies and gives its unit again: a part is whole or absent, never
half. For an index of parts the parts are the output; for one file they are staged beside it
(`OUTPUT.parts.staging/`) and the driver appends them to the file in unit order (`FileSink.take`).

An interrupted run keeps its complete parts: `resume=True` writes only the others. Nothing here imports
Keras: the actors do, on their machines.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import signal
import socket
import threading
from dataclasses import replace

import numpy as np

from .. import errors
from ..errors import ExtractFailed, InputError, OutputError, VggfeatError
from ..io.index import part_name
from ..io.sink import staging_dir
from ..progress import progress_bar
from ..redact import redact
from ..shards import ShardInputs, is_url
from ..stream import FeatureBatch
from .options import default_batch_size
from .units import PartReport, parts_report, units_of, write_part

#: Environment given to the actors (with KERAS_BACKEND and KERAS_HOME as the driver has them).
ACTOR_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "3",
    # Several actors may share a GPU (--gpus-per-worker 0.5): no framework may take all its memory.
    "TF_FORCE_GPU_ALLOW_GROWTH": "true",
    "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
}


class RayRunError(VggfeatError):
    """The Ray run failed for a reason other than the images (a worker could not start, the cluster
    went away); what the shards hold is kept for `--resume`."""

    exit_code = 1


def import_ray():
    """Ray, or a one-line error that says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise InputError(f"--engine ray needs Ray Data ({exc}); install it with: pip install \"vggfeat[ray]\"") from None
    return ray


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
        ray = import_ray()
        owned = False
        if not ray.is_initialized():
            # The workers' output (TensorFlow's start-up notices among it) goes to Ray's log files, not
            # to the terminal; errors come back as exceptions. Ray's start-up notices are cut to errors.
            logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)
            term = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
            try:
                ray.init(address=address, include_dashboard=False, logging_level=logging.ERROR,
                         log_to_driver=False)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                text = str(exc).strip().splitlines()
                raise InputError(f"cannot connect to Ray at {address or 'the default address'}: "
                                 f"{text[0] if text else type(exc).__name__}") from None
            finally:
                if callable(term):  # Ray's core worker takes SIGTERM (and aborts); the run's own handler stops
                    signal.signal(signal.SIGTERM, term)  # it cleanly, saying what was kept (exit 143)
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


def _worker_extractor(config, batch_size):
    """The run's extractor, built on a worker and checked against the driver's settings; with no batch
    size given, the worker's own device decides it (a GPU worker of a CPU head node takes 32)."""
    host = socket.gethostname()
    try:
        from ..extractor import build_extractor

        if batch_size is None:
            batch_size, _ = default_batch_size()
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
    """A Ray Data actor over units of input (a tar shard, or a run of loose images): builds the extractor
    once, then writes the whole part of each unit it is given into `folder` (`vggfeat.run.units.write_part`:
    renamed into place only when complete, so a unit whose worker died is written again from its start
    by the next one: never half, never twice)."""

    def __init__(self, folder, config, batch_size, spec, decode_workers, max_pixels, env, run_id=""):
        os.environ.update(env)
        self.extractor = _worker_extractor(config, batch_size)
        self.folder, self.spec, self.run_id = folder, spec, run_id
        self.decode_workers, self.max_pixels = decode_workers, max_pixels

    def __call__(self, batch):
        numbers, results = [], []
        for blob in batch["unit"]:
            unit = pickle.loads(bytes(blob))
            paths = []
            r = write_part(unit, os.path.join(self.folder, part_name(unit.number)), self.extractor, self.spec,
                           workers=self.decode_workers, strict=False, max_pixels=self.max_pixels,
                           on_batch=lambda b: paths.extend(b.paths), run_id=self.run_id)
            numbers.append(unit.number)
            results.append(json.dumps({"rows": r.rows, "failed": r.failures, "paths": paths,
                                       "unlabelled": r.unlabelled, "labelled": r.labelled,
                                       "host": socket.gethostname(), "pid": os.getpid()}))
        return {"number": np.asarray(numbers, np.int64), "result": np.asarray(results, dtype=object)}


_ERROR_LINE = re.compile(r"^(?:\x1b\[[0-9;]*m)?([A-Za-z_][\w.]*(?:Error|Exception)): (.+)$", re.M)


def _root_cause(exc, folder):
    """`_cause`, with every credential redacted from its message (Ray's texts quote workers' errors)."""

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
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    progress = logging.getLogger("ray.data._internal.progress")
    if not any(isinstance(f, _DropNotice) for f in progress.filters):
        progress.addFilter(_DropNotice())


def _absolute(unit):
    """`unit` with its local shards and images named by absolute paths: a worker's folder is not the
    driver's (their row names stay as given)."""

    if isinstance(unit.inputs, ShardInputs):
        sources = [s if is_url(s.url) else replace(s, url=os.path.abspath(s.url)) for s in unit.inputs.sources]
        return replace(unit, inputs=replace(unit.inputs, sources=sources))
    return unit


def _extract_units(cluster, units, folder, extractor, spec, options, *, progress, on_batch, run_id=""):
    """Run `units` on a pool of `PartWorker`s writing into `folder`, one unit per task; returns (part
    reports, pool size). No batch size in `options`: each worker takes its device's default."""
    import pyarrow as pa
    from ray.exceptions import RayError

    ray = cluster.ray
    env = dict(ACTOR_ENV)
    for key in ("KERAS_BACKEND", "KERAS_HOME"):
        if os.environ.get(key):
            env[key] = os.environ[key]
    table = pa.table({"number": pa.array([u.number for u in units], pa.int64()),
                      "unit": pa.array([pickle.dumps(_absolute(u)) for u in units], pa.binary())})
    size = min(cluster.workers, len(units))
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    _quiet_ray_data()
    ds = ray.data.from_arrow([table.slice(i, 1) for i in range(len(units))]).map_batches(
        PartWorker,
        fn_constructor_kwargs=dict(folder=folder, config=extractor.config, batch_size=options.batch_size, spec=spec,
                                   decode_workers=options.decode_workers, max_pixels=options.max_pixels, env=env,
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
                if options.strict and failed:
                    # as the local engine: nothing of a unit with a failure is kept, `--resume` reads it again
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


def _in_file(unit, sink) -> bool:
    """Whether every image of a unit of loose images is a row of the file already (a resumed run that
    had taken its part): not extracted again. A shard's images are known only when it is read."""
    paths = getattr(unit.inputs, "paths", None)
    return paths is not None and all(p in sink.done for p in paths)


class RayEngine:
    """The engine of a Ray cluster (see the module's docstring)."""

    name = "ray"

    def __init__(self, options):
        import_ray()  # a missing extra is a one-line error before anything is written
        self.options = options
        self.cluster = None

    def check(self, output, options):
        staged = staging_dir(output)
        if os.path.exists(staged) and not (options.resume or options.overwrite):
            raise OutputError(f"{staged} holds the parts of an unfinished Ray run; pass --resume to finish it or "
                              "--overwrite to start again")

    def start(self):
        o = self.options
        self.cluster = Cluster.join(o.address, o.ray_workers, o.gpus_per_worker)

    def write(self, images, sink, extractor, options, *, progress=None, on_batch=None) -> dict:
        if sink.kind == "parts":
            todo, folder = sink.todo, sink.folder
        else:  # units of `block_size` images (a shard each), staged as parts, then taken in order
            units = units_of(images, per_part=sink.unit_size(options.block_size or 8 * int(extractor.batch_size)))
            todo = [u for u in units if not (_in_file(u, sink) or sink.staged(u))]
            folder = os.path.dirname(sink.staged_part(units[0])) if units else None
        reports, used = [], 0
        if todo:
            reports, used = _extract_units(self.cluster, todo, os.path.abspath(folder), extractor, sink.spec, options,
                                           progress=progress, on_batch=on_batch, run_id=getattr(sink, "run_id", ""))
        if sink.kind == "parts":
            for r in reports:
                sink.record(r.number, r.rows, r.failed)
            return dict(parts_report(reports), workers=used)
        report = dict(parts_report(reports), written=0, failed=0, workers=used)
        for u in units:
            if _in_file(u, sink):
                continue
            rows, failures = sink.take(u)
            report["written"] += rows
            report["failed"] += failures
        return report

    def close(self):
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None
