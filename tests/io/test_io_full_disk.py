"""A disk that fills up at every possible write of a file's life (create, rows, close, resume): never a
crash, a one-line error, a file that `--resume` completes (`vggfeat.io.guard.GuardedIO`).

HDF5 writes its metadata through a cache; when one of those writes fails, HDF5 must still see the file
it believes it wrote, or it parses what is really on disk as its own structures (once seen in CI as a
segmentation fault inside create_dataset). Each sweep runs in a child process so that such a crash is a
failing test naming the write it happened at, not a dead test run.
"""

import errno
import json
import os
import subprocess
import sys

from io_helpers import REPO, no_framework_imported  # noqa: F401
from vggfeat.io.guard import GuardedIO

SWEEP = r"""
import errno, json, os, sys
import numpy as np
sys.path.insert(0, os.path.join(sys.argv[1], "tests", "io"))
from io_helpers import SETTINGS, Batch
from vggfeat import load_features, verify
from vggfeat.errors import VggfeatError
from vggfeat.io import guard
from vggfeat.io.layout import OutputSpec
from vggfeat.io.sink import FileSink

folder, op = sys.argv[2], sys.argv[3]
real = guard.GuardedIO.write
state = {"calls": 0, "after": None}

def write(io, b):  # the disk's answer: full from the `after`-th write on
    state["calls"] += 1
    if state["after"] is not None and state["calls"] > state["after"] and io.error is None:
        io.error = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real(io, b)

guard.GuardedIO.write = write
SPEC = OutputSpec(SETTINGS, {"fc7": (6,)}, ["a", "b"])
rows = np.arange(40 * 6, dtype=np.float32).reshape(40, 6)

def run(path, stop=40, resume=False):
    # an engine's batches of 7 through the sink, skipping what a resumed file holds; a failure a batch
    sink = FileSink(path, SPEC, resume=resume)
    complete = False
    try:
        todo = [k for k in range(stop) if f"{k}.png" not in sink.done]
        for i in range(0, len(todo), 7):
            ks = todo[i:i + 7]
            sink.append(Batch([f"{k}.png" for k in ks], [k % 2 for k in ks], {"fc7": rows[ks]},
                              failed=[(f"bad{ks[0]}.png", "cannot decode")]))
        complete = stop == 40
    finally:
        sink.close(complete)

def same(path):
    got = load_features(path, "fc7")
    assert list(got.paths) == [f"{k}.png" for k in range(40)], got.paths
    assert np.array_equal(got.features, rows)

def fresh(name):
    path = os.path.join(folder, name)
    if op == "resume":  # a run stopped after 14 rows, to resume
        state["after"] = None
        run(path, stop=14)
    return path

state["calls"] = 0
run(fresh("count.h5"), resume=op == "resume")
total = state["calls"]
for after in range(total + 1):
    print(f"write {after} of {total}", flush=True)
    path = fresh(f"f{after}.h5")
    state["calls"], state["after"] = 0, after
    try:
        run(path, resume=op == "resume")
        failure = None
    except VggfeatError as exc:
        failure = exc
    state["after"] = None
    if state["calls"] <= after:  # the disk had room for the whole run
        assert failure is None, failure
        same(path)
        continue
    assert failure is not None and "\n" not in str(failure) and "No space left" in str(failure), failure
    assert not any(name.endswith(guard.TMP_SUFFIX) for name in os.listdir(folder)), os.listdir(folder)
    if os.path.exists(path):
        try:  # what is on disk is what a kill at that write leaves: rows, or damage said in one line
            verify(path)
        except VggfeatError as exc:
            assert "\n" not in str(exc), exc
    run(path, resume=True)  # --resume completes it
    same(path)
    os.remove(path)
print(json.dumps({"writes": total}))
"""


def sweep(tmp_path, op):
    proc = subprocess.run([sys.executable, "-c", SWEEP, REPO, str(tmp_path), op], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0, f"{op}: exit {proc.returncode} at {lines[-1:]}: {proc.stderr[-3000:]}"
    return json.loads(lines[-1])


def test_a_full_disk_at_any_write_of_a_new_file(tmp_path):
    assert sweep(tmp_path, "create")["writes"] > 20  # every write of the file's life was a failure once


def test_a_full_disk_at_any_write_of_a_resumed_file(tmp_path):
    assert sweep(tmp_path, "resume")["writes"] > 10


def test_after_a_failed_write_the_disk_stays_and_hdf5_reads_back_what_it_wrote(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"A" * 10000)
    io = GuardedIO(os.open(path, os.O_RDWR))
    io.seek(9000)
    io.write(b"B" * 100)  # reaches the disk
    io.error = OSError(errno.ENOSPC, "No space left on device")  # the disk is full from here on
    io.seek(4090)
    io.write(b"C" * 20)  # across a page boundary
    io.seek(12000)
    io.write(b"D" * 10)  # past the end: the file grows, for HDF5 only
    io.truncate(11000)  # HDF5 truncating at close: the D bytes go, the gap reads as zeros
    io.seek(0, os.SEEK_END)
    assert io.tell() == 11000
    io.seek(4080)
    assert io.read(40) == b"A" * 10 + b"C" * 20 + b"A" * 10
    io.seek(8990)
    assert io.read(200) == b"A" * 10 + b"B" * 100 + b"A" * 90
    io.seek(10000)
    assert io.read(5000) == b"\0" * 1000
    io.close()
    assert path.read_bytes() == b"A" * 9000 + b"B" * 100 + b"A" * 900  # as it was when the disk filled
