"""The sinks every engine writes through (`vggfeat.io.sink`), driven with batches made here (no network):
one lock per output name whatever the mode, a new output written beside its name and put in place only
when complete, staged parts taken in unit order, an index of parts resumed part by part."""

import hashlib
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from io_helpers import REPO, SETTINGS, Batch, Unit, make_index, no_framework_imported  # noqa: F401
from vggfeat import load_features, merge_parts, verify
from vggfeat.errors import OutputError
from vggfeat.io.guard import OutputLock, check_output, lock_path
from vggfeat.io.layout import OutputSpec
from vggfeat.io.sink import FileSink, PartsSink, live_parts_folder, part_writer, staging_dir

SPEC = OutputSpec(SETTINGS, {"fc7": (4,)}, ["a", "b"])


def batch(start, n):
    rows = range(start, start + n)
    return Batch([f"{i}.png" for i in rows], [i % 2 for i in rows],
                 {"fc7": np.asarray([[i, i + 0.5, -i, 1] for i in rows], np.float32)})


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_one_lock_per_output_name_whatever_writes_it(tmp_path):
    out = str(tmp_path / "f.h5")
    sink = FileSink(out, SPEC)
    try:
        for other in (lambda: FileSink(out, SPEC, overwrite=True),
                      lambda: PartsSink(out, SPEC, [Unit(0, "s/0.tar")], overwrite=True),
                      lambda: check_output(out, overwrite=True),
                      lambda: merge_parts(make_index(tmp_path / "idx.h5"), out, overwrite=True, progress=False)):
            with pytest.raises(OutputError, match=r"in use by another process.*wait for it to finish") as info:
                other()
            assert "\n" not in str(info.value)
    finally:
        sink.close(False)
    assert not os.path.exists(lock_path(out))  # released, and its file gone
    OutputLock(out).release()


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    out = str(tmp_path / "f.h5")
    code = f"from vggfeat.io.guard import OutputLock; l = OutputLock({out!r}); print('held', flush=True); input()"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    with pytest.raises(OutputError, match=f"in use by another process \\(pid {proc.pid}\\)"):
        OutputLock(out)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert os.path.exists(lock_path(out))  # what the kill left
    OutputLock(out).release()  # taken over: a lock dies with its process


def test_overwrite_writes_beside_and_replaces_only_when_complete(tmp_path):
    out = str(tmp_path / "f.h5")
    sink = FileSink(out, SPEC)
    sink.append(batch(0, 5))
    sink.close(True)
    before = digest(out)
    sink = FileSink(out, SPEC, overwrite=True)
    sink.append(batch(100, 7))
    assert digest(out) == before and sink.replacing  # nothing at the final name changes meanwhile
    sink.close(False)  # an interrupted --overwrite: the old file, byte for byte, and no temporary
    assert digest(out) == before and sorted(os.listdir(tmp_path)) == ["f.h5"]
    sink = FileSink(out, SPEC, overwrite=True)
    sink.append(batch(100, 7))
    sink.close(True)
    assert list(load_features(out).paths) == [f"{i}.png" for i in range(100, 107)] and verify(out).ok


def test_staged_parts_are_taken_in_unit_order_once(tmp_path):
    """What the Ray engine does for one file: parts written elsewhere, in any order, taken in unit order;
    taken again after an interruption, rows already in the file are skipped (never twice)."""
    out = str(tmp_path / "f.h5")
    units = [Unit(k, f"block-{k}") for k in range(3)]
    sink = FileSink(out, SPEC)
    for u in reversed(units):  # workers finish in any order
        w = part_writer(sink.staged_part(u), SPEC, number=u.number, name=u.name, key=u.key)
        b = batch(10 * u.number, 4)
        w.append(b.paths, b.labels, b.features, [(f"bad-{u.number}.png", "not an image")])
        w.close(complete=True)
    assert sink.take(units[0]) == (4, 1)
    sink.close(False)  # interrupted after the first unit
    sink = FileSink(out, SPEC, resume=True)
    for u in units:
        assert all(sink.staged(u) for u in units)
        sink.take(u)
    sink.close(True)
    data = load_features(out)
    assert list(data.paths) == [f"{i}.png" for k in (0, 10, 20) for i in range(k, k + 4)]
    assert [p for p, _ in data.failed] == ["bad-0.png", "bad-1.png", "bad-2.png"]
    assert not os.path.exists(staging_dir(out)) and verify(out).ok


def test_an_index_of_parts_resumes_part_by_part(tmp_path):
    out = str(tmp_path / "idx.h5")
    units = [Unit(k, f"s/{k}.tar") for k in range(3)]
    sink = PartsSink(out, SPEC, units)
    assert [u.number for u in sink.todo] == [0, 1, 2]
    w = part_writer(sink.part_path(units[1]), SPEC, number=1, name=units[1].name, key=units[1].key,
                    run_id=sink.run_id)
    b = batch(10, 3)
    w.append(b.paths, b.labels, b.features)
    w.close(complete=True)
    sink.record(1, 3, 0)
    sink.close(False)  # interrupted: the index says incomplete, the finished part stays
    report = verify(out)
    assert not report.ok and "is incomplete" in report.problems[-1]
    sink = PartsSink(out, SPEC, units, resume=True)
    assert [u.number for u in sink.todo] == [0, 2] and sink.skipped == 3
    for u in sink.todo:
        w = part_writer(sink.part_path(u), SPEC, number=u.number, name=u.name, key=u.key, run_id=sink.run_id)
        b = batch(10 * u.number, 3)
        w.append(b.paths, b.labels, b.features)
        w.close(complete=True)
        sink.record(u.number, 3, 0)
    sink.close(True)
    assert verify(out).ok and list(load_features(out).paths) == [f"{i}.png" for k in (0, 10, 20)
                                                                  for i in range(k, k + 3)]


