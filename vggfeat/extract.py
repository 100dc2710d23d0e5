"""Streaming extraction: image files -> batches of features -> HDF5, with nothing lost.

Pillow decodes in a thread pool (it releases the GIL) a bounded number of images ahead of the model,
which runs a compiled Keras forward pass on the main thread; only the batches in flight are held in
memory. Nothing here imports TensorFlow, so the same loop runs with `KERAS_BACKEND=jax`.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from .errors import ImageError, InputError, OutputError, VggfeatError
from .images import MAX_PIXELS, ImageList, load_image, scan_images


class ExtractFailed(VggfeatError):
    """The run could not produce features (no image readable, or a failure under `strict`)."""

    exit_code = 1


class ExtractInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM, in the CLI) stopped `extract`; the message says what was kept."""


def _interrupted_account(output, rows, replacing):
    if replacing:
        return f"{output} was left as it was before this --overwrite run (run it again to replace it)"
    if rows == 0:
        return f"no row was written yet; {output} holds none (--resume starts it, --overwrite starts afresh)"
    return f"{rows} rows written to {output} are kept; `--resume` continues"


@dataclass
class FeatureBatch:
    """One batch of results, in input order.

    Attributes:
        paths: stored paths of the images that gave features (row order of `features`).
        labels: their class indices (-1 where unlabelled).
        features: {layer: float32 array (len(paths), ...)}.
        failed: (stored path, reason) for the images of this batch that could not be read.
    """

    paths: list
    labels: list
    features: dict
    failed: list = field(default_factory=list)


@dataclass
class ExtractSummary:
    output: str
    written: int
    failed: int
    skipped: int
    total_rows: int
    seconds: float
    layers: dict
    engine: str = "local"
    workers: int = 0  # Ray actors (engine "ray")
    shards: int = 0  # shard files merged (engine "ray"; more than `workers` when actors were restarted)
    recovered: str | None = None  # what --resume rolled back or rebuilt, if anything

    @property
    def images_per_second(self) -> float:
        return (self.written + self.failed) / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        shapes = ", ".join(f"{k} {tuple(v)}" for k, v in self.layers.items())
        skipped = f", {self.skipped} already done" if self.skipped else ""
        failed = f"{self.failed} failed" + (" (listed under /failed)" if self.failed else "")
        ray = (f"; Ray: {_count(self.workers, 'worker')}, {_count(self.shards, 'shard')} merged"
               if self.engine == "ray" and self.shards else "")
        return (f"{self.written} images written, {failed}{skipped} in {self.seconds:.1f} s "
                f"({self.images_per_second:.1f} images/s); {self.total_rows} rows in {self.output} [{shapes}]{ray}")


def _count(n, word):
    return f"{n} {word}{'' if n == 1 else 's'}"


def _default_workers():
    return max(2, min(16, (os.cpu_count() or 2)))


#: A decode that takes longer than this (seconds) is that image's failure (default of `decode_timeout`).
DECODE_TIMEOUT = 120.0


class _Job:
    """One image to decode on a `_DecodePool` thread; `result` is the array or an `ImageError`."""

    __slots__ = ("file", "started", "done", "result")

    def __init__(self, file):
        self.file = file
        self.started = None
        self.done = threading.Event()
        self.result = None


class _DecodePool:
    """Daemon threads that decode images (Pillow releases the GIL while it decodes).

    Not `ThreadPoolExecutor`: its threads are joined when the interpreter exits, so one decode that
    never returns (a stalled network file system) would hang the process even after Ctrl-C. A job
    that runs past its time limit is abandoned: it fails, and its thread is replaced.
    """

    def __init__(self, workers, geometry, max_pixels):
        self.geometry = geometry
        self.max_pixels = max_pixels
        self.queue = queue.SimpleQueue()
        self.size = 0
        self.closed = False
        for _ in range(workers):
            self.add_thread()

    def add_thread(self):
        self.size += 1
        threading.Thread(target=self._work, name=f"vggfeat-decode-{self.size}", daemon=True).start()

    def _work(self):
        while True:
            job = self.queue.get()
            if job is None or self.closed:
                return
            job.started = time.monotonic()
            try:
                job.result = load_image(job.file, self.geometry, max_pixels=self.max_pixels)
            except ImageError as exc:
                job.result = exc
            except Exception as exc:  # load_image turns every image problem into ImageError; this is a bug
                job.result = ImageError(f"cannot decode: {type(exc).__name__}: {exc}")
            job.done.set()

    def submit(self, file):
        job = _Job(file)
        self.queue.put(job)
        return job

    def close(self):
        self.closed = True
        for _ in range(self.size):
            self.queue.put(None)


