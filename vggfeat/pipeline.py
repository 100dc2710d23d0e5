"""`extract`: image folders -> features -> an HDF5 file, with nothing lost, on a chosen engine.

`extract` checks everything it can before any model is built (options, the output, the inputs), builds
the `ExtractorConfig`, opens the output (`FeatureWriter`: create, resume or overwrite), and hands the
work to an engine through one interface (`Engine`): the local engine runs `vggfeat.stream`'s loop in
this process, the Ray engine (`vggfeat.ray_engine`) runs the same loop on a pool of workers.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

from .config import ExtractorConfig
from .errors import ExtractFailed, ExtractInterrupted, InputError, OutputError, VggfeatError
from .images import MAX_PIXELS
from .shards import ShardInputs, changed_sources, identities, is_url, scan_inputs
from .stream import iter_features

ENGINES = ("local", "ray")


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
    total_seconds: float | None = None  # the whole call: checks, building the network, extraction
    parts: int = 0  # with output_shards: the parts the index lists
    transient: int = 0  # failures whose cause was transient (throttling, 5xx...): `resume` reads them again

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
        ray = (f"; Ray: {_count(self.workers, 'worker')}, {_count(self.shards, 'shard')} merged"
               if self.engine == "ray" and self.shards else "")
        took = (f"in {self.total_seconds:.1f} s (extraction {self.seconds:.1f} s, "
                if self.total_seconds is not None else f"in {self.seconds:.1f} s (")
        where = (f"{self.output} (an index of {_count(self.parts, 'part')} in {self.output}.parts/)"
                 if self.parts else self.output)
        return (f"{_count(self.written, 'image')} written, {failed}{skipped} {took}"
                f"{self.images_per_second:.1f} images/s); {_count(self.total_rows, 'row')} in {where} "
                f"[{shapes}]{ray}")


def _count(n, word):
    return f"{n} {word}{'' if n == 1 else 's'}"


class LocalEngine:
    """Runs the extraction in this process: decoding threads feed the model; batches go to the writer."""

    name = "local"

    def __init__(self, *, workers=None):
        if workers is not None and int(workers) < 1:
            raise InputError(f"workers must be at least 1. Received: workers={workers}")
        self.workers = workers

    def check(self, output, *, resume, overwrite):
        """Checks of this engine's own state before anything is built (none for the local engine)."""

    def start(self):
        """Acquire what the run needs before anything is written (nothing, locally)."""

    def run(self, images, writer, extractor, *, output, config, batch_size, settings, dtype, done, resume,
            overwrite, strict, progress, max_pixels, on_batch) -> dict:
        report = {"written": 0, "failed": 0}
        for batch in iter_features(images, extractor, workers=self.workers, skip=done, progress=progress,
                                   strict=strict, max_pixels=max_pixels):
            writer.append(batch.paths, batch.labels, batch.features, batch.failed)
            report["written"] += len(batch.paths)
            report["failed"] += len(batch.failed)
            if on_batch is not None:
                on_batch(batch)
        return report

    def run_parts(self, units, folder, extractor, **options) -> list:
        """Write the part of each of `units` into `folder`, in order (see `vggfeat.parts`)."""
        from .parts import local_run_parts

        return local_run_parts(units, folder, extractor, workers=self.workers, **options)

    def close(self):
        pass


def make_engine(engine="local", *, workers=None, address=None, ray_workers=None, gpus_per_worker=0,
                block_size=None):
    """The engine named `engine`, with its own options validated (before anything is built)."""
    if engine not in ENGINES:
        raise InputError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if engine == "local":
        if address is not None or ray_workers is not None or gpus_per_worker or block_size:
            raise InputError("--address, --ray-workers, --gpus-per-worker and --block-size (address, ray_workers, "
                             "gpus_per_worker, block_size) need --engine ray")
        return LocalEngine(workers=workers)
    from .ray_engine import RayEngine

    return RayEngine(address=address, workers=ray_workers, gpus_per_worker=gpus_per_worker, block_size=block_size,
                     decode_workers=workers)


