"""Outputs in parts: one HDF5 file per input shard plus a small index, read as one dataset.

`extract(..., output_shards=True)` (`vggfeat extract --output-shards`) writes `OUTPUT` as an *index* and
the rows into `OUTPUT.parts/part-000000.h5`, `part-000001.h5`... one part per *unit* of input:

- a tar shard is one unit (its rows, in member order, and its failures);
- loose images (a folder, image files, lists, images under a prefix) are cut, in order, into units of
  `LOOSE_PER_PART` images.

Each part is an ordinary vggfeat file (the layout of `vggfeat.store`, with its commit records and
checksums), written whole by one process and marked complete when its unit is done. The index is an
HDF5 file with the run's settings as attributes (`format="vggfeat-index"`) and, per part in row order,
its file name, its unit's name, its rows and failures (`/parts/...`). Row order of the whole is part
order, then the part's row order: the order a single-file run writes.

A unit is also the Ray engine's work unit over shards (`vggfeat.ray_engine`): each actor writes the part
of the unit it was given; a part is complete or is written again, so nothing is missing or doubled.

Reading: `open_features(path)` gives a `FeatureSet` over a single file or an index: its length and
labels, `iter_batches(rows)` (a bounded number of rows in memory at once, checked against their commit
checksums) and `iter_X_y` for scikit-learn's `partial_fit`. `load_features` reads an index whole, like
a single file; `merge_parts` (`vggfeat merge`) turns an index into the single file a one-file run writes.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import os
import shutil
import time
import zlib
from dataclasses import dataclass, field, replace

import numpy as np

from .errors import ExtractFailed, InputError, LayerError, OutputError, VggfeatError, WriteFailed
from .redact import redact_urls
from .shards import LOOSE_PER_UNIT

log = logging.getLogger("vggfeat")

INDEX_FORMAT = "vggfeat-index"
INDEX_VERSION = 2  # 2: settings and class names under checksums (`vggfeat.store.seal_meaning`)
INDEX_READABLE = (1, 2)
#: Loose images (folders, image files, lists, images under a prefix) per part.
LOOSE_PER_PART = LOOSE_PER_UNIT
PARTS_SUFFIX = ".parts"
_TMP = ".vggfeat-tmp"


def parts_dir(output) -> str:
    """The folder of the parts of the index `output` (`features.h5` -> `features.h5.parts`)."""
    return os.fspath(output) + PARTS_SUFFIX


def part_name(number: int) -> str:
    return f"part-{number:06d}.h5"


# ---- units -----------------------------------------------------------------------------------------


@dataclass
class Unit:
    """One unit of input: `inputs` (a `ShardInputs` of one shard or of a run of loose images, or an
    `ImageList` slice) is what one part holds; `name` says what it is (the shard's row prefix, or the
    first loose image's path and how many follow)."""

    number: int
    name: str
    inputs: object
    images: int | None = None  # known for loose images, not for a shard (not listed in advance)

    @property
    def key(self) -> str:
        """What the unit holds, as far as is known without reading it: a shard's name (shards are
        immutable by the WebDataset convention), or a digest of the loose images' stored paths."""
        from .shards import ShardInputs

        if isinstance(self.inputs, ShardInputs) and len(self.inputs.sources) == 1 \
                and self.inputs.sources[0].kind == "shard":
            return "shard:" + self.inputs.sources[0].name
        names = [s.name for s in self.inputs.sources] if isinstance(self.inputs, ShardInputs) else self.inputs.paths
        return "images:" + hashlib.sha256("\0".join(names).encode("utf-8", "surrogateescape")).hexdigest()


def unit_sources(unit) -> dict:
    """{shard: identity} of the shards of `unit` (recorded in its part; see `vggfeat.shards.identity`)."""
    known = getattr(unit.inputs, "identities", None) or {}
    return {s.name: known[s.name] for s in getattr(unit.inputs, "sources", ()) if s.name in known}


def units_of(images, per_part=LOOSE_PER_PART) -> list:
    """The units of a run's inputs, in row order (see the module's docstring)."""
    from .images import ImageList
    from .shards import ShardInputs

    units = []
    if isinstance(images, ShardInputs):
        run = []

        def flush():
            if run:
                sub = replace(images, sources=list(run), previous_failed={}, shards_skipped=0, warn_unlabelled=False)
                more = f" and {len(run) - 1} more" if len(run) > 1 else ""
                units.append(Unit(len(units), f"{run[0].name}{more}", sub, len(run)))
                run.clear()

        for s in images.sources:
            if s.kind == "shard":
                flush()
                units.append(Unit(len(units), s.name, replace(images, sources=[s], previous_failed={},
                                                               shards_skipped=0, warn_unlabelled=False)))
            else:
                run.append(s)
                if len(run) >= per_part:
                    flush()
        flush()
        return units
    if not isinstance(images, ImageList):
        raise TypeError(f"units_of takes an ImageList or ShardInputs, not {type(images).__name__}")
    for start in range(0, len(images.files), per_part):
        stop = min(start + per_part, len(images.files))
        sub = ImageList(images.files[start:stop], images.paths[start:stop], images.labels[start:stop],
                        images.class_names, images.root)
        more = f" and {stop - start - 1} more" if stop - start > 1 else ""
        units.append(Unit(len(units), f"{images.paths[start]}{more}", sub, stop - start))
    return units


# ---- writing one part ------------------------------------------------------------------------------


@dataclass
class PartReport:
    number: int
    rows: int
    failed: int
    seconds: float
    failures: list = field(default_factory=list)  # (path, reason)
    unlabelled: int = 0  # shard images with no usable label, and with one
    labelled: int = 0


def part_complete(path) -> bool:
    """Whether the part at `path` was written to its end (a complete vggfeat file)."""
    import h5py

    if not os.path.isfile(path):
        return False
    try:
        with h5py.File(path, "r") as f:
            return bool(f.attrs.get("complete", False)) and f.attrs.get("format") == "vggfeat"
    except OSError:
        return False


def part_transient(path) -> int:
    """How many of the part's failures are transient (`vggfeat.faults`): such a part is written again
    by `--resume`."""
    from .faults import is_transient_reason
    from .store import committed_counts, decode_strings, open_read

    with open_read(path) as f:
        _, failed = committed_counts(f)
        return sum(1 for r in decode_strings(f["failed/reasons"][:failed]) if is_transient_reason(r)) if failed else 0


def part_counts(path) -> tuple[int, int]:
    """(rows, failures) committed in the part at `path`."""
    from .store import open_read, committed_counts

    with open_read(path) as f:
        return committed_counts(f)


def write_part(unit: Unit, path, extractor, *, settings, class_names, dtype, compression=None, workers=None,
               strict=False, max_pixels=None, on_batch=None, run_id="") -> PartReport:
    """Extract `unit` into the part `path`: written beside it and renamed into place when complete,
    so that a part that exists under its name holds its whole unit. An earlier unfinished attempt is
    replaced."""
    from .images import MAX_PIXELS
    from .store import FeatureWriter, remove_stale
    from .stream import iter_features

    began = time.perf_counter()
    tmp = path + _TMP
    remove_stale(tmp)  # refused if another process still writes it
    # which part of which run it is, sealed with the settings (`vggfeat.store.seal_meaning`)
    own = dict(settings, part_number=unit.number, part_of=redact_urls(unit.name), part_key=unit.key, run_id=run_id)
    writer = FeatureWriter.create(tmp, settings=own, feature_shapes=extractor.output_shapes,
                                  class_names=class_names, dtype=dtype, compression=compression,
                                  sources=unit_sources(unit))
    rows = failed = 0
    failures = []
    done = False
    try:
        for batch in iter_features(unit.inputs, extractor, workers=workers, progress=False, strict=strict,
                                   max_pixels=max_pixels or MAX_PIXELS):
            writer.append(batch.paths, batch.labels, batch.features, batch.failed)
            rows += len(batch.paths)
            failed += len(batch.failed)
            failures.extend(batch.failed)
            if on_batch is not None:
                on_batch(batch)
        writer.close(complete=True)
        os.replace(tmp, path)
        done = True
    finally:
        if not done:
            writer.close(complete=False)
            if os.path.exists(tmp):
                os.remove(tmp)
    return PartReport(unit.number, rows, failed, time.perf_counter() - began, failures,
                      getattr(unit.inputs, "unlabelled", 0), getattr(unit.inputs, "labelled", 0))


# ---- the index -------------------------------------------------------------------------------------


@dataclass
class Index:
    """What an index file records (see the module's docstring)."""

    path: str
    attrs: dict
    class_names: list
    feature_shapes: dict  # layer -> row shape
    files: list  # part file names, relative to the index's folder
    names: list  # the unit each part holds
    rows: np.ndarray  # rows per part (-1: not complete when the index was written)
    failed: np.ndarray
    keys: list = field(default_factory=list)  # what each part's unit holds (`Unit.key`)

    @property
    def complete(self) -> bool:
        return bool(self.attrs.get("complete", False))

    def part_path(self, i) -> str:
        return os.path.join(os.path.dirname(os.path.abspath(self.path)), self.files[i])


def is_index(path) -> bool:
    """Whether `path` is an index of parts (not a single vggfeat file)."""
    import h5py

    try:
        with h5py.File(os.fspath(path), "r") as f:
            return f.attrs.get("format") == INDEX_FORMAT
    except (OSError, TypeError):
        return False


def write_index(path, *, settings, class_names, feature_shapes, dtype, compression, units, rows, failed,
                folder, complete, run_id=""):
    """Write the index `path` whole (beside it, then renamed over it: it is never half-written)."""
    import h5py

    from .store import STRING, seal_meaning, write_root_attrs

    tmp = path + _TMP
    if os.path.exists(tmp):
        os.remove(tmp)
    rel = os.path.basename(os.path.normpath(folder))
    with h5py.File(tmp, "w") as f:
        write_root_attrs(f, INDEX_FORMAT, INDEX_VERSION, settings, dtype, compression)
        f.attrs["complete"] = bool(complete)
        f.attrs["feature_shapes"] = json.dumps({k: list(map(int, v)) for k, v in feature_shapes.items()})
        f.attrs["parts_folder"] = rel
        f.attrs["run_id"] = run_id
        f.create_dataset("class_names", data=np.array(list(class_names), dtype=object), dtype=STRING)
        g = f.create_group("parts")
        g.create_dataset("files", data=np.array([f"{rel}/{part_name(u.number)}" for u in units], dtype=object),
                         dtype=STRING)
        g.create_dataset("names", data=np.array([redact_urls(u.name) for u in units], dtype=object), dtype=STRING)
        g.create_dataset("keys", data=np.array([u.key for u in units], dtype=object), dtype=STRING)
        g.create_dataset("rows", data=np.asarray(rows, dtype=np.int64).reshape(-1))
        g.create_dataset("failed", data=np.asarray(failed, dtype=np.int64).reshape(-1))
        seal_meaning(f)  # every attribute but `complete`, and the class names
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_index(path) -> Index:
    """The index at `path`; one-line errors for anything else."""
    import h5py

    from .config import attr_value
    from .store import check_meaning, decode_strings

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"file not found: {path}")
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != INDEX_FORMAT:
                raise OutputError(f"{path} is not an index of parts (format={attr_value(f.attrs.get('format', ''))!r})")
            version = int(attr_value(f.attrs.get("format_version", -1)))
            if version not in INDEX_READABLE:
                raise OutputError(f"{path} is an index of format_version {version}; this vggfeat reads "
                                  f"{', '.join(map(str, INDEX_READABLE))}")
            check_meaning(f, path)
            attrs = {k: attr_value(v) for k, v in f.attrs.items()}
            shapes = {k: tuple(v) for k, v in json.loads(attrs["feature_shapes"]).items()}
            files = decode_strings(f["parts/files"][()])
            names = decode_strings(f["parts/names"][()])
            rows = f["parts/rows"][()].astype(np.int64)
            failed = f["parts/failed"][()].astype(np.int64)
            class_names = decode_strings(f["class_names"][()])
            keys = decode_strings(f["parts/keys"][()]) if "parts/keys" in f else []
    except OutputError:
        raise
    except (OSError, KeyError, ValueError) as exc:
        raise OutputError(f"{path} is not a readable index of parts: {str(exc).splitlines()[0]}") from None
    if not (len(files) == len(names) == len(rows) == len(failed)):
        raise OutputError(f"{path} is damaged: its /parts datasets differ in length")
    for name in files:
        if os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
            raise OutputError(f"{path} names a part outside its folder: {name}")
    return Index(path, attrs, class_names, shapes, files, names, rows, failed, keys)


