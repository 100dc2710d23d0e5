"""`--output-shards`: one HDF5 part per input shard plus an index, read as one dataset (lazily) and merged
into the file a single-file run writes; faults, kill -9 and resume at part granularity."""

import os
import signal
import subprocess
import sys
import time
import tracemalloc

import h5py
import numpy as np
import pytest

from conftest import REPO, run_cli
from test_shards import FAST_CLI, dataset, png, write_tar
from vggfeat import FeatureExtractor, extract, load_features, merge_parts, open_features
from vggfeat.errors import ExtractInterrupted, InputError, OutputError
from vggfeat.io.guard import parts_dir
from vggfeat.io.index import read_index, write_index
from vggfeat.io.layout import OutputSpec
from vggfeat.run.units import Unit, units_of


@pytest.fixture(scope="module")
def fx():
    return FeatureExtractor("vgg11", "random", ["fc7", "pool5"], input_size=32, batch_size=4)


def hostile(root):
    """Shards 0-1 good (3 images each); 2: a truncated member after a good one, a non-image member, a
    member without its label; 3: empty (0 bytes); 4: not a tar; 5: a tar with no member; 6: good."""
    dataset(root, shards=2)
    good = [("a.png", png(10)), ("a.cls", b"2")]
    write_tar(os.path.join(root, "shards", "00002.tar"), good + [("notes.txt", b"x"), ("nolabel.png", png(11)),
                                                                 ("cut.png", png(12))])
    import tarfile

    with tarfile.open(os.path.join(root, "shards", "00002.tar")) as t:
        cut = t.getmember("cut.png").offset_data + 50
    with open(os.path.join(root, "shards", "00002.tar"), "r+b") as f:
        f.truncate(cut)  # into cut.png's data
    open(os.path.join(root, "shards", "00003.tar"), "wb").close()
    with open(os.path.join(root, "shards", "00004.tar"), "wb") as f:
        f.write(b"this is no tar " * 100)
    write_tar(os.path.join(root, "shards", "00005.tar"), [])
    write_tar(os.path.join(root, "shards", "00006.tar"), [("z.png", png(13)), ("z.cls", b"0")])
    return ["shards/{00000..00006}.tar"]


def _same(a_path, b_path, layers=("fc7", "pool5")):
    for layer in layers:
        a, b = load_features(a_path, layer), load_features(b_path, layer)
        assert list(a.paths) == list(b.paths) and len(a.paths)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.features, b.features)
        assert a.failed == b.failed and a.class_names == b.class_names
    return a, b