def extract(inputs, output, layers=("fc7",), *, config=None, arch=None, weights="imagenet", seed=0,
            pooling="avg", form="standard", input_size=None, resize=None, precision="float32", scales=None,
            flip=False, aggregate="mean", l2=False, dtype="float32", compression=None, batch_size=32,
            workers=None, resume=False, overwrite=False, strict=False, progress=None, max_pixels=MAX_PIXELS,
            extractor=None, on_batch=None, engine="local", address=None, ray_workers=None, gpus_per_worker=0,
            block_size=None, extensions=None, exclude=(), class_names=None, label_field=None, output_shards=False,
            max_member_size=None, retries=None):
    """Extract features of image folders/files into an HDF5 file (see `vggfeat.store` for the layout).

    Args:
        inputs: one or more folders (scanned recursively, sorted; first-level subfolders are classes),
            image files and/or list files (`.txt`: one path per line; `.csv`: a header naming `path`
            and optionally `label`; see `vggfeat.images.scan_images`); or tar shards (WebDataset:
            `shards/00000.tar`, `shards/{00000..00009}.tar`) and URLs (`s3://bucket/prefix/`,
            `s3://bucket/x.tar`), streamed shard by shard (local engine; see `vggfeat.shards`).
        output: the `.h5` file to write.
        layers, arch, weights, seed, pooling, form, input_size, resize, precision, scales, flip,
            aggregate, l2: the settings that decide the features (see `ExtractorConfig`); or pass
            `config`, an `ExtractorConfig`, instead of them.
        dtype: storage type of the features, `float32` or `float16`.
        compression: `gzip`, `lzf` or None.
        batch_size: images per forward pass.
        workers: decoding threads (default: the number of CPUs, 2 to 16).
        resume: continue an existing file (its settings must match); images already written are
            skipped and failed ones tried again. Without an existing file, start a new one.
        overwrite: replace an existing file (the new one is written beside it, and replaces it when done).
        strict: stop with an error at the first image that cannot be read.
        progress: progress bar on stderr (None: when stderr is a terminal).
        max_pixels: larger images are recorded as failed.
        extractor: a ready `FeatureExtractor` or `MultiScaleExtractor` (local engine only); its config
            is the run's.
        on_batch: called with each `FeatureBatch` after it is written (with the Ray engine, after each
            block, with `features` empty: they are in the shards).
        engine: `local` (this process) or `ray` (a Ray cluster; needs `pip install "vggfeat[ray]"`):
            see `vggfeat.ray_engine`.
        address: with engine ray, the cluster to join (`auto`, `ray://host:10001`...; default: Ray's
            own rule, `RAY_ADDRESS` or else a new local instance).
        ray_workers: extractor actors (default: one per GPU with `gpus_per_worker`, else one per node).
        gpus_per_worker: GPUs reserved by each actor (0: CPU workers; fractions share a GPU).
        block_size: images per Ray Data block, the unit of work and of retry (default 8 batches).
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
            one file by `vggfeat merge` (see `vggfeat.parts`).

    `extract` is `prepare_extract(...)` (every check that needs no Keras) followed by `.run()`.

    Returns:
        `ExtractSummary`.

    Raises:
        InputError, LayerError, WeightsError, OutputError: before anything is written, and before
            Keras is imported.
        WriteFailed: the output could not be written (a full disk...); committed rows are kept.
        ExtractFailed: no image could be read, or a failure under `strict`.
        ExtractInterrupted: Ctrl-C (a KeyboardInterrupt); the message says what was kept.
    """
    job = prepare_extract(inputs, output, layers, config=config, arch=arch, weights=weights, seed=seed,
                          pooling=pooling, form=form, input_size=input_size, resize=resize, precision=precision,
                          scales=scales, flip=flip, aggregate=aggregate, l2=l2, dtype=dtype, compression=compression,
                          batch_size=batch_size, workers=workers, resume=resume, overwrite=overwrite, strict=strict,
                          max_pixels=max_pixels, extractor=extractor, engine=engine, address=address,
                          ray_workers=ray_workers, gpus_per_worker=gpus_per_worker, block_size=block_size,
                          extensions=extensions, exclude=exclude, class_names=class_names, label_field=label_field,
                          output_shards=output_shards, max_member_size=max_member_size, retries=retries)
    return job.run(progress=progress, on_batch=on_batch)


