"""Property-based fuzzing (Hypothesis) of the readers of untrusted bytes: tar streams with their `.cls` and
`.json` members, and URLs with credentials. Every generated input ends as rows, recorded failures or a
one-line `InputError`, never another exception, a hang or unbounded memory; no credential survives
redaction. (Brace ranges: tests/test_braces.py; safetensors headers: tests/test_hostile_weights.py.)"""

import io
import os
import string
import tarfile
import tempfile
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vggfeat.errors import ImageError, InputError
from vggfeat.images import is_image_name
from vggfeat.shards import iter_samples, scan_inputs
from test_shards import png

FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=300,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PNG = png(0, size=(8, 8))

names = st.lists(st.sampled_from(["a", "b", "0", "x/y", "..", ".", "d/", "k", "ü", "a.b"]), min_size=1,
                 max_size=3).map("/".join)
exts = st.sampled_from([".png", ".jpg", ".cls", ".json", ".txt", "", ".PNG", ".tar", ".cls.png"])
label_text = st.one_of(st.integers(-2 ** 70, 2 ** 70).map(str), st.text(max_size=20),
                       st.sampled_from(["1e400", "nan", "-0", " 3 ", "0x10", "٣"]))
json_text = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70),
                                   st.floats(allow_nan=True), st.text(max_size=8)),
                         lambda kids: st.one_of(st.lists(kids, max_size=3),
                                                st.dictionaries(st.sampled_from(["y", "z", "label"]), kids, max_size=3)),
                         max_leaves=10)
types = st.sampled_from([tarfile.REGTYPE] * 6 + [tarfile.LNKTYPE, tarfile.SYMTYPE, tarfile.DIRTYPE, tarfile.FIFOTYPE,
                                                 tarfile.CHRTYPE])


@st.composite
def members(draw):
    name = draw(names) + draw(exts)
    kind = draw(types)
    if name.endswith(".cls"):
        data = draw(label_text).encode("utf-8", "surrogatepass")
    elif name.endswith(".json"):
        import json

        data = json.dumps(draw(json_text)).encode()
    elif name.lower().endswith((".png", ".jpg")):
        data = draw(st.sampled_from([PNG, PNG[:40], b"", b"\x89PNG garbage"]))
    else:
        data = draw(st.binary(max_size=64))
    return name, kind, data, draw(names) + ".png"


def _tar(entries, gz=False, cut=None):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w", format=tarfile.GNU_FORMAT) as t:
        for name, kind, data, target in entries:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.REGTYPE:
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
            else:
                info.linkname = target
                t.addfile(info)
    raw = buf.getvalue()
    return raw[:cut] if cut is not None else raw


def _read(raw, **kw):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "f.tar")
        with open(path, "wb") as f:
            f.write(raw)
        inputs = scan_inputs(path, **kw)
        out = list(iter_samples(inputs))
    for s in out:
        assert isinstance(s.data, (bytes, ImageError)), s
        assert s.label == -1 or 0 <= s.label < 2 ** 31
        assert not isinstance(s.data, bytes) or len(s.data) <= inputs.max_member_bytes
    return out, path


@FUZZ
@given(st.lists(members(), max_size=8), st.booleans(), st.sampled_from([None, "y", "label"]))
def test_fuzz_tar_streams_end_as_rows_or_failures(entries, gz, field):
    out, _ = _read(_tar(entries, gz), label_field=field)
    # every member with an image's name (a file, a hard or symbolic link, a device) is one row or one
    # recorded failure under its own name; other members fail on their own or as a sample without image
    images = sum(1 for name, kind, _, _ in entries if kind != tarfile.DIRTYPE and is_image_name(name))
    assert sum(1 for s in out if is_image_name(s.path.split(" (member ")[0])) == images
    special = sum(1 for name, k, _, _ in entries if k in (tarfile.SYMTYPE, tarfile.FIFOTYPE, tarfile.CHRTYPE))
    assert len(out) >= special


@FUZZ
@given(st.lists(members(), min_size=1, max_size=6), st.booleans(), st.integers(0, 4096))
def test_fuzz_cut_and_damaged_tar_streams(entries, gz, cut):
    raw = _tar(entries, gz)
    out, _ = _read(raw[:cut] if cut < len(raw) else raw)
    assert out  # at least the shard's own failure (empty, not a tar, truncated) or its rows


@FUZZ
@given(st.binary(max_size=2048))
def test_fuzz_arbitrary_bytes_as_a_shard(raw):
    out, _ = _read(raw)
    assert out and all(isinstance(s.data, (bytes, ImageError)) for s in out)


@FUZZ
@given(st.binary(min_size=1, max_size=64), st.integers(1, 200))
def test_fuzz_member_size_limit(data, limit):
    out, _ = _read(_tar([("a.png", tarfile.REGTYPE, data, "")]), max_member_size=limit)
    (s,) = out
    assert isinstance(s.data, ImageError) == (len(data) > limit)



@pytest.fixture(autouse=True)
def _forget_secrets():
    """Secrets remembered by one test (`vggfeat.redact.remember`) are not masked in the next one's texts."""
    from vggfeat.redact import forget_all

    yield
    forget_all()

# ---- URLs -------------------------------------------------------------------------------------------------

secret = st.text(alphabet=string.ascii_letters + string.digits + "/+=!$&'()*,;:@%?#~-_.[]", min_size=10,
                 max_size=40).filter(lambda s: not s.startswith(("/", "@")) and "ZZ" not in s
                                     # `user:8080/x@host`: a port and a path to any parser (split_userinfo)
                                     and not (s.split("/", 1)[0].isdigit() and "/" in s))
host = st.sampled_from(["example.com", "127.0.0.1:9000", "bucket", "s3.eu-west-1.amazonaws.com"])
path = st.sampled_from(["", "/d/x.tar", "/d/{a,b}.tar", "/p/", "/a@b/c.tar"])


@FUZZ
@given(secret, host, path, st.sampled_from(["http", "https", "s3", "gs"]))
def test_fuzz_userinfo_never_survives(pw, h, p, scheme):
    from vggfeat.redact import redact, redact_url

    # a bare token holding `/` cannot be told from a host and a path (`http://host/@page`): user:password only
    for url in [f"{scheme}://user:{pw}@{h}{p}"] + ([f"{scheme}://{pw}@{h}{p}"] if "/" not in pw else []):
        clean = redact_url(url)
        assert pw not in clean, (url, clean)
        assert pw not in redact(f"failed: {url} (ZZ)") and pw not in redact(f"'{url}'")
        if scheme in ("s3", "gs"):
            try:
                scan_inputs(url)
            except InputError as exc:
                assert pw not in str(exc) and "\n" not in str(exc)


@FUZZ
@given(secret, host, path, st.sampled_from(["X-Amz-Signature", "X-Amz-Credential", "sig", "token",
                                           "X-Goog-Signature", "access_token"]))
def test_fuzz_signatures_never_survive(value, h, p, param):
    from vggfeat.redact import redact, redact_url, remember

    for v in (quote(value, safe=""), value.replace("&", "").replace("#", "")):
        url = f"https://{h}{p}?X-Amz-Expires=60&{param}={v}&x=1"
        if len(v) < 3:
            continue
        assert v not in redact_url(url), url
        remember(url)
        assert v not in redact(f"GET {url} -> 403; value was {v}")
