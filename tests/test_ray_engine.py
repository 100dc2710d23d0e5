"""`--engine ray`: whole runs on a local Ray (`ray.init(num_cpus=2)`) compared with the local engine, with an
actor killed mid-run, the driver killed, and an interrupted run resumed. One protocol for every output:
actors write whole parts of units; a single file takes its staged parts in order."""

import glob
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, SECRET, _upload, make_folder, run_cli
from vggfeat.errors import InputError, OutputError
from vggfeat.errors import ExtractFailed
from vggfeat.io.index import part_counts
from vggfeat.io.read import load_features
from vggfeat.io.sink import staging_dir
from vggfeat.io.writer import FeatureWriter

SETTINGS = {"arch": "vgg16", "weights": "random", "seed": 0, "layers": '["fc7"]'}
OPTIONS = dict(weights="random", input_size=32, batch_size=4, layers=["fc7", "pool5"])


# ---------------------------------------------------------------------------------------------
# Choosing the engine.


def test_local_engine_does_not_import_ray(tmp_path):
    make_folder(str(tmp_path / "images"), per_class=1)
    code = ("import sys, vggfeat; vggfeat.extract([sys.argv[1]], sys.argv[2], ['pool5'], weights='random', "
            "input_size=32); assert 'ray' not in sys.modules, 'ray imported'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "images"), str(tmp_path / "f.h5")],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


def test_ray_options_need_the_ray_engine(tmp_path, image_folder):
    r = run_cli("extract", str(image_folder), "-o", str(tmp_path / "f.h5"), "--address", "auto")
    assert r.returncode == 2 and "need --engine ray" in r.stderr
    assert not (tmp_path / "f.h5").exists()


def test_missing_ray_says_how_to_install(tmp_path, image_folder, monkeypatch):
    import vggfeat

    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(InputError, match=r'pip install "vggfeat\[ray\]"'):
        vggfeat.extract([str(image_folder)], tmp_path / "f.h5", engine="ray", **OPTIONS)
    assert not (tmp_path / "f.h5").exists()


# ---------------------------------------------------------------------------------------------
# Whole runs on a local Ray.

@pytest.fixture(scope="module")
def local_ray(request):
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[dev,ray]')")
    # Ray's workers read S3 with the configuration of the node they run on (the environment `ray start`
    # had): here, the test's S3 server, set before the local Ray starts.
    saved = dict(os.environ)
    try:
        endpoint = request.getfixturevalue("s3_server")
        os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "vggfeat-test",
                           "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
                           "AWS_MAX_ATTEMPTS": "1"})
    except pytest.skip.Exception:
        pass
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray") / "images"
    make_folder(str(root), per_class=6)
    with open(root / "squares" / "broken.jpg", "wb") as f:
        f.write(b"\xff\xd8\xff this is not a JPEG")
    return root


@pytest.fixture(scope="module")
def reference(folder, tmp_path_factory):
    """The local engine's output for the same inputs and settings."""
    import vggfeat

    out = tmp_path_factory.mktemp("local") / "local.h5"
    vggfeat.extract([str(folder)], out, **OPTIONS)
    return out