def test_a_part_missing_from_its_sink_is_refused_not_written_as_complete(tmp_path):
    out = str(tmp_path / "idx.h5")
    sink = PartsSink(out, SPEC, [Unit(0, "s/0.tar"), Unit(1, "s/1.tar")])
    sink.record(0, 0, 0)
    with pytest.raises(OutputError, match=r"1 parts of .* were not written \(first: s/1.tar\)"):
        sink.close(True)
    assert not OutputLock(out).release()  # the lock was released with the error


def test_merge_puts_nothing_at_its_name_until_complete(tmp_path, monkeypatch):
    index = make_index(tmp_path / "idx.h5")
    from vggfeat.io import merge

    real = merge.append_part
    calls = []

    def stop_after_one(*a, **k):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(merge, "append_part", stop_after_one)
    with pytest.raises(KeyboardInterrupt):
        merge_parts(index, tmp_path / "m.h5", progress=False)
    assert not os.path.exists(tmp_path / "m.h5") and not [n for n in os.listdir(tmp_path) if "tmp" in n]
    monkeypatch.undo()
    assert merge_parts(index, tmp_path / "m.h5", progress=False) == (60, 0)
    assert verify(tmp_path / "m.h5").ok


KILLED_AT_STEP = r"""
import os, shutil, sys
sys.path.insert(0, os.path.join(sys.argv[1], "tests", "io"))
import numpy as np
from io_helpers import SETTINGS, Unit
from vggfeat.io.layout import OutputSpec
from vggfeat.io.sink import PartsSink, part_writer

out, step = sys.argv[2], int(sys.argv[3])
spec = OutputSpec(SETTINGS, {"fc7": (4,)}, ["a", "b"])
units = [Unit(k, f"s/{k:05d}.tar") for k in range(3)]
sink = PartsSink(out, spec, units, overwrite=True)
for u in units:
    w = part_writer(sink.part_path(u), spec, number=u.number, name=u.name, key=u.key, run_id=sink.run_id)
    w.append([f"new{u.number}.png"], [0], {"fc7": np.full((1, 4), u.number, np.float32)})
    w.close(complete=True)
    sink.record(u.number, 1, 0)
calls = [0]
def killing(real):
    def step_then_maybe_die(*args, **kwargs):
        calls[0] += 1
        if calls[0] == step:
            os._exit(9)  # as kill -9 at this step of putting the new output in place
        return real(*args, **kwargs)
    return step_then_maybe_die
os.replace, os.rename, os.remove, shutil.rmtree = (killing(os.replace), killing(os.rename), killing(os.remove),
                                                   killing(shutil.rmtree))
sink.close(True)
print(calls[0])
"""


def test_an_overwrite_of_parts_killed_at_any_step_leaves_the_old_output_or_the_new(tmp_path):
    """Every file-system step of putting a new index and its parts in place of the old, killed there:
    the output is then the old one, whole, or the new one, whole (never an old index over new parts)."""
    step, steps = 1, None
    while steps is None or step <= steps + 1:
        out = str(tmp_path / f"idx{step}.h5")
        make_index(out, n_parts=2, per=5)
        old = [str(p) for p in load_features(out).paths]
        proc = subprocess.run([sys.executable, "-c", KILLED_AT_STEP, REPO, out, str(step)], cwd=REPO,
                              capture_output=True, text=True)
        if proc.returncode == 0:
            steps = int(proc.stdout.strip())  # the run's own number of steps: every one was a kill once
        else:
            assert proc.returncode == 9, proc.stderr[-2000:]
        assert verify(out).ok, (step, verify(out).problems)
        got = [str(p) for p in load_features(out).paths]
        assert got in (old, ["new0.png", "new1.png", "new2.png"]), (step, got)
        # the next run removes what the killed one left, and the output keeps only its own parts folder
        units = [Unit(0, "s/0.tar")]
        sink = PartsSink(out, SPEC, units, overwrite=True)
        w = part_writer(sink.part_path(units[0]), SPEC, number=0, name="s/0.tar", key=units[0].key, run_id=sink.run_id)
        b = batch(0, 2)
        w.append(b.paths, b.labels, b.features)
        w.close(complete=True)
        sink.record(0, 2, 0)
        sink.close(True)
        assert list(load_features(out).paths) == ["0.png", "1.png"]
        assert sorted(n for n in os.listdir(tmp_path) if n.startswith(f"idx{step}.h5")) == sorted(
            [f"idx{step}.h5", os.path.basename(live_parts_folder(out))]), (step, os.listdir(tmp_path))
        step += 1
    assert steps >= 2


def test_a_file_written_over_an_index_takes_its_parts_along(tmp_path):
    out = str(tmp_path / "idx.h5")
    make_index(out)
    sink = FileSink(out, SPEC, overwrite=True)
    sink.append(batch(0, 3))
    assert os.path.isdir(out + ".parts")  # the old output stays whole until the new one is in place
    sink.close(True)
    assert list(load_features(out).paths) == ["0.png", "1.png", "2.png"]
    assert not os.path.exists(out + ".parts")  # no orphaned parts in the way of a later --output-shards run
