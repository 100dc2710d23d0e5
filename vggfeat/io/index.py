"""The index of an output in parts (`--output-shards`): the index file, its parts, their checks."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field

import h5py
import numpy as np

from ..config import attr_value
from ..errors import InputError, OutputError, VggfeatError
from ..faults import is_transient_reason
from ..redact import redact_urls
from .guard import TMP_SUFFIX, parts_dir
from .layout import (
    STRING,
    changed_sources,
    check_meaning,
    committed_counts,
    decode_strings,
    open_read,
    read_file_attrs,
    read_sources,
    seal_meaning,
    settings_differences,
    verify_file,
    write_root_attrs,
)

log = logging.getLogger("vggfeat")


INDEX_FORMAT = "vggfeat-index"


INDEX_VERSION = 2  # 2: settings and class names under checksums (`vggfeat.io.layout.seal_meaning`)


INDEX_READABLE = (1, 2)





def part_name(number: int) -> str:
    return f"part-{number:06d}.h5"


def part_complete(path) -> bool:
    """Whether the part at `path` was written to its end (a complete vggfeat file)."""
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
    with open_read(path) as f:
        _, failed = committed_counts(f)
        return sum(1 for r in decode_strings(f["failed/reasons"][:failed]) if is_transient_reason(r)) if failed else 0


def part_counts(path) -> tuple[int, int]:
    """(rows, failures) committed in the part at `path`."""

    with open_read(path) as f:
        return committed_counts(f)


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
    try:
        with h5py.File(os.fspath(path), "r") as f:
            return f.attrs.get("format") == INDEX_FORMAT
    except (OSError, TypeError):
        return False


def write_index(path, spec, units, rows, failed, *, folder, complete, run_id=""):
    """Write the index `path` of the parts of `units` (their rows and failures, -1: not written yet) in
    `folder`, with the run's `spec` (an `OutputSpec`), whole: beside it, then renamed over it."""
    settings, class_names, feature_shapes = spec.settings, spec.class_names, spec.feature_shapes
    dtype, compression = spec.dtype, spec.compression
    tmp = path + TMP_SUFFIX
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


INDEX_ONLY = ("format", "format_version", "feature_shapes", "parts_folder", "created", "vggfeat_version",
               "complete", "dtype", "compression", "run_id", "meaning_keys", "meaning_crc32")


def check_parts_output(output, *, resume, overwrite):
    """Checks of an index output before anything is built (beyond `vggfeat.io.guard.check_output`)."""
    folder = parts_dir(output)
    exists = os.path.lexists(output)
    if os.path.lexists(folder) and not os.path.isdir(folder):
        raise OutputError(f"{folder} is in the way of the parts' folder: it is not a folder")
    if exists and resume and not is_index(output):
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


def check_single_output(output, *, resume):
    """A single-file run refuses to resume an index."""
    if resume and os.path.exists(output) and is_index(output):
        raise OutputError(f"{output} is an index of parts (--output-shards): resume it with --output-shards")


def reusable_part(path, run_id, key, sources, settings, dtype) -> bool:
    """Whether the part at `path` is complete and holds the unit `key` for the run `run_id`, with its
    settings, and its shards (`sources`: {shard: identity} now) unchanged since it was written."""
    if not part_complete(path) or part_transient(path):  # a transient failure is read again
        return False
    attrs = read_file_attrs(path)
    if attr_value(attrs.get("run_id", "")) != run_id or attr_value(attrs.get("part_key", "")) != key:
        return False
    with open_read(path, meaning=False) as f:
        changed = changed_sources(read_sources(f), sources)
    if changed:
        log.warning("the shard %s changed since its part %s was written: it is read again", changed[0], path)
        return False
    diffs = settings_differences(attrs, settings, dtype, path)
    if diffs:
        raise OutputError(f"cannot resume: {'; '.join(diffs)}")
    return True
