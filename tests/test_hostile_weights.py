"""Hostile weight files and outputs (issue 20: 14 and 16), each made for real by the test: safetensors headers
nested thousands deep, overlapping or gapped tensor offsets, wrong lengths, NaN and inf weights; a read-only
folder as finetune's output. Every one must end as one line (a `WeightsError`/`OutputError`, `Error: ...` at the
CLI, exit 2), never a traceback; and Hypothesis fuzzes the safetensors header reader with thousands of
generated headers and byte strings, checked against the reference `safetensors` library where both apply."""

import functools
import json
import os
import re
import struct
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.numpy import save_file

from conftest import REPO, make_folder, run_cli
from test_torch_weights import torch_arrays
from vggfeat import torch_weights as tw
from vggfeat.errors import OutputError, WeightsError


def raw_file(path, header: bytes, data: bytes = b"", declared=None):
    """A safetensors file byte by byte: 8 bytes of little-endian length (`declared`, default the header's),
    the header, the data."""
    n = len(header) if declared is None else declared
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", n) + header + data)
    return str(path)


def header_file(path, header: dict, data: bytes = b""):
    return raw_file(path, json.dumps(header).encode(), data)


def reference_refuses(path) -> bool:
    """Whether the reference library (safetensors, Rust) refuses the file's header."""
    try:
        with safe_open(str(path), framework="numpy"):
            return False
    except Exception:  # noqa: BLE001 - SafetensorError, and whatever else it raises
        return True


