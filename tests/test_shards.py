"""WebDataset tar shards and S3 inputs: streamed shard by shard, rows `SHARD/KEY.ext`, faults recorded."""

import io
import json
import os
import socket
import tarfile

import h5py
import numpy as np
import pytest
from PIL import Image

from conftest import CLASSES, SECRET, _upload, draw, run_cli
from vggfeat import FeatureExtractor, extract, load_features
from vggfeat.errors import ExtractInterrupted, InputError
from vggfeat.shards import expand_braces, scan_inputs


@pytest.fixture(scope="module")
def fx():
    return FeatureExtractor("vgg11", "random", ["fc7", "pool5"], input_size=32, batch_size=4)


def png(i, size=(40, 36)):
    colour, kind = list(CLASSES.values())[i % 3]
    buf = io.BytesIO()
    Image.fromarray(draw(kind, colour, size, seed=i)).save(buf, "PNG")
    return buf.getvalue()


def write_tar(path, members):
    """A tar of (name, bytes) members, in that order."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with tarfile.open(path, "w") as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))


def dataset(root, shards=2, per_shard=3):
    """`shards` WebDataset shards under root/shards (KEY.png, KEY.cls, KEY.json) and the same images as
    loose files under root/loose; returns {key: (png bytes, label)}."""
    images = {}
    for s in range(shards):
        members = []
        for j in range(per_shard):
            i = s * per_shard + j
            key = f"{i:06d}"
            data, label = png(i), i % 3
            images[key] = (data, label)
            members += [(f"{key}.png", data), (f"{key}.cls", f"{label}\n".encode()),
                        (f"{key}.json", json.dumps({"key": key, "cls": list(CLASSES)[label]}).encode())]
        write_tar(os.path.join(root, "shards", f"{s:05d}.tar"), members)
    os.makedirs(os.path.join(root, "loose"), exist_ok=True)
    for key, (data, _) in images.items():
        with open(os.path.join(root, "loose", f"{key}.png"), "wb") as f:
            f.write(data)
    return images


def test_brace_notation_expands_in_order():
    assert expand_braces("s/{00008..00011}.tar") == ["s/00008.tar", "s/00009.tar", "s/00010.tar", "s/00011.tar"]
    assert expand_braces("{a,b}/{0..1}.tar") == ["a/0.tar", "a/1.tar", "b/0.tar", "b/1.tar"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    with pytest.raises(InputError, match="goes downwards"):
        expand_braces("{5..1}.tar")


def test_shards_give_the_rows_and_features_of_the_same_loose_files(tmp_path, monkeypatch, fx):
    images = dataset(tmp_path)
    monkeypatch.chdir(tmp_path)
    s = extract(["shards/{00000..00001}.tar"], tmp_path / "s.h5", extractor=fx, progress=False)
    f = extract(["loose"], tmp_path / "f.h5", extractor=fx, progress=False)
    assert (s.written, s.failed, f.written) == (6, 0, 6)
    for layer in ("fc7", "pool5"):
        a, b = load_features(tmp_path / "s.h5", layer), load_features(tmp_path / "f.h5", layer)
        keys = sorted(images)
        assert list(a.paths) == [f"shards/{int(k) // 3:05d}.tar/{k}.png" for k in keys]
        assert list(b.paths) == [f"{k}.png" for k in keys]
        np.testing.assert_array_equal(a.features, b.features)
    assert list(a.labels) == [images[k][1] for k in keys] and a.class_names == []
    assert list(b.labels) == [-1] * 6


def test_labels_from_a_json_field_and_class_names(tmp_path, monkeypatch, fx):
    images = dataset(tmp_path, shards=1)
    monkeypatch.chdir(tmp_path)
    names = tmp_path / "classes.txt"
    names.write_text("\n".join(CLASSES) + "\n")
    extract(["shards/00000.tar"], tmp_path / "j.h5", extractor=fx, progress=False, label_field="cls",
            class_names=str(names))
    data = load_features(tmp_path / "j.h5", "pool5")
    assert data.class_names == list(CLASSES) and list(data.labels) == [images[k][1] for k in sorted(images)]
    with pytest.raises(InputError, match="for tar shards"):
        scan_inputs(["loose"], label_field="cls")


def test_hostile_shards_are_recorded_and_every_good_image_extracted(tmp_path, monkeypatch, fx, caplog):
    monkeypatch.chdir(tmp_path)
    good = [png(i) for i in range(8)]
    write_tar("h/a.tar", [("k0.png", good[0]), ("k0.cls", b"1"),
                          ("k1.png", good[1]),  # no label file: label -1
                          ("k2.png", b"this is text, not a PNG"), ("k2.cls", b"2"),  # a non-image member
                          ("k3.png", good[2][:150]), ("k3.cls", b"0"),  # a corrupt (cut) image
                          ("k4.txt", b"a caption and nothing else"),  # a sample without image
                          ("k5.png", good[3]), ("k5.cls", b"2")])
    write_tar("h/trunc_full.tar", [("t0.png", good[4]), ("t0.cls", b"0"), ("t1.png", good[5]), ("t1.cls", b"1")])
    raw = open("h/trunc_full.tar", "rb").read()
    cut = raw.index(good[5]) + len(good[5]) // 2  # the tar ends inside t1.png's data
    open("h/trunc.tar", "wb").write(raw[:cut])
    os.remove("h/trunc_full.tar")
    open("h/empty.tar", "wb").close()
    write_tar("h/nomember.tar", [])
    open("h/nottar.tar", "wb").write(b"PK\x03\x04 a zip, say, not a tar" * 40)
    write_tar("h/z.tar", [("z0.png", good[6]), ("z0.cls", b"0")])
    shards = ["h/a.tar", "h/trunc.tar", "h/empty.tar", "h/nomember.tar", "h/nottar.tar", "h/z.tar"]
    summary = extract(shards, tmp_path / "h.h5", extractor=fx, progress=False)
    data = load_features(tmp_path / "h.h5", "pool5")
    assert list(data.paths) == ["h/a.tar/k0.png", "h/a.tar/k1.png", "h/a.tar/k5.png", "h/trunc.tar/t0.png",
                                "h/z.tar/z0.png"]
    assert list(data.labels) == [1, -1, 2, 0, 0]
    assert "1 shard images had no usable label (no .cls" in caplog.text
    failed = dict(data.failed)
    assert summary.written == 5 and summary.failed == len(failed) == 7
    assert "not an image" in failed["h/a.tar/k2.png"]
    assert "cannot decode" in failed["h/a.tar/k3.png"] or "truncated" in failed["h/a.tar/k3.png"]
    assert "no image in this sample (members: .txt)" in failed["h/a.tar/k4"]
    assert failed["h/trunc.tar/t1.png"].startswith("truncated member")
    assert failed["h/empty.tar"] == "empty shard (0 bytes)"
    assert failed["h/nomember.tar"] == "empty shard: a tar with no member"
    assert failed["h/nottar.tar"].startswith("not a tar file")
    # each good image's features are its own, as from the file
    alone = fx.predict([np.asarray(Image.open(io.BytesIO(good[3])).convert("RGB").resize((32, 32)))])
    assert alone["pool5"].shape[1:] == data.features.shape[1:]
    loose = tmp_path / "k5.png"
    loose.write_bytes(good[3])
    extract([str(loose)], tmp_path / "one.h5", extractor=fx, progress=False)
    np.testing.assert_array_equal(load_features(tmp_path / "one.h5", "pool5").features[0], data.features[2])


class _NoSeek(io.RawIOBase):
    """A file that can only be read forward, as a network stream: any seek or tell fails."""

    def __init__(self, path, log):
        self.f, self.log = open(path, "rb"), log

    def readable(self):
        return True

    def readinto(self, b):
        n = self.f.readinto(b)
        self.log.append(n)
        return n

    def seekable(self):
        return False

    def seek(self, *a):
        raise OSError("not seekable")

    def tell(self):
        raise OSError("not seekable")

    def close(self):
        self.f.close()
        super().close()


def test_a_shard_is_streamed_forward_only(tmp_path, monkeypatch, fx):
    images = dataset(tmp_path, shards=2)
    monkeypatch.chdir(tmp_path)
    import vggfeat.shards

    reads = []
    monkeypatch.setattr(vggfeat.shards, "_open", lambda url: _NoSeek(url, reads))
    s = extract(["shards/{00000..00001}.tar"], tmp_path / "n.h5", extractor=fx, progress=False)
    assert (s.written, s.failed) == (6, 0) and sum(reads) == sum(os.path.getsize(f"shards/{i:05d}.tar") for i in (0, 1))
    assert list(load_features(tmp_path / "n.h5", "fc7").labels) == [images[k][1] for k in sorted(images)]


def test_a_brace_range_with_gaps_records_the_missing_shards(tmp_path, monkeypatch, fx):
    dataset(tmp_path, shards=2)
    monkeypatch.chdir(tmp_path)
    s = extract(["shards/{00000..00002}.tar"], tmp_path / "g.h5", extractor=fx, progress=False)
    assert (s.written, s.failed) == (6, 1)
    assert dict(load_features(tmp_path / "g.h5", "fc7").failed) == {
        "shards/00002.tar": "shard not found (named by the brace range)"}


def test_resume_does_not_read_complete_shards_again(tmp_path, monkeypatch, fx):
    dataset(tmp_path, shards=5, per_shard=4)
    write_tar(str(tmp_path / "shards" / "00001.tar"), [("bad.png", b"not a png"), ("bad.cls", b"1")]
              + [(n, open(tmp_path / "loose" / n, "rb").read()) for n in ("000004.png", "000005.png")])
    monkeypatch.chdir(tmp_path)
    import vggfeat.shards

    opened = []
    real_open = vggfeat.shards._open
    monkeypatch.setattr(vggfeat.shards, "_open", lambda url: opened.append(url) or real_open(url))
    inputs = ["shards/{00000..00004}.tar"]
    full = tmp_path / "full.h5"
    extract(inputs, full, extractor=fx, progress=False, batch_size=4)
    part = tmp_path / "part.h5"
    calls = []

    def stop(batch):
        calls.append(batch)
        if len(calls) == 4:  # rows of shards 0-3 are written (in commits of a whole chunk or at the stop)
            raise KeyboardInterrupt

    with pytest.raises(ExtractInterrupted):
        extract(inputs, part, extractor=fx, progress=False, on_batch=stop)
    with h5py.File(part) as f:
        written = [p.decode() for p in f["paths"][:]]
    assert 0 < len(written) < 18
    last = max(int(p.split("/")[1][:5]) for p in written)
    assert last >= 2  # shard 1, with its failure, is one of those not read again
    opened.clear()
    summary = extract(inputs, part, extractor=fx, progress=False, resume=True)
    # the shards before the last one with a written row were complete: not opened again
    assert opened == [f"shards/{i:05d}.tar" for i in range(last, 5)] and last >= 1
    assert summary.skipped == len(written) and summary.written == 18 - len(written)
    a, b = load_features(full, "fc7"), load_features(part, "fc7")
    assert list(a.paths) == list(b.paths) and list(a.labels) == list(b.labels)
    np.testing.assert_array_equal(a.features, b.features)
    assert a.failed == b.failed == [("shards/00001.tar/bad.png", "not an image Pillow can identify")]


def _one_line_error(result, output):
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert not os.path.exists(output)
    return lines[0]


FAST_CLI = ["--arch", "vgg11", "--weights", "random", "--input-size", "32", "-q"]


def test_bad_local_shard_inputs_are_one_line_errors(tmp_path):
    dataset(tmp_path, shards=1)
    out = tmp_path / "o.h5"
    line = _one_line_error(run_cli("extract", f"{tmp_path}/shards/{{00005..00009}}.tar", "-o", out, *FAST_CLI), out)
    assert "no shard matches" in line and "none exists" in line
    line = _one_line_error(run_cli("extract", f"{tmp_path}/loose", "--label-field", "cls", "-o", out, *FAST_CLI), out)
    assert "for tar shards" in line
    line = _one_line_error(run_cli("extract", f"{tmp_path}/shards/00009.tar", "-o", out, *FAST_CLI), out)
    assert "input not found" in line
    line = _one_line_error(run_cli("extract", f"{tmp_path}/shards", "-o", out, *FAST_CLI), out)
    assert "holds tar shards: name them" in line


# ---- S3: a real S3-protocol server (moto's server mode) on 127.0.0.1: s3_server, s3_env in conftest.py -----

def test_s3_shards_and_loose_images_equal_the_local_files(tmp_path, monkeypatch, s3_env, fx):
    dataset(tmp_path, shards=2)
    write_tar(str(tmp_path / "shards" / "sub" / "00002.tar"), [("x.png", png(20)), ("x.cls", b"1")])
    loose = ["loose/000001.png", "loose/000004.png"]
    files = [("data/shards/00000.tar", tmp_path / "shards/00000.tar"),
             ("data/shards/00001.tar", tmp_path / "shards/00001.tar"),
             ("data/shards/sub/00002.tar", tmp_path / "shards/sub/00002.tar"),
             ("data/notes.md", tmp_path / "shards/00000.tar")]  # neither shard nor image: not listed
    files += [(f"data/{p}", tmp_path / p) for p in loose]
    _upload(s3_env["AWS_ENDPOINT_URL"], "vgg-data", files)
    monkeypatch.chdir(tmp_path)
    local = extract(loose + ["shards/00000.tar", "shards/00001.tar", "shards/sub/00002.tar"], tmp_path / "local.h5",
                    extractor=fx, progress=False)
    remote = extract(["s3://vgg-data/data/"], tmp_path / "s3.h5", extractor=fx, progress=False)
    assert (remote.written, remote.failed) == (local.written, local.failed) == (9, 0)
    for layer in ("fc7", "pool5"):
        a, b = load_features(tmp_path / "local.h5", layer), load_features(tmp_path / "s3.h5", layer)
        assert list(a.paths) == sorted(a.paths) and list(b.paths) == list(a.paths)
        # with tar shards beside them, loose images in subfolders take no class of their subfolder (the
        # shards' .cls indices are the labels): the same labels as the files given one by one
        assert list(b.labels) == list(a.labels)
        np.testing.assert_array_equal(b.features, a.features)
    assert b.attrs["root"] == "s3://vgg-data/data/" and json.loads(b.attrs["inputs"]) == ["s3://vgg-data/data/"]
    # a prefix written without its final slash is the same prefix
    nos = scan_inputs(["s3://vgg-data/data"])
    assert nos.root == "s3://vgg-data/data/" and [x.name for x in nos.sources] == list(b.paths[:2]) + [
        "shards/00000.tar", "shards/00001.tar", "shards/sub/00002.tar"]
    # single objects and brace ranges of objects, named as given
    one = extract(["s3://vgg-data/data/shards/{00000..00001}.tar"], tmp_path / "b.h5", extractor=fx, progress=False)
    c = load_features(tmp_path / "b.h5", "pool5")
    assert one.written == 6 and c.paths[0] == "s3://vgg-data/data/shards/00000.tar/000000.png"
    np.testing.assert_array_equal(c.features, load_features(tmp_path / "local.h5", "pool5").features[2:8])
    with h5py.File(tmp_path / "s3.h5") as f:
        text = json.dumps({k: str(v) for k, v in f.attrs.items()})
    assert SECRET not in text and "vggfeat-test" not in text and s3_env["AWS_ENDPOINT_URL"] not in text


def test_s3_bad_inputs_are_one_line_errors(tmp_path, s3_env):
    _upload(s3_env["AWS_ENDPOINT_URL"], "vgg-there", [("x/a.png", _file(tmp_path, "a.png", png(1)))])
    out = tmp_path / "o.h5"
    line = _one_line_error(run_cli("extract", "s3://no-such-bucket/data/", "-o", out, *FAST_CLI, env=s3_env), out)
    assert "s3://no-such-bucket/data/" in line and ("not exist" in line or "not found" in line)
    line = _one_line_error(run_cli("extract", "s3://vgg-there/x/{00000..00003}.tar", "-o", out, *FAST_CLI,
                                   env=s3_env), out)
    assert "no shard matches" in line
    line = _one_line_error(run_cli("extract", "s3://vgg-there/x/missing.tar", "-o", out, *FAST_CLI, env=s3_env), out)
    assert "input not found" in line
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(s3_env, AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")
    line = _one_line_error(run_cli("extract", "s3://vgg-there/x/", "-o", out, *FAST_CLI, env=env), out)
    assert "cannot reach the storage endpoint" in line
    assert SECRET not in line


def _file(tmp_path, name, data):
    p = tmp_path / name
    p.write_bytes(data)
    return p


class _Requests:
    """Counts the requests the S3 server answers (werkzeug logs one line for each)."""

    def __init__(self):
        import logging

        self.lines = []
        self.handler = logging.Handler()
        self.handler.emit = lambda record: self.lines.append(record.getMessage())
        logging.getLogger("werkzeug").addHandler(self.handler)
        logging.getLogger("werkzeug").setLevel(logging.INFO)

    def gets(self, key):
        return sum(1 for line in self.lines if f"GET /{key} " in line)

    def close(self):
        import logging

        logging.getLogger("werkzeug").removeHandler(self.handler)


def test_kill_9_then_resume_reads_no_complete_shard_again(tmp_path, s3_env):
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO

    n_shards, per_shard = 24, 16
    files = []
    for s in range(n_shards):
        path = tmp_path / f"{s:05d}.tar"
        write_tar(str(path), [m for i in range(per_shard) for m in
                              ((f"{s * per_shard + i:06d}.png", png(s * per_shard + i)), (f"{s * per_shard + i:06d}.cls",
                                                                                           str(i % 3).encode()))])
        files.append((f"d/{s:05d}.tar", path))
    _upload(s3_env["AWS_ENDPOINT_URL"], "vgg-kill", files)
    args = ["extract", "s3://vgg-kill/d/", "--layer", "fc7", "--workers", "1", "--batch-size", "8", *FAST_CLI]
    whole = tmp_path / "whole.h5"
    assert run_cli(*args, "-o", whole, env=s3_env).returncode == 0
    out = tmp_path / "killed.h5"
    env = dict(os.environ, **s3_env)
    proc = subprocess.Popen([sys.executable, "-m", "vggfeat_cli", *args, "-o", str(out)], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows, deadline = 0, time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            with h5py.File(out, "r", locking=False) as f:
                rows = f["paths"].shape[0]
        except Exception:  # noqa: BLE001 - not created yet, or caught mid-write
            rows = 0
        if rows >= 64:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 64 <= rows < n_shards * per_shard, "the run ended before it could be killed mid-way"
    with h5py.File(out, "r", locking=False) as f:
        written = [p.decode() for p in f["paths"][:]]
    last = max(int(p[:5]) for p in written)
    requests = _Requests()
    try:
        result = run_cli(*args, "-o", out, "--resume", env=s3_env)
    finally:
        requests.close()
    assert result.returncode == 0, result.stderr
    for s in range(n_shards):
        assert requests.gets(f"vgg-kill/d/{s:05d}.tar") == (0 if s < last else 1), (s, last)
    a, b = load_features(whole, "fc7"), load_features(out, "fc7")
    assert list(a.paths) == list(b.paths) and len(a.paths) == n_shards * per_shard
    assert list(a.labels) == list(b.labels)
    np.testing.assert_array_equal(a.features, b.features)


def test_s3_wrong_credentials_are_a_one_line_error(tmp_path, s3_server):
    """A second server that checks signatures (moto's INITIAL_NO_AUTH_ACTION_COUNT=0): unknown keys."""
    import subprocess
    import sys
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = (f"from moto.server import ThreadedMotoServer as T; import time; T(ip_address='127.0.0.1', port={port}, "
            f"verbose=False).start(); time.sleep(600)")
    server = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="0"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "nobody",
               "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "1"}
        out = tmp_path / "o.h5"
        line = _one_line_error(run_cli("extract", "s3://vgg-data/d/", "-o", out, *FAST_CLI, env=env), out)
        assert "access denied" in line and "check the credentials" in line and SECRET not in line
    finally:
        server.kill()
        server.wait()


def test_a_local_folder_given_with_shards_is_listed_like_a_prefix(tmp_path, monkeypatch):
    dataset(tmp_path, shards=2)
    write_tar(str(tmp_path / "shards" / "a" / "00009.tar"), [("x.png", png(1))])
    (tmp_path / "shards" / "notes.md").write_text("neither a shard nor an image")
    (tmp_path / "shards" / "cover.PNG").write_bytes(png(2))
    monkeypatch.chdir(tmp_path)
    write_tar("more.tar", [("y.png", png(3))])
    found = scan_inputs(["shards", "loose/000001.png", "more.tar"], exclude=["cover*"])
    assert [(s.kind, s.name) for s in found.sources] == [
        ("shard", "shards/00000.tar"), ("shard", "shards/00001.tar"), ("shard", "shards/a/00009.tar"),
        ("image", "loose/000001.png"), ("shard", "more.tar")]
    assert found.found() == "Found 4 shards and 1 loose image" and found.root is None
    with pytest.raises(InputError, match="cannot be mixed"):
        (tmp_path / "list.txt").write_text("loose/000001.png\n")
        scan_inputs(["shards/00000.tar", "list.txt"])


def test_iter_features_reads_shards_and_names_a_duplicate_member(tmp_path, monkeypatch, fx):
    from vggfeat import iter_features

    monkeypatch.chdir(tmp_path)
    write_tar("d.tar", [("a.png", png(0)), ("a.json", b'{"y": {"name": "squares"}}'), ("b.png", png(1)),
                        ("a.png", png(2))])
    batches = list(iter_features(["d.tar"], fx, label_field="y.name", class_names="circles,squares,stripes",
                                 progress=False))
    paths = [p for b in batches for p in b.paths]
    labels = [x for b in batches for x in b.labels]
    failed = [f for b in batches for f in b.failed]
    assert paths == ["d.tar/a.png", "d.tar/b.png"] and labels == [1, -1]
    # the first member of a name is kept; the later one fails under its own member number (the 4th)
    assert failed == [("d.tar/a.png (member 4)", "duplicate member name: member 1 of that name is kept")]
    first = np.concatenate([b.features["pool5"] for b in batches])[0]
    alone = list(iter_features(["d.tar"], fx, progress=False, skip={"d.tar/b.png"}))
    np.testing.assert_array_equal(np.concatenate([b.features["pool5"] for b in alone]), first[None])