@dataclass
class ExtractJob:
    """An `extract` call whose every argument has been checked (`prepare_extract`): `images` (what will
    be read), `config`, `check` (the weights and layers as `check_extractor` found them; None with a
    ready extractor). `run()` builds the network (the first import of Keras) and extracts."""

    inputs: object
    output: str
    config: ExtractorConfig
    images: object
    check: object
    runner: object
    options: dict
    extractor: object = None
    began: float = 0.0

    def run(self, *, progress=None, on_batch=None) -> ExtractSummary:
        o = self.options
        try:
            extractor = self.extractor
            if extractor is None:
                from .extractor import build_extractor

                extractor = build_extractor(self.config, batch_size=o["batch_size"])
            self.runner.start()  # joins a cluster and checks it before anything is written
            try:
                summary = _run(self.images, self.output, extractor, self.runner, inputs=self.inputs,
                               progress=progress, on_batch=on_batch, **o)
                summary.total_seconds = time.perf_counter() - self.began
                return summary
            finally:
                self.runner.close()
        except ExtractInterrupted:
            raise
        except KeyboardInterrupt:
            raise ExtractInterrupted(f"stopped before any row was written; {self.output} was not changed") from None


def prepare_extract(inputs, output, layers=("fc7",), *, config=None, arch=None, weights="imagenet", seed=0,
                    pooling="avg", form="standard", input_size=None, resize=None, precision="float32", scales=None,
                    flip=False, aggregate="mean", l2=False, dtype="float32", compression=None, batch_size=32,
                    workers=None, resume=False, overwrite=False, strict=False, max_pixels=MAX_PIXELS,
                    extractor=None, engine="local", address=None, ray_workers=None, gpus_per_worker=0,
                    block_size=None, extensions=None, exclude=(), class_names=None,
                    label_field=None, output_shards=False, max_member_size=None, retries=None) -> ExtractJob:
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
    import logging

    began = time.perf_counter()
    log = logging.getLogger("vggfeat")
    options = dict(layers=layers, arch=arch, weights=weights, seed=seed, pooling=pooling, form=form,
                   input_size=input_size, resize=resize, precision=precision, scales=scales, flip=flip,
                   aggregate=aggregate, l2=l2)
    if config is not None and extractor is not None:
        raise InputError("pass config or extractor, not both")
    if extractor is not None:
        config = extractor.config
    elif config is None:
        config = ExtractorConfig(**options)
    elif not isinstance(config, ExtractorConfig):
        raise InputError(f"config must be an ExtractorConfig. Received: {type(config).__name__}")
    if resume and overwrite:
        raise InputError("--resume and --overwrite exclude each other")
    if dtype not in ("float32", "float16"):
        raise InputError(f"unknown storage dtype {dtype!r}; choose float32 or float16")
    if compression not in (None, "gzip", "lzf"):
        raise InputError(f"unknown compression {compression!r}; choose gzip or lzf")
    if int(batch_size) < 1:
        raise InputError(f"batch size must be at least 1. Received: {batch_size}")
    runner = make_engine(engine, workers=workers, address=address, ray_workers=ray_workers,
                         gpus_per_worker=gpus_per_worker, block_size=block_size)
    if extractor is not None and runner.name != "local":
        raise InputError("the Ray engine builds the extractor on each worker from its config; pass the config, "
                         "not an extractor")
    from .store import FeatureWriter

    output = os.fspath(output)
    FeatureWriter.check_output(output, resume=resume, overwrite=overwrite)
    from .parts import check_parts_output, check_single_output

    if output_shards:
        check_parts_output(output, resume=resume, overwrite=overwrite)
    else:
        check_single_output(output, resume=resume)
    check_output_not_input(output, inputs, extensions=extensions, output_shards=output_shards)
    runner.check(output, resume=resume, overwrite=overwrite)
    try:
        check = None
        if extractor is None:
            if runner.name == "ray" and config.weights_is_file:
                config = config.replace(weights=os.path.abspath(config.weights))  # the workers' folder may differ
            from .extractor import check_extractor

            check = check_extractor(config, fetch=False)
        if resume and check is not None and os.path.exists(output):
            _check_resume(output, config, check, inputs, dtype)
        images = scan_inputs(inputs, extensions=extensions, exclude=exclude, class_names=class_names,
                             label_field=label_field, max_member_size=max_member_size, retries=retries)
        _check_output_not_scanned(output, images)
        if isinstance(images, ShardInputs):
            images.identities = identities(images)  # recorded with the rows (a shard changed is told)
            if resume and not output_shards and os.path.exists(output):
                _check_sources(output, images)
        log.info(images.found())
        if check is not None:
            check.fetch()  # Keras's ImageNet file, when it is not cached yet
            log.info(check.loading())
    except KeyboardInterrupt:
        raise ExtractInterrupted(f"stopped before any row was written; {output} was not changed") from None
    return ExtractJob(inputs, output, config, images, check, runner,
                      dict(resume=resume, overwrite=overwrite, dtype=dtype, compression=compression,
                           batch_size=batch_size, strict=strict, max_pixels=max_pixels, output_shards=output_shards),
                      extractor=extractor, began=began)