def check_part(index: Index, i: int, f) -> tuple[int, int]:
    """Check that the open part file `f` is part `i` of `index` (the same run, the same unit, and, in a
    complete index, the rows and failures it records); returns its committed (rows, failures)."""
    from .config import attr_value
    from .store import committed_counts

    path = index.part_path(i)
    n, m = committed_counts(f)
    run = attr_value(f.attrs.get("run_id", ""))
    number = int(attr_value(f.attrs.get("part_number", -1)))
    key = attr_value(f.attrs.get("part_key", ""))
    if run != index.attrs.get("run_id", "") or number != i or (index.keys and key != index.keys[i]):
        raise OutputError(f"{path} is not part {i} of {index.path} (it belongs to another run or another "
                          "part: an --overwrite cut short, or files moved by hand); `vggfeat extract --resume "
                          "--output-shards` with the same inputs writes it again")
    if index.complete and (n, m) != (int(index.rows[i]), int(index.failed[i])):
        raise OutputError(f"{path} holds {n} rows and {m} failures, its index {index.path} says "
                          f"{int(index.rows[i])} and {int(index.failed[i])}: one of them was changed")
    return n, m


@dataclass
class IndexReport:
    """What `verify` found in an index of parts: `problems` (one line each: a missing part, a part that
    is not the index's, a damaged part, an incomplete index) and the rows and failures of its parts."""

    path: str
    parts: int
    rows: int = 0
    failures: int = 0
    problems: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def line(self) -> str:
        n = self.parts
        head = f"{self.path}: {n} part{'' if n == 1 else 's'}, {self.rows} rows, {self.failures} failed images; "
        return head + (f"{len(self.problems)} damaged or missing" if self.problems else "every part intact")


