"""Sinks: where an engine writes the rows of a run's units. The one write path of `extract`.

A sink holds every rule of "nothing lost" for its output kind, so that no engine keeps one of its own:

- `FileSink`: one file. Rows arrive in input order: appended (`append`) by an engine that streams in this
  process, or written by workers into *staged parts* (`staged_part`: whole parts renamed into place
  when complete, in `OUTPUT.parts.staging/`) that the sink takes in unit order (`take`).
- `PartsSink`: an index and one part per unit (`--output-shards`): an engine writes each unit's part
  at `part_path` (whole, renamed into place when complete) and reports it (`record`).

Both take the output's one lock (`OutputLock`) for the whole run, write a new output beside its name and
rename it into place when complete (`--overwrite` leaves the old output until then), and never leave a
partial file at a final name. Nothing here builds or runs a network: the engines do (`vggfeat.run`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid

import h5py
import numpy as np

from ..config import attr_value
from ..errors import OutputError, WriteFailed
from ..redact import redact_urls
from .guard import TMP_SUFFIX, OutputLock, parts_dir, parts_folders, sync_folder
from .index import INDEX_FORMAT, part_counts, part_name, read_index, reusable_part, write_index
from .layout import DamagedFile, OutputSpec, settings_differences
from .merge import append_part
from .recover import resume_file
from .writer import FeatureWriter

log = logging.getLogger("vggfeat")


def part_writer(path, spec: OutputSpec, *, number, name, key, run_id="", sources=None) -> FeatureWriter:
    """A writer of the part `path` of unit `number` (`name`, `key`) of run `run_id`: written beside its
    name and put in place by `close(complete=True)` (an older part there is replaced only then); which
    part of which run it is is sealed with the settings."""
    own = dict(spec.settings, part_number=number, part_of=redact_urls(name), part_key=key, run_id=run_id)
    return FeatureWriter.create(path, settings=own, feature_shapes=spec.feature_shapes, class_names=spec.class_names,
                                dtype=spec.dtype, compression=spec.compression, overwrite=True, beside=True,
                                sources=sources)


def staging_dir(output) -> str:
    """Where workers put the parts a single file takes in order (`FileSink.staged_part`)."""
    return parts_dir(output) + ".staging"


class FileSink:
    """One vggfeat file: created, resumed (`resume` and it exists) or replaced (`overwrite`)."""

    kind = "file"

    def __init__(self, output, spec: OutputSpec, *, resume=False, overwrite=False, sources=None):
        self.output, self.spec = os.fspath(output), spec
        self.lock = OutputLock(self.output)
        try:
            # an index replaced by this file: its parts go once the file is in place
            self.replaced_parts = live_parts_folder(self.output) if overwrite and os.path.exists(self.output) \
                else None
            if resume and os.path.exists(self.output):
                self.writer = self._resumed(spec)
                if self.writer.class_names != list(spec.class_names):
                    names = self.writer.class_names
                    self.writer.close()
                    raise OutputError(f"cannot resume {self.output}: its classes {names} differ from the "
                                      f"inputs' {list(spec.class_names)}")
            else:
                self.writer = FeatureWriter.create(self.output, settings=spec.settings,
                                                   feature_shapes=spec.feature_shapes, class_names=spec.class_names,
                                                   dtype=spec.dtype, compression=spec.compression,
                                                   overwrite=overwrite, sources=sources)
        except BaseException:
            self.lock.release()
            raise
        if overwrite and os.path.isdir(staging_dir(self.output)):
            shutil.rmtree(staging_dir(self.output))  # staged by an earlier run of what is replaced now
        self.done = set(self.writer.written_paths())

    def _resumed(self, spec):
        """The file resumed (checked, rolled back or rebuilt), or, when nothing of it can be read (a
        write cut short in HDF5's own metadata), written again from the start, saying so."""
        try:
            return resume_file(self.output, settings=spec.settings, dtype=spec.dtype)
        except DamagedFile as exc:
            writer = FeatureWriter.create(self.output, settings=spec.settings, feature_shapes=spec.feature_shapes,
                                          class_names=spec.class_names, dtype=spec.dtype,
                                          compression=spec.compression, overwrite=True)
            writer.recovered = (f"{self.output} could not be read at all ({str(exc).split(': ', 1)[-1]}); it is "
                                "written again from the start")
            log.warning(writer.recovered)
            return writer

    @property
    def rows(self) -> int:
        return self.writer.rows

    @property
    def recovered(self):
        return self.writer.recovered

    @property
    def replacing(self) -> bool:
        return self.writer.path != self.writer.final_path

    def append(self, batch):
        self.writer.append(batch.paths, batch.labels, batch.features, batch.failed)

    # units written elsewhere (the Ray engine's workers), taken in order -------------------------
    def unit_size(self, wanted: int) -> int:
        """Images per staged unit: the size a stopped run cut its staged parts to, when it left some (a
        part is reused only for the same unit), else `wanted`, recorded for a run that resumes this one."""
        record = os.path.join(staging_dir(self.output), "units.json")
        try:
            with open(record, encoding="utf-8") as f:
                size = int(json.load(f)["images_per_unit"])
            if size != wanted:
                log.info("resumed: the staged parts hold units of %d images (not %d): kept", size, wanted)
            return size
        except (OSError, ValueError, KeyError, TypeError):
            pass
        os.makedirs(staging_dir(self.output), exist_ok=True)
        with open(record, "w", encoding="utf-8") as f:
            json.dump({"images_per_unit": int(wanted)}, f)
        return int(wanted)

    def staged_part(self, unit) -> str:
        folder = staging_dir(self.output)
        os.makedirs(folder, exist_ok=True)
        return os.path.join(folder, part_name(unit.number))

    def staged(self, unit) -> bool:
        """Whether `unit`'s part was staged whole by an earlier attempt, with this run's settings."""
        return reusable_part(self.staged_part(unit), "", unit.key, unit.sources, self.spec.settings, self.spec.dtype)

    def take(self, unit) -> tuple[int, int]:
        """Append the staged part of `unit` (its rows not already in the file). Staged parts stay until
        `close(complete=True)`: a run stopped while taking them takes them again when resumed."""
        rows, failures = append_part(self.writer, self.staged_part(unit), list(self.spec.feature_shapes),
                                     skip=self.done)
        return rows, failures

    def fail(self, exc) -> BaseException:
        """The error to raise for an engine's failure `exc` (the file keeps its committed rows; `close`
        removes an `--overwrite`'s new file)."""
        return exc

    def close(self, complete: bool):
        """Commit and close; `complete` (and a row written) marks the file complete and puts an
        `--overwrite`'s new file in place; the staging folder goes once the file holds its rows."""
        try:
            self.writer.close(complete=complete and self.writer.rows > 0)
            if complete and os.path.isdir(staging_dir(self.output)):
                shutil.rmtree(staging_dir(self.output))
            if complete and self.writer.rows > 0 and self.replaced_parts and os.path.isdir(self.replaced_parts):
                shutil.rmtree(self.replaced_parts)
        finally:
            self.lock.release()

    def interrupted(self) -> str:
        """What an interruption kept, in one line (the file is closed)."""
        if self.replacing:
            return f"{self.output} was left as it was before this --overwrite run (run it again to replace it)"
        if self.rows == 0:
            return f"no row was written yet; {self.output} holds none (--resume starts it, --overwrite starts afresh)"
        return f"{self.rows} rows written to {self.output} are kept; `--resume` continues"


class PartsSink:
    """An index and its parts: the units not already complete (`todo`) are written by an engine into
    `part_path(unit)` and reported with `record`; `close` writes the complete index."""

    kind = "parts"

    def __init__(self, output, spec: OutputSpec, units, *, resume=False, overwrite=False):
        self.output, self.spec, self.units = os.fspath(output), spec, list(units)
        self.replacing = overwrite and os.path.exists(self.output)
        self.index_path = self.output + TMP_SUFFIX if self.replacing else self.output
        self.rows = np.full(len(self.units), -1, np.int64)
        self.failed = np.full(len(self.units), -1, np.int64)
        resuming = resume and os.path.exists(self.output)
        self.lock = OutputLock(self.output)
        try:
            self.live = live_parts_folder(self.output) if os.path.exists(self.output) else None
            # an --overwrite writes its parts into the other folder than the one the old index names:
            # renaming the new index into place is the one moment the output changes
            self.folder = other_parts_folder(self.output, self.live) if self.replacing else \
                (self.live or parts_dir(self.output))
            self.run_id = self._resumed_run() if resuming else uuid.uuid4().hex
            self._prepare(resuming)
        except BaseException:
            self.lock.release()
            raise

    def _resumed_run(self) -> str:
        index = read_index(self.output)
        diffs = settings_differences(dict(index.attrs), self.spec.settings, self.spec.dtype, self.output)
        if diffs:
            raise OutputError(f"cannot resume {self.output}: its settings differ from this run's: " + "; ".join(diffs))
        if index.class_names != list(self.spec.class_names):
            raise OutputError(f"cannot resume {self.output}: its classes {index.class_names} differ from the "
                              f"inputs' {list(self.spec.class_names)}")
        if (index.keys or index.names) != [u.key if index.keys else u.name for u in self.units]:
            raise OutputError(f"cannot resume {self.output}: its parts were made from other inputs "
                              f"({len(index.names)} parts, this run has {len(self.units)}; parts are named after "
                              "the inputs as given, so give the same inputs from the same folder)")
        return index.attrs.get("run_id", "")

    def _prepare(self, resuming):
        for folder in parts_folders(self.output):  # ours, named by no index: left by a killed run
            if folder not in (self.folder, self.live) and os.path.isdir(folder):
                shutil.rmtree(folder)
        if not resuming and os.path.isdir(self.folder):  # parts of an unfinished run, replaced as asked
            shutil.rmtree(self.folder)
        os.makedirs(self.folder, exist_ok=True)
        if resuming:
            for i, u in enumerate(self.units):
                path = self.part_path(u)
                if reusable_part(path, self.run_id, u.key, u.sources, self.spec.settings, self.spec.dtype):
                    self.rows[i], self.failed[i] = part_counts(path)
            kept = int(np.count_nonzero(self.rows >= 0))
            if kept:
                log.info("resumed: %d of %d parts were complete and are not read again", kept, len(self.units))
        else:
            self._write_index(self.index_path, complete=False)
        self.skipped = int(self.rows[self.rows >= 0].sum())

    @property
    def todo(self) -> list:
        return [u for i, u in enumerate(self.units) if self.rows[i] < 0]

    def part_path(self, unit) -> str:
        return os.path.join(self.folder, part_name(unit.number))

    def record(self, number, rows, failed):
        self.rows[number], self.failed[number] = rows, failed

    def _write_index(self, path, complete):
        write_index(path, self.spec, self.units, self.rows, self.failed, folder=self.folder, complete=complete,
                    run_id=self.run_id)

    def fail(self, exc) -> BaseException:
        """The error to raise for `exc`, an engine's failure, after cleaning up: an `--overwrite` leaves
        the old output as it was; otherwise the complete parts stay for `--resume`."""
        if self.replacing:  # the old index and the folder it names are untouched
            shutil.rmtree(self.folder, ignore_errors=True)
            if os.path.exists(self.index_path):
                os.remove(self.index_path)
        if isinstance(exc, WriteFailed):  # said of the part; what the user does is about the index
            return WriteFailed(f"{str(exc).split('; ')[0]}; {self._kept()}")
        return exc

    def _kept(self) -> str:
        if self.replacing:
            return f"{self.output} and its parts were left as they were before this --overwrite run"
        return f"the complete parts of {self.output} are kept; `--resume --output-shards` continues"

    def interrupted(self) -> str:
        if self.replacing:
            return f"{self._kept()} (run it again to replace them)"
        return f"the parts completed so far are kept in {self.folder}; `--resume --output-shards` continues"

    def close(self, complete=True):
        """Write the complete index. An `--overwrite`'s new index (naming the new parts' folder) is
        written beside the old one and renamed over it: the one step that changes the output; the old
        parts' folder is removed after it (a kill in between leaves it to the next run to remove)."""
        try:
            if not complete:
                return
            if (self.rows < 0).any():
                missing = self.units[int(np.flatnonzero(self.rows < 0)[0])].name
                raise OutputError(f"{int((self.rows < 0).sum())} parts of {self.output} were not written (first: "
                                  f"{missing}); `--resume --output-shards` continues")
            self._write_index(self.index_path, complete=int(self.rows.sum()) > 0)  # no row: not complete
            if self.replacing:
                os.replace(self.index_path, self.output)
                sync_folder(self.output)
                if self.live is not None and self.live != self.folder:
                    shutil.rmtree(self.live, ignore_errors=True)
        finally:
            self.lock.release()


def live_parts_folder(output) -> str | None:
    """The folder that the existing index `output` names (one of `parts_folders`), None for a single
    file; for an index that cannot be read, the one of the two that exists (the first if both do)."""
    first, second = parts_folders(output)
    try:
        with h5py.File(output, "r") as f:
            if attr_value(f.attrs.get("format", "")) != INDEX_FORMAT:
                return None
            named = str(attr_value(f.attrs.get("parts_folder", "")))
    except (OSError, RuntimeError, KeyError, TypeError):
        named = ""
    for folder in (first, second):
        if named == os.path.basename(folder):
            return folder
    return second if os.path.isdir(second) and not os.path.isdir(first) else first


def other_parts_folder(output, live) -> str:
    first, second = parts_folders(output)
    return second if live == first else first