def _inputs_attr(inputs) -> str:
    from .shards import safe_url

    return json.dumps([safe_url(p) if is_url(p) else os.path.abspath(p) for p in (
        os.fspath(p) for p in ([inputs] if isinstance(inputs, (str, os.PathLike)) else inputs))])


def _local_inputs(inputs) -> list:
    given = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    return [g for g in (os.fspath(g) for g in given) if not is_url(g)]


def _inside(path, folder) -> bool:
    """Whether the real path `path` is `folder` or lies under it (both real, absolute)."""
    try:
        return os.path.commonpath([path, folder]) == folder
    except ValueError:  # another drive
        return False


def _same_file(a, b) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_output_not_input(output, inputs, *, extensions=None, output_shards=False):
    """Refuse an output that is, or would be read as, one of the inputs given (see `prepare_extract`):
    the inputs as given, without scanning them (`_check_output_not_scanned` checks what a scan found)."""
    from . import braces
    from .images import is_image_name, normalize_extensions
    from .parts import parts_dir
    from .shards import has_braces, is_shard_name

    extensions = normalize_extensions(extensions)
    real = os.path.realpath(output)
    parts = os.path.realpath(parts_dir(output)) if output_shards else None
    scanned_name = is_image_name(output, extensions) or is_shard_name(output)
    for given in _local_inputs(inputs):
        if has_braces(given):
            folder, name = braces.split_name(given)
            if not has_braces(folder) and os.path.isdir(folder or ".") \
                    and os.path.realpath(folder or ".") == os.path.dirname(real) \
                    and braces.index_of(name, os.path.basename(real)):
                raise OutputError(f"the output {output} is one of the inputs (a shard of {given}); choose "
                                  "another output")
            continue
        if not os.path.exists(given):
            continue  # scan_inputs says so
        where = os.path.realpath(given)
        if os.path.isdir(given):
            if scanned_name and _inside(real, where):
                raise OutputError(f"the output {output} is inside the input folder {given} with a name that is "
                                  "read as an input (an image or a tar shard); choose another name or folder")
        elif _same_file(output, given) or real == where:
            raise OutputError(f"the output {output} is the input {given}; choose another output")
        if parts is not None and _inside(where, parts):
            raise OutputError(f"the parts' folder {parts_dir(output)} of the output would hold the input "
                              f"{given} (a run with --output-shards --overwrite empties it); name the output "
                              "elsewhere")


