"""Write safety of `vggfeat merge`, `verify` of indexes and one writer per output (issue 21): a merge cut
short (kill -9, a full disk) leaves no file at its name, or the old one byte for byte; an index with
missing parts is never called intact; a single-file run and a parts run never write one output at once."""

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

from conftest import REPO, run_cli
from vggfeat import load_features, merge_parts
from vggfeat.errors import WriteFailed
from vggfeat.io.guard import parts_dir
from vggfeat.io.index import write_index
from vggfeat.io.layout import OutputSpec
from vggfeat.run.units import Unit
from vggfeat.shards import ShardInputs, Source
from vggfeat.io.guard import TMP_SUFFIX
from vggfeat.io.writer import FeatureWriter

SETTINGS = {"arch": "vgg16", "weights": "random", "layers": '["fc7"]', "inputs": "[]"}


def make_index(path, n_parts=6, per=400, width=4096, seed=0, complete=True):
    """An index of `n_parts` parts of `per` rows of `width` floats, written directly (no network):
    6 x 400 x 4096 float32 is 40 MB, a merge of a few tenths of a second."""
    path = str(path)
    folder = parts_dir(path)
    os.makedirs(folder)
    rng = np.random.default_rng(seed)
    units = []
    for k in range(n_parts):
        units.append(Unit(k, f"s/{k:05d}.tar", ShardInputs([Source("shard", f"s/{k:05d}.tar", f"s/{k:05d}.tar")])))
        w = FeatureWriter.create(os.path.join(folder, f"part-{k:06d}.h5"), settings=SETTINGS,
                                 feature_shapes={"fc7": (width,)}, class_names=["a", "b"])
        w.set_attrs(part_number=k, part_key=units[-1].key, run_id="r1")
        w.append([f"s/{k:05d}.tar/{i}.png" for i in range(per)], [i % 2 for i in range(per)],
                 {"fc7": rng.random((per, width), np.float32)})
        w.close(complete=True)
    write_index(path, OutputSpec(SETTINGS, {"fc7": (width,)}, ["a", "b"]), units,
                [per if complete else -1] * n_parts, [0 if complete else -1] * n_parts,
                folder=folder, complete=complete, run_id="r1")
    return path


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def same_rows(a, b):
    x, y = load_features(a, "fc7"), load_features(b, "fc7")
    assert list(x.paths) == list(y.paths) and len(x.paths)
    np.testing.assert_array_equal(x.labels, y.labels)
    np.testing.assert_array_equal(x.features, y.features)
    assert x.failed == y.failed and x.class_names == y.class_names and x.attrs.get("complete")


