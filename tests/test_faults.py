"""Nothing lost under real faults: a full disk, kill -9 with every compression, SIGTERM, two processes on
one file, damaged files, read-only places. Faults are injected for real (a small tmpfs where the test can
mount one, an injected ENOSPC on the write path, SIGKILL/SIGTERM of real processes, bytes flipped on disk)."""

import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

import vggfeat
from vggfeat import load_features, repair, verify
from vggfeat.errors import OutputError, WriteFailed
from vggfeat.io.recover import resume_file
from vggfeat.io.writer import FeatureWriter

from conftest import REPO, make_folder

ARGS = ["--arch", "vgg11", "--weights", "random", "--input-size", "32", "--batch-size", "4",
        "--layer", "fc7", "--layer", "pool5", "-q"]


def _cli(*args):
    return [sys.executable, "-m", "vggfeat_cli", *map(str, args)]


def _as_from_a_terminal():
    """SIGINT as a terminal's Ctrl-C delivers it: a test run started in the background (`pytest &`, whose
    children inherit SIGINT ignored) must not make the Ctrl-C tests meaningless."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run(*args, **kw):
    return subprocess.run(_cli(*args), cwd=REPO, capture_output=True, text=True, timeout=600, **kw)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults") / "in"
    make_folder(str(root), per_class=40, size=(40, 36))
    return root


@pytest.fixture(scope="module")
def clean(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "clean.h5"
    done = run("extract", folder, *ARGS, "-o", out)
    assert done.returncode == 0, done.stderr
    return out


def assert_same_rows(a_path, b_path):
    for layer in ("fc7", "pool5"):
        a, b = load_features(a_path, layer), load_features(b_path, layer)
        assert list(a.paths) == list(b.paths)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_allclose(a.features, b.features, rtol=1e-5, atol=1e-6)


def one_line_error(result, code):
    assert result.returncode == code, (result.returncode, result.stderr[-3000:])
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr[-3000:]
    return lines[0]


# ---------------------------------------------------------------------------------------------
# A full disk


def _mount_tmpfs(path, size):
    os.makedirs(path, exist_ok=True)
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                              capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@pytest.mark.parametrize("size", ["600k", "1700k"])
def test_full_disk_is_one_line_and_resume_elsewhere_completes(tmp_path, folder, clean, size):
    small = tmp_path / "small"
    if not _mount_tmpfs(small, size):
        pytest.skip("cannot mount a tmpfs here (needs root); test_injected_enospc covers the same path")
    try:
        out = small / "f.h5"
        result = run("extract", folder, *ARGS, "-o", out)
        line = one_line_error(result, 1)
        assert "No space left on device" in line and "--resume" in line
        assert "Traceback" not in result.stderr
        # no row recorded as written is missing or zero: the file verifies
        report = verify(out)
        assert report.ok, report.line()
        assert report.rows < 120
        big = tmp_path / "big.h5"
        shutil.copyfile(out, big)
    finally:
        subprocess.run(["umount", str(small)], capture_output=True)
    done = run("extract", folder, *ARGS, "-o", big, "--resume")
    assert done.returncode == 0, done.stderr
    assert verify(big).ok
    assert_same_rows(clean, big)


def _inject_write_failure(monkeypatch, budget, err=errno.ENOSPC):
    """Every write through the store's guarded file fails once `budget` bytes have been written."""
    from vggfeat.io import guard as store

    state = {"left": budget}
    real_write = store.GuardedIO.write

    def write(self, b):
        n = memoryview(b).nbytes
        if self.error is None and state["left"] < n:
            self.error = OSError(err, os.strerror(err))
        state["left"] -= n
        return real_write(self, b)

    monkeypatch.setattr(store.GuardedIO, "write", write)