def _check_output_not_scanned(output, images):
    """Refuse an existing output that is one of the files the scan found (an image a list names, a shard
    of a brace range...); compared by `os.path.samefile`, only for the files with the output's name."""
    if not os.path.exists(output):
        return  # every file found exists
    if isinstance(images, ShardInputs):
        files = (s.url for s in images.sources if not s.missing and not is_url(s.url))
    else:
        files = images.files
    names = {os.path.basename(output), os.path.basename(os.path.realpath(output))}
    tails = tuple(os.sep + n for n in names)
    for f in files:
        if (f in names or f.endswith(tails)) and _same_file(output, f):
            raise OutputError(f"the output {output} is one of the inputs ({f}); choose another output")


def _check_resume(output, config, check, inputs, dtype):
    """Before anything is built: refuse to resume a file made with other settings (those known without
    the network: layers, form, pooling, geometry, precision, the descriptor, the weights' kind and
    architecture, the inputs, the storage dtype), with the message the writer gives. A file whose
    settings cannot be read is left to the writer (which may rebuild it)."""
    from .parts import read_attrs  # a single file, or the index of an --output-shards run
    from .store import settings_differences

    try:
        have = read_attrs(output)
        stored = ExtractorConfig.from_attrs(have, source=output)
    except Exception:  # noqa: BLE001 - damaged or foreign: FeatureWriter.resume decides, after the build
        return
    # what only the built network decides is taken from the file, so that it never differs here
    wanted = config.replace(arch=check.arch, input_size=stored.input_size, weights_sha256=stored.weights_sha256)
    if wanted.weights_is_file and stored.weights_is_file:
        wanted = wanted.replace(weights=stored.weights)
    settings = wanted.to_attrs()
    settings["inputs"] = _inputs_attr(inputs)
    diffs = settings_differences(have, settings, dtype, output)
    if diffs:
        raise OutputError(f"cannot resume {output}: its settings differ from this run's: " + "; ".join(diffs))


def _check_sources(output, images):
    """Refuse to resume a single file (append-only) whose shards changed since it was begun: its rows of
    the shard's old content would stay beside rows of the new (an index of parts reads such a shard
    again instead)."""
    from .store import open_read, read_sources

    try:
        with open_read(output) as f:
            recorded = read_sources(f)
    except VggfeatError:
        return  # damaged or foreign: FeatureWriter.resume decides
    changed = changed_sources(recorded, images.identities)
    if changed:
        more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        raise OutputError(f"cannot resume {output}: the shard {changed[0]}{more} changed since the run began "
                          f"({recorded[changed[0]]}, now {images.identities.get(changed[0])}); its rows would mix "
                          "old and new content: --overwrite starts again (or --output-shards reads changed "
                          "shards again)")


def _open_output(output, extractor, images, settings, *, resume, overwrite, dtype, compression):
    from .store import FeatureWriter

    if resume and os.path.exists(output):
        writer = FeatureWriter.resume(output, settings=settings, dtype=dtype)
        if writer.class_names != images.class_names:
            writer.close()
            raise OutputError(f"cannot resume {output}: its classes {writer.class_names} differ from the "
                              f"folder's {images.class_names}")
        return writer
    return FeatureWriter.create(output, settings=settings, feature_shapes=extractor.output_shapes,
                                class_names=images.class_names, dtype=dtype, compression=compression,
                                overwrite=overwrite, sources=getattr(images, "identities", None))