def verify_index(path) -> IndexReport:
    """Check every part of the index `path` (each part's rows against its checksums, and that it is this
    index's part with the rows the index records): never "intact" when a part is missing or damaged or
    the index is incomplete."""
    from .store import open_read, verify_file

    index = read_index(path)
    report = IndexReport(os.fspath(path), len(index.files))
    missing = []
    for i in range(len(index.files)):
        part = index.part_path(i)
        if not os.path.isfile(part):
            missing.append(part)
            if index.complete:
                report.problems.append(f"{part} is missing: {path} lists it; `vggfeat extract --resume "
                                       f"--output-shards -o {path}` with the same inputs writes it again")
            continue
        try:
            part_report = verify_file(part)
            with open_read(part) as f:
                check_part(index, i, f)  # this index's own part, with the rows it records
        except VggfeatError as exc:
            report.problems.append(str(exc))
            continue
        if not part_report.ok:
            report.problems.append(part_report.line())
        report.rows += part_report.rows
    if not index.complete:
        report.problems.append(f"{path} is incomplete (the run was interrupted): {len(missing)} of "
                               f"{len(index.files)} parts are missing" + (f" (first: {missing[0]})" if missing else "")
                               + "; `vggfeat extract --resume --output-shards` completes it")
    report.failures = int(index.failed[index.failed >= 0].sum())
    return report


