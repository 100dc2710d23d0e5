"""Units of input (a tar shard, or a run of loose images) and the part each is written into."""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field, replace

from ..images import MAX_PIXELS, ImageList
from ..io.sink import part_writer
from ..shards import LOOSE_PER_UNIT, ShardInputs
from ..stream import iter_features

log = logging.getLogger("vggfeat")


#: Loose images (folders, image files, lists, images under a prefix) per part.
LOOSE_PER_PART = LOOSE_PER_UNIT


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
    def sources(self) -> dict:
        """{shard: identity} of its shards (`vggfeat.shards.identity`), recorded in its part."""
        return unit_sources(self)

    @property
    def key(self) -> str:
        """What the unit holds, as far as is known without reading it: a shard's name (shards are
        immutable by the WebDataset convention), or a digest of the loose images' stored paths."""
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


@dataclass
class PartReport:
    number: int
    rows: int
    failed: int
    seconds: float
    failures: list = field(default_factory=list)  # (path, reason)
    unlabelled: int = 0  # shard images with no usable label, and with one
    labelled: int = 0


def write_part(unit: Unit, path, extractor, spec, *, workers=None, strict=False, max_pixels=None, on_batch=None,
               run_id="") -> PartReport:
    """Extract `unit` into the part `path` (`vggfeat.io.sink.part_writer`: written beside its name, put
    in place when complete, so a part under its name holds its whole unit; an earlier unfinished attempt
    is replaced)."""
    began = time.perf_counter()
    writer = part_writer(path, spec, number=unit.number, name=unit.name, key=unit.key, run_id=run_id,
                         sources=unit.sources)
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
        done = True
    finally:
        writer.close(complete=done)
    return PartReport(unit.number, rows, failed, time.perf_counter() - began, failures,
                      getattr(unit.inputs, "unlabelled", 0), getattr(unit.inputs, "labelled", 0))


def parts_report(reports: list) -> dict:
    """An engine's report of the parts it wrote."""
    return {"written": sum(r.rows for r in reports), "failed": sum(r.failed for r in reports),
            "unlabelled": sum(r.unlabelled for r in reports), "labelled": sum(r.labelled for r in reports)}