def _decode_in_order(files, geometry, workers, depth, max_pixels, timeout=DECODE_TIMEOUT):
    """Yield (index, array or ImageError) in input order, decoding up to `depth` images ahead.

    A decode running longer than `timeout` seconds yields an ImageError for its image. The wait
    wakes up often, so Ctrl-C (and SIGTERM, which the CLI turns into the same) stops it promptly.
    """
    pool = _DecodePool(workers, geometry, max_pixels)
    try:
        pending = deque()
        it = iter(enumerate(files))
        for i, f in it:
            pending.append((i, pool.submit(f)))
            if len(pending) >= depth:
                break
        while pending:
            i, job = pending.popleft()
            while not job.done.wait(0.25):
                if job.started is not None and time.monotonic() - job.started > timeout:
                    job.result = ImageError(f"decoding took longer than {timeout:g} s (abandoned)")
                    pool.add_thread()  # the stuck thread keeps its slot until its decode returns
                    break
            result = job.result
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt[0], pool.submit(nxt[1])))
            yield i, result
    finally:
        pool.close()


def _to_list(images: ImageList | list | str):
    if isinstance(images, ImageList):
        return images
    return scan_images(images)


def iter_features(inputs, extractor=None, *, workers=None, skip=(), progress=None, strict=False,
                  max_pixels=MAX_PIXELS, decode_timeout=DECODE_TIMEOUT, **extractor_options):
    """Yield `FeatureBatch`es of the images in `inputs`, in input order, holding only a few batches.

    Args:
        inputs: folders and/or image files (or an `ImageList` from `scan_images`).
        extractor: a `FeatureExtractor`; when None one is built from `extractor_options`
            (arch, weights, layers, pooling, form, input_size, resize, precision, seed, batch_size).
        workers: decoding threads (default: number of CPUs, 2 to 16).
        skip: stored paths to leave out (already done).
        progress: show a progress bar on stderr (None: when stderr is a terminal).
        strict: raise `ExtractFailed` at the first image that cannot be read.
        decode_timeout: seconds after which one image's decode is abandoned and recorded as failed.

    Examples:
        >>> for batch in iter_features(["images/"], weights="random", layers=["fc7"]):  # doctest: +SKIP
        ...     print(batch.paths, batch.features["fc7"].shape)
    """
    from .extractor import FeatureExtractor

    images = _to_list(inputs)
    if extractor is None:
        extractor = FeatureExtractor(**extractor_options)
    elif extractor_options:
        raise TypeError(f"pass either an extractor or its options, not both: {sorted(extractor_options)}")
    skip = set(skip)
    todo = [i for i, p in enumerate(images.paths) if p not in skip]
    bs = extractor.batch_size
    workers = workers or _default_workers()
    files = [images.files[i] for i in todo]
    bar = _progress_bar(len(todo), progress)
    try:
        pending_paths, pending_labels, pending_images, failed = [], [], [], []
        for j, result in _decode_in_order(files, extractor.geometry, workers, depth=2 * bs + workers,
                                          max_pixels=max_pixels, timeout=decode_timeout):
            i = todo[j]
            if isinstance(result, ImageError):
                failed.append((images.paths[i], str(result)))
                if strict:
                    if pending_paths or failed:
                        yield _run(extractor, pending_paths, pending_labels, pending_images, failed)
                    raise ExtractFailed(f"cannot read {images.paths[i]}: {result} (--strict)")
            else:
                pending_paths.append(images.paths[i])
                pending_labels.append(images.labels[i])
                pending_images.append(result)
            if len(pending_paths) >= bs:
                batch = _run(extractor, pending_paths, pending_labels, pending_images, failed)
                bar.update(len(batch.paths) + len(batch.failed))
                yield batch
                pending_paths, pending_labels, pending_images, failed = [], [], [], []
        if pending_paths or failed:
            batch = _run(extractor, pending_paths, pending_labels, pending_images, failed)
            bar.update(len(batch.paths) + len(batch.failed))
            yield batch
    finally:
        bar.close()