@pytest.mark.parametrize("budget,err", [(200_000, errno.ENOSPC), (420_000, errno.ENOSPC), (300_000, errno.EIO)])
def test_injected_write_failure_stops_cleanly_and_resume_completes(tmp_path, folder, clean, monkeypatch, budget,
                                                                    err):
    out = tmp_path / "f.h5"
    _inject_write_failure(monkeypatch, budget, err)
    with pytest.raises(WriteFailed, match=os.strerror(err)):
        vggfeat.extract([folder], out, ["fc7", "pool5"], arch="vgg11", weights="random", input_size=32,
                        batch_size=4, progress=False)
    monkeypatch.undo()
    report = verify(out)
    assert report.ok and report.rows < 120, report.line()
    vggfeat.extract([folder], out, ["fc7", "pool5"], arch="vgg11", weights="random", input_size=32,
                    batch_size=4, progress=False, resume=True)
    assert_same_rows(clean, out)


def test_full_disk_at_create_leaves_nothing(tmp_path, folder, monkeypatch):
    out = tmp_path / "f.h5"
    _inject_write_failure(monkeypatch, 100)
    with pytest.raises(WriteFailed, match="No space left on device"):
        vggfeat.extract([folder], out, ["fc7"], arch="vgg11", weights="random", input_size=32, progress=False)
    assert not out.exists()


SETTINGS = {"arch": "vgg16", "weights": "random", "layers": '["fc7"]'}


def _append(writer, start, n, failed=()):
    writer.append([f"img{j}" for j in range(start, start + n)], [j % 2 for j in range(start, start + n)],
                  {"fc7": np.arange(start, start + n, dtype=np.float32)[:, None].repeat(8, 1)}, failed=failed)


def _dangle(path, name, element):
    """Point element `element` of the string dataset `name` (inside its first chunk, beyond its
    extent) at a global heap object that does not exist: what a kill leaves when a chunk of string
    references reached the disk but the heap collection holding their strings did not."""
    import struct

    with h5py.File(path, "r") as f:
        info = f[name].id.get_chunk_info_by_coord((0,))
        assert element < f[name].chunks[0] and element >= f[name].shape[0]
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset)
        length, collection, _ = struct.unpack("<IQI", fh.read(16))  # the reference of element 0
        fh.seek(info.byte_offset + 16 * element)
        fh.write(struct.pack("<IQI", 5, collection, 9999))


def test_resume_over_references_to_lost_strings_completes(tmp_path):
    """The kill series found this: after a kill, the stale string references beyond the committed
    rows made HDF5 crash ("bad heap index" or a segfault) when the resumed run wrote those rows."""
    path = tmp_path / "f.h5"
    w = FeatureWriter.create(path, settings=SETTINGS, feature_shapes={"fc7": (8,)}, class_names=["a", "b"])
    _append(w, 0, 40, failed=[("bad0", "broken")])
    w.close()
    _dangle(path, "paths", 40)
    _dangle(path, "paths", 45)
    _dangle(path, "failed/paths", 1)
    w = resume_file(path, settings=SETTINGS)
    assert w.rows == 40
    _append(w, 40, 30, failed=[("bad1", "broken")])
    w.close(complete=True)
    data = load_features(path, "fc7")
    assert list(data.paths) == [f"img{j}" for j in range(70)]
    np.testing.assert_array_equal(data.features[:, 0], np.arange(70))
    assert data.failed == [("bad1", "broken")]
    assert verify(path).ok


def test_an_hdf5_error_while_writing_is_one_line_and_resume_completes(tmp_path, monkeypatch):
    path = tmp_path / "f.h5"
    w = FeatureWriter.create(path, settings=SETTINGS, feature_shapes={"fc7": (8,)}, class_names=["a", "b"])
    _append(w, 0, 40)
    w.flush()
    real = h5py.Dataset.__setitem__

    def failing(self, key, value):
        if self.name == "/paths":
            raise OSError("Can't synchronously write data (bad heap index, heap object = {1615180, 84})")
        return real(self, key, value)

    monkeypatch.setattr(h5py.Dataset, "__setitem__", failing)
    _append(w, 40, 10)
    with pytest.raises(WriteFailed, match="bad heap index.*--resume"):
        w.flush()
    w.close()  # writes nothing more
    monkeypatch.undo()
    assert verify(path).rows == 40
    w = resume_file(path, settings=SETTINGS)
    _append(w, 40, 10)
    w.close(complete=True)
    assert list(load_features(path, "fc7").paths) == [f"img{j}" for j in range(50)]