def cli(*args):
    return subprocess.Popen([sys.executable, "-m", "vggfeat_cli", *map(str, args)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def big_index(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge")
    index = make_index(root / "idx.h5")
    ref = str(root / "ref.h5")
    merge_parts(index, ref, progress=False)  # an uninterrupted merge
    return index, ref


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_merge_killed_leaves_no_file_or_the_old_one_and_merges_again(tmp_path, big_index, overwrite):
    """kill -9 of `vggfeat merge` at random moments after it created its temporary: nothing at the
    output's name (or, with --overwrite, the old file byte for byte); the next merge removes the
    temporary and gives the uninterrupted merge's file."""
    index, ref = big_index
    out = tmp_path / "one.h5"
    tmp = str(out) + TMP_SUFFIX
    extra = ["--overwrite"] if overwrite else []
    if overwrite:
        out.write_bytes(b"the old merged file " * 5000)
        old = digest(out)
    rng = random.Random(21)
    mid_way = 0
    for _ in range(3):
        proc = cli("merge", index, "-o", out, "-q", *extra)
        deadline = time.monotonic() + 60
        while not os.path.exists(tmp) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.001)
        assert os.path.exists(tmp) or proc.poll() is None, proc.stderr.read()
        time.sleep(rng.uniform(0, 0.15))
        mid_way += proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if proc.returncode == -signal.SIGKILL:
            if overwrite:
                assert digest(out) == old  # the old file, untouched
            else:
                assert not os.path.lexists(out)  # no partial file at the final name
    assert mid_way >= 1, "every merge ended before it was killed: make the index larger"
    r = run_cli("merge", index, "-o", out, "-q", *extra)
    assert r.returncode == 0, r.stderr
    assert not os.path.lexists(tmp)  # the killed merge's temporary is gone
    same_rows(ref, out)
    assert sorted(os.listdir(tmp_path)) == ["one.h5"]
    r = run_cli("verify", out)
    assert r.returncode == 0 and "intact" in r.stdout and "; complete" in r.stdout, r.stdout
    # an existing output is refused without --overwrite, in one line that never says --resume
    r = run_cli("merge", index, "-o", out)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "pass --overwrite" in r.stderr, r.stderr
    assert "--resume" not in r.stderr


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_full_disk_during_merge_writes_nothing_and_says_so(tmp_path, big_index, monkeypatch, overwrite):
    """ENOSPC injected into the merge's writes after 10 MB: one line, 'nothing was written', no
    `--resume`; no file at the output (or the old one, byte for byte), no temporary left."""
    from test_faults import _inject_write_failure

    index, ref = big_index
    out = tmp_path / "one.h5"
    if overwrite:
        out.write_bytes(b"old" * 1000)
        old = digest(out)
    _inject_write_failure(monkeypatch, 10 << 20, errno.ENOSPC)
    with pytest.raises(WriteFailed) as info:
        merge_parts(index, out, overwrite=overwrite, progress=False)
    monkeypatch.undo()
    msg = str(info.value)
    assert "\n" not in msg and "--resume" not in msg and "kept" not in msg, msg
    assert msg == (f"cannot write {out}: No space left on device; nothing was written ({out} was left as it "
                   "was): free some space and run `vggfeat merge` again")
    assert sorted(os.listdir(tmp_path)) == (["one.h5"] if overwrite else [])
    if overwrite:
        assert digest(out) == old
    merge_parts(index, out, overwrite=overwrite, progress=False)
    same_rows(ref, out)


def test_a_full_tmpfs_during_merge_is_one_line_from_the_cli(tmp_path, big_index):
    """A real full disk: a 8 MB tmpfs (root only; skipped where it cannot be mounted)."""
    index, _ = big_index
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        r = run_cli("merge", index, "-o", disk / "one.h5", "-q")
        assert r.returncode != 0 and r.stderr.count("\n") == 1, r.stderr
        assert "No space left on device; nothing was written" in r.stderr and "--resume" not in r.stderr, r.stderr
        assert "free some space and run `vggfeat merge` again" in r.stderr
        assert os.listdir(disk) == []
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


@pytest.mark.parametrize("complete", [True, False])
def test_an_index_with_missing_parts_is_never_intact(tmp_path, complete):
    """Parts of a real index removed (one, then all), complete or interrupted: `verify` exits 1 with a
    line per missing part (or one for the incomplete index) naming `--resume --output-shards`;
    `load_features` raises a one-line OutputError naming the first missing part, never 0 rows."""
    from vggfeat import open_features
    from vggfeat.errors import OutputError

    index = make_index(tmp_path / "idx.h5", n_parts=3, per=20, width=8, complete=complete)
    folder = parts_dir(index)
    r = run_cli("verify", index)
    if complete:
        assert r.returncode == 0 and "3 parts, 60 rows, 0 failed images; every part intact" in r.stdout, r.stdout
    else:  # an interrupted run's index: damage to report, whatever its parts hold
        assert r.returncode == 1 and "is incomplete (the run was interrupted): 0 of 3 parts are missing; " \
                                     "`vggfeat extract --resume --output-shards` completes it" in r.stdout, r.stdout
    os.remove(os.path.join(folder, "part-000001.h5"))
    r = run_cli("verify", index)
    assert r.returncode == 1 and "intact" not in r.stdout, r.stdout
    if complete:
        assert f"{folder}/part-000001.h5 is missing: {index} lists it; `vggfeat extract --resume --output-shards" \
               in r.stdout and "1 damaged or missing" in r.stdout, r.stdout
    else:
        assert f"1 of 3 parts are missing (first: {folder}/part-000001.h5)" in r.stdout, r.stdout
    with pytest.raises(OutputError, match=r"part-000001.h5 is missing.*--resume --output-shards") as info:
        load_features(index)
    assert "\n" not in str(info.value)
    for name in os.listdir(folder):
        os.remove(os.path.join(folder, name))
    r = run_cli("verify", index)
    assert r.returncode == 1 and "intact" not in r.stdout and "--resume --output-shards" in r.stdout, r.stdout
    lines = r.stdout.splitlines()
    assert len(lines) == (3 + 1 if complete else 1 + 1), r.stdout  # one a part (or the index), and the summary
    for read in (lambda: load_features(index), lambda: open_features(index)):
        with pytest.raises(OutputError, match=r"part-000000\.h5.*--resume --output-shards") as info:
            read()
        assert "\n" not in str(info.value)
    # a part that is not the index's: damage, and what to do
    make_index(tmp_path / "other.h5", n_parts=3, per=20, width=8, seed=1)
    for name in os.listdir(parts_dir(tmp_path / "other.h5")):
        os.rename(os.path.join(parts_dir(tmp_path / "other.h5"), name), os.path.join(folder, name))
    with h5py_file(os.path.join(folder, "part-000002.h5")) as f:
        f.attrs["run_id"] = "another run"
    r = run_cli("verify", index)
    assert r.returncode == 1 and "part-000002.h5 is not part 2 of" in r.stdout and "intact" not in r.stdout
    assert "`vggfeat extract --resume --output-shards` with the same inputs writes it again" in r.stdout


def h5py_file(path):
    import h5py

    return h5py.File(path, "r+")


def test_a_single_file_run_is_refused_while_a_parts_run_writes_the_output(tmp_path):
    """Two real processes: while `vggfeat extract --output-shards -o OUT` runs, a single-file extraction
    onto OUT (--overwrite, --resume, or a new file once OUT is gone) is refused in one line; the parts
    run completes and its index is intact. A single file being written holds OUT against a parts run."""
    from test_shards import FAST_CLI, png, write_tar
    from vggfeat import extract
    from vggfeat.errors import OutputError

    for s in range(24):
        write_tar(str(tmp_path / "s" / f"{s:05d}.tar"),
                  [m for i in range(8) for m in ((f"{s * 8 + i:06d}.png", png(s * 8 + i)),
                                                 (f"{s * 8 + i:06d}.cls", str(i % 3).encode()))])
    inputs = [f"{tmp_path}/s/{{00000..00023}}.tar"]
    out = tmp_path / "out.h5"
    proc = cli("extract", *inputs, "--layer", "fc7", "--batch-size", "4", "--workers", "1", "--output-shards",
               *FAST_CLI, "-o", out)
    folder = parts_dir(out)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if os.path.isdir(folder) and any(n.endswith(".h5") for n in os.listdir(folder)):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the parts run ended before the test could run beside it"
    try:
        for kw in ({"overwrite": True}, {"resume": True}):
            with pytest.raises(OutputError, match=r"is in use by another process.*wait for it") as info:
                extract(inputs, out, "fc7", arch="vgg11", weights="random", input_size=32, progress=False, **kw)
            assert "\n" not in str(info.value)
        assert proc.poll() is None, "the parts run ended while the refusals were tested: make it longer"
    finally:
        assert proc.wait(timeout=300) == 0, proc.stderr.read()
    r = run_cli("verify", out)
    assert r.returncode == 0 and "24 parts, 192 rows" in r.stdout and "every part intact" in r.stdout, r.stdout
    # the other way round: a single file being written (its writer's flock on OUT) refuses a parts run
    single = tmp_path / "single.h5"
    w = FeatureWriter.create(single, settings=SETTINGS, feature_shapes={"fc7": (4,)}, class_names=[])
    try:
        with pytest.raises(OutputError, match="in use by another process"):
            extract(inputs, single, "fc7", arch="vgg11", weights="random", input_size=32, progress=False,
                    overwrite=True, output_shards=True)
    finally:
        w.close()