def _run(extractor, paths, labels, images, failed):
    feats = extractor.predict(images)
    return FeatureBatch(list(paths), list(labels), feats, list(failed))


def _progress_bar(total, progress):
    from tqdm.auto import tqdm

    if progress is None:
        progress = sys.stderr.isatty()
    return tqdm(total=total, unit="img", disable=not progress, file=sys.stderr, dynamic_ncols=True,
                smoothing=0.1, desc="extract")


def build_extractor(layers=("fc7",), *, arch=None, weights="imagenet", seed=0, pooling="avg",
                    fully_convolutional=False, dense=False, input_size=None, resize=None, precision="float32",
                    batch_size=32, scales=None, flip=False, aggregate="mean", l2=False):
    """The extractor `extract` uses: a `FeatureExtractor`, wrapped in a `MultiScaleExtractor` when
    `scales` are given."""
    from .extractor import FeatureExtractor

    if fully_convolutional and dense:
        raise InputError("--fully-convolutional and --dense exclude each other")
    form = "dense" if dense else ("fully_conv" if fully_convolutional else "standard")
    if not scales:
        if flip or l2 or aggregate != "mean":
            raise InputError("--flip, --aggregate and --l2 belong to the multi-scale descriptor: give --scales")
        return FeatureExtractor(arch, weights, layers, pooling=pooling, form=form, input_size=input_size,
                                resize=resize, precision=precision, seed=seed, batch_size=batch_size)
    from .multiscale import MultiScaleExtractor

    scales = [int(q) for q in scales]
    if form == "standard":
        raise InputError("--scales needs --dense (FC layers at any size) or --fully-convolutional")
    if input_size is not None:
        raise InputError("--scales replaces --input-size: each scale is a shorter side")
    if resize not in (None, "short"):
        raise InputError("--scales rescales whole images (shorter side to each scale); drop --resize")
    if pooling == "none":
        raise InputError("--scales needs --pooling avg or max (maps of different scales differ in size)")
    base = FeatureExtractor(arch, weights, layers, pooling=pooling, form=form, input_size=max(scales),
                            resize="short", precision=precision, seed=seed, batch_size=batch_size)
    return MultiScaleExtractor(base, scales, flip=flip, aggregate=aggregate, l2=l2)