def one_line(result, pattern=None):
    """A CLI run that failed as it should: exit 2, one `Error: ...` line on stderr, no traceback."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.stderr
    if pattern:
        assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


def entry(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": [begin, end]}


# ---------------------------------------------------------------------------------------------
# Deeply nested headers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("opening,closing", [("[", "]"), ('{"a":', "}")])
def test_nested_header_is_one_line(tmp_path, opening, closing):
    """`{"a":[[[[...]]]]}` 5,000 deep (10 kB, far under the 1 MiB cap) exhausted json's recursion: a 48-line
    RecursionError traceback at `vggfeat info`. Now its depth is measured on the bytes before json.loads."""
    depth = 5000
    header = ('{"a":' + opening * depth + "1" + closing * depth + "}").encode()
    path = raw_file(tmp_path / "nested.safetensors", header)
    with pytest.raises(WeightsError, match=r"nested.safetensors is not a usable safetensors file: its header nests "
                                           r"JSON 5,001 levels deep \(a safetensors header nests 3, at most 64"):
        tw.read_safetensors_header(path)
    assert reference_refuses(path)
    one_line(run_cli("info", "--weights", path), r"its header nests JSON 5,001 levels deep")
    # the deepest a header may nest within the 1 MiB cap (half a million levels): the same line, at once
    big = raw_file(tmp_path / "deeper.safetensors", b"[" * (tw._MAX_HEADER - 1) + b"]")
    started = time.perf_counter()
    with pytest.raises(WeightsError, match=r"nests JSON 1,048,575 levels deep"):
        tw.read_safetensors_header(big)
    assert time.perf_counter() - started < 2


def test_nested_header_via_extract_is_one_line(tmp_path):
    path = raw_file(tmp_path / "nested.safetensors", ('{"a":' + "[" * 3000 + "]" * 3000 + "}").encode())
    images = tmp_path / "images"
    make_folder(str(images), per_class=1)
    one_line(run_cli("extract", images, "-o", tmp_path / "out.h5", "--weights", path, "-q"), r"nests JSON 3,001 levels")
    assert not (tmp_path / "out.h5").exists()


def test_depth_counts_brackets_outside_strings_only(tmp_path):
    """Brackets inside strings (escaped quotes and backslashes included) are text, not nesting: a header whose
    metadata holds thousands of them is accepted, as the reference library accepts it."""
    text = '[[[{{{ \\" ]]] \\\\' * 2000
    path = header_file(tmp_path / "text.safetensors", {"__metadata__": {"note": text}, "t": entry("F32", [2], 0, 8)},
                       b"\0" * 8)
    assert not reference_refuses(path)
    assert list(tw.read_safetensors_header(path)) == ["t"]
    assert tw.json_depth(json.dumps({"a": [[1], {"b": "[[[["}]}).encode()) == 3
    assert tw.json_depth(b'"\\\\"[[') == 2  # an escaped backslash does not escape the closing quote
    assert tw.json_depth(b'"\\"[["') == 0  # an escaped quote does not close the string


# ---------------------------------------------------------------------------------------------
# The reference library's rules on offsets, lengths, dtypes, shapes and metadata
# ---------------------------------------------------------------------------------------------

HOSTILE_HEADERS = {
    # name: (header, data bytes, the error's words)
    "overlap": ({"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 4, 12)}, 12,
                r"tensor 'b' \(data bytes 4..12\) overlaps tensor 'a' \(which ends at 8\)"),
    "same bytes": ({"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 0, 8)}, 8,
                   r"tensor '[ab]' \(data bytes 0..8\) overlaps tensor '[ab]'"),
    "gap": ({"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 12, 20)}, 20,
            r"data bytes 8..12 \(after tensor 'a', before tensor 'b'\) belong to no tensor"),
    "gap first": ({"a": entry("F32", [2], 4, 12)}, 12,
                  r"data bytes 0..4 \(before the first tensor, before tensor 'a'\)"),
    "bytes after": ({"a": entry("F32", [2], 0, 8)}, 16,
                    r"the last tensor, 'a', ends at data byte 8 but 8 bytes follow"),
    "no tensor, bytes": ({}, 4, r"it lists no tensor: the tensors end at data byte 0 but 4 bytes follow"),
    "truncated": ({"a": entry("F32", [4], 0, 16)}, 8, r"tensor 'a' runs past the end of the file \(truncated\)"),
    "short length": ({"a": entry("F32", [3], 0, 8)}, 8, r"tensor 'a' stores 8 bytes for a F32 tensor of shape \(3,\) "
                                                        r"\(12 bytes\)"),
    "long length": ({"a": entry("F16", [2], 0, 8)}, 8, r"stores 8 bytes for a F16 tensor of shape \(2,\) \(4 bytes\)"),
    "reversed": ({"a": entry("F32", [2], 8, 0)}, 8, r"data_offsets \[8, 0\], not \[begin, end\]"),
    "unknown dtype": ({"a": entry("F31", [2], 0, 8)}, 8, r"tensor 'a' has dtype 'F31', not one of F64, F32"),
    "negative shape": ({"a": entry("F32", [-2], 0, 8)}, 8, r"tensor 'a' has shape \[-2\], not a list"),
    "float shape": ({"a": entry("F32", [2.0], 0, 8)}, 8, r"tensor 'a' has shape \[2.0\]"),
    "bool shape": ({"a": entry("F32", [True, 2], 0, 8)}, 8, r"tensor 'a' has shape \[True, 2\]"),
    "overflow": ({"a": entry("F32", [2 ** 40, 2 ** 40, 0], 0, 0)}, 0, r"more elements than a file can hold"),
    "metadata not strings": ({"__metadata__": {"format": 1}, "a": entry("F32", [2], 0, 8)}, 8,
                             r"its __metadata__ is not an object of strings"),
    "metadata a list": ({"__metadata__": ["pt"], "a": entry("F32", [2], 0, 8)}, 8, r"__metadata__ is not an object"),
    "no offsets": ({"a": {"dtype": "F32", "shape": [2]}}, 8, r"tensor 'a' has no dtype, shape and data_offsets"),
    "not an object": ([1, 2], 0, r"its header is not a JSON object"),
}


@pytest.mark.parametrize("case", list(HOSTILE_HEADERS))
def test_reference_rules_are_applied(tmp_path, case):
    """Each file is refused in one line naming the tensor, where the reference library refuses it too (before,
    overlapping offsets, gaps and bytes after the last tensor were accepted)."""
    header, size, words = HOSTILE_HEADERS[case]
    path = header_file(tmp_path / "x.safetensors", header, bytes(range(256)) * (size // 256) + bytes(size % 256))
    with pytest.raises(WeightsError) as err:
        tw.read_safetensors_header(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith("x.safetensors is not a usable safetensors file: ")
    assert re.search(words, message), message
    assert reference_refuses(path), case


def test_what_the_reference_accepts_is_accepted(tmp_path):
    """Zero-size tensors sharing an offset, a scalar, null or string metadata, unknown keys in an entry, JSON
    whitespace around the header: the reference library accepts each, and so does vggfeat's reader."""
    header = {"__metadata__": {"format": "pt"}, "z1": entry("F32", [0, 3], 0, 0), "z2": entry("I64", [0], 0, 0),
              "s": entry("F64", [], 0, 8), "v": {**entry("BF16", [2, 2], 8, 16), "extra": [[{"x": None}]]}}
    text = b"  " + json.dumps(header).encode() + b"\n  "
    path = raw_file(tmp_path / "ok.safetensors", text, b"\0" * 16)
    assert not reference_refuses(path)
    got = tw.read_safetensors_header(path)
    assert list(got) == ["z1", "z2", "s", "v"]
    start = 8 + len(text)
    assert (got["s"].start, got["s"].end, got["v"].start, got["v"].end) == (start, start + 8, start + 8, start + 16)
    path = header_file(tmp_path / "null.safetensors", {"__metadata__": None}, b"")
    assert not reference_refuses(path) and tw.read_safetensors_header(path) == {}


