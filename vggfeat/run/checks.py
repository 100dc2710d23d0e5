"""The checks of an `extract` run that need nothing built: the output is not an input, a resumed output
was made with these settings from these inputs, and its shards did not change (each under a second)."""

from __future__ import annotations

import json
import os

from .. import braces
from ..config import ExtractorConfig
from ..errors import OutputError, VggfeatError
from ..images import is_image_name, normalize_extensions
from ..io.guard import parts_folders
from ..io.layout import changed_sources, open_read, read_sources, settings_differences
from ..io.read import read_attrs
from ..shards import ShardInputs, has_braces, is_shard_name, is_url, safe_url


def inputs_attr(inputs) -> str:
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
    extensions = normalize_extensions(extensions)
    real = os.path.realpath(output)
    parts = parts_folders(output) if output_shards else ()
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
        for folder in parts:
            if _inside(where, os.path.realpath(folder)):
                raise OutputError(f"the parts' folder {folder} of the output would hold the input {given} (a "
                                  "run with --output-shards --overwrite empties it); name the output elsewhere")


def check_output_not_scanned(output, images):
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


def check_resume(output, config, check, inputs, dtype):
    """Before anything is built: refuse to resume a file made with other settings (those known without
    the network: layers, form, pooling, geometry, precision, the descriptor, the weights' kind and
    architecture, the inputs, the storage dtype), with the message the writer gives. A file whose
    settings cannot be read is left to the writer (which may rebuild it)."""

    try:
        have = read_attrs(output)
        stored = ExtractorConfig.from_attrs(have, source=output)
    except Exception:  # noqa: BLE001 - damaged or foreign: the sink decides when it resumes it
        return
    # what only the built network decides is taken from the file, so that it never differs here
    wanted = config.replace(arch=check.arch, input_size=stored.input_size, weights_sha256=stored.weights_sha256)
    if wanted.weights_is_file and stored.weights_is_file:
        wanted = wanted.replace(weights=stored.weights)
    settings = wanted.to_attrs()
    settings["inputs"] = inputs_attr(inputs)
    diffs = settings_differences(have, settings, dtype, output)
    if diffs:
        raise OutputError(f"cannot resume {output}: its settings differ from this run's: " + "; ".join(diffs))


def check_sources(output, images):
    """Refuse to resume a single file (append-only) whose shards changed since it was begun: its rows of
    the shard's old content would stay beside rows of the new (an index of parts reads such a shard
    again instead)."""

    try:
        with open_read(output) as f:
            recorded = read_sources(f)
    except VggfeatError:
        return  # damaged or foreign: the sink decides when it resumes it
    changed = changed_sources(recorded, images.identities)
    if changed:
        more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        raise OutputError(f"cannot resume {output}: the shard {changed[0]}{more} changed since the run began "
                          f"({recorded[changed[0]]}, now {images.identities.get(changed[0])}); its rows would mix "
                          "old and new content: --overwrite starts again (or --output-shards reads changed "
                          "shards again)")
