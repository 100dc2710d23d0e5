"""`merge_parts` (`vggfeat merge`): an index of parts into the one file a single-file run writes."""

from __future__ import annotations

import contextlib
import errno as _errno
import os

import numpy as np

from ..errors import OutputError, WriteFailed
from ..progress import progress_bar
from .guard import TMP_SUFFIX, OutputLock, check_output, remove_stale
from .index import INDEX_ONLY, check_part, part_complete, read_index
from .layout import open_read, read_sources
from .read import FeatureSet
from .writer import FeatureWriter


def merge_parts(index_path, output, *, overwrite=False, progress=None) -> tuple[int, int]:
    """Write the parts of the index `index_path` into one vggfeat file `output`: the rows, values and
    failures, in order, that a single-file run writes. Returns (rows, failures).

    The file is written beside `output` (`output` + `.vggfeat-tmp`, locked while written) and renamed
    onto `output` only once complete and flushed to disk: a merge cut short (an error, a full disk,
    kill -9) leaves `output` as it was (absent, or the old file of an `overwrite`); the next merge
    removes the temporary a killed one left."""

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
        check_output(output, overwrite=overwrite)
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
    settings = {k: v for k, v in index.attrs.items() if k not in INDEX_ONLY}
    with OutputLock(output):  # the one writer of this name, as for a run
        return _merge(index, output, settings, overwrite, sources, progress)


def _merge(index, output, settings, overwrite, sources, progress):
    """The merge itself, under the output's lock: written beside `output`, put in place when whole; a merge
    stopped anywhere (an error, Ctrl-C, SIGTERM) removes its temporary (kill -9: the next merge does)."""
    layers = list(index.feature_shapes)
    bar = progress_bar(int(index.rows.sum()), progress, desc="merge")
    writer, rows, failures, ok, failure = None, 0, 0, False, None
    try:
        writer = FeatureWriter.create(output, settings=settings, feature_shapes=index.feature_shapes,
                                      class_names=index.class_names, dtype=index.attrs.get("dtype", "float32"),
                                      compression=None if index.attrs.get("compression") in (None, "none")
                                      else index.attrs["compression"], overwrite=overwrite, beside=True,
                                      sources=sources)
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
            if writer is not None:
                writer.close(complete=ok and rows > 0, place=ok)
        except WriteFailed as exc:
            if failure is None:
                failure = _merge_failed(exc, output)
        finally:
            if not ok and os.path.lexists(output + TMP_SUFFIX):  # stopped between two steps of the above
                with contextlib.suppress(OSError, OutputError):
                    remove_stale(output + TMP_SUFFIX)
    if failure is not None:
        raise failure
    return rows, failures


def _merge_failed(exc, output) -> WriteFailed:
    """A failed write of a merge, in one line: nothing was written, `output` is as it was."""
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