def test_overlapping_vgg_file_is_one_line_at_the_cli(tmp_path):
    """A whole vgg11 trunk written by safetensors, then its header rewritten so that features.3.weight's
    offsets start inside features.0.weight's bytes (the file's size unchanged)."""
    state = torch_arrays("vgg11", top=False)
    good = tmp_path / "good.safetensors"
    save_file(state, str(good))
    raw = good.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    a, b = header["features.0.weight"]["data_offsets"]
    length = header["features.3.weight"]["data_offsets"][1] - header["features.3.weight"]["data_offsets"][0]
    header["features.3.weight"]["data_offsets"] = [a + 4, a + 4 + length]
    text = json.dumps(header).encode()
    bad = raw_file(tmp_path / "overlap.safetensors", text, raw[8 + n:])
    assert reference_refuses(bad)
    line = one_line(run_cli("info", "--weights", bad))
    assert "overlap.safetensors is not a usable safetensors file: tensor 'features.3.weight'" in line
    assert "overlaps tensor 'features.0.weight'" in line


# ---------------------------------------------------------------------------------------------
# Non-finite weights
# ---------------------------------------------------------------------------------------------


def _trunk_with(tmp_path, name, tensor, index, value, dtype=np.float32):
    state = torch_arrays("vgg11", top=False)
    array = state[tensor].astype(dtype)
    array.reshape(-1)[index] = value
    state[tensor] = array
    path = tmp_path / name
    save_file(state, str(path))
    return str(path)


@pytest.mark.parametrize("value,dtype,found", [
    (np.nan, np.float32, "NaN"), (np.inf, np.float32, "infinite values"), (-np.inf, np.float16, "infinite values"),
    (1e300, np.float64, r"values beyond float32's range \(infinite once converted\)"), (np.nan, np.float64, "NaN"),
])
def test_non_finite_tensors_are_refused_naming_the_tensor(tmp_path, value, dtype, found):
    """Checked as each slice is read (here 64 kB slices, the value in the last one): min/max of the slice."""
    count = 256 * 128 * 3 * 3  # features.6.weight (conv3_1)
    path = _trunk_with(tmp_path, "bad.safetensors", "features.6.weight", count - 1, value, dtype)
    layout = tw.read_torch_layout(path)
    source = tw._SafetensorsSource(layout, chunk_bytes=1 << 16)
    np.asarray(source._initial("block3_conv1", "bias", (256,)))  # the others are fine
    with pytest.raises(WeightsError, match=rf"^weight file bad.safetensors: tensor 'features.6.weight' holds {found}: "
                                           r"weights must be finite numbers"):
        source._initial("block3_conv1", "kernel", (3, 3, 128, 256))


