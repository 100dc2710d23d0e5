"""One fault matrix over every write path (issue 21): {one file, parts} x {create, resume, overwrite, merge}
under kill -9 and SIGTERM at random moments (real processes) and an injected ENOSPC (the guarded file's
write fails as a full disk's does). Afterwards either the result equals an uninterrupted run (after
`--resume` where that applies) or the earlier output is byte for byte what it was; no partial file is at
a final name; `verify` agrees with what is on disk. The Ray engine's cells are in tests/test_ray_engine.py
(they share its local Ray). Every kill's moment is drawn from a seed printed on failure."""

import errno
import hashlib
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO
from test_shards import png, write_tar

from vggfeat import extract, load_features, merge_parts, verify
from vggfeat.errors import ExtractInterrupted, WriteFailed
from vggfeat.io import guard
from vggfeat.io.guard import TMP_SUFFIX, parts_dir
from vggfeat.io.layout import DamagedFile
from vggfeat.io.sink import live_parts_folder, other_parts_folder

CLI = ["--arch", "vgg11", "--weights", "random", "--input-size", "32", "--layer", "fc7", "--batch-size", "4",
       "--workers", "1", "-q"]
KW = dict(arch="vgg11", weights="random", input_size=32, batch_size=4, workers=1, progress=False)
SHARDS, PER_SHARD = 6, 40
SEED = int(os.environ.get("VGGFEAT_FAULT_SEED", time.time_ns() % 100000))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Six tar shards of 40 images (and, in the third, a broken one: every run records it as a failure,
    exactly once, however it was stopped and resumed), and the uninterrupted outputs: one file, an index."""
    root = tmp_path_factory.mktemp("matrix")
    for s in range(SHARDS):
        members = []
        for i in range(PER_SHARD):
            n = s * PER_SHARD + i
            members += [(f"{n:06d}.png", png(n)), (f"{n:06d}.cls", str(n % 3).encode())]
            if s == 2 and i == PER_SHARD // 2:
                members += [("broken.png", b"\x89PNG not an image"), ("broken.cls", b"1")]
        write_tar(str(root / "s" / f"{s:05d}.tar"), members)
    inputs = [f"{root}/s/{{00000..{SHARDS - 1:05d}}}.tar"]
    ref, ref_index = str(root / "ref.h5"), str(root / "ref_index.h5")
    extract(inputs, ref, "fc7", **KW)
    extract(inputs, ref_index, "fc7", output_shards=True, **KW)
    return inputs, ref, ref_index


def same(out, ref):
    a, b = load_features(out, "fc7"), load_features(ref, "fc7")
    assert list(a.paths) == list(b.paths) and len(a.paths) == SHARDS * PER_SHARD
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.features, b.features)
    assert a.failed == b.failed and a.attrs["complete"]
    assert [p for p, _ in a.failed] == [f"{os.path.dirname(ref)}/s/00002.tar/broken.png"]
    assert verify(out).ok


def digest(path):
    h = hashlib.sha256()
    folder = live_parts_folder(path)  # the parts folder the index names (None: one file)
    for p in [path] + ([os.path.join(folder, n) for n in sorted(os.listdir(folder))]
                       if folder and os.path.isdir(folder) else []):
        with open(p, "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def intact_or_unfinished(out):
    """`verify` says what is on disk, in one line and without a traceback: intact commits (an unfinished
    index says only that it is), or, where the cut write was one of HDF5's own metadata, damage that
    `--resume` rebuilds (the caller resumes next and compares with an uninterrupted run)."""
    try:
        report = verify(out)
    except DamagedFile as exc:
        assert "\n" not in str(exc) and "--resume" in str(exc), f"seed {SEED}: {exc}"
        return
    problems = getattr(report, "problems", [] if report.ok else [report.line()])
    assert all("is incomplete (the run was interrupted)" in p or "DAMAGED" in p for p in problems), \
        f"seed {SEED}: {problems}"


def no_temporaries(folder):
    """Nothing of a fault is left (after a kill -9, once the next run has removed what it left)."""
    left = [n for n in os.listdir(folder) if n.endswith(TMP_SUFFIX) or n.endswith(".staging")]
    assert not left, left


def killed(args, sig, rng, watch):
    """Run the CLI with `args`, send `sig` at a random moment after `watch` (a path) appears, wait."""
    proc = subprocess.Popen([sys.executable, "-m", "vggfeat_cli", *map(str, args)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while proc.poll() is None and not os.path.exists(watch) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(rng.uniform(0, 0.8))
    if proc.poll() is None:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    if sig == signal.SIGTERM and proc.returncode == 143:  # stopped in one line, saying what it kept
        assert err.count("\n") == 1 and "terminated (SIGTERM)" in err, err
    return proc.returncode


@pytest.mark.parametrize("kind", ["file", "parts"])
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_create_then_resume_equals_an_uninterrupted_run(tmp_path, data, kind, sig):
    inputs, ref, ref_index = data
    rng = random.Random(f"{SEED}-create-{kind}-{sig}")
    out = str(tmp_path / "out.h5")
    shards = ["--output-shards"] if kind == "parts" else []
    watch = parts_dir(out) if kind == "parts" else out
    code = killed(["extract", *inputs, *CLI, *shards, "-o", out], sig, rng, watch)
    assert code in (0, -signal.SIGKILL, 143, -signal.SIGTERM), f"seed {SEED}: exit {code}"  # -15: before the handler
    if code != 0 and os.path.exists(out):
        intact_or_unfinished(out)
    # a second interruption while resuming, then the resume that completes it
    if code != 0:
        killed(["extract", *inputs, *CLI, *shards, "--resume", "-o", out], sig, rng, watch)
    extract(inputs, out, "fc7", resume=True, output_shards=kind == "parts", **KW)
    same(out, ref)
    no_temporaries(tmp_path)


@pytest.mark.parametrize("kind", ["file", "parts"])
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_overwrite_leaves_the_old_output_or_the_new_one_whole(tmp_path, data, kind, sig):
    inputs, ref, ref_index = data
    rng = random.Random(f"{SEED}-overwrite-{kind}-{sig}")
    out = str(tmp_path / "out.h5")
    shards = ["--output-shards"] if kind == "parts" else []
    extract(inputs[:1][0].replace(f"{SHARDS - 1:05d}", "00001"), out, "fc7", output_shards=kind == "parts", **KW)
    before = digest(out)
    # the new output's first trace: the other parts folder than the old index's, or the file beside OUT
    watch = other_parts_folder(out, live_parts_folder(out)) if kind == "parts" else out + TMP_SUFFIX
    code = killed(["extract", *inputs, *CLI, *shards, "--overwrite", "-o", out], sig, rng, watch)
    if code == 0 or digest(out) != before:  # done, or stopped after the new output took its place: whole
        same(out, ref)
    else:
        assert verify(out).ok
        extract(inputs, out, "fc7", overwrite=True, output_shards=kind == "parts", **KW)
        same(out, ref)
    no_temporaries(tmp_path)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
@pytest.mark.parametrize("old", [False, True], ids=["new", "over-old"])
def test_merge_leaves_no_file_or_the_old_one(tmp_path, data, sig, old):
    inputs, ref, ref_index = data
    rng = random.Random(f"{SEED}-merge-{sig}-{old}")
    out = str(tmp_path / "merged.h5")
    before = None
    if old:
        extract(inputs[0].replace(f"{SHARDS - 1:05d}", "00001"), out, "fc7", **KW)
        before = digest(out)
    args = ["merge", ref_index, "-o", out] + (["--overwrite"] if old else [])
    code = killed(args, sig, rng, out + TMP_SUFFIX)
    if code == 0 or (os.path.exists(out) and digest(out) != before):  # stopped after the rename: whole
        same(out, ref)
    elif old:
        assert digest(out) == before, f"seed {SEED}: the old file changed"
    else:
        assert not os.path.exists(out), f"seed {SEED}: a partial merge at the final name"
    if sig == signal.SIGTERM:  # stopped cleanly: its temporary removed (a kill -9 leaves it to the next merge)
        no_temporaries(tmp_path)
    merge_parts(ref_index, out, overwrite=old or os.path.exists(out), progress=False)
    same(out, ref)
    no_temporaries(tmp_path)


class _FullDisk:
    """The guarded file's write fails with ENOSPC from the `after`-th write on, as a full disk's does."""

    def __init__(self, monkeypatch, after):
        self.calls, self.after = 0, after
        real = guard.GuardedIO.write

        def write(io, b):  # the disk's answer to the file's own write (GuardedIO turns it into a stop)
            self.calls += 1
            if self.calls > self.after and io.error is None:
                io.error = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(io, b)

        monkeypatch.setattr(guard.GuardedIO, "write", write)


@pytest.mark.parametrize("kind,op", [(k, op) for op in ("create", "resume", "overwrite") for k in ("file", "parts")]
                         + [("file", "merge")])  # a merge writes one file
def test_a_full_disk_is_one_line_and_loses_nothing(tmp_path, data, monkeypatch, kind, op):
    inputs, ref, ref_index = data
    rng = random.Random(f"{SEED}-enospc-{kind}-{op}")
    out = str(tmp_path / "out.h5")
    parts = kind == "parts"
    before = None
    if op == "resume":  # an interrupted run to resume
        def stop(batch, n=[0]):
            n[0] += 1
            if n[0] == 20:
                raise KeyboardInterrupt
        with pytest.raises(ExtractInterrupted):
            extract(inputs, out, "fc7", output_shards=parts, on_batch=stop, **KW)
    if op in ("overwrite", "merge"):
        extract(inputs[0].replace(f"{SHARDS - 1:05d}", "00001"), out, "fc7", output_shards=parts and op != "merge",
                **KW)
        before = digest(out)
    full = _FullDisk(monkeypatch, rng.randint(0, 60))
    failure = None
    try:
        if op == "merge":
            merge_parts(ref_index, out, overwrite=True, progress=False)
        else:
            extract(inputs, out, "fc7", output_shards=parts, resume=op == "resume", overwrite=op == "overwrite",
                    **KW)
    except WriteFailed as exc:
        failure = exc
    monkeypatch.undo()
    # a write failed exactly when the disk refused one: never rows that look written but are not
    assert (failure is not None) == (full.calls > full.after), f"seed {SEED}: {full.calls} writes, {failure}"
    if failure is None:  # the run needed fewer writes than the disk had room for
        same(out, ref)
        return
    assert "\n" not in str(failure) and "No space left" in str(failure), f"seed {SEED}: {failure}"
    if before is not None:
        assert digest(out) == before, f"seed {SEED}: the earlier output changed"
    elif os.path.exists(out):
        intact_or_unfinished(out)
    no_temporaries(tmp_path)
    if op == "merge":
        merge_parts(ref_index, out, overwrite=True, progress=False)
    else:
        extract(inputs, out, "fc7", output_shards=parts, resume=op != "overwrite", overwrite=op == "overwrite", **KW)
    same(out, ref)
