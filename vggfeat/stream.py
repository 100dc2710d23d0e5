"""The streaming loop under every engine: image files -> decoded pixels -> batches of features.

Pillow decodes on a pool of threads (it releases the GIL) a bounded number of images ahead of the
model, which runs a compiled Keras forward pass on the calling thread; only the batches in flight are
held in memory, and batches come out in input order. `extract`'s local engine writes them to HDF5;
the Ray engine's workers run the same loop over their blocks. Nothing here imports TensorFlow, so the
same loop runs with `KERAS_BACKEND=jax`.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from .errors import ExtractFailed, ImageError
from .images import MAX_PIXELS, ImageList, load_image
from .shards import LOOSE_PER_UNIT, Sample, ShardInputs, as_image_source, iter_samples, scan_inputs


@dataclass
class FeatureBatch:
    """One batch of results, in input order.

    Attributes:
        paths: stored paths of the images that gave features (row order of `features`).
        labels: their class indices (-1 where unlabelled).
        features: {layer: float32 array (len(paths), ...)}.
        failed: (stored path, reason) for the images of this batch that could not be read.
        failed_at: for each of `failed`, how many of `paths` come before it in input order (where it sat).
    """

    paths: list
    labels: list
    features: dict
    failed: list = field(default_factory=list)
    failed_at: list = field(default_factory=list)

    def in_input_order(self):
        """Yield `(path, i, reason)` for every image of the batch in input order: `i` is its row of `paths`
        (`reason` None), or None for a failed image (`reason` says why). Without `failed_at`, failures
        come after the rows."""
        at = self.failed_at if len(self.failed_at) == len(self.failed) else [len(self.paths)] * len(self.failed)
        k = 0
        for i, p in enumerate(self.paths):
            while k < len(self.failed) and at[k] <= i:
                yield self.failed[k][0], None, self.failed[k][1]
                k += 1
            yield p, i, None
        for path, reason in self.failed[k:]:
            yield path, None, reason


def default_workers():
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
                job.result = load_image(as_image_source(job.file), self.geometry, max_pixels=self.max_pixels)
            except ImageError as exc:
                job.result = exc
            except Exception as exc:  # load_image turns every image problem into ImageError; this is a bug
                job.result = ImageError(f"cannot decode: {type(exc).__name__}: {exc}")
            job.done.set()

    def submit(self, file):
        job = _Job(file)
        if isinstance(file, ImageError):  # failed before decoding (a damaged shard member...)
            job.result = file
            job.done.set()
        else:
            self.queue.put(job)
        return job

    def close(self):
        self.closed = True
        for _ in range(self.size):
            self.queue.put(None)


def _decode_in_order(samples, geometry, workers, depth, max_pixels, timeout=DECODE_TIMEOUT):
    """Yield (sample, array or ImageError) in input order, decoding up to `depth` images ahead.

    `samples`: `Sample`s whose `data` is a path, bytes (an image file's content) or an `ImageError`
    (failed already). A decode running longer than `timeout` seconds yields an ImageError for its
    image. The wait wakes up often, so Ctrl-C (and SIGTERM, which the CLI turns into the same) stops
    it promptly.
    """
    pool = _DecodePool(workers, geometry, max_pixels)
    try:
        pending = deque()
        it = iter(samples)
        for s in it:
            pending.append((s, pool.submit(s.data)))
            if len(pending) >= depth:
                break
        while pending:
            s, job = pending.popleft()
            while not job.done.wait(0.25):
                if job.started is not None and time.monotonic() - job.started > timeout:
                    job.result = ImageError(f"decoding took longer than {timeout:g} s (abandoned)")
                    pool.add_thread()  # the stuck thread keeps its slot until its decode returns
                    break
            result = job.result
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(nxt.data)))
            yield s, result
    finally:
        pool.close()


def _to_list(images: ImageList | ShardInputs | list | str, extensions=None, exclude=(), class_names=None,
             label_field=None, max_member_size=None, retries=None):
    if isinstance(images, (ImageList, ShardInputs)):
        return images
    return scan_inputs(images, extensions=extensions, exclude=exclude, class_names=class_names,
                       label_field=label_field, max_member_size=max_member_size, retries=retries)


def _prefetch(iterable, size):
    """Run `iterable` on a daemon thread, up to `size` items ahead (reading shards while the model
    runs); its exceptions come out here. Closing the generator stops the thread at its next item."""
    q = queue.Queue(maxsize=max(1, size))
    stop = threading.Event()
    end = object()

    def work():
        try:
            for item in iterable:
                while not stop.is_set():
                    try:
                        q.put((item, None), timeout=0.25)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((end, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            q.put((end, exc))

    threading.Thread(target=work, name="vggfeat-shard-reader", daemon=True).start()
    try:
        while True:
            try:
                item, exc = q.get(timeout=0.25)
            except queue.Empty:
                continue
            if item is end:
                if exc is not None:
                    raise exc
                return
            yield item
    finally:
        stop.set()


def iter_features(inputs, extractor=None, *, batch_size=32, workers=None, skip=(), progress=None, strict=False,
                  max_pixels=MAX_PIXELS, decode_timeout=DECODE_TIMEOUT, extensions=None, exclude=(), class_names=None,
                  label_field=None, max_member_size=None, retries=None, **config):
    """Yield `FeatureBatch`es of the images in `inputs`, in input order, holding only a few batches.

    Args:
        inputs: folders, image files and/or lists of images (`.txt`, `.csv`), or an `ImageList` from
            `scan_images`; `extensions` and `exclude` as for `scan_images`. Or tar shards (WebDataset:
            `shards/00000.tar`, `shards/{00000..00009}.tar`) and URLs (`s3://bucket/prefix/`), streamed
            shard by shard (see `vggfeat.shards`), with labels from `.cls` or the JSON field
            `label_field`, and `class_names` (a list, a file or a comma-separated string);
            `max_member_size` and `retries` as for `extract`.
        extractor: a `FeatureExtractor` or `MultiScaleExtractor`, or an `ExtractorConfig` to build one;
            None: built from `config`, the fields of `ExtractorConfig` (layers, arch, weights, seed,
            form, pooling, input_size, resize, precision, scales, flip, aggregate, l2).
        batch_size: images per forward pass, when the extractor is built here.
        workers: decoding threads (default: number of CPUs, 2 to 16).
        skip: stored paths to leave out (already done).
        progress: show a progress bar on stderr (None: when stderr is a terminal).
        strict: raise `ExtractFailed` at the first image that cannot be read.
        decode_timeout: seconds after which one image's decode is abandoned and recorded as failed.

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
        >>> for batch in vggfeat.iter_features([images], arch="vgg11", weights="random", layers=["fc7"],
        ...                                    input_size=32, batch_size=2, progress=False):
        ...     print(batch.paths, batch.features["fc7"].shape)
        ['cat/0.png', 'cat/1.png'] (2, 4096)
        ['dog/2.png', 'dog/3.png'] (2, 4096)
    """
    from .config import ExtractorConfig

    images = _to_list(inputs, extensions, exclude, class_names, label_field, max_member_size, retries)
    if extractor is not None and config:
        raise TypeError(f"pass either an extractor or its settings, not both: {sorted(config)}")
    if extractor is None:
        extractor = ExtractorConfig(**config)
    if isinstance(extractor, ExtractorConfig):
        from .extractor import build_extractor

        extractor = build_extractor(extractor, batch_size=batch_size)
    skip = set(skip)
    bs = extractor.batch_size
    workers = workers or default_workers()
    depth = 2 * bs + workers
    if isinstance(images, ShardInputs):
        samples = _prefetch(iter_samples(images, frozenset(skip)), depth)
        total = None
    else:
        todo = [i for i, p in enumerate(images.paths) if p not in skip]
        samples = (Sample(images.paths[i], images.labels[i], images.files[i], i // LOOSE_PER_UNIT) for i in todo)
        total = len(todo)
    bar = progress_bar(total, progress)
    try:
        pending_paths, pending_labels, pending_images, failed, failed_at = [], [], [], [], []
        unit = None
        for sample, result in _decode_in_order(samples, extractor.geometry, workers, depth=depth,
                                               max_pixels=max_pixels, timeout=decode_timeout):
            if sample.unit != unit:
                # a batch never spans two units of input (shards): a run in parts (--output-shards, the
                # Ray engine over shards) then computes every row in the batch a single-file run does
                if pending_paths or failed:
                    batch = _run(extractor, pending_paths, pending_labels, pending_images, failed, failed_at)
                    bar.update(len(batch.paths) + len(batch.failed))
                    yield batch
                    pending_paths, pending_labels, pending_images, failed, failed_at = [], [], [], [], []
                unit = sample.unit
            if isinstance(result, ImageError):
                failed.append((sample.path, str(result)))
                failed_at.append(len(pending_paths))
                if strict:
                    if pending_paths or failed:
                        yield _run(extractor, pending_paths, pending_labels, pending_images, failed, failed_at)
                    raise ExtractFailed(f"cannot read {sample.path}: {result} (--strict)")
            else:
                pending_paths.append(sample.path)
                pending_labels.append(sample.label)
                pending_images.append(result)
            if len(pending_paths) >= bs:
                batch = _run(extractor, pending_paths, pending_labels, pending_images, failed, failed_at)
                bar.update(len(batch.paths) + len(batch.failed))
                yield batch
                pending_paths, pending_labels, pending_images, failed, failed_at = [], [], [], [], []
        if pending_paths or failed:
            batch = _run(extractor, pending_paths, pending_labels, pending_images, failed, failed_at)
            bar.update(len(batch.paths) + len(batch.failed))
            yield batch
    finally:
        bar.close()
        if hasattr(samples, "close"):
            samples.close()


def _run(extractor, paths, labels, images, failed, failed_at=()):
    feats = extractor.predict(images)
    return FeatureBatch(list(paths), list(labels), feats, list(failed), list(failed_at))


def progress_bar(total, progress, desc="extract"):
    """See `vggfeat.progress.progress_bar`: no bar at all (and no tqdm) when progress is off."""
    from .progress import progress_bar as bar

    return bar(total, progress, desc)