def _run(images, output, extractor, runner, *, inputs, resume, overwrite, dtype, compression, batch_size, strict,
         progress, max_pixels, on_batch, output_shards=False):
    settings = extractor.settings()
    settings["inputs"] = _inputs_attr(inputs)
    if images.root:
        settings["root"] = images.root
    if output_shards:
        return _run_parts(images, output, extractor, runner, settings=settings, resume=resume, overwrite=overwrite,
                          dtype=dtype, compression=compression, batch_size=batch_size, strict=strict,
                          progress=progress, max_pixels=max_pixels, on_batch=on_batch)
    if resume and isinstance(images, ShardInputs) and os.path.exists(output):
        images.previous_failed = _failed_of(output)  # kept for the shards that are not read again
    writer = _open_output(output, extractor, images, settings, resume=resume, overwrite=overwrite, dtype=dtype,
                          compression=compression)
    output_shapes = extractor.output_shapes
    start = time.perf_counter()
    done = set(writer.written_paths())
    # rows of shards are known only as they are read: every row already written is one of them
    skipped = len(done) if isinstance(images, ShardInputs) else sum(1 for p in images.paths if p in done)
    report = {}
    complete = False
    try:
        report = runner.run(images, writer, extractor, output=output, config=extractor.config,
                            batch_size=batch_size, settings=settings, dtype=dtype, done=done, resume=resume,
                            overwrite=overwrite, strict=strict, progress=progress, max_pixels=max_pixels,
                            on_batch=on_batch)
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
    written, failed = report["written"], report["failed"]
    summary = ExtractSummary(output, written, failed, skipped, total_rows, seconds,
                             {k: (total_rows,) + tuple(v) for k, v in output_shapes.items()}, engine=runner.name,
                             workers=report.get("workers", 0), shards=report.get("shards", 0),
                             recovered=writer.recovered, transient=_transient_failures(output, failed, output_shapes))
    if total_rows == 0 and failed:
        raise ExtractFailed(f"no image could be read ({failed} failed; reasons under /failed in {output})")
    return summary


def _run_parts(images, output, extractor, runner, *, settings, resume, overwrite, dtype, compression, batch_size,
               strict, progress, max_pixels, on_batch):
    from .parts import parts_dir, run_parts

    start = time.perf_counter()
    replacing = overwrite and os.path.exists(output)
    try:
        report, total_rows, parts = run_parts(images, output, extractor, runner, settings=settings, resume=resume,
                                              overwrite=overwrite, dtype=dtype, compression=compression,
                                              strict=strict, progress=progress, max_pixels=max_pixels,
                                              on_batch=on_batch, batch_size=batch_size)
    except KeyboardInterrupt:
        if replacing:
            raise ExtractInterrupted(f"{output} and its parts were left as they were before this --overwrite run "
                                     "(run it again to replace them)") from None
        raise ExtractInterrupted(f"the parts completed so far are kept in {parts_dir(output)}; `--resume "
                                 "--output-shards` continues") from None
    seconds = time.perf_counter() - start
    written, failed = report["written"], report["failed"]
    summary = ExtractSummary(output, written, failed, report["skipped"], total_rows, seconds,
                             {k: (total_rows,) + tuple(v) for k, v in extractor.output_shapes.items()},
                             engine=runner.name, workers=report.get("workers", 0), shards=0, parts=parts,
                             transient=_transient_failures(output, failed, extractor.output_shapes))
    if total_rows == 0 and failed:
        raise ExtractFailed(f"no image could be read ({failed} failed; reasons under /failed in the parts of "
                            f"{output})")
    return summary


def _transient_failures(output, failed, layers) -> int:
    """How many failures recorded in `output` (a file or an index) are transient."""
    from .faults import is_transient_reason
    from .parts import open_features

    if not failed:
        return 0
    try:
        failures = open_features(output, next(iter(layers))).failed()
        return sum(1 for _, reason in failures if is_transient_reason(reason))
    except Exception:  # noqa: BLE001 - the count is for the summary line; the file says it all
        return 0


def _failed_of(output) -> dict:
    """{path: reason} under /failed of an existing output ({} when it cannot be read)."""
    import h5py

    try:
        with h5py.File(output, "r") as f:
            return dict(zip((p.decode() if isinstance(p, bytes) else p for p in f["failed/paths"][:]),
                            (r.decode() if isinstance(r, bytes) else r for r in f["failed/reasons"][:])))
    except Exception:  # noqa: BLE001 - a damaged file: the writer decides; its shards are read again
        return {}


def _interrupted_account(output, rows, replacing):
    if replacing:
        return f"{output} was left as it was before this --overwrite run (run it again to replace it)"
    if rows == 0:
        return f"no row was written yet; {output} holds none (--resume starts it, --overwrite starts afresh)"
    return f"{rows} rows written to {output} are kept; `--resume` continues"
