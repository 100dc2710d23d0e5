"""Engines: what runs the network over a run's inputs and writes their rows into a sink.

An engine is anything that implements `Engine`; `vggfeat.run.job` calls its methods in this order:
`check` (before anything is built), `start`, `write` (once), `close`. `write` puts every input into the
sink it is given (`vggfeat.io.sink`): into a `FileSink` in input order, into a `PartsSink` one whole part
per unit. Adding an engine is one file with a class like `LocalEngine` and a line in `make_engine`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ..io.sink import FileSink, PartsSink
from ..progress import progress_bar
from ..stream import iter_features
from .options import RunOptions
from .units import parts_report, write_part


@runtime_checkable
class Engine(Protocol):
    """What `extract` needs of an engine."""

    name: str

    def check(self, output: str, options: RunOptions) -> None:
        """Refuse, before anything is built, what this engine cannot do with `output` (one-line errors)."""

    def start(self) -> None:
        """Acquire what the run needs (a cluster) before anything is written."""

    def write(self, images, sink: FileSink | PartsSink, extractor, options: RunOptions, *, progress=None,
              on_batch=None) -> dict:
        """Write every input of `images` not already in `sink` into it; returns {"written", "failed"} (rows
        and failures this call wrote) and, for a cluster, {"workers"}."""

    def close(self) -> None:
        """Give back what `start` acquired."""


class LocalEngine:
    """This process: decoding threads feed the network; batches go into the sink as they come."""

    name = "local"

    def check(self, output, options):
        """Nothing of its own to check."""

    def start(self):
        """Nothing to acquire."""

    def write(self, images, sink, extractor, options, *, progress=None, on_batch=None) -> dict:
        if sink.kind == "file":
            return self._stream(images, sink, extractor, options, progress, on_batch)
        return self._parts(sink, extractor, options, progress, on_batch)

    @staticmethod
    def _stream(images, sink, extractor, options, progress, on_batch):
        report = {"written": 0, "failed": 0}
        for batch in iter_features(images, extractor, workers=options.decode_workers, skip=sink.done,
                                   progress=progress, strict=options.strict, max_pixels=options.max_pixels):
            sink.append(batch)
            report["written"] += len(batch.paths)
            report["failed"] += len(batch.failed)
            if on_batch is not None:
                on_batch(batch)
        return report

    @staticmethod
    def _parts(sink, extractor, options, progress, on_batch):
        todo = sink.todo
        bar = progress_bar(sum(u.images or 0 for u in todo) or None, progress)

        def counted(batch):
            bar.update(len(batch.paths) + len(batch.failed))
            if on_batch is not None:
                on_batch(batch)

        reports = []
        try:
            for u in todo:
                r = write_part(u, sink.part_path(u), extractor, sink.spec, workers=options.decode_workers,
                               strict=options.strict, max_pixels=options.max_pixels, on_batch=counted,
                               run_id=sink.run_id)
                sink.record(u.number, r.rows, r.failed)
                reports.append(r)
        finally:
            bar.close()
        return parts_report(reports)

    def close(self):
        """Nothing to give back."""


def make_engine(options: RunOptions) -> Engine:
    """The engine `options.engine` names, its own options checked (before anything is built)."""
    if options.engine == "local":
        return LocalEngine()
    from .ray import RayEngine  # Ray only when asked for

    return RayEngine(options)