def test_parts_read_as_one_dataset_and_merge_into_the_single_file(tmp_path, monkeypatch, fx):
    monkeypatch.chdir(tmp_path)
    inputs = hostile(".")
    one = extract(inputs, "one.h5", extractor=fx, progress=False)
    summary = extract(inputs, "idx.h5", extractor=fx, progress=False, output_shards=True)
    assert (summary.written, summary.failed, summary.parts) == (one.written, one.failed, 7) == (9, 5, 7)
    assert "an index of 7 parts in idx.h5.parts/" in summary.line()
    assert sorted(os.listdir("idx.h5.parts")) == [f"part-{i:06d}.h5" for i in range(7)]
    index = read_index("idx.h5")
    assert index.complete and list(index.rows) == [3, 3, 2, 0, 0, 0, 1] and list(index.failed) == [0, 0, 2, 1, 1, 1, 0]
    assert index.names == [f"shards/{i:05d}.tar" for i in range(7)]
    a, b = _same("one.h5", "idx.h5")  # load_features reads the index whole, as a single file
    reasons = dict(b.failed)
    assert reasons["shards/00002.tar/notes"].startswith("no image in this sample")
    assert reasons["shards/00002.tar/cut.png"].startswith("truncated member")
    assert reasons["shards/00003.tar"] == "empty shard (0 bytes)" and reasons["shards/00004.tar"].startswith("not a tar")
    assert reasons["shards/00005.tar"] == "empty shard: a tar with no member"
    assert b.labels[list(b.paths).index("shards/00002.tar/nolabel.png")] == -1
    assert b.attrs["format"] == "vggfeat-index" and b.attrs["layers"] == a.attrs["layers"]
    # a dataset read lazily: a bounded number of rows at a time, in row order
    fs = open_features("idx.h5", "pool5")
    assert len(fs) == 9 and fs.shape == (9, 512) and fs.class_names == []
    runs = list(fs.iter_batches(2))
    assert [p for r in runs for p in r.paths] == list(a.paths)
    assert [r.start for r in runs] == list(np.cumsum([0] + [len(r.paths) for r in runs[:-1]]))
    np.testing.assert_array_equal(np.concatenate([r.features for r in runs]), load_features("one.h5", "pool5").features)
    # `vggfeat merge` gives the single-file run's file: rows, values, failures, settings
    result = run_cli("merge", tmp_path / "idx.h5", "-o", tmp_path / "merged.h5", "-q")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    m, s = _same("one.h5", "merged.h5")
    skip = {"created", "clean_rows"}
    assert {k: v for k, v in m.attrs.items() if k not in skip} == {k: v for k, v in s.attrs.items() if k not in skip}
    # merge's refusals: one line, nothing written
    for args, words in ((["idx.h5", "-o", "merged.h5"], "exists"), (["one.h5", "-o", "x.h5"], "not an index"),
                        (["nothing.h5", "-o", "x.h5"], "not found"), (["idx.h5", "-o", "idx.h5", "--overwrite"],
                                                                      "its own index")):
        r = run_cli("merge", *[a if a.startswith("-") else tmp_path / a for a in args])
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and words in r.stderr, (args, r.stderr)
    assert not os.path.exists("x.h5")
    # an index reads only its own parts, with the rows it records: a part swapped by hand (or an
    # --overwrite cut short between its steps) or an edited count is an error, never other rows
    import shutil

    shutil.copyfile("idx.h5.parts/part-000003.h5", "p3.h5")
    shutil.copyfile("idx.h5.parts/part-000006.h5", "idx.h5.parts/part-000003.h5")
    for read in (lambda: load_features("idx.h5", "fc7"), lambda: list(open_features("idx.h5", "pool5").iter_batches())):
        with pytest.raises(OutputError, match="part-000003.h5 is not part 3 of"):
            read()
    r = run_cli("verify", tmp_path / "idx.h5")
    assert r.returncode == 1 and "part-000003.h5 is not part 3" in r.stdout and "1 damaged or missing" in r.stdout
    r = run_cli("merge", tmp_path / "idx.h5", "-o", tmp_path / "x.h5")
    assert r.returncode == 2 and "is not part 3" in r.stderr and not os.path.exists("x.h5")
    shutil.copyfile("p3.h5", "idx.h5.parts/part-000003.h5")
    with h5py.File("idx.h5", "r+") as f:
        f["parts/rows"][1] = 2
    with pytest.raises(OutputError, match="part-000001.h5 holds 3 rows and 0 failures, its index .* says 2"):
        load_features("idx.h5", "fc7")
    with h5py.File("idx.h5", "r+") as f:
        f["parts/rows"][1] = 3
    _same("one.h5", "idx.h5")
    # single-file and index runs do not resume each other
    with pytest.raises(OutputError, match="resume it with --output-shards"):
        extract(inputs, "idx.h5", extractor=fx, progress=False, resume=True)
    with pytest.raises(OutputError, match="not an index of parts"):
        extract(inputs, "one.h5", extractor=fx, progress=False, resume=True, output_shards=True)