def extract(inputs, output, layers=("fc7",), *, arch=None, weights="imagenet", seed=0, pooling="avg",
            fully_convolutional=False, dense=False, input_size=None, resize=None, precision="float32",
            dtype="float32", compression=None, batch_size=32, workers=None, resume=False, overwrite=False,
            strict=False, progress=None, max_pixels=MAX_PIXELS, scales=None, flip=False, aggregate="mean",
            l2=False, extractor=None, on_batch=None, engine="local", address=None, ray_workers=None,
            gpus_per_worker=0, block_size=None):
    """Extract features of image folders/files into an HDF5 file (see `vggfeat.store` for the layout).

    Args:
        inputs: one or more folders (scanned recursively, sorted; first-level subfolders are classes)
            and/or image files.
        output: the `.h5` file to write.
        layers: layer names (Keras or paper spelling), all computed in one forward pass.
        arch, weights, seed, pooling, input_size, resize, precision, batch_size: see `FeatureExtractor`.
        fully_convolutional: drop the FC layers; conv maps at any input size (shorter side to
            `input_size`, no crop).
        dense: the paper's dense form (fc6-fc8 as convolutions), FC features at any size >= 224.
        dtype: storage type of the features, `float32` or `float16`.
        compression: `gzip`, `lzf` or None.
        resume: continue an existing file (its settings must match); images already written are
            skipped and failed ones tried again. Without an existing file, start a new one.
        overwrite: replace an existing file.
        strict: stop with an error at the first image that cannot be read.
        progress: progress bar on stderr (None: when stderr is a terminal).
        scales, flip, aggregate, l2: the paper's multi-scale descriptor (Appendix B; needs `dense` or
            `fully_convolutional`): shorter side to each scale, no crop, pooled maps, averaged with the
            flipped image, aggregated over scales by `mean`, `stack` or `max`, L2-normalised.
        extractor: a ready `FeatureExtractor` (then the model options above are not used; local
            engine only).
        on_batch: called with each `FeatureBatch` after it is written (for tests and callers' logs;
            with the Ray engine, after each block, with `features` empty: they are in the shards).
        engine: `local` (this process) or `ray` (a Ray cluster; needs `pip install "vggfeat[ray]"`):
            Ray Data feeds blocks of images to a pool of extractor actors, each writing its own HDF5
            shard in `<output>.shards/`, merged at the end into `output` with the same rows, in the
            same order, as the local engine. See `vggfeat.ray_engine`.
        address: the Ray cluster to join (`auto`, `ray://host:10001`...; default: Ray's own rule,
            `RAY_ADDRESS` or else a new local instance).
        ray_workers: extractor actors (default: one per GPU with `gpus_per_worker`, else one per node).
        gpus_per_worker: GPUs reserved by each actor (0: CPU workers; fractions share a GPU).
        block_size: images per Ray Data block, the unit of work and of retry (default 8 batches).

    Returns:
        `ExtractSummary`.

    Raises:
        InputError, LayerError, WeightsError, OutputError: before anything is written.
        ExtractFailed: no image could be read, or a failure under `strict`.
    """
    if isinstance(layers, str):
        layers = [layers]
    if engine not in ("local", "ray"):
        raise InputError(f"unknown engine {engine!r}; choose local or ray")
    if engine == "local" and (address is not None or ray_workers is not None or gpus_per_worker or block_size):
        raise InputError("--address, --gpus-per-worker and the Ray worker count belong to --engine ray")
    if engine == "ray":
        from .ray_engine import import_ray

        import_ray()  # a missing extra is a one-line error before anything is written
        if extractor is not None:
            raise InputError("the Ray engine builds the extractor on each worker from its options; "
                             "pass the options, not an extractor")
        if gpus_per_worker < 0 or (ray_workers is not None and ray_workers < 1):
            raise InputError("--workers must be at least 1 and --gpus-per-worker at least 0")
    if resume and overwrite:
        raise InputError("--resume and --overwrite exclude each other")
    if fully_convolutional and dense:
        raise InputError("--fully-convolutional and --dense exclude each other")
    if dtype not in ("float32", "float16"):
        raise InputError(f"unknown storage dtype {dtype!r}; choose float32 or float16")
    if compression not in (None, "gzip", "lzf"):
        raise InputError(f"unknown compression {compression!r}; choose gzip or lzf")
    from .store import FeatureWriter

    output = os.fspath(output)
    FeatureWriter.check_output(output, resume=resume, overwrite=overwrite)
    exists = os.path.exists(output)
    if engine == "ray":
        from .ray_engine import work_dir

        work = work_dir(output)
        if os.path.exists(work) and not (resume or overwrite):
            raise OutputError(f"{work} holds an unfinished sharded run; pass --resume to finish it or "
                              "--overwrite to start again")
    try:
        return _prepare_and_run(inputs, output, layers, exists=exists, arch=arch, weights=weights, seed=seed,
                                pooling=pooling, fully_convolutional=fully_convolutional, dense=dense,
                                input_size=input_size, resize=resize, precision=precision, dtype=dtype,
                                compression=compression, batch_size=batch_size, workers=workers, resume=resume,
                                overwrite=overwrite, strict=strict, progress=progress, max_pixels=max_pixels,
                                scales=scales, flip=flip, aggregate=aggregate, l2=l2, extractor=extractor,
                                on_batch=on_batch, engine=engine, address=address, ray_workers=ray_workers,
                                gpus_per_worker=gpus_per_worker, block_size=block_size)
    except ExtractInterrupted:
        raise
    except KeyboardInterrupt:
        raise ExtractInterrupted(f"stopped before any row was written; {output} was not changed") from None