# ---------------------------------------------------------------------------------------------
# kill -9 at random moments, every compression


def test_kill_9_at_random_moments_every_compression():
    """A few kills of each compression here; benchmarks/crash_safety.py runs the long series."""
    seed = int(time.time()) % 1000
    done = subprocess.run([sys.executable, "benchmarks/crash_safety.py", "--kills", "6", "--rows", "4000",
                           "--seed", str(seed)], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"--seed {seed}: " + done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for compression in ("none", "gzip", "lzf"):
        r = results[compression]
        assert r["kills"] == 6 and r["final_equal"], r


@pytest.mark.parametrize("compression", ["gzip"])  # lzf: the crash_safety series above and in benchmarks/
def test_kill_9_of_a_compressed_cli_run_then_resume_equals_a_clean_run(tmp_path, folder, clean, compression):
    # `clean` is the same run uncompressed: compression changes how rows are stored, not their values
    out = tmp_path / "killed.h5"
    kills = 0
    for delay in (0.2, 0.6, 0.1):
        proc = subprocess.Popen(_cli("extract", folder, *ARGS, "--compression", compression, "-o", out,
                                     "--resume"), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if out.exists() and out.stat().st_size > 60_000:
                break
            time.sleep(0.005)
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        report = verify(out)
        assert report.ok, report.line()
    assert kills >= 1
    done = run("extract", folder, *ARGS, "--compression", compression, "-o", out, "--resume")
    assert done.returncode == 0, done.stderr
    with h5py.File(out, "r") as f:
        assert f["features/fc7"].compression == compression
    assert_same_rows(clean, out)


# ---------------------------------------------------------------------------------------------
# SIGTERM and SIGINT


def _start_and_wait_for_rows(args, out, rows=8):
    proc = subprocess.Popen(_cli(*args), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_as_from_a_terminal)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if out.exists():
            try:
                with h5py.File(out, "r", locking=False) as f:
                    if f["commits"].shape[0] and f["commits"][-1][1] >= rows:
                        break
            except Exception:  # the writer is mid-flush: look again
                pass
        time.sleep(0.05)
    return proc


@pytest.mark.parametrize("sig,code,word", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_sigterm_and_sigint_stop_cleanly_and_resume_completes(tmp_path, folder, clean, sig, code, word):
    out = tmp_path / "f.h5"
    proc = _start_and_wait_for_rows(["extract", folder, *ARGS, "--batch-size", "1", "-o", out], out)
    assert proc.poll() is None, "the run ended before it could be stopped"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {word}") and "rows written" in lines[0], err
    report = verify(out)
    assert report.ok and 0 < report.rows < 120
    assert run("extract", folder, *ARGS, "-o", out, "--resume").returncode == 0
    assert_same_rows(clean, out)


# ---------------------------------------------------------------------------------------------
# Two processes on one file


HELD_WRITER = r"""
import sys, numpy as np
from vggfeat.io.writer import FeatureWriter
w = FeatureWriter.create(sys.argv[1], settings={"arch": "vgg11"}, feature_shapes={"fc7": (8,)}, class_names=["a"])
w.append(["a", "b"], [0, 0], {"fc7": np.ones((2, 8))})
w.flush()
print("READY", flush=True)
sys.stdin.read()  # the test tries the other processes now
w.append(["c"], [0], {"fc7": np.full((1, 8), 3.0)})
w.close(complete=True)
"""


def test_second_writer_overwrite_and_resume_are_refused_while_a_run_writes(tmp_path, folder):
    out = tmp_path / "f.h5"
    proc = subprocess.Popen([sys.executable, "-c", HELD_WRITER, out], cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "READY", proc.stderr.read()
    try:
        for flag in ("--overwrite", "--resume"):
            result = run("extract", folder, *ARGS, "-o", out, flag)
            line = one_line_error(result, 2)
            assert f"{out} is in use by another process (pid {proc.pid})" in line, line
        with pytest.raises(OutputError, match="in use by another process"):
            FeatureWriter.create(out, settings={}, feature_shapes={"fc7": (8,)}, class_names=[], overwrite=True)
    finally:
        _, err = proc.communicate("go", timeout=60)
    assert proc.returncode == 0, err
    assert verify(out).ok
    data = load_features(out)
    assert list(data.paths) == ["a", "b", "c"] and data.features[2, 0] == 3.0


def test_overwrite_replaces_only_when_done_and_keeps_the_old_file_if_stopped(tmp_path, folder, clean):
    out = tmp_path / "f.h5"
    shutil.copyfile(clean, out)
    before = out.read_bytes()
    proc = _start_and_wait_for_rows(["extract", folder, *ARGS, "--batch-size", "1", "-o", out, "--overwrite"],
                                    tmp_path / ("f.h5" + vggfeat.io.guard.TMP_SUFFIX), rows=4)
    assert proc.poll() is None
    assert out.read_bytes() == before  # the old file is untouched while the new one is written beside it
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "left as it was" in err, err
    assert out.read_bytes() == before
    assert not (tmp_path / ("f.h5" + vggfeat.io.guard.TMP_SUFFIX)).exists()
    assert run("extract", folder, *ARGS, "-o", out, "--overwrite").returncode == 0
    assert_same_rows(clean, out)
    assert out.read_bytes() != before  # replaced (another creation time)


# ---------------------------------------------------------------------------------------------
# Damaged files


def _flip(path, offset, n=16):
    with open(path, "r+b") as fh:
        fh.seek(offset)
        data = bytearray(fh.read(n))
        fh.seek(offset)
        fh.write(bytes(b ^ 0xFF for b in data))


def _data_offset(path, layer, row):
    with h5py.File(path, "r") as f:
        ds = f["features"][layer]
        chunk = ds.chunks[0]
        info = ds.id.get_chunk_info_by_coord((row - row % chunk,) + (0,) * (ds.ndim - 1))
        return info.byte_offset, info.size, chunk


def test_flipped_feature_bytes_are_found_by_verify_load_and_resume(tmp_path, clean, folder):
    bad = tmp_path / "bad.h5"
    shutil.copyfile(clean, bad)
    offset, size, chunk = _data_offset(bad, "fc7", 70)
    _flip(bad, offset + size // 2)
    result = run("verify", bad)
    assert result.returncode == 1
    first = chunk * (70 // chunk)
    assert f"DAMAGED: rows {first}-" in result.stdout and f"the first {first} rows are intact" in result.stdout
    with pytest.raises(OutputError, match=f"features/fc7 rows {first}-"):
        load_features(bad, "fc7")
    assert load_features(bad, "fc7", verify=False).features.shape[0] == 120  # the documented escape hatch
    kept = tmp_path / "kept.h5"
    result = run("verify", bad, "--repair", kept)
    assert result.returncode == 1 and f"kept {first} of 120 rows" in result.stdout
    assert verify(kept).ok and verify(kept).rows == first
    # --resume rolls back to the intact commit and recomputes the rest
    done = run("extract", folder, *ARGS, "-o", bad, "--resume")
    assert done.returncode == 0, done.stderr
    assert "failed their check" in done.stderr and "rolled back" in done.stderr
    assert_same_rows(clean, bad)
    assert run("verify", clean).returncode == 0


def test_damaged_metadata_is_rebuilt_from_the_intact_rows(tmp_path, clean, folder):
    bad = tmp_path / "bad.h5"
    shutil.copyfile(clean, bad)
    with h5py.File(bad, "r") as f:
        addr = f["paths"].id.get_offset() if f["paths"].chunks is None else None
        chunk = f["paths"].id.get_chunk_info(0)
    _flip(bad, chunk.byte_offset + 40 * 16, 16 * 8)  # heap references of paths 40-47: unreadable strings
    result = run("verify", bad)
    assert result.returncode in (1, 2) and "Traceback" not in result.stderr
    with pytest.raises(OutputError):
        load_features(bad, "fc7")
    done = run("extract", folder, *ARGS, "-o", bad, "--resume")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert_same_rows(clean, bad)
    del addr


@pytest.mark.parametrize("damage", ["truncate", "zero_header", "no_paths", "garbage"])
def test_damaged_files_give_one_line_errors_everywhere(tmp_path, clean, damage):
    bad = tmp_path / "bad.h5"
    shutil.copyfile(clean, bad)
    if damage == "truncate":
        with open(bad, "r+b") as fh:
            fh.truncate(os.path.getsize(bad) // 3)
    elif damage == "zero_header":
        with open(bad, "r+b") as fh:
            fh.seek(0)
            fh.write(b"\0" * 512)
    elif damage == "no_paths":
        with h5py.File(bad, "r+") as f:
            del f["paths"]
    else:
        bad.write_bytes(os.urandom(5000))
    for args in (["verify", bad], ["classify", bad, "--layer", "fc7", "-o", tmp_path / "c.skops"]):
        result = run(*args)
        assert result.returncode in (1, 2), result.stderr
        assert "Traceback" not in result.stderr, result.stderr[-2000:]
        assert result.stderr.strip().startswith("Error: "), result.stderr
    with pytest.raises(vggfeat.VggfeatError) as raised:
        load_features(bad, "fc7")
    if damage == "truncate":  # said as it is (HDF5's "sblock" in its message once read as a lock held)
        assert "is truncated" in str(raised.value) and "in use" not in str(raised.value)


def test_resume_of_an_empty_or_foreign_file_leaves_it_untouched(tmp_path, folder):
    for content in (b"", b"not hdf5 at all"):
        out = tmp_path / "f.h5"
        out.write_bytes(content)
        line = one_line_error(run("extract", folder, *ARGS, "-o", out, "--resume"), 2)
        assert "left as it is" in line
        assert out.read_bytes() == content


# ---------------------------------------------------------------------------------------------
# Read-only places


@pytest.mark.skipif(os.geteuid() == 0 and not shutil.which("mount"), reason="needs a read-only mount as root")
def test_read_only_folder_is_one_line_before_the_model(tmp_path, folder):
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:  # root writes anywhere chmod forbids: use a read-only bind mount
        if subprocess.run(["mount", "--bind", "-o", "ro", str(ro), str(ro)], capture_output=True).returncode:
            pytest.skip("cannot make a read-only mount here")
    else:
        ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        result = run("extract", folder, *ARGS, "-o", ro / "f.h5",
                     env=dict(os.environ, PYTHONWARNINGS="ignore"))
        line = one_line_error(result, 2)
        assert "cannot create a file beside" in line and ("Read-only" in line or "Permission denied" in line), line
        assert list(ro.iterdir()) == []
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(ro)], capture_output=True)
        else:
            ro.chmod(stat.S_IRWXU)


# ---------------------------------------------------------------------------------------------
# Format 1 files (before commit records) still read, and resume upgrades them


def test_format_1_files_are_read_verified_as_unverifiable_and_upgraded_by_resume(tmp_path, clean, folder):
    old = tmp_path / "old.h5"
    shutil.copyfile(clean, old)
    with h5py.File(old, "r+") as f:  # the layout vggfeat wrote before format 2
        del f["commits"]
        for key in ("chunk_rows", "clean_rows", "meaning_keys", "meaning_crc32"):  # format 3's seals too
            del f.attrs[key]
        f.attrs["format_version"] = 1
    assert_same_rows(clean, old)
    result = run("verify", old)
    assert result.returncode == 0 and "format 1" in result.stdout and "cannot be verified" in result.stdout
    done = run("extract", folder, *ARGS, "-o", old, "--resume")
    assert done.returncode == 0, done.stderr
    assert "rebuilt because it was written in format 1" in done.stderr
    assert vggfeat.read_attrs(old)["format_version"] == 3 and verify(old).ok
    assert_same_rows(clean, old)


# ---------------------------------------------------------------------------------------------
# One image that never finishes decoding


def test_a_decode_that_hangs_is_that_images_failure(tmp_path, folder, monkeypatch):
    import threading

    import importlib

    extract_module = importlib.import_module("vggfeat.stream")

    real = extract_module.load_image
    never = threading.Event()

    def load(path, *args, **kwargs):
        if path.endswith("img_003.png"):
            never.wait()  # a stalled network file system
        return real(path, *args, **kwargs)

    monkeypatch.setattr(extract_module, "load_image", load)
    start = time.monotonic()
    batches = list(vggfeat.iter_features([folder / "circles"], arch="vgg11", weights="random", input_size=32,
                                         layers=["fc7"], batch_size=4, decode_timeout=1.0, progress=False))
    assert time.monotonic() - start < 120
    failed = [f for b in batches for f in b.failed]
    assert failed == [("img_003.png", "decoding took longer than 1 s (abandoned)")]
    assert sum(len(b.paths) for b in batches) == 39
    never.set()


# ---------------------------------------------------------------------------------------------
# Nothing destroyed before it is checked


def test_overwrite_with_bad_options_or_no_readable_image_leaves_the_old_file(tmp_path, clean):
    out = tmp_path / "f.h5"
    shutil.copyfile(clean, out)
    before = out.read_bytes()
    for kwargs in (dict(dtype="int8"), dict(compression="zstd")):
        with pytest.raises(vggfeat.VggfeatError):
            FeatureWriter.create(out, settings={}, feature_shapes={"fc7": (8,)}, class_names=[], overwrite=True,
                                 **kwargs)
        assert out.read_bytes() == before
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"not a png")
    result = run("extract", bad, *ARGS, "-o", out, "--overwrite")
    assert result.returncode == 1 and "no image could be read" in result.stderr
    assert out.read_bytes() == before  # the new file had no row: it is not complete and replaces nothing
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("f.h5")] == ["f.h5"]


def _signal_while_loading(folder, out, sig, delay):
    """Start extract, send `sig` `delay` s after its "loading" line (TensorFlow imports then); return (code, stderr)."""
    args = [a for a in ARGS if a != "-q"]
    proc = subprocess.Popen(_cli("extract", folder, *args, "-o", out), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_as_from_a_terminal)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if line.startswith("loading "):
            break
    time.sleep(delay)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, "".join(lines) + err


@pytest.mark.parametrize("sig, code, what", [(signal.SIGINT, 130, "interrupted"),
                                               (signal.SIGTERM, 143, "terminated (SIGTERM)")])
def test_a_signal_while_tensorflow_loads_stops_cleanly(tmp_path, folder, sig, code, what):
    out = tmp_path / "f.h5"
    returncode, err = _signal_while_loading(folder, out, sig, 0)
    assert returncode == code, err
    assert err.strip().splitlines()[-1] == f"Error: {what}; stopped before any row was written; {out} was not changed", err
    assert not out.exists()


@pytest.mark.slow
def test_ctrl_c_at_any_moment_of_the_tensorflow_import_stops_cleanly(tmp_path, folder):
    # An import interrupted half way used to be swallowed by an import fallback (the run went on and
    # wrote the file), crash at exit (SIGSEGV) or die by SIGINT after the message (seen in CI), depending
    # on the moment. vggfeat holds the signal until the import is done, then stops cleanly.
    for delay in (0.2, 0.7, 1.3):  # the import takes 2-3 s on CI's two cores: early, middle, late
        out = tmp_path / f"f{delay}.h5"
        returncode, err = _signal_while_loading(folder, out, signal.SIGINT, delay)
        assert returncode == 130, f"Ctrl-C {delay} s into the import: exit {returncode}\n{err}"
        assert err.strip().splitlines()[-1].startswith("Error: interrupted; "), err