def verify(path):
    """Check a vggfeat file (`vggfeat.store.VerifyReport`: every committed row against its checksum, and
    its settings, class names and input identities against theirs) or an index of parts (`IndexReport`:
    every part so, and that each is there and the index's own). `.ok` and `.line()` on both."""
    from .store import verify_file

    if os.path.isfile(os.fspath(path)) and is_index(path):
        return verify_index(path)
    return verify_file(path)


# ---- extracting into parts -------------------------------------------------------------------------


_INDEX_ONLY = ("format", "format_version", "feature_shapes", "parts_folder", "created", "vggfeat_version",
               "complete", "dtype", "compression", "run_id", "meaning_keys", "meaning_crc32")


def check_parts_output(output, *, resume, overwrite):
    """Checks of an index output before anything is built (beyond `FeatureWriter.check_output`)."""
    folder = parts_dir(output)
    exists = os.path.lexists(output)
    if os.path.lexists(folder) and not os.path.isdir(folder):
        raise OutputError(f"{folder} is in the way of the parts' folder: it is not a folder")
    if exists and resume and not is_index(output):
        import h5py

        try:
            with h5py.File(output, "r"):
                pass
        except OSError:
            read_index(output)  # says in one line why it cannot be read (truncated, not HDF5...)
        raise OutputError(f"{output} is a single feature file, not an index of parts: resume it without "
                          "--output-shards")
    if os.path.exists(folder) and not exists and not overwrite:
        # the index is written before any part: parts without it cannot be told apart from another run's
        raise OutputError(f"{folder} holds parts without their index {output}; they cannot be checked against "
                          "the inputs: --overwrite starts again")
    if os.path.isdir(folder):
        _locked_folder(folder).close()  # a run in progress is refused now, before the network is built


class _locked_folder:
    """An exclusive lock (flock) on the parts folder, held for a whole run: a second run on the same
    output is a one-line error, as for a single file."""

    def __init__(self, folder):
        from .store import lock

        self.fd = os.open(folder, os.O_RDONLY)
        try:
            lock(self.fd, folder)
        except BaseException:
            os.close(self.fd)
            raise

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def check_single_output(output, *, resume):
    """A single-file run (create, resume or overwrite) refuses an output that an `--output-shards` run is
    writing (its parts folder is locked), and refuses to resume an index."""
    from .store import refuse_parts_run

    refuse_parts_run(output)
    if resume and os.path.exists(output) and is_index(output):
        raise OutputError(f"{output} is an index of parts (--output-shards): resume it with --output-shards")


def reusable_part(path, run_id, unit, settings, dtype) -> bool:
    """Whether the part at `path` is complete and holds `unit` for the run `run_id`, with its settings."""
    from .config import attr_value
    from .shards import changed_sources
    from .store import open_read, read_attrs, read_sources, settings_differences

    if not part_complete(path) or part_transient(path):  # a transient failure is read again
        return False
    attrs = read_attrs(path)
    if attr_value(attrs.get("run_id", "")) != run_id or attr_value(attrs.get("part_key", "")) != unit.key:
        return False
    with open_read(path, meaning=False) as f:
        changed = changed_sources(read_sources(f), unit_sources(unit))
    if changed:
        log.warning("the shard %s changed since its part %s was written: it is read again", changed[0], path)
        return False
    diffs = settings_differences(attrs, settings, dtype, path)
    if diffs:
        raise OutputError(f"cannot resume: {'; '.join(diffs)}")
    return True