def _prepare_and_run(inputs, output, layers, *, exists, arch, weights, seed, pooling, fully_convolutional, dense,
                     input_size, resize, precision, dtype, compression, batch_size, workers, resume, overwrite,
                     strict, progress, max_pixels, scales, flip, aggregate, l2, extractor, on_batch, engine,
                     address, ray_workers, gpus_per_worker, block_size):
    images = scan_images(inputs)
    options = dict(layers=list(layers), arch=arch, weights=weights, seed=seed, pooling=pooling,
                   fully_convolutional=fully_convolutional, dense=dense, input_size=input_size, resize=resize,
                   precision=precision, batch_size=batch_size, scales=scales, flip=flip, aggregate=aggregate, l2=l2)
    if engine == "ray" and str(weights) not in ("imagenet", "random"):
        options["weights"] = os.path.abspath(os.fspath(weights))  # the workers' folder may differ
    if extractor is None:
        extractor = build_extractor(**options)
    cluster = None
    if engine == "ray":
        from .ray_engine import Cluster

        cluster = Cluster.join(address, ray_workers, gpus_per_worker)  # checked before anything is written
    try:
        return _extract(images, output, extractor, inputs=inputs, exists=exists, resume=resume, overwrite=overwrite,
                        dtype=dtype, compression=compression, workers=workers, strict=strict, progress=progress,
                        max_pixels=max_pixels, on_batch=on_batch, engine=engine, cluster=cluster, options=options,
                        block_size=block_size)
    finally:
        if cluster is not None:
            cluster.close()


def _extract(images, output, extractor, *, inputs, exists, resume, overwrite, dtype, compression, workers, strict,
             progress, max_pixels, on_batch, engine, cluster, options, block_size):
    from .store import FeatureWriter

    settings = extractor.settings()
    settings["inputs"] = json.dumps([os.path.abspath(os.fspath(p)) for p in (
        [inputs] if isinstance(inputs, (str, os.PathLike)) else inputs)])
    if images.root:
        settings["root"] = images.root

    if exists and resume:
        writer = FeatureWriter.resume(output, settings=settings, dtype=dtype)
        if writer.class_names != images.class_names:
            writer.close()
            raise OutputError(f"cannot resume {output}: its classes {writer.class_names} differ from the "
                              f"folder's {images.class_names}")
    else:
        writer = FeatureWriter.create(output, settings=settings, feature_shapes=extractor.output_shapes,
                                      class_names=images.class_names, dtype=dtype, compression=compression,
                                      overwrite=overwrite)
    start = time.perf_counter()
    done = set(writer.written_paths())
    skipped = sum(1 for p in images.paths if p in done)
    written = failed = 0
    report = {}
    complete = False
    try:
        if engine == "ray":
            from . import ray_engine

            work = ray_engine.work_dir(output)
            if overwrite and os.path.exists(work):
                import shutil

                shutil.rmtree(work)
            output_shapes = extractor.output_shapes
            del extractor  # the workers build their own; the driver only merges
            report = ray_engine.run(images, writer, cluster, output=output, options=options, settings=settings,
                                    dtype=dtype, decode_workers=workers, block_size=block_size, resume=resume,
                                    strict=strict, progress=progress, max_pixels=max_pixels, on_batch=on_batch)
            written, failed = report["written"], report["failed"]
        else:
            output_shapes = extractor.output_shapes
            for batch in iter_features(images, extractor, workers=workers, skip=done, progress=progress,
                                       strict=strict, max_pixels=max_pixels):
                writer.append(batch.paths, batch.labels, batch.features, batch.failed)
                written += len(batch.paths)
                failed += len(batch.failed)
                if on_batch is not None:
                    on_batch(batch)
        complete = True
    except KeyboardInterrupt:
        total_rows = writer.rows
        replacing = writer.path != writer.final_path
        writer.close(complete=False)
        raise ExtractInterrupted(_interrupted_account(output, total_rows, replacing)) from None
    finally:
        total_rows = writer.rows
        # an output with no row is not complete (and an --overwrite leaves the old file in place)
        writer.close(complete=complete and total_rows > 0)
    seconds = time.perf_counter() - start
    summary = ExtractSummary(output, written, failed, skipped, total_rows, seconds,
                             {k: (None,) + tuple(v) for k, v in output_shapes.items()}, engine=engine,
                             workers=report.get("workers", 0), shards=report.get("shards", 0),
                             recovered=writer.recovered)
    if total_rows == 0 and failed:
        raise ExtractFailed(f"no image could be read ({failed} failed; reasons under /failed in {output})")
    return summary
