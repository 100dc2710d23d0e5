"""`extract`: checks before anything is built, then the network, an engine and a sink.

`prepare_extract` checks everything that needs no Keras (the settings as an `ExtractorConfig`, how the run
goes as `RunOptions`, the output, the inputs, the weights) and returns an `ExtractJob`; its `run()` builds
the network, opens the sink (`vggfeat.io.sink`: one file, or an index and parts) and has the engine
(`vggfeat.run.engine`) write every input into it.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, fields

from ..config import ExtractorConfig
from ..errors import ExtractFailed, ExtractInterrupted, InputError
from ..faults import is_transient_reason
from ..images import MAX_PIXELS
from ..io.guard import check_output
from ..io.index import check_parts_output, check_single_output
from ..io.layout import OutputSpec
from ..io.read import open_features, read_failed
from ..io.sink import FileSink, PartsSink
from ..shards import ShardInputs, identities, scan_inputs, warn_unlabelled
from .checks import (
    check_output_not_input,
    check_output_not_scanned,
    check_resume,
    check_sources,
    inputs_attr,
)
from .engine import Engine, make_engine
from .options import RunOptions, default_batch_size
from .units import units_of

log = logging.getLogger("vggfeat")


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
    recovered: str | None = None  # what --resume rolled back or rebuilt, if anything
    total_seconds: float | None = None  # the whole call: checks, building the network, extraction
    parts: int = 0  # with output_shards: the parts the index lists
    parts_folder: str = ""  # with output_shards: the folder the index names (OUT.parts, or OUT.parts.2)
    transient: int = 0  # failures whose cause was transient (throttling, 5xx...): `resume` reads them again
    batch_size: int = 0  # images per forward pass
    device: str = ""  # "CPU" or "GPU" when the batch size was chosen for the device (none given)

    @property
    def images_per_second(self) -> float:
        return (self.written + self.failed) / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        shapes = ", ".join(f"{k} {tuple(v)}" for k, v in self.layers.items())
        skipped = f", {self.skipped} already done" if self.skipped else ""
        failed = f"{self.failed} failed" + (" (listed under /failed)" if self.failed else "")
        if self.transient:
            failed = (f"{self.failed} failed (listed under /failed; {self.transient} of them transient: "
                      "--resume reads them again)")
        ray = f"; Ray: {_count(self.workers, 'worker')}" if self.engine == "ray" and self.workers else ""
        batch = f"; batch {self.batch_size} (the default on a {self.device})" if self.device else ""
        took = (f"in {self.total_seconds:.1f} s (extraction {self.seconds:.1f} s, "
                if self.total_seconds is not None else f"in {self.seconds:.1f} s (")
        where = (f"{self.output} (an index of {_count(self.parts, 'part')} in "
                 f"{self.parts_folder or self.output + '.parts'}/)"
                 if self.parts else self.output)
        return (f"{_count(self.written, 'image')} written, {failed}{skipped} {took}"
                f"{self.images_per_second:.1f} images/s); {_count(self.total_rows, 'row')} in {where} "
                f"[{shapes}]{ray}{batch}")


def _count(n, word):
    return f"{n} {word}{'' if n == 1 else 's'}"


def extract(inputs, output, layers=("fc7",), *, config=None, arch=None, weights="imagenet", seed=0,
            pooling="avg", form="standard", input_size=None, resize=None, precision="float32", scales=None,
            flip=False, aggregate="mean", l2=False, jpeg_decode="full", dtype="float32", compression=None,
            batch_size=None,
            workers=None, resume=False, overwrite=False, strict=False, progress=None, max_pixels=MAX_PIXELS,
            extractor=None, on_batch=None, engine="local", address=None, ray_workers=None, gpus_per_worker=0,
            block_size=None, extensions=None, exclude=(), class_names=None, label_field=None, output_shards=False,
            max_member_size=None, retries=None):
    """Extract features of image folders/files into an HDF5 file (see `vggfeat.io.layout` for the layout).

    Args:
        inputs: one or more folders (scanned recursively, sorted; first-level subfolders are classes),
            image files and/or list files (`.txt`: one path per line; `.csv`: a header naming `path`
            and optionally `label`; see `vggfeat.images.scan_images`); or tar shards (WebDataset:
            `shards/00000.tar`, `shards/{00000..00009}.tar`) and URLs (`s3://bucket/prefix/`,
            `s3://bucket/x.tar`), streamed shard by shard (local engine; see `vggfeat.shards`).
        output: the `.h5` file to write.
        layers, arch, weights, seed, pooling, form, input_size, resize, precision, scales, flip,
            aggregate, l2, jpeg_decode: the settings that decide the features (see `ExtractorConfig`); or pass
            `config`, an `ExtractorConfig`, instead of them.
        dtype: storage type of the features, `float32` or `float16`.
        compression: `gzip`, `lzf` or None.
        batch_size: images per forward pass (default: 8 on a CPU, where it runs as fast as 32 with about
            700 MB less memory; 32 where Keras sees a GPU; the summary line says which).
        workers: decoding threads (default: the number of CPUs, 2 to 16); not Ray actors (`ray_workers`).
        resume: continue an existing file (its settings must match); images already written are
            skipped and failed ones tried again. Without an existing file, start a new one.
        overwrite: replace an existing file (the new one is written beside it, and replaces it when done).
        strict: stop with an error at the first image that cannot be read.
        progress: progress bar on stderr (None: when stderr is a terminal).
        max_pixels: larger images are recorded as failed.
        extractor: a ready `FeatureExtractor` or `MultiScaleExtractor` (local engine only); its config
            is the run's.
        on_batch: called with each `FeatureBatch` after it is written (with the Ray engine, after each
            unit, with `features` empty: they are in its part).
        engine: `local` (this process) or `ray` (a Ray cluster; needs `pip install "vggfeat[ray]"`):
            see `vggfeat.run.ray`.
        address: with engine ray, the cluster to join (`auto`, `ray://host:10001`...; default: Ray's
            own rule, `RAY_ADDRESS` or else a new local instance).
        ray_workers: extractor actors (default: one per GPU with `gpus_per_worker`, else one per node).
        gpus_per_worker: GPUs reserved by each actor (0: CPU workers; fractions share a GPU).
        block_size: with engine ray and one output file, images per unit of work and of retry (default
            8 batches); an index of parts has its own units (a shard, or 4096 loose images).
        extensions: which file name extensions count as images in folders (default `IMAGE_EXTENSIONS`).
        exclude: glob patterns of images to leave out (see `scan_images`).
        class_names: with shards, the class names (a list, a file with one a line, or a comma-separated
            string) that `.cls` indices or `label_field` values refer to.
        label_field: with shards, the field of each sample's `.json` that holds its label (an index or
            a class name; `a.b` for a nested field); default: the sample's `.cls`.
        max_member_size: with shards and URLs, the largest tar member or object read (bytes, or a
            string such as `256M`; default 256 MiB): a larger one is recorded as failed, unread.
        retries: with shards and URLs, how often a transient fault (throttling, a 5xx answer, a timeout,
            a reset connection) is retried with exponential backoff before it is recorded as a transient
            failure, which `resume=True` reads again (default 5).
        output_shards: write `output` as an index and one HDF5 file per input shard (loose images: per
            4096) in `output + ".parts"/`, read as one dataset by `load_features`/`open_features` and made
            one file by `vggfeat merge` (see `vggfeat.io.index`).

    `extract` is `prepare_extract(...)` (every check that needs no Keras) followed by `.run()`.

    Returns:
        `ExtractSummary`.

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
        >>> summary.written, summary.failed, summary.total_rows
        (4, 0, 4)

    Raises:
        InputError, LayerError, WeightsError, OutputError: before anything is written, and before
            Keras is imported.
        WriteFailed: the output could not be written (a full disk...); committed rows are kept.
        ExtractFailed: no image could be read, or a failure under `strict`.
        ExtractInterrupted: Ctrl-C (a KeyboardInterrupt); the message says what was kept.
    """
    settings = dict(arch=arch, weights=weights, seed=seed, pooling=pooling, form=form, input_size=input_size,
                    resize=resize, precision=precision, scales=scales, flip=flip, aggregate=aggregate, l2=l2,
                    jpeg_decode=jpeg_decode)
    options = RunOptions.of(dtype=dtype, compression=compression, batch_size=batch_size, workers=workers,
                            resume=resume, overwrite=overwrite, strict=strict, max_pixels=max_pixels, engine=engine,
                            address=address, ray_workers=ray_workers, gpus_per_worker=gpus_per_worker,
                            block_size=block_size, extensions=extensions, exclude=exclude, class_names=class_names,
                            label_field=label_field, output_shards=output_shards, max_member_size=max_member_size,
                            retries=retries)
    job = prepare_extract(inputs, output, layers, config=config, options=options, extractor=extractor, **settings)
    return job.run(progress=progress, on_batch=on_batch)


@dataclass
class ExtractJob:
    """An `extract` call whose every argument has been checked (`prepare_extract`): `images` (what will
    be read), `config`, `options`, `check` (the weights and layers as `check_extractor` found them; None
    with a ready extractor). `run()` builds the network (the first import of Keras) and extracts."""

    inputs: object
    output: str
    config: ExtractorConfig
    images: object
    check: object
    engine: Engine
    options: RunOptions
    extractor: object = None
    began: float = 0.0

    def run(self, *, progress=None, on_batch=None) -> ExtractSummary:
        try:
            extractor, device = self._extractor()
            self.engine.start()  # joins a cluster and checks it before anything is written
            try:
                summary = self._write(extractor, progress, on_batch)
            finally:
                self.engine.close()
        except ExtractInterrupted:
            raise
        except KeyboardInterrupt:
            raise ExtractInterrupted(f"stopped before any row was written; {self.output} was not changed") from None
        summary.total_seconds = time.perf_counter() - self.began
        summary.batch_size, summary.device = extractor.batch_size, device
        return summary

    def _extractor(self):
        """(the extractor, "CPU"/"GPU" when its batch size was chosen for the device, else "")."""
        if self.extractor is not None:
            return self.extractor, ""
        from ..extractor import build_extractor

        batch, device = self.options.batch_size, ""
        if batch is None:
            batch, device = default_batch_size()
        return build_extractor(self.config, batch_size=batch), device

    def _sink(self, extractor):
        o, images = self.options, self.images
        settings = extractor.settings()
        settings["inputs"] = inputs_attr(self.inputs)
        if images.root:
            settings["root"] = images.root
        spec = OutputSpec(settings, extractor.output_shapes, list(images.class_names), o.dtype, o.compression)
        if o.output_shards:
            return PartsSink(self.output, spec, units_of(images), resume=o.resume, overwrite=o.overwrite)
        if o.resume and isinstance(images, ShardInputs) and os.path.exists(self.output):
            images.previous_failed = read_failed(self.output)  # kept for the shards that are not read again
        return FileSink(self.output, spec, resume=o.resume, overwrite=o.overwrite,
                        sources=getattr(images, "identities", None))

    def _write(self, extractor, progress, on_batch) -> ExtractSummary:
        sink = self._sink(extractor)
        images, start, done = self.images, time.perf_counter(), False
        try:
            report = self.engine.write(images, sink, extractor, self.options, progress=progress, on_batch=on_batch)
            done = True
        except BaseException as exc:
            failure = sink.fail(exc)  # an --overwrite's temporaries go; the earlier output stays
            sink.close(False)
            if isinstance(exc, KeyboardInterrupt):
                raise ExtractInterrupted(sink.interrupted()) from None
            if failure is exc:
                raise
            raise failure from None
        finally:
            if done:
                sink.close(True)
        if "unlabelled" in report and isinstance(images, ShardInputs):  # each unit's count, said once
            warn_unlabelled(images, report["unlabelled"], report["labelled"])
        return self._summary(sink, report, time.perf_counter() - start, extractor.output_shapes)

    def _summary(self, sink, report, seconds, shapes) -> ExtractSummary:
        parts = sink.kind == "parts"
        rows = int(sink.rows.sum()) if parts else sink.rows
        written, failed = report["written"], report["failed"]
        if parts:
            skipped = sink.skipped
        elif isinstance(self.images, ShardInputs):  # rows of shards are known only as they are read
            skipped = len(sink.done)
        else:
            skipped = sum(1 for p in self.images.paths if p in sink.done)
        if rows == 0 and failed:
            where = f"the parts of {self.output}" if parts else self.output
            raise ExtractFailed(f"no image could be read ({failed} failed; reasons under /failed in {where})")
        return ExtractSummary(self.output, written, failed, skipped, rows, seconds,
                              {k: (rows,) + tuple(v) for k, v in shapes.items()}, engine=self.engine.name,
                              workers=report.get("workers", 0), recovered=None if parts else sink.recovered,
                              parts=len(sink.units) if parts else 0, parts_folder=sink.folder if parts else "",
                              transient=_transient_failures(self.output, failed, shapes))


_CONFIG_FIELDS = {f.name for f in fields(ExtractorConfig)}
_OPTION_FIELDS = {f.name for f in fields(RunOptions)} | {"workers"}


def prepare_extract(inputs, output, layers=("fc7",), *, config=None, options=None, extractor=None,
                    **settings) -> ExtractJob:
    """Check every argument of `extract` without Keras, in well under a second for a folder of
    thousands of images, and return the `ExtractJob` that runs it: the settings, the output (refused
    when it exists without `resume`/`overwrite`, when its folder is missing or cannot be written), the
    inputs (that they exist and hold images), the weights and layers (`check_extractor`: Keras's
    ImageNet file is downloaded now if it is not cached). On the `vggfeat` logger (INFO), it says what
    it found (`Found 12 images in 3 classes`, as Keras's `image_dataset_from_directory` does) and what
    `run()` will load (`loading vgg16 with imagenet weights...`). Arguments as for `extract`.

    The output is never one of the inputs (`OutputError`, before the network is built). Refused:
    the output is the same file (`os.path.samefile`) as an input given by name (an image, a tar shard,
    a list file) or as a file the scan found (an image a list names, a shard of a brace range); the
    output lies inside an input folder (at any depth, by `os.path.realpath`; a folder given along with
    shards too) and has a name that scanning a folder reads (an image extension of `extensions`, or a
    tar shard `.tar`/`.tar.gz`/`.tgz`), even when it does not exist yet: the next run would read it;
    with `output_shards`, `OUTPUT.parts/` is an input folder or holds an input (`--overwrite` empties
    it). Allowed: a name no scan reads (`features.h5`, and so `OUTPUT.parts/` of `.h5` parts) inside an
    input folder. URLs are not compared.

    Resuming (`resume`) an existing output, single file or index of parts, with settings that differ in
    what is known without the network (`_check_resume`) is refused here too, before Keras."""
    began = time.perf_counter()
    config, options = _settings(layers, config, options, extractor, settings)
    engine = make_engine(options)
    if extractor is not None and engine.name != "local":
        raise InputError("the Ray engine builds the extractor on each worker from its config; pass the config, "
                         "not an extractor")
    output = os.fspath(output)
    _check_output(output, inputs, options, engine)
    try:
        check = None
        if extractor is None:
            if engine.name == "ray" and config.weights_is_file:
                config = config.replace(weights=os.path.abspath(config.weights))  # the workers' folder may differ
            from ..extractor import check_extractor

            check = check_extractor(config, fetch=False)
        if options.resume and check is not None and os.path.exists(output):
            check_resume(output, config, check, inputs, options.dtype)
        images = _scan(inputs, output, options)
        if check is not None:
            check.fetch()  # Keras's ImageNet file, when it is not cached yet
            log.info(check.loading())
    except KeyboardInterrupt:
        raise ExtractInterrupted(f"stopped before any row was written; {output} was not changed") from None
    return ExtractJob(inputs, output, config, images, check, engine, options, extractor=extractor, began=began)


def _settings(layers, config, options, extractor, settings):
    """(ExtractorConfig, RunOptions) of `prepare_extract`'s arguments: each keyword goes to the one it
    names; a config or options given whole is taken as it is, and a keyword beside it is refused."""
    unknown = sorted(set(settings) - _CONFIG_FIELDS - _OPTION_FIELDS)
    if unknown:
        raise InputError(f"unknown argument {unknown[0]!r}")
    given_config = {k: v for k, v in settings.items() if k in _CONFIG_FIELDS and k not in _OPTION_FIELDS}
    given_options = {k: v for k, v in settings.items() if k in _OPTION_FIELDS}
    if options is None:
        options = RunOptions.of(**given_options)
    elif not isinstance(options, RunOptions):
        raise InputError(f"options must be RunOptions. Received: {type(options).__name__}")
    elif given_options:
        raise InputError(f"pass {sorted(given_options)[0]} in options, not beside it")
    if config is not None and extractor is not None:
        raise InputError("pass config or extractor, not both")
    if extractor is not None:
        return extractor.config, options
    if config is None:
        return ExtractorConfig(layers=layers, **given_config), options
    if not isinstance(config, ExtractorConfig):
        raise InputError(f"config must be an ExtractorConfig. Received: {type(config).__name__}")
    return config, options


def _check_output(output, inputs, options, engine):
    """Every check of the output that needs neither the network nor the inputs' scan."""
    check_output(output, resume=options.resume, overwrite=options.overwrite)
    if options.output_shards:
        check_parts_output(output, resume=options.resume, overwrite=options.overwrite)
    else:
        check_single_output(output, resume=options.resume)
    check_output_not_input(output, inputs, extensions=options.extensions, output_shards=options.output_shards)
    engine.check(output, options)


def _scan(inputs, output, options):
    """The inputs, scanned; with shards, each one's identity (and a single file resumed refuses a changed
    shard)."""
    o = options
    images = scan_inputs(inputs, extensions=o.extensions, exclude=o.exclude, class_names=o.class_names,
                         label_field=o.label_field, max_member_size=o.max_member_size, retries=o.retries)
    check_output_not_scanned(output, images)
    if isinstance(images, ShardInputs):
        images.identities = identities(images)  # recorded with the rows (a shard changed is told)
        if o.resume and not o.output_shards and os.path.exists(output):
            check_sources(output, images)
    log.info(images.found())
    return images


def _transient_failures(output, failed, layers) -> int:
    """How many failures recorded in `output` (a file or an index) are transient."""
    if not failed:
        return 0
    try:
        failures = open_features(output, next(iter(layers))).failed()
        return sum(1 for _, reason in failures if is_transient_reason(reason))
    except Exception:  # noqa: BLE001 - the count is for the summary line; the file says it all
        return 0