def test_an_interrupted_index_resumes_without_reading_complete_shards(tmp_path, monkeypatch, fx):
    monkeypatch.chdir(tmp_path)
    dataset(".", shards=4)
    inputs = ["shards/{00000..00003}.tar"]
    import vggfeat.shards

    opened = []
    real_open = vggfeat.shards._open
    monkeypatch.setattr(vggfeat.shards, "_open", lambda url: opened.append(url) or real_open(url))
    calls = []

    def stop(batch):
        calls.append(batch)
        if len(calls) == 3:  # shard 0 (one batch of 3) done, shard 1 done, in shard 2
            raise KeyboardInterrupt

    with pytest.raises(ExtractInterrupted, match="parts completed so far are kept"):
        extract(inputs, "idx.h5", extractor=fx, progress=False, output_shards=True, on_batch=stop, batch_size=4)
    assert not read_index("idx.h5").complete
    with pytest.warns(UserWarning, match="incomplete"):
        early = open_features("idx.h5", "fc7")
    assert [p.split("/")[1] for r in early.iter_batches() for p in r.paths] == ["00000.tar"] * 3 + ["00001.tar"] * 3
    with pytest.raises(OutputError, match="exists"):
        extract(inputs, "idx.h5", extractor=fx, progress=False, output_shards=True)
    stamps = {n: os.stat(os.path.join("idx.h5.parts", n)).st_mtime_ns for n in os.listdir("idx.h5.parts")}
    opened.clear()
    summary = extract(inputs, "idx.h5", extractor=fx, progress=False, output_shards=True, resume=True)
    assert opened == ["shards/00002.tar", "shards/00003.tar"]
    assert (summary.skipped, summary.written) == (6, 6)
    for n, t in stamps.items():
        if n in ("part-000000.h5", "part-000001.h5"):
            assert os.stat(os.path.join("idx.h5.parts", n)).st_mtime_ns == t
    extract(inputs, "one.h5", extractor=fx, progress=False)
    _same("one.h5", "idx.h5")
    # --overwrite writes new parts beside the old ones (OUT.parts.2), which stay until the new run is complete
    def refuse(batch):
        raise KeyboardInterrupt

    with pytest.raises(ExtractInterrupted, match="left as they were before this --overwrite run"):
        extract(inputs, "idx.h5", extractor=fx, progress=False, output_shards=True, overwrite=True, on_batch=refuse)
    _same("one.h5", "idx.h5")
    assert sorted(os.listdir(".")) == ["idx.h5", "idx.h5.parts", "loose", "one.h5", "shards"]  # nothing left
    extract(inputs, "idx.h5", extractor=fx, progress=False, output_shards=True, overwrite=True)
    _same("one.h5", "idx.h5")
    # the new parts went to the other folder; the index names it, and the old one is gone
    assert sorted(os.listdir(".")) == ["idx.h5", "idx.h5.parts.2", "loose", "one.h5", "shards"]


