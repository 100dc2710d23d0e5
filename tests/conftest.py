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


# ---- HTTP: a file server that can answer errors, and a throttling proxy in front of moto ------------------

class _Server:
    """A threaded HTTP server on 127.0.0.1 whose handler is `handler_cls` bound to `self`."""

    def __init__(self, handler):
        import http.server
        import threading

        self.hits = []  # (method, path) of every request
        owner = self

        class Handler(handler):
            server_owner = owner

            def log_message(self, *args):  # quiet
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _file_handler(root):
    import http.server

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=root, **kwargs)

        def _fault(self):
            owner = self.server_owner
            path = self.path.split("?", 1)[0]
            owner.hits.append((self.command, self.path))
            codes = owner.faults.get(path)
            if codes:
                code = codes.pop(0) if isinstance(codes, list) else codes
                if code:
                    self.send_response(code)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return True
            return False

        def do_GET(self):
            if not self._fault():
                super().do_GET()

        def do_HEAD(self):
            if not self._fault():
                super().do_HEAD()

        def translate_path(self, path):
            return super().translate_path(path.split("?", 1)[0])

    return Handler


@pytest.fixture
def http_files(tmp_path):
    """An HTTP file server of tmp_path/"www" (directory listings as HTML). `server.faults[path]`: an HTTP
    status to answer for that path always (an int), or a list of statuses answered first, one a request
    (0: serve); `server.hits`: the requests."""
    root = tmp_path / "www"
    root.mkdir()
    server = _Server(_file_handler(str(root)))
    server.faults = {}
    server.root = root
    yield server
    server.close()


def _proxy_handler(upstream):
    import http.client
    import http.server
    from urllib.parse import urlparse

    up = urlparse(upstream)

    class Proxy(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _any(self):
            owner = self.server_owner
            owner.hits.append((self.command, self.path))
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if self.command in ("PUT", "POST") \
                else b""
            throttled = next((k for k in owner.throttle if k in self.path.split("?", 1)[0]), None)
            if throttled is not None and owner.throttle[throttled] != 0:
                if owner.throttle[throttled] > 0:
                    owner.throttle[throttled] -= 1
                owner.throttled += 1
                payload = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>Please '
                           b'reduce your request rate.</Message></Error>')
                self.send_response(503)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(payload) if self.command != "HEAD" else 0))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)
                return
            conn = http.client.HTTPConnection(up.hostname, up.port, timeout=30)
            headers = {k: v for k, v in self.headers.items()}
            conn.request(self.command, self.path, body=body or None, headers=headers)
            r = conn.getresponse()
            data = r.read()
            self.send_response(r.status, r.reason)
            for k, v in r.getheaders():
                if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(k, v)
            self.send_header("Content-Length", r.getheader("Content-Length", "0") if self.command == "HEAD"
                             else str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            conn.close()

        do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _any

    return Proxy


@pytest.fixture
def s3_throttling(s3_server, monkeypatch):
    """A proxy in front of moto answering `503 SlowDown` for requests whose path holds a key of
    `proxy.throttle` ({substring: times}; -1: always, until set to 0); the S3 environment points at it."""
    proxy = _Server(_proxy_handler(s3_server))
    proxy.throttle, proxy.throttled = {}, 0
    env = {"AWS_ENDPOINT_URL": proxy.url, "AWS_ACCESS_KEY_ID": "vggfeat-test", "AWS_SECRET_ACCESS_KEY": SECRET,
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "1"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    import fsspec

    fsspec.filesystem("s3").clear_instance_cache()
    proxy.env, proxy.upstream = env, s3_server
    yield proxy
    proxy.close()