def test_nan_and_inf_weights_stop_extract_in_one_line(tmp_path):
    """Before: a NaN weight gave features (NaN eaten by ReLU and max pooling) and `verify` called the file
    intact. Now extract stops in one line naming the tensor, and writes nothing; so does load_network."""
    from vggfeat import load_network

    nan = _trunk_with(tmp_path, "nan.safetensors", "features.0.weight", 0, np.nan)
    inf = _trunk_with(tmp_path, "inf.safetensors", "features.3.bias", 5, np.inf)
    with pytest.raises(WeightsError, match=r"inf.safetensors: tensor 'features.3.bias' holds infinite values"):
        load_network(None, inf, include_top=False)
    images = tmp_path / "images"
    make_folder(str(images), per_class=1)
    out = tmp_path / "out.h5"
    one_line(run_cli("extract", images, "-o", out, "--weights", nan, "--layer", "pool5", "--input-size", "64", "-q"),
             r"^Error: weight file nan.safetensors: tensor 'features.0.weight' holds NaN: weights must be finite")
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# finetune's output on a read-only file system
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def read_only_folder(tmp_path):
    """A tmpfs mounted read-only (root); skipped where mounting is not permitted."""
    folder = tmp_path / "ro"
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def _assert_finetune_refuses(train, output, words):
    started = time.perf_counter()
    result = run_cli("finetune", train, "-o", output, "--weights", "random", "--arch", "vgg11", "--input-size", "32",
                     "--epochs", "1", "--val-split", "0", "-q")
    elapsed = time.perf_counter() - started
    one_line(result, words)
    assert elapsed < 5, elapsed  # the whole interpreter, measured about 0.3 s; it took ~9 s and a traceback before
    # the library: the same error before TensorFlow is imported
    code = ("import sys\nfrom vggfeat.finetuning import prepare_finetune\nfrom vggfeat.errors import OutputError\n"
            f"try:\n    prepare_finetune({str(train)!r}, {str(output)!r}, arch='vgg11', weights='random', "
            "input_size=32, val_split=None)\nexcept OutputError as e:\n    print(e)\n"
            "print(sorted(m for m in ('tensorflow', 'keras', 'jax') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    assert out.strip().splitlines()[-1] == "[]", out
    return elapsed


def test_finetune_into_a_read_only_file_system_is_one_line_before_tensorflow(tmp_path, read_only_folder):
    train = tmp_path / "train"
    make_folder(str(train), per_class=2)
    output = read_only_folder / "m.keras"
    _assert_finetune_refuses(train, output, re.escape(f"cannot write {output}: creating a file in {read_only_folder} "
                                                      "failed (Read-only file system); choose a folder you can "
                                                      "write to"))
    assert os.listdir(read_only_folder) == []
    from vggfeat.finetuning import check_output

    with pytest.raises(OutputError, match="Read-only file system"):
        check_output(output)


def test_finetune_into_a_full_file_system_is_one_line(tmp_path):
    """A tmpfs of 64 kB filled up: the probe's file is made but its 4 kB cannot be written."""
    from vggfeat.finetuning import check_output

    folder = tmp_path / "full"
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass  # full
        finally:
            os.close(fd)
        with pytest.raises(OutputError, match=r"creating a file in .*full failed \(No space left on device\); free "
                                              r"some space$"):
            check_output(folder / "m.keras")
        assert os.listdir(folder) == ["filler"]
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_finetune_into_an_unwritable_or_missing_folder(tmp_path):
    train = tmp_path / "train"
    make_folder(str(train), per_class=2)
    _assert_finetune_refuses(train, tmp_path / "missing" / "m.keras",
                             re.escape(f"the output folder does not exist: {tmp_path / 'missing'}"))
    assert not (tmp_path / "missing").exists()  # it was created before, and the run went on
    if os.geteuid() == 0:
        pytest.skip("root writes into a folder without its write bit (the read-only mount covers it)")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        _assert_finetune_refuses(train, locked / "m.keras", r"\(Permission denied\); choose a folder you can write to")
    finally:
        locked.chmod(0o755)


# ---------------------------------------------------------------------------------------------
# Worst cases within the header cap: time and memory bounded
# ---------------------------------------------------------------------------------------------

_CAP = tw._MAX_HEADER
WORST = {
    "brackets": b"[" * _CAP,
    "objects": b'{"a":' * (_CAP // 5),
    "many empty objects": b"[" + b"{}," * (_CAP // 3 - 1) + b"{}]",
    "many numbers": b"[" + b"1," * (_CAP // 2 - 2) + b"1]",
    "long number": b'{"a":{"dtype":"F32","shape":[' + b"9" * (_CAP - 64) + b'],"data_offsets":[0,4]}}',
    "escaped quotes, unterminated": b'"' + b'\\"' * (_CAP // 2 - 1),
    "quotes": b'"' * _CAP,
    "many tensors": json.dumps({f"t{i}": entry("F32", [1], 4 * i, 4 * i + 4) for i in range(12000)}).encode(),
}


@pytest.mark.parametrize("case", list(WORST))
def test_worst_headers_are_bounded(tmp_path, case):
    """Headers of up to the 1 MiB cap built to be slow or large to parse: each ends in a WeightsError well under
    a second or two and 200 MB of Python allocations (traced)."""
    header = WORST[case]
    assert len(header) <= _CAP
    path = raw_file(tmp_path / "w.safetensors", header)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(WeightsError):
            tw.read_safetensors_header(path)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 3, elapsed
    assert peak < 200 << 20, peak


# ---------------------------------------------------------------------------------------------
# Fuzzing the header reader (Hypothesis): a parsed header or a WeightsError, nothing else
# ---------------------------------------------------------------------------------------------

FUZZ = settings(derandomize=True, database=None, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
DTYPES = ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30)


@pytest.fixture(scope="module")
def fuzz_path(tmp_path_factory):
    return str(tmp_path_factory.mktemp("fuzz") / "f.safetensors")


def _read(path):
    """The reader's outcome: the parsed header, or None for a WeightsError (anything else fails the test)."""
    try:
        out = tw.read_safetensors_header(path)
    except WeightsError as exc:
        assert "\n" not in str(exc)
        reason = re.sub(r"'[^']*'|\d[\d,]*", "_", str(exc).split(": ", 1)[-1])
        event(f"refused: {' '.join(reason.split()[:5])}")  # --hypothesis-show-statistics lists them
        return None
    assert isinstance(out, dict)
    event("parsed")
    return out


@settings(FUZZ, max_examples=1500)
@given(st.binary(max_size=300), st.one_of(st.none(), st.integers(0, 2 ** 64 - 1)), st.binary(max_size=64))
def test_fuzz_random_bytes(fuzz_path, header, declared, data):
    """Random bytes after the length prefix (the true length or any 64-bit one), random data after them."""
    _read(raw_file(fuzz_path, header, data, declared))


@settings(FUZZ, max_examples=1000)
@given(json_values | st.dictionaries(st.text(max_size=8), json_values, max_size=6), st.binary(max_size=32))
def test_fuzz_random_json(fuzz_path, value, data):
    """Random JSON structures as the header (objects of them, mostly)."""
    _read(raw_file(fuzz_path, json.dumps(value).encode(), data))


@settings(FUZZ, max_examples=500)
@given(st.integers(1, 20000), st.sampled_from([("[", "]"), ('{"k":', "}"), ('["x",', "]"), ('["]]]}\\"",', "]")]),
       st.sampled_from(["0", '"[[[\\"[["', "{}"]))
def test_fuzz_nesting(fuzz_path, depth, brackets, inner):
    """Random nesting depths and openers (some with brackets and escaped quotes inside strings): parsed when
    within the limit (then refused: no tensor entries), refused unparsed beyond it, never a RecursionError."""
    opening, closing = brackets
    text = '{"t":' + opening * depth + inner + closing * depth + "}"
    assert _read(raw_file(fuzz_path, text.encode())) is None  # never a usable header, whatever the depth
    assert tw.json_depth(text.encode()) == depth + 1 + (inner == "{}")


@st.composite
def plausible(draw):
    """A header of tensor entries, mostly valid and sometimes not: random dtypes (and unknown ones), shapes,
    offsets laid end to end or shuffled, overlapping, gapped, short; data of the right size or not."""
    names = draw(st.lists(st.text(min_size=1, max_size=6), max_size=6, unique=True))
    header, offset = {}, 0
    for name in names:
        dtype = draw(st.sampled_from(DTYPES + ["F8_E4M3", "x"]))
        shape = draw(st.lists(st.integers(0, 4) | st.integers(-2, 2 ** 65), max_size=3))
        size = int(np.prod([max(s, 0) for s in shape], dtype=object)) * tw._ITEMSIZE.get(dtype, 1)
        begin = offset if draw(st.integers(0, 3)) else draw(st.integers(0, 40))
        end = begin + (size if draw(st.integers(0, 3)) else draw(st.integers(-4, 40)))
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}
        offset = max(offset, end)
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.dictionaries(st.text(max_size=4), st.text(max_size=4) | st.integers(),
                                                      max_size=2) | st.none())
    extra = draw(st.integers(0, 3)) if draw(st.integers(0, 3)) == 0 else 0
    return header, max(0, offset + extra - (draw(st.integers(0, 4)) if draw(st.integers(0, 4)) == 0 else 0))


@settings(FUZZ, max_examples=1200)
@given(plausible())
def test_fuzz_plausible_headers_agree_with_the_reference(fuzz_path, case):
    """Differential: vggfeat's reader accepts nothing the reference library refuses, and on headers within its
    own limits (1 MiB, 8 dimensions, 1,000 tensors: all generated ones are; the dtypes it knows) it accepts
    everything the reference accepts."""
    header, size = case
    path = header_file(fuzz_path, header, b"\0" * min(size, 1 << 16))
    ours = _read(path)
    if reference_refuses(path):
        assert ours is None, header
    elif all(e["dtype"] in tw._ITEMSIZE for k, e in header.items() if k != "__metadata__"):
        assert ours is not None, header
        assert set(ours) == {k for k in header if k != "__metadata__"}


@settings(FUZZ, max_examples=1500)
@given(st.lists(st.tuples(st.sampled_from([True, True, True, False]), st.integers(0, 10 ** 6),
                          st.integers(0, 64) | st.integers(0, 2 ** 64 + 5)), min_size=1, max_size=6),
       st.integers(0, 9))
def test_fuzz_mutated_vgg_headers(fuzz_path, edits, ending):
    """A real header (a vgg11 trunk's, as safetensors writes it) with a few numbers (offsets, sizes) replaced
    by others, or a few bytes anywhere; its length declared right, one byte short, or the file cut short.
    What the reference library refuses is refused; what it accepts is accepted (dtypes vggfeat knows)."""
    raw = _vgg_header_file()
    (n,) = struct.unpack("<Q", raw[:8])
    header, data = bytearray(raw[8:8 + n]), raw[8 + n:]
    for as_number, where, value in edits:
        if as_number:
            numbers = list(re.finditer(rb"\d+", bytes(header)))
            m = numbers[where % len(numbers)]
            header[m.start():m.end()] = str(value).encode()
        else:
            header[where % len(header)] = value % 256
    body = struct.pack("<Q", len(header) - (ending == 8)) + header + data
    with open(fuzz_path, "wb") as f:
        f.write(body[:len(body) // 2] if ending == 9 else body)
    ours = _read(fuzz_path)
    if reference_refuses(fuzz_path):  # and the reference library agrees
        assert ours is None, bytes(header)
    elif ours is None:
        assert not all(e.get("dtype") in tw._ITEMSIZE for k, e in json.loads(bytes(header)).items()
                       if k != "__metadata__"), bytes(header)


@functools.lru_cache(maxsize=None)
def _vgg_header_file():
    """A vgg11 trunk's tensor names and dtypes saved by safetensors, each tensor of one element (a header of
    about 1.5 kB and a few bytes of data), as bytes."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "v.safetensors")
        save_file({k: np.zeros((1,) * v.ndim, v.dtype) for k, v in torch_arrays("vgg11", top=False).items()}, path)
        with open(path, "rb") as f:
            return f.read()


@settings(FUZZ, max_examples=800)
@given(json_values)
def test_fuzz_json_depth_is_the_depth_json_recurses_to(value):
    """`json_depth` on any JSON text is the nesting json.loads recurses to (counted without recursion)."""

    def depth(v):
        if isinstance(v, list):
            return 1 + max((depth(x) for x in v), default=0)
        if isinstance(v, dict):
            return 1 + max((depth(x) for x in v.values()), default=0)
        return 0

    assert tw.json_depth(json.dumps(value).encode()) == depth(value)
