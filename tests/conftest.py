import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import sys
import subprocess

import numpy as np
import pytest
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: class name -> (colour, shape) of the generated images; classes differ visibly.
CLASSES = {
    "circles": ((220, 40, 40), "circle"),
    "squares": ((40, 200, 60), "square"),
    "stripes": ((40, 60, 220), "stripes"),
}


def draw(kind, colour, size=(48, 40), seed=0):
    """A small RGB image with a coloured shape on a noisy background."""
    rng = np.random.default_rng(seed)
    w, h = size
    a = rng.integers(0, 60, (h, w, 3)).astype(np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    cx, cy = w / 2 + rng.uniform(-4, 4), h / 2 + rng.uniform(-4, 4)
    r = min(w, h) * rng.uniform(0.25, 0.4)
    if kind == "circle":
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 < r ** 2
    elif kind == "square":
        mask = (abs(xx - cx) < r) & (abs(yy - cy) < r)
    else:
        mask = ((xx // 4) % 2 == 0)
    a[mask] = colour
    return a


def make_folder(root, per_class=4, size=(48, 40), classes=CLASSES, ext=".png"):
    """root/<class>/img_<i>.png for each class; returns the sorted relative paths."""
    paths = []
    for ci, (name, (colour, kind)) in enumerate(classes.items()):
        d = os.path.join(root, name)
        os.makedirs(d, exist_ok=True)
        for i in range(per_class):
            p = os.path.join(d, f"img_{i:03d}{ext}")
            Image.fromarray(draw(kind, colour, size, seed=ci * 1000 + i)).save(p)
            paths.append(f"{name}/img_{i:03d}{ext}")
    return sorted(paths)


@pytest.fixture
def image_folder(tmp_path):
    root = tmp_path / "images"
    make_folder(str(root))
    return root


def run_cli(*args, env=None, timeout=600):
    """Run the installed CLI in a fresh interpreter (as a user would)."""
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "vggfeat_cli", *map(str, args)], capture_output=True,
                          text=True, env=e, timeout=timeout, cwd=REPO)


def build(layers=("fc7",), *, batch_size=32, dense=False, fully_convolutional=False, **settings):
    """An extractor from settings, as every entry point builds one: `build_extractor(ExtractorConfig(...))`."""
    from vggfeat import ExtractorConfig

    form = "dense" if dense else ("fully_conv" if fully_convolutional else settings.pop("form", "standard"))
    from vggfeat import build_extractor

    return build_extractor(ExtractorConfig(layers=layers, form=form, **settings), batch_size=batch_size)


# ---- S3: a real S3-protocol server (moto's server mode) on 127.0.0.1 (test_shards, test_predict) ------------

SECRET = "vggfeat-test-secret-key"


@pytest.fixture(scope="module")
def s3_server():
    moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed (pip install -e '.[dev]')")
    pytest.importorskip("s3fs", reason="s3fs is not installed (pip install -e '.[s3]')")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    env = {"AWS_ENDPOINT_URL": s3_server, "AWS_ACCESS_KEY_ID": "vggfeat-test", "AWS_SECRET_ACCESS_KEY": SECRET,
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "1"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    import fsspec

    fsspec.filesystem("s3").clear_instance_cache()  # a filesystem made under other settings is not reused
    return env


def _upload(endpoint, bucket, files):
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint)
    s3.create_bucket(Bucket=bucket)
    for key, path in files:
        with open(path, "rb") as f:
            s3.put_object(Bucket=bucket, Key=key, Body=f.read())