def run_parts(images, output, extractor, runner, *, settings, resume, overwrite, dtype, compression, strict,
              progress, max_pixels, on_batch, batch_size):
    """Extract `images` into the index `output` and its parts with `runner` (an engine). Returns
    (report, total rows, parts)."""
    import uuid

    from .store import settings_differences

    units = units_of(images)
    final = parts_dir(output)
    replacing = overwrite and os.path.exists(output)
    folder = final + _TMP if replacing else final
    feature_shapes = extractor.output_shapes
    rows = np.full(len(units), -1, np.int64)
    failed = np.full(len(units), -1, np.int64)
    resuming = resume and os.path.exists(output)
    run_id = uuid.uuid4().hex
    if resuming:
        index = read_index(output)
        diffs = settings_differences(dict(index.attrs), settings, dtype, output)
        if diffs:
            raise OutputError(f"cannot resume {output}: its settings differ from this run's: " + "; ".join(diffs))
        if index.class_names != list(images.class_names):
            raise OutputError(f"cannot resume {output}: its classes {index.class_names} differ from the inputs' "
                              f"{list(images.class_names)}")
        if (index.keys or index.names) != [u.key if index.keys else u.name for u in units]:
            raise OutputError(f"cannot resume {output}: its parts were made from other inputs ({len(index.names)} "
                              f"parts, this run has {len(units)}; parts are named after the inputs as given, so "
                              "give the same inputs from the same folder)")
        run_id = index.attrs.get("run_id", "")
    os.makedirs(final, exist_ok=True)
    held = _locked_folder(final)  # for the whole run: a second run on this output is refused
    try:
        if not resuming:
            if folder == final:  # parts left by an unfinished run, replaced as asked (--overwrite)
                for name in os.listdir(final):
                    target = os.path.join(final, name)
                    shutil.rmtree(target) if os.path.isdir(target) else os.remove(target)
        if folder != final and os.path.exists(folder):
            shutil.rmtree(folder)  # a stale temporary folder of an interrupted --overwrite
        os.makedirs(folder, exist_ok=True)
        index_path = output if folder == final else output + _TMP
        if resuming:
            for i, u in enumerate(units):
                p = os.path.join(folder, part_name(u.number))
                if reusable_part(p, run_id, u, settings, dtype):
                    rows[i], failed[i] = part_counts(p)
        skipped_rows = int(rows[rows >= 0].sum())
        skipped_parts = int(np.count_nonzero(rows >= 0))
        if not resuming:
            write_index(index_path, settings=settings, class_names=images.class_names,
                        feature_shapes=feature_shapes, dtype=dtype, compression=compression, units=units, rows=rows,
                        failed=failed, folder=final, complete=False, run_id=run_id)
        todo = [u for i, u in enumerate(units) if rows[i] < 0]
        if skipped_parts:
            log.info("resumed: %d of %d parts were complete and are not read again", skipped_parts, len(units))
        report = {"written": 0, "failed": 0, "workers": 0, "parts": len(units), "skipped": skipped_rows}
        try:
            done_reports = runner.run_parts(todo, folder, extractor, settings=settings,
                                            class_names=images.class_names, dtype=dtype, compression=compression,
                                            strict=strict, progress=progress, max_pixels=max_pixels,
                                            on_batch=on_batch, batch_size=batch_size, report=report, run_id=run_id)
        except BaseException as exc:
            if replacing:  # the old output stays as it was; nothing of this run is kept
                shutil.rmtree(folder, ignore_errors=True)
                if os.path.exists(index_path):
                    os.remove(index_path)
            if isinstance(exc, WriteFailed):  # said of the part; what the user does is about the index
                what = (f"{output} and its parts were left as they were before this --overwrite run" if replacing
                        else f"the complete parts of {output} are kept; `--resume --output-shards` continues")
                raise WriteFailed(f"{str(exc).split('; ')[0]}; {what}") from None
            raise
        for r in done_reports:
            rows[r.number], failed[r.number] = r.rows, r.failed
            report["written"] += r.rows
            report["failed"] += r.failed
        from .shards import ShardInputs, warn_unlabelled

        if isinstance(images, ShardInputs):
            warn_unlabelled(images, sum(r.unlabelled for r in done_reports), sum(r.labelled for r in done_reports))
        if (rows < 0).any():
            missing = units[int(np.flatnonzero(rows < 0)[0])].name
            raise OutputError(f"{int((rows < 0).sum())} parts of {output} were not written (first: {missing}); "
                              "`--resume --output-shards` continues")
        complete = int(rows.sum()) > 0  # as a single file: an output with no row is not complete
        if folder != final:
            # --overwrite: the new index is written first, then the new parts take the old ones' place and
            # the index replaces the old one; an index that met the other run's parts would refuse them
            # (their run_id differs), never read them as its own
            write_index(index_path, settings=settings, class_names=images.class_names,
                        feature_shapes=feature_shapes, dtype=dtype, compression=compression, units=units, rows=rows,
                        failed=failed, folder=final, complete=complete, run_id=run_id)
            old = final + ".old" + _TMP
            if os.path.exists(old):
                shutil.rmtree(old)
            os.replace(final, old)
            os.replace(folder, final)
            os.replace(index_path, output)
            shutil.rmtree(old)
        else:
            write_index(output, settings=settings, class_names=images.class_names, feature_shapes=feature_shapes,
                        dtype=dtype, compression=compression, units=units, rows=rows, failed=failed, folder=final,
                        complete=complete, run_id=run_id)
    finally:
        held.close()
    return report, int(rows.sum()), len(units)


def local_run_parts(units, folder, extractor, *, settings, class_names, dtype, compression, strict, progress,
                    max_pixels, on_batch, workers, report, run_id="", **_):
    """The local engine's `run_parts`: the units one after the other in this process."""
    from .stream import progress_bar

    out = []
    bar = progress_bar(sum(u.images or 0 for u in units) or None, progress)

    def counted(batch):
        bar.update(len(batch.paths) + len(batch.failed))
        if on_batch is not None:
            on_batch(batch)

    try:
        for u in units:
            r = write_part(u, os.path.join(folder, part_name(u.number)), extractor, settings=settings,
                           class_names=class_names, dtype=dtype, compression=compression, workers=workers,
                           strict=strict, max_pixels=max_pixels, on_batch=counted, run_id=run_id)
            out.append(r)
    except ExtractFailed:
        raise
    finally:
        bar.close()
    return out