def test_kill_9_then_resume_keeps_complete_parts(tmp_path):
    """A real kill -9 of the CLI mid-run: `--resume` keeps the parts that were complete (not rewritten,
    their shards not read again) and the index equals an uninterrupted run's."""
    n_shards, per_shard = 12, 8
    for s in range(n_shards):
        write_tar(str(tmp_path / "s" / f"{s:05d}.tar"),
                  [m for i in range(per_shard) for m in ((f"{s * per_shard + i:06d}.png", png(s * per_shard + i)),
                                                         (f"{s * per_shard + i:06d}.cls", str(i % 3).encode()))])
    args = ["extract", f"{tmp_path}/s/{{00000..{n_shards - 1:05d}}}.tar", "--layer", "fc7", "--batch-size", "4",
            "--workers", "1", "--output-shards", *FAST_CLI]
    out = tmp_path / "killed.h5"
    proc = subprocess.Popen([sys.executable, "-m", "vggfeat_cli", *args, "-o", str(out)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder = parts_dir(out)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        done = [n for n in os.listdir(folder) if n.endswith(".h5")] if os.path.isdir(folder) else []
        if len(done) >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    complete = sorted(n for n in os.listdir(folder) if n.endswith(".h5"))
    assert 3 <= len(complete) < n_shards, "the run ended before it could be killed mid-way"
    stamps = {n: os.stat(os.path.join(folder, n)).st_ino for n in complete}
    result = run_cli(*args, "-o", out, "--resume")
    assert result.returncode == 0, result.stderr
    assert {n: os.stat(os.path.join(folder, n)).st_ino for n in complete} == stamps  # not written again
    assert not [n for n in os.listdir(folder) if not n.endswith(".h5")]  # no half-written part left
    whole = tmp_path / "whole.h5"
    assert run_cli(*[a for a in args if a != "--output-shards"], "-o", whole).returncode == 0
    _same(whole, out, layers=("fc7",))


def test_lazy_iteration_holds_a_bounded_number_of_rows(tmp_path):
    """20 parts of 200 rows of 1024 floats (16 MB): iterating 100 rows at a time never holds more than
    about 100 rows; `iter_X_y` feeds `partial_fit` the labelled rows only."""
    from sklearn.linear_model import SGDClassifier

    from vggfeat.images import ImageList
    from vggfeat.io.writer import FeatureWriter

    folder = tmp_path / "big.h5.parts"
    folder.mkdir()
    settings = {"arch": "vgg16", "weights": "random", "layers": '["fc7"]', "inputs": "[]"}
    n_parts, per = 20, 200
    rng = np.random.default_rng(0)
    from vggfeat.shards import ShardInputs, Source

    units = []
    for k in range(n_parts):
        units.append(Unit(k, f"s/{k:05d}.tar", ShardInputs([Source("shard", f"s/{k:05d}.tar", f"s/{k:05d}.tar")])))
        w = FeatureWriter.create(folder / f"part-{k:06d}.h5", settings=settings, feature_shapes={"fc7": (1024,)},
                                 class_names=["a", "b"])
        w.set_attrs(part_number=k, part_key=units[-1].key, run_id="r1")
        for start in range(0, per, 50):
            rows = range(k * per + start, k * per + start + 50)
            w.append([f"s/{k:05d}.tar/{i}.png" for i in rows], [(-1 if i % 7 == 0 else i % 2) for i in rows],
                     {"fc7": rng.random((50, 1024), np.float32) + np.asarray(rows, np.float32)[:, None] % 2})
        w.close(complete=True)
    write_index(str(tmp_path / "big.h5"), OutputSpec(settings, {"fc7": (1024,)}, ["a", "b"]), units, [per] * n_parts,
                [0] * n_parts, folder=str(folder), complete=True, run_id="r1")
    fs = open_features(tmp_path / "big.h5")
    assert len(fs) == n_parts * per and fs.classes.tolist() == [0, 1]
    row_bytes = 1024 * 4
    tracemalloc.start()
    try:
        seen = 0
        for r in fs.iter_batches(100):
            assert len(r.paths) <= 100 and r.start == seen
            seen += len(r.paths)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == n_parts * per
    assert peak < 4 * 100 * row_bytes, peak  # a few batches' worth, not the 16 MB of the whole
    clf = SGDClassifier(random_state=0)
    labelled = 0
    for X, y in fs.iter_X_y(500):
        assert (y >= 0).all() and len(X) <= 500
        clf.partial_fit(X, y, classes=fs.classes)
        labelled += len(y)
    assert labelled == sum(1 for i in range(n_parts * per) if i % 7)
    # a damaged part is named, not read as if it were good
    with h5py.File(folder / "part-000003.h5", "r+") as f:
        f["features/fc7"][10, 0] += 1
    with pytest.raises(OutputError, match="part-000003.h5 is damaged: features/fc7 rows"):
        for _ in fs.iter_batches(100):
            pass
    # an index whose part is gone says so
    os.remove(folder / "part-000005.h5")
    with pytest.raises(OutputError, match="part-000005.h5 is missing"):
        open_features(tmp_path / "big.h5")


def test_units_of_loose_images_and_shards(tmp_path, monkeypatch):
    """A shard is a unit; loose images are cut into units of LOOSE_PER_UNIT in order; a folder too."""
    from vggfeat.shards import Source, ShardInputs
    from vggfeat.images import ImageList

    sources = [Source("image", f"{i}.png", f"{i}.png") for i in range(5)] + [Source("shard", "a.tar", "a.tar")] + [
        Source("image", f"x{i}.png", f"x{i}.png") for i in range(2)]
    monkeypatch.setattr("vggfeat.shards.LOOSE_PER_UNIT", 2)
    from vggfeat.shards import unit_numbers

    assert unit_numbers(sources) == [0, 0, 1, 1, 2, 3, 4, 4]
    units = units_of(ShardInputs(sources), per_part=2)
    assert [u.name for u in units] == ["0.png and 1 more", "2.png and 1 more", "4.png", "a.tar", "x0.png and 1 more"]
    lst = ImageList([f"/d/{i}.png" for i in range(5)], [f"{i}.png" for i in range(5)], [0] * 5, ["c"], "/d")
    assert [u.inputs.paths for u in units_of(lst, per_part=2)] == [["0.png", "1.png"], ["2.png", "3.png"], ["4.png"]]


def test_parts_of_a_folder_and_bad_uses(tmp_path, fx, image_folder):
    out = tmp_path / "f.h5"
    extract([str(image_folder)], out, extractor=fx, progress=False, output_shards=True)
    extract([str(image_folder)], tmp_path / "one.h5", extractor=fx, progress=False)
    _same(tmp_path / "one.h5", out)
    assert read_index(out).names == ["circles/img_000.png and 11 more"]
    # resuming with other settings is refused
    with pytest.raises(OutputError, match="cannot resume .*seed"):
        extract([str(image_folder)], out, ["fc7", "pool5"], arch="vgg11", weights="random", seed=1, input_size=32,
                progress=False, output_shards=True, resume=True)
    # parts left without their index cannot be checked against the inputs: neither reused nor silently replaced
    os.remove(out)
    for resume in (False, True):
        with pytest.raises(OutputError, match="holds parts without their index"):
            extract([str(image_folder)], out, extractor=fx, progress=False, output_shards=True, resume=resume)
    extract([str(image_folder)], out, extractor=fx, progress=False, output_shards=True, overwrite=True)
    _same(tmp_path / "one.h5", out)
    # two runs on one output: the second is refused in one line while the first holds the parts folder
    from vggfeat.io.guard import OutputLock

    held = OutputLock(out)
    try:
        r = run_cli("extract", image_folder, "-o", out, "--output-shards", "--resume", *FAST_CLI)
        assert r.returncode == 2 and "is in use by another process" in r.stderr, r.stderr
        assert r.stderr.count("\n") == 1
    finally:
        held.release()
    with pytest.raises(InputError):
        open_features(tmp_path / "nothing.h5")
    with pytest.raises(InputError, match="rows must be at least 1"):
        list(open_features(tmp_path / "one.h5", "fc7").iter_batches(0))


def test_verify_checks_every_part_of_an_index(tmp_path, fx, image_folder):
    out = tmp_path / "f.h5"
    extract([str(image_folder)], out, extractor=fx, progress=False, output_shards=True)
    r = run_cli("verify", out)
    assert r.returncode == 0 and "1 part, 12 rows, 0 failed images; every part intact" in r.stdout, r.stdout + r.stderr
    with h5py.File(parts_dir(out) + "/part-000000.h5", "r+") as f:
        f["features/pool5"][3, 0] += 1
    r = run_cli("verify", out)
    assert r.returncode == 1 and "part-000000.h5: DAMAGED: rows" in r.stdout and "1 damaged or missing" in r.stdout
    r = run_cli("verify", out, "--repair", tmp_path / "x.h5")
    assert r.returncode == 2 and "--repair takes one file" in r.stderr


def test_a_full_disk_mid_run_keeps_the_complete_parts_and_resume_completes(tmp_path, monkeypatch, fx):
    """ENOSPC injected into the writes (after about 3 parts' bytes): one error naming `--resume
    --output-shards`, no half-written part left, and the resumed index equals an uninterrupted run."""
    import errno

    from test_faults import _inject_write_failure
    from vggfeat.errors import WriteFailed

    monkeypatch.chdir(tmp_path)
    dataset(".", shards=5)
    inputs = ["shards/{00000..00004}.tar"]
    extract(inputs, "one.h5", extractor=fx, progress=False)
    extract(["shards/00000.tar"], "probe.h5", extractor=fx, progress=False, output_shards=True)
    per_part = os.path.getsize("probe.h5.parts/part-000000.h5")  # what writing a part costs, in bytes
    _inject_write_failure(monkeypatch, int(2.5 * per_part), errno.ENOSPC)
    with pytest.raises(WriteFailed, match=r"No space left on device; the complete parts of idx.h5 are kept; "
                                          r"`--resume --output-shards` continues"):
        extract(inputs, "idx.h5", extractor=fx, progress=False, output_shards=True)
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    done = sorted(os.listdir("idx.h5.parts"))
    assert 0 < len(done) < 5 and all(n.endswith(".h5") for n in done)  # no half-written part
    summary = extract(inputs, "idx.h5", extractor=fx, progress=False, output_shards=True, resume=True)
    assert summary.skipped == 3 * len(done) and summary.written == 15 - 3 * len(done)
    _same("one.h5", "idx.h5")