def _same_as(reference, out):
    a, b = load_features(reference, "fc7"), load_features(out, "fc7")
    assert list(b.paths) == list(a.paths)
    assert len(set(b.paths)) == len(b.paths)
    np.testing.assert_array_equal(b.labels, a.labels)
    assert b.class_names == a.class_names
    assert b.failed == a.failed
    np.testing.assert_allclose(b.features, a.features, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(load_features(out, "pool5").features, load_features(reference, "pool5").features,
                               rtol=1e-5, atol=1e-5)
    # the settings as recorded; not when, nor what only an index records, nor the seals derived from them
    skip = {"created", "format", "format_version", "meaning_keys", "meaning_crc32", "feature_shapes", "parts_folder",
            "run_id", "chunk_rows", "clean_rows", "writing"}
    assert {k: v for k, v in b.attrs.items() if k not in skip} == {k: v for k, v in a.attrs.items() if k not in skip}
    assert b.attrs["complete"] is True or b.attrs["complete"] == 1


@pytest.mark.ray
def test_ray_engine_gives_the_local_engines_file(local_ray, folder, reference, tmp_path):
    import vggfeat

    out = tmp_path / "ray.h5"
    summary = vggfeat.extract([str(folder)], out, engine="ray", ray_workers=2, block_size=4, **OPTIONS)
    _same_as(reference, out)
    assert not os.path.exists(staging_dir(out))  # the staged parts are gone
    assert (summary.written, summary.failed, summary.workers) == (18, 1, 2)
    assert "Ray: 2 workers" in summary.line()
    # an existing output is refused, as with the local engine
    with pytest.raises(OutputError, match="exists"):
        vggfeat.extract([str(folder)], out, engine="ray", ray_workers=2, **OPTIONS)


@pytest.mark.ray
def test_an_interrupted_sharded_run_resumes(local_ray, folder, reference, tmp_path):
    import vggfeat
    out = tmp_path / "ray.h5"
    # --strict stops the run at the broken image, with some units' parts staged whole.
    with pytest.raises(ExtractFailed, match="broken.jpg.*--resume"):
        vggfeat.extract([str(folder)], out, engine="ray", ray_workers=2, block_size=2, strict=True, **OPTIONS)
    # the images the staged parts hold (rows and failures): a unit of the block size, or the last, shorter one
    before = sum(sum(part_counts(p)) for p in glob.glob(os.path.join(staging_dir(out), "part-*.h5")))
    assert before > 0  # staged parts hold rows
    with pytest.raises(OutputError, match="exists; pass --resume"):
        vggfeat.extract([str(folder)], out, engine="ray", ray_workers=2, **OPTIONS)
    with pytest.raises(OutputError, match="settings differ"):
        vggfeat.extract([str(folder)], out, engine="ray", ray_workers=2, resume=True, **dict(OPTIONS, seed=1))
    seen = []
    summary = vggfeat.extract([str(folder)], out, engine="ray", ray_workers=2, resume=True,
                              on_batch=lambda b: seen.extend(b.paths + [p for p, _ in b.failed]), **OPTIONS)
    assert len(seen) <= 19 - before  # only what the staged parts did not hold was extracted again
    assert summary.written == 18 and summary.failed == 1
    _same_as(reference, out)
    assert not os.path.exists(staging_dir(out))


@pytest.mark.ray
def test_cli_joins_a_cluster_by_address(local_ray, folder, reference, tmp_path):
    address = local_ray.get_runtime_context().gcs_address
    out = tmp_path / "cli.h5"
    r = run_cli("extract", "--engine", "ray", "--address", address, "--ray-workers", "2", "--weights", "random",
                "--input-size", "32", "--batch-size", "4", "--block-size", "4", "--layer", "fc7", "--layer", "pool5",
                str(folder), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "18 images written, 1 failed" in r.stderr and "Ray: 2 workers" in r.stderr
    _same_as(reference, out)
    r = run_cli("extract", "--engine", "ray", "--address", address, "--gpus-per-worker", "1", "--weights",
                "random", "--input-size", "32", str(folder), "-o", str(tmp_path / "gpu.h5"))
    assert r.returncode == 2 and "the Ray cluster has 0 GPUs" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "gpu.h5").exists() and not os.path.exists(staging_dir(tmp_path / "gpu.h5"))


@pytest.mark.ray
def test_a_worker_that_computes_other_settings_refuses_to_start(local_ray, folder, tmp_path):
    """A node with another weight file must not mix its features in: the worker builds the driver's
    ExtractorConfig, whose weights_sha256 its file does not match, and the run stops with that reason
    in one line."""
    from vggfeat.images import scan_images
    from vggfeat.io.layout import OutputSpec
    from vggfeat.io.sink import FileSink
    from vggfeat.models import build_vgg
    from vggfeat.run.options import RunOptions
    from vggfeat.run.ray import RayEngine

    from conftest import build

    weights = tmp_path / "w.weights.h5"
    build_vgg("vgg11", input_size=32, seed=1).save_weights(weights)
    fx = build(["pool5"], weights=str(weights), arch="vgg11", form="fully_conv", input_size=32, batch_size=4)
    fx.config = fx.config.replace(weights_sha256="0" * 64)  # what the driver's own file was
    out = tmp_path / "f.h5"
    images = scan_images(str(folder))
    sink = FileSink(out, OutputSpec(fx.settings(), fx.output_shapes, images.class_names))
    options = RunOptions(engine="ray", ray_workers=1)
    engine = RayEngine(options)
    engine.start()
    with pytest.raises(OutputError, match=r"cannot build the run's extractor: .*w.weights.h5 is not the weight file"):
        engine.write(images, sink, fx, options)
    assert sink.rows == 0
    sink.close(False)


@pytest.mark.ray
def test_driver_killed_mid_run_then_cli_resume(local_ray, folder, reference, tmp_path):
    """The driver itself dies (kill -9, as a preempted head node would) after its first block: its
    workers go with it, the staged parts are whole or absent, and `vggfeat extract --resume` finishes."""
    address = local_ray.get_runtime_context().gcs_address
    out = tmp_path / "ray.h5"
    code = ("import os, signal, sys, vggfeat\n"
            "vggfeat.extract([sys.argv[1]], sys.argv[2], ['fc7', 'pool5'], weights='random', input_size=32,\n"
            "                batch_size=4, engine='ray', address=sys.argv[3], ray_workers=2, block_size=2,\n"
            "                on_batch=lambda batch: os.kill(os.getpid(), signal.SIGKILL))\n")
    proc = subprocess.run([sys.executable, "-c", code, str(folder), str(out), address], capture_output=True,
                          text=True, cwd=REPO, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert os.path.isdir(staging_dir(out))
    assert 0 < len(glob.glob(os.path.join(staging_dir(out), "part-*.h5"))) < 10
    r = run_cli("extract", "--engine", "ray", "--address", address, "--ray-workers", "2", "--weights", "random",
                "--input-size", "32", "--batch-size", "4", "--layer", "fc7", "--layer", "pool5", str(folder),
                "-o", str(out), "--resume")
    assert r.returncode == 0, r.stderr
    _same_as(reference, out)
    assert not os.path.exists(staging_dir(out))


# ---------------------------------------------------------------------------------------------
# Tar shards and S3 on Ray: the work unit is a shard.


def _part_worker_pids():
    """The processes of Ray's actors that write parts (Ray names them after the class)."""
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    if b"PartWorker" in f.read():
                        pids.append(int(d))
            except OSError:
                continue
    return pids


@pytest.mark.ray
def test_ray_reads_s3_shards_as_the_local_engine(local_ray, s3_env, tmp_path, monkeypatch):
    """Shards and loose images on a real S3-protocol server (moto), hostile shards among them: the Ray
    engine (one shard per task) gives the local engine's rows, values and failures, into one file and
    into parts."""
    import vggfeat
    from test_parts import hostile

    monkeypatch.chdir(tmp_path)
    hostile(".")
    files = [(f"d/shards/{n}", tmp_path / "shards" / n) for n in sorted(os.listdir("shards"))]
    files += [(f"d/loose/{n}", tmp_path / "loose" / n) for n in sorted(os.listdir("loose"))[:2]]
    _upload(s3_env["AWS_ENDPOINT_URL"], "vgg-ray", files)
    local = vggfeat.extract(["s3://vgg-ray/d/"], "local.h5", progress=False, **OPTIONS)
    ray = vggfeat.extract(["s3://vgg-ray/d/"], "ray.h5", engine="ray", ray_workers=2, progress=False, **OPTIONS)
    parts = vggfeat.extract(["s3://vgg-ray/d/"], "parts.h5", engine="ray", ray_workers=2, progress=False,
                            output_shards=True, **OPTIONS)
    assert (local.written, local.failed) == (ray.written, ray.failed) == (parts.written, parts.failed) == (11, 5)
    assert ray.workers == 2 and parts.parts == 8  # 7 shards and the loose images
    for out in ("ray.h5", "parts.h5"):
        for layer in ("fc7", "pool5"):
            a, b = vggfeat.load_features("local.h5", layer), vggfeat.load_features(out, layer)  # an index too
            assert list(b.paths) == list(a.paths) and b.failed == a.failed
            np.testing.assert_array_equal(b.labels, a.labels)
            np.testing.assert_array_equal(b.features, a.features)
    assert not os.path.exists(staging_dir("ray.h5"))


@pytest.mark.ray
def test_ray_shard_worker_killed_mid_run_loses_nothing(local_ray, tmp_path, monkeypatch):
    """SIGKILL a worker after the first shard is done: Ray runs its shard again on a new worker; the
    part it was writing is written whole by the new one, never half and never twice."""
    import vggfeat
    from test_shards import png, write_tar

    monkeypatch.chdir(tmp_path)
    for s in range(8):
        write_tar(f"s/{s:05d}.tar", [m for i in range(4) for m in ((f"{s}_{i}.png", png(s * 4 + i)),
                                                                   (f"{s}_{i}.cls", str(i % 3).encode()))])
    inputs = ["s/{00000..00007}.tar"]
    vggfeat.extract(inputs, "local.h5", progress=False, **OPTIONS)
    killed = []

    def kill_one(batch):
        pids = _part_worker_pids()
        if not killed and pids:
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    summary = vggfeat.extract(inputs, "ray.h5", engine="ray", ray_workers=2, progress=False, on_batch=kill_one,
                              **OPTIONS)
    assert killed and summary.written == 32
    a, b = load_features("local.h5", "fc7"), load_features("ray.h5", "fc7")
    assert list(b.paths) == list(a.paths) and len(set(b.paths)) == 32
    np.testing.assert_array_equal(b.features, a.features)


@pytest.mark.ray
def test_ray_shards_stopped_by_strict_resume_without_running_complete_shards(local_ray, tmp_path, monkeypatch):
    """`--strict` stops a Ray run over shards at a bad image: the shards done are kept as staged parts (the
    one with the failure is not), and `--resume` runs only the others, giving the local engine's file."""
    import vggfeat
    from test_shards import png, write_tar

    monkeypatch.chdir(tmp_path)
    for s in range(6):
        members = [m for i in range(3) for m in ((f"{s}_{i}.png", png(s * 3 + i)), (f"{s}_{i}.cls", b"1"))]
        write_tar(f"s/{s:05d}.tar", members + ([("bad.png", b"not a png")] if s == 4 else []))
    inputs = ["s/{00000..00005}.tar"]
    vggfeat.extract(inputs, "local.h5", progress=False, **OPTIONS)
    with pytest.raises(ExtractFailed, match=r"s/00004.tar/bad.png.*--strict.*--resume"):
        vggfeat.extract(inputs, "ray.h5", engine="ray", ray_workers=2, strict=True, progress=False, **OPTIONS)
    staged = staging_dir("ray.h5")
    kept = {n: os.stat(os.path.join(staged, n)).st_ino for n in os.listdir(staged) if n.endswith(".h5")}
    assert kept and "part-000004.h5" not in kept
    summary = vggfeat.extract(inputs, "ray.h5", engine="ray", ray_workers=2, resume=True, progress=False, **OPTIONS)
    assert (summary.written, summary.failed) == (18, 1)
    a, b = load_features("local.h5", "fc7"), load_features("ray.h5", "fc7")
    assert list(b.paths) == list(a.paths) and b.failed == a.failed
    np.testing.assert_array_equal(b.features, a.features)
    assert not os.path.exists(staging_dir("ray.h5"))


@pytest.mark.ray
def test_ray_http_shards_keep_secrets_and_resume_transient_failures(local_ray, http_files, tmp_path, monkeypatch,
                                                                    caplog):
    """On the Ray engine, into one file and into parts: a password in the URL reaches no byte of the output
    and no log line; a shard answering 500 is a transient failure that `resume` reads again once the server
    recovers (the 404 one stays failed, permanently); the result equals the local engine's."""
    import vggfeat
    from test_hostile_inputs import HTTP_SECRET, _assert_no_secret
    from test_shards import png, write_tar

    monkeypatch.chdir(tmp_path)
    for name, first in (("a", 0), ("c", 4)):
        write_tar(str(http_files.root / f"d/{name}.tar"),
                  [(f"{i:03d}.png", png(i)) for i in range(first, first + 4)])
    host = http_files.url.split("//")[1]
    url = f"http://reader:{HTTP_SECRET}@{host}/d/{{a,b,c}}.tar"
    reference = vggfeat.extract(url, "local.h5", progress=False, **OPTIONS)  # c.tar served: 8 rows, b.tar failed
    assert (reference.written, reference.failed) == (8, 1)
    http_files.faults["/d/c.tar"] = 500
    for out, parts in (("ray.h5", False), ("parts.h5", True)):
        first = vggfeat.extract(url, out, engine="ray", ray_workers=2, retries=0, output_shards=parts, progress=False,
                                **OPTIONS)
        reasons = dict(vggfeat.load_features(out, "fc7").failed)
        assert (first.written, first.failed, first.transient) == (4, 2, 1), reasons
        assert reasons[f"http://{host}/d/c.tar"].startswith("transient: cannot open shard: server error 500")
        assert reasons[f"http://{host}/d/b.tar"].startswith("cannot open shard: not found")
    http_files.faults.pop("/d/c.tar")
    for out, parts in (("ray.h5", False), ("parts.h5", True)):
        again = vggfeat.extract(url, out, engine="ray", ray_workers=2, resume=True, output_shards=parts,
                                progress=False, **OPTIONS)
        # b.tar's permanent failure is kept (a complete part is not run again: counted by the earlier run)
        assert (again.written, again.failed, again.transient) == (4, 0 if parts else 1, 0)
        a, b = vggfeat.load_features("local.h5", "fc7"), vggfeat.load_features(out, "fc7")
        assert sorted(b.paths) == list(a.paths) and b.failed == a.failed
        order = np.argsort(b.paths)
        np.testing.assert_array_equal(b.features[order], a.features)
    files = [p for p in glob.glob(str(tmp_path / "**" / "*"), recursive=True) if os.path.isfile(p) and "www" not in p]
    _assert_no_secret([caplog.text], files)


# ---------------------------------------------------------------------------------------------
# The Ray engine's cells of the fault matrix (tests/test_fault_matrix.py has the local engine's): the
# driver stopped at a random moment (kill -9, SIGTERM) while it creates or overwrites one file or an index,
# and a full disk on the driver; afterwards `--resume` gives the local engine's output, or the earlier
# output is byte for byte what it was.


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory):
    import vggfeat
    from test_shards import png, write_tar

    root = tmp_path_factory.mktemp("ray-matrix")
    for s in range(4):
        write_tar(str(root / "s" / f"{s:05d}.tar"),
                  [m for i in range(6) for m in ((f"{s * 6 + i:06d}.png", png(s * 6 + i)),
                                                (f"{s * 6 + i:06d}.cls", str(i % 3).encode()))])
    inputs = [f"{root}/s/{{00000..00003}}.tar"]
    ref = root / "ref.h5"
    vggfeat.extract(inputs, ref, progress=False, **OPTIONS)
    return inputs, ref


def _digest(path):
    import hashlib

    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.mark.ray
@pytest.mark.parametrize("kind,sig", [("parts", signal.SIGKILL), ("file", signal.SIGTERM),
                                      ("overwrite", signal.SIGKILL)])
def test_fault_matrix_ray_driver_stopped_at_a_random_moment(local_ray, shard_set, tmp_path, kind, sig):
    import random
    import time

    import vggfeat

    inputs, ref = shard_set
    rng = random.Random()
    seed = rng.randrange(10**6)
    rng.seed(seed)
    out = str(tmp_path / "out.h5")
    before = None
    if kind == "overwrite":
        vggfeat.extract(inputs[0].replace("00003", "00001"), out, progress=False, **OPTIONS)
        before = _digest(out)
    address = local_ray.get_runtime_context().gcs_address
    args = ["extract", "--engine", "ray", "--address", address, "--ray-workers", "2", "--weights", "random",
            "--input-size", "32", "--batch-size", "4", "--layer", "fc7", "--layer", "pool5", *inputs, "-o", out]
    args += {"parts": ["--output-shards"], "overwrite": ["--overwrite"], "file": []}[kind]
    proc = subprocess.Popen([sys.executable, "-m", "vggfeat_cli", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    watch = os.path.join(out + ".parts", "part-*.h5") if kind == "parts" else os.path.join(staging_dir(out), "*")
    deadline = time.monotonic() + 300
    while proc.poll() is None and not glob.glob(watch) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(rng.uniform(0, 1.5))
    if proc.poll() is None:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    # -15: SIGTERM arrived before the command had installed its handler (Python still starting)
    assert proc.returncode in (0, -signal.SIGKILL, 143, -signal.SIGTERM), f"seed {seed}: {proc.returncode} {err[-2000:]}"
    if proc.returncode == 143:  # stopped cleanly: its last line says so, and what was kept
        assert err.strip().splitlines()[-1].startswith("Error: terminated (SIGTERM); ") and "Traceback" not in err
    if before is not None and proc.returncode != 0 and _digest(out) != before:
        _same_as(ref, out)  # stopped after the new file took its place: it is whole
    if os.path.exists(out) and proc.returncode != 0:
        report = vggfeat.verify(out)
        problems = getattr(report, "problems", [] if report.ok else [report.line()])
        assert all("is incomplete (the run was interrupted)" in p for p in problems), f"seed {seed}: {problems}"
    vggfeat.extract(inputs, out, engine="ray", ray_workers=2, progress=False, output_shards=kind == "parts",
                    resume=kind != "overwrite", overwrite=kind == "overwrite", **OPTIONS)
    _same_as(ref, out)
    assert not os.path.exists(staging_dir(out))


@pytest.mark.ray
def test_fault_matrix_ray_full_disk_on_the_driver(local_ray, shard_set, tmp_path, monkeypatch):
    """The driver's writes of the one file fail as a full disk's do: one line, the file's committed rows
    kept, the staged parts kept; `--resume` completes it without writing them again."""
    import errno

    import vggfeat
    from vggfeat.errors import WriteFailed
    from vggfeat.io import guard

    inputs, ref = shard_set
    out = str(tmp_path / "out.h5")
    from vggfeat.io.sink import FileSink

    real_write, real_take = guard.GuardedIO.write, FileSink.take
    taking = [0]

    def take(sink, unit):  # the disk fills up while the driver takes the second staged part
        taking[0] += 1
        return real_take(sink, unit)

    def write(io, b):
        if taking[0] >= 2 and io.error is None:
            io.error = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(io, b)

    monkeypatch.setattr(guard.GuardedIO, "write", write)
    monkeypatch.setattr(FileSink, "take", take)
    with pytest.raises(WriteFailed, match="No space left") as info:
        vggfeat.extract(inputs, out, engine="ray", ray_workers=2, progress=False, **OPTIONS)
    assert "\n" not in str(info.value)
    monkeypatch.undo()
    assert vggfeat.verify(out).ok and glob.glob(os.path.join(staging_dir(out), "part-*.h5"))
    seen = []
    vggfeat.extract(inputs, out, engine="ray", ray_workers=2, progress=False, resume=True,
                    on_batch=lambda b: seen.append(b), **OPTIONS)
    assert not seen  # every unit was staged whole: none extracted again
    _same_as(ref, out)