# ---- reading ---------------------------------------------------------------------------------------


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
        from .store import open_read, committed_counts

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
                import warnings

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
                from .config import attr_value

                self.attrs = {k: attr_value(v) for k, v in f.attrs.items()}
                self.class_names = [v.decode() if isinstance(v, bytes) else str(v) for v in f["class_names"][()]]
                shapes = {k: tuple(f["features"][k].shape[1:]) for k in f["features"]}
                n, _ = committed_counts(f)
            self.parts = [self.path]
            self._rows = np.array([n], np.int64)
        names = list(shapes)
        from .specs import canonical_layer

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
        from .store import committed_counts, decode_strings

        out = []
        for i in range(len(self.parts)):
            with self._open(i) as f:
                _, m = committed_counts(f)
                out.extend(zip(decode_strings(f["failed/paths"][:m]), decode_strings(f["failed/reasons"][:m])))
        return out

    def _open(self, i):
        """The `i`-th file read, opened; a part of an index is checked to be that index's part."""
        from .store import open_read

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
        from .store import commit_columns, crc, crc_strings, decode_strings

        if int(rows) < 1:
            raise InputError(f"rows must be at least 1. Received: {rows}")
        rows = int(rows)
        buffer = self.shuffle_buffer(rows, shuffle)
        if buffer:
            yield from self._shuffled(rows, buffer, verify, seed)
            return
        key = f"features/{self.layer}"
        for i, p in enumerate(self.parts):
            n = int(self._rows[i])
            with self._open(i) as f:
                records = f["commits"][()] if verify and "commits" in f else None
                cols = commit_columns(f) if records is not None else []
                if records is not None:
                    records = records[(records[:, 1] > records[:, 0]) & (records[:, 1] <= n)]
                    ends = records[:, 1]
                else:
                    ends = np.arange(0, n, rows)
                # whole commits, grouped up to `rows` rows (a commit larger than `rows` is read alone)
                bounds = np.unique(np.concatenate([[0, n], ends[(ends > 0) & (ends < n)]])).tolist()
                start = 0
                while start < n:
                    j = bisect.bisect_right(bounds, start + rows) - 1
                    if bounds[j] > start:
                        stop = bounds[j]
                        feats, labels = f[key][start:stop], f["labels"][start:stop]
                        paths = decode_strings(f["paths"][start:stop])
                        if records is not None:
                            lo = int(np.searchsorted(records[:, 0], start, "left"))
                            hi = int(np.searchsorted(records[:, 0], stop, "left"))
                            for r in records[lo:hi]:
                                a, b = int(r[0]) - start, int(r[1]) - start
                                got = {"paths": crc_strings(paths[a:b]), "labels": crc(labels[a:b]),
                                       key: crc(feats[a:b])}
                                _check(p, r, cols, got)
                        yield Rows(feats, labels, paths, int(self.offsets[i]) + start)
                    else:  # one commit of more than `rows` rows: checked in a first pass, then read in steps
                        stop = bounds[bisect.bisect_right(bounds, start)]
                        if records is not None:
                            r = records[int(np.searchsorted(records[:, 0], start, "left"))]
                            running = {"paths": 0, "labels": 0, key: 0}
                            for a in range(start, stop, rows):
                                b = min(stop, a + rows)
                                text = ("\0" if a > start else "") + "\0".join(decode_strings(f["paths"][a:b]))
                                for name, data in (("paths", text.encode("utf-8", "surrogateescape")),
                                                   ("labels", f["labels"][a:b]), (key, f[key][a:b])):
                                    if not isinstance(data, bytes):
                                        data = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
                                    running[name] = zlib.crc32(data, running[name])
                            _check(p, r, cols, running)
                        for a in range(start, stop, rows):
                            b = min(stop, a + rows)
                            yield Rows(f[key][a:b], f["labels"][a:b], decode_strings(f["paths"][a:b]),
                                       int(self.offsets[i]) + a)
                    start = stop

    def iter_X_y(self, rows=8192, *, verify=True, shuffle=True, seed=None):
        """Yield (X, y) of the labelled rows, at most `rows` at a time, for `partial_fit`, shuffled by
        default: a file of a folder is sorted by class, and `partial_fit` on one class after another
        learns mostly the last. `shuffle=True` mixes them in a buffer of 256 MB of rows or 4 batches,
        whichever is more (`shuffle_buffer`); `shuffle=N` holds N rows; `shuffle=0` keeps file order.
        `seed` fixes the order (call again with another seed, or None, for the next epoch):

            >>> fs = vggfeat.open_features("features.h5")            # doctest: +SKIP
            >>> for X, y in fs.iter_X_y(10000, seed=0):              # doctest: +SKIP
            ...     clf.partial_fit(X.reshape(len(X), -1), y, classes=fs.classes)
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
        from collections import OrderedDict

        from .store import commit_columns, crc, crc_strings, decode_strings

        rng = np.random.default_rng(seed)
        key = f"features/{self.layer}"
        step = max(1, min(rows, buffer // 8))  # reads: the buffer holds at least 8 from places far apart
        reads = []  # (part, start, stop, row of the commit it is a piece of, or -1)
        for i in range(len(self.parts)):
            n = int(self._rows[i])
            with self._open(i) as f:
                records = f["commits"][()] if verify and "commits" in f else None
            if records is not None:
                records = records[(records[:, 1] > records[:, 0]) & (records[:, 1] <= n)]
                ends = records[:, 1]
            else:
                ends = np.arange(0, n, step)
            bounds = np.unique(np.concatenate([[0, n], ends[(ends > 0) & (ends < n)]])).tolist()
            start = 0
            while start < n:  # whole commits up to `step` rows, or a larger commit in pieces of `step`
                j = bisect.bisect_right(bounds, start + step) - 1
                if bounds[j] > start:
                    reads.append((i, start, bounds[j], -1))
                    start = bounds[j]
                else:
                    stop = bounds[bisect.bisect_right(bounds, start)]
                    reads.extend((i, a, min(stop, a + step), start) for a in range(start, stop, step))
                    start = stop
        order = rng.permutation(len(reads))
        handles = OrderedDict()  # a few parts open at once: part -> (file, its commit records, columns)
        checked = set()  # (part, first row) of the large commits checked whole

        def part(i):
            if i in handles:
                handles.move_to_end(i)
                return handles[i]
            if len(handles) >= 16:
                handles.popitem(last=False)[1][0].close()
            f = self._open(i)
            n = int(self._rows[i])
            records = f["commits"][()] if verify and "commits" in f else None
            if records is not None:
                records = records[(records[:, 1] > records[:, 0]) & (records[:, 1] <= n)]
            handles[i] = (f, records, commit_columns(f) if records is not None else [])
            return handles[i]

        def read(i, start, stop, big):
            f, records, cols = part(i)
            p = self.parts[i]
            feats, labels = f[key][start:stop], f["labels"][start:stop].astype(np.int64)
            names = decode_strings(f["paths"][start:stop])
            if records is not None and big < 0:
                lo = int(np.searchsorted(records[:, 0], start, "left"))
                hi = int(np.searchsorted(records[:, 0], stop, "left"))
                for r in records[lo:hi]:
                    a, b = int(r[0]) - start, int(r[1]) - start
                    _check(p, r, cols, {"paths": crc_strings(names[a:b]), "labels": crc(labels[a:b]),
                                        key: crc(feats[a:b])})
            elif records is not None and (i, big) not in checked:  # the whole commit, in steps, once
                r = records[int(np.searchsorted(records[:, 0], big, "left"))]
                running = {"paths": 0, "labels": 0, key: 0}
                end = int(r[1])
                for a in range(big, end, step):
                    b = min(end, a + step)
                    text = ("\0" if a > big else "") + "\0".join(decode_strings(f["paths"][a:b]))
                    for name, data in (("paths", text.encode("utf-8", "surrogateescape")),
                                       ("labels", f["labels"][a:b]), (key, f[key][a:b])):
                        if not isinstance(data, bytes):
                            data = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
                        running[name] = zlib.crc32(data, running[name])
                _check(p, r, cols, running)
                checked.add((i, big))
            return feats, labels, names

        size = min(buffer + step, len(self))
        bf = np.empty((size,) + self.row_shape, self.dtype)
        bl = np.empty(size, np.int64)
        bi = np.empty(size, np.int64)
        bp = np.empty(size, dtype=object) if paths else None
        fill = 0

        def take(m):
            """`m` rows picked at random from the buffer, their places filled from its end."""
            nonlocal fill
            pick = np.sort(rng.choice(fill, size=m, replace=False))
            rng.shuffle(pick)
            out = Rows(bf[pick], bl[pick], bp[pick].tolist() if paths else [], -1, bi[pick])
            gone = np.zeros(m, bool)
            tail = pick >= fill - m
            gone[pick[tail] - (fill - m)] = True
            holes = pick[~tail]
            src = np.flatnonzero(~gone) + (fill - m)
            bf[holes], bl[holes], bi[holes] = bf[src], bl[src], bi[src]
            if paths:
                bp[holes] = bp[src]
                bp[fill - m:fill] = None
            fill -= m
            return out

        try:
            for k in order:
                i, start, stop, big = reads[k]
                feats, labels, names = read(i, start, stop, big)
                m = stop - start
                bf[fill:fill + m], bl[fill:fill + m] = feats, labels
                bi[fill:fill + m] = np.arange(start, stop) + int(self.offsets[i])
                if paths:
                    bp[fill:fill + m] = names
                fill += m
                del feats, labels, names
                while fill >= buffer:
                    yield take(rows)
            while fill:
                yield take(min(rows, fill))
        finally:
            for f, _, _ in handles.values():
                f.close()

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
        >>> data = load_features("features.h5", "fc7")          # doctest: +SKIP
        >>> from sklearn.svm import LinearSVC
        >>> LinearSVC().fit(data.features, data.labels)         # doctest: +SKIP
    """
    from . import store

    path = os.fspath(path)
    if not (os.path.isfile(path) and is_index(path)):
        return store.load_features(path, layer, return_X_y=return_X_y, verify=verify)
    index = read_index(path)
    if not index.complete:  # read whole, an index lacking parts is not the dataset: open_features reads them
        missing = [index.part_path(i) for i in range(len(index.files)) if not part_complete(index.part_path(i))]
        if missing:
            raise OutputError(f"{path} is incomplete (the run was interrupted): its part {missing[0]} is missing "
                              f"({len(missing)} of {len(index.files)}); `vggfeat extract --resume --output-shards` "
                              "completes it (open_features reads the parts written so far)")
    fs = open_features(path, layer)
    features, labels, paths = fs.read(verify=verify)
    return store.as_bunch(path, features, labels, paths, fs.class_names, fs.failed(), fs.layer, dict(fs.attrs),
                         return_X_y, complete=True)


def read_attrs(path) -> dict:
    """The root attributes (settings) of a vggfeat file or of an index of parts, checking its format."""
    from . import store

    if os.path.isfile(os.fspath(path)) and is_index(path):
        return dict(read_index(path).attrs)
    return store.read_attrs(path)


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
        >>> fs = open_features("features.h5", "fc7")                      # doctest: +SKIP
        >>> from sklearn.linear_model import SGDClassifier
        >>> clf = SGDClassifier()
        >>> for X, y in fs.iter_X_y(10000):                                # doctest: +SKIP
        ...     clf.partial_fit(X, y, classes=fs.classes)
    """
    return FeatureSet(path, layer)


def merge_parts(index_path, output, *, overwrite=False, progress=None) -> tuple[int, int]:
    """Write the parts of the index `index_path` into one vggfeat file `output`: the rows, values and
    failures, in order, that a single-file run writes. Returns (rows, failures).

    The file is written beside `output` (`output` + `.vggfeat-tmp`, locked while written) and renamed
    onto `output` only once complete and flushed to disk: a merge cut short (an error, a full disk,
    kill -9) leaves `output` as it was (absent, or the old file of an `overwrite`); the next merge
    removes the temporary a killed one left."""
    from .store import OVERWRITE_SUFFIX, FeatureWriter, open_read, read_sources
    from .stream import progress_bar

    index = read_index(index_path)
    if not index.complete:
        raise OutputError(f"{index_path} is incomplete (the run was interrupted); `vggfeat extract --resume "
                          "--output-shards` completes it first")
    output = os.fspath(output)
    if os.path.abspath(output) == os.path.abspath(index_path):
        raise OutputError("the merged file must not replace its own index")
    folder = os.path.dirname(index.part_path(0)) if index.files else None
    if folder and os.path.abspath(os.path.dirname(os.path.abspath(output))) == os.path.abspath(folder):
        raise OutputError(f"the merged file must not go into the index's parts folder {folder}")
    if os.path.lexists(output) and not overwrite:
        raise OutputError(f"{output} exists; pass --overwrite to replace it")
    try:
        FeatureWriter.check_output(output, overwrite=overwrite)
    except WriteFailed as exc:  # its hint is a run's (--resume); a merge writes nothing until it is done
        raise _merge_failed(exc, output) from None
    sources = {}
    for i in range(len(index.files)):  # every part there and its index's, before anything is written
        p = index.part_path(i)
        if not part_complete(p):
            raise OutputError(f"{index_path}: its part {p} is missing or incomplete")
        with open_read(p) as f:
            check_part(index, i, f)
            sources.update(read_sources(f))
    settings = {k: v for k, v in index.attrs.items() if k not in _INDEX_ONLY}
    layers = list(index.feature_shapes)
    try:
        writer = FeatureWriter.create(output, settings=settings, feature_shapes=index.feature_shapes,
                                      class_names=index.class_names, dtype=index.attrs.get("dtype", "float32"),
                                      compression=None if index.attrs.get("compression") in (None, "none")
                                      else index.attrs["compression"], overwrite=overwrite, beside=True,
                                      sources=sources)
    except WriteFailed as exc:
        raise _merge_failed(exc, output) from None
    assert writer.path == output + OVERWRITE_SUFFIX
    bar = progress_bar(int(index.rows.sum()), progress, desc="merge")
    rows = failures = 0
    ok = False
    failure = None
    try:
        for i in range(len(index.files)):
            r, fl = append_part(writer, index.part_path(i), layers, on_rows=bar.update)
            rows += r
            failures += fl
        ok = True
    except WriteFailed as exc:
        failure = _merge_failed(exc, output)
    finally:
        bar.close()
        try:  # complete: flushed, fsynced and renamed onto `output`; else the temporary is removed
            writer.close(complete=ok and rows > 0, place=ok)
        except WriteFailed as exc:
            if failure is None:
                failure = _merge_failed(exc, output)
    if failure is not None:
        raise failure
    return rows, failures


def _merge_failed(exc, output) -> WriteFailed:
    """A failed write of a merge, in one line: nothing was written, `output` is as it was."""
    import errno as _errno

    cause = str(exc).split("; ")[0]
    full = getattr(exc.__cause__ or exc.__context__, "errno", None) in (_errno.ENOSPC, _errno.EDQUOT) \
        or "No space left" in cause or "quota" in cause.lower()
    what = "free some space" if full else "fix the cause"
    return WriteFailed(f"{cause}; nothing was written ({output} was left as it was): {what} and run "
                       "`vggfeat merge` again")


def append_part(writer, part, layers, *, skip=None, on_rows=None) -> tuple[int, int]:
    """Append the rows of the part file `part` (those not in `skip`) and all its failures to `writer`,
    in order, reading 64 MB of features at a time. Returns (rows, failures) appended."""
    sets = [FeatureSet(part, layer) for layer in layers]
    layout = writer.feature_layout()
    step = max(1, (64 << 20) // max(1, sum(4 * int(np.prod(s.row_shape)) for s in sets)))
    its = [s.iter_batches(step) for s in sets]  # one file, the same commits: the same runs of rows
    rows = 0
    for parts in zip(*its):
        paths, labels = parts[0].paths, parts[0].labels
        feats = {layer: r.features for layer, r in zip(layers, parts)}
        if skip:
            keep = np.array([p not in skip for p in paths], bool)
            if not keep.all():
                paths = [p for p, k in zip(paths, keep) if k]
                labels = labels[keep]
                feats = {k: v[keep] for k, v in feats.items()}
        if paths:
            writer.append(paths, labels, feats)
            rows += len(paths)
            if on_rows is not None:
                on_rows(len(paths))
    failed = sets[0].failed()
    if failed:
        writer.append([], [], {layer: np.empty((0,) + layout[layer][0], layout[layer][1]) for layer in layers},
                      failed)
    return rows, len(failed)
