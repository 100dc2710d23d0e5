"""Weights published for PyTorch: torchvision's and timm's ImageNet VGGs, read from safetensors files.

Two `--weights` values reach this module:

- a local `PATH.safetensors` in either layout:
  - torchvision's state dict (`features.N.weight/bias`, batch norm as `features.N.weight/bias/running_mean/
    running_var`, `classifier.0/3/6.weight/bias`, fc6 a Linear over pool5 flattened in torch's (C, H, W) order);
  - timm's (`features.N.*` as above, `pre_logits.fc1` a 7x7 convolution `(4096, 512, 7, 7)`, `pre_logits.fc2`
    `(4096, 4096, 1, 1)`, `head.fc` a Linear);
- a timm model name, `timm:vgg16_bn.tv_in1k` (vgg11..vgg19, with or without `_bn`; the tag defaults to
  `tv_in1k`, and is at most 64 lower-case letters, digits and `_`, checked before `huggingface_hub` sees it):
  the file `model.safetensors` of the Hugging Face repository `timm/<name>`, taken from the standard
  Hugging Face cache (so a file timm already downloaded is reused) or downloaded into it once with
  `huggingface_hub`. Offline, the error names the repository and file, the cache, and `--weights PATH`.

The architecture is read from the tensors: convolutions are numbered by their position in torch's `features`
Sequential, where a max pool separates the blocks and batch norm (when present) sits between a convolution and
its ReLU. Every tensor's shape is checked from the file's header (8 bytes of length, then JSON) before Keras is
imported, and the header is held to the reference `safetensors` library's rules (`read_safetensors_header`: its
JSON nesting bounded before it is parsed, known dtypes, lengths of element count x dtype size, byte ranges that
cover the data exactly, without overlap or gap). Kernels are converted to Keras's layout as each layer is built
(one tensor read at a time, a slice of output units at a time, from the offsets of the checked header; no PyTorch
and no memory map): conv `(O, I, H, W)` -> `(H, W, I, O)`, linear `(out, in)` -> `(in, out)`, and fc6 reordered
from torch's (C, H, W) flatten to Keras's (H, W, C) -- the operation timm's and keras-hub's converters perform.
Each slice is checked as it is read: NaN or inf is refused in one line naming the tensor (`check_finite`).

These weights want torch's preprocessing (RGB / 255, minus mean (0.485, 0.456, 0.406), divided by std (0.229,
0.224, 0.225)), which vggfeat applies inside the model and records in every output file; the geometry is
vggfeat's default crop (shorter side to 256, bilinear, centre crop 224), which is timm's evaluation geometry for
them (crop_pct 0.875).

`.pth`/`.pt` files are refused: reading them unpickles, which runs whatever code the file holds.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import struct
from dataclasses import dataclass, field

import numpy as np

from .buffers import adoptable, aligned_empty
from .config import MAX_INPUT_SIZE
from .errors import WeightsError
from .specs import ARCHS, BLOCK_WIDTHS, FC_WIDTH, MAX_CLASSES, conv_weight_shapes, get_arch

#: `--weights` prefix of a named timm weight set.
TIMM_PREFIX = "timm:"
#: The file timm keeps in each Hugging Face repository.
HF_FILENAME = "model.safetensors"
#: The tag of timm's VGG weights (torchvision's, re-published by timm).
DEFAULT_TAG = "tv_in1k"
#: The preprocessing these weights were trained with.
PREPROCESSING = "torch"
#: Suffixes of pickled PyTorch files, refused.
PICKLE_SUFFIXES = (".pth", ".pt", ".pth.tar", ".ckpt")

_TIMM_NAME = re.compile(r"(vgg(11|13|16|19)(_bn)?)(?:\.(.*))?", re.S)
#: A timm pretrained tag (`tv_in1k`): what a Hugging Face repository name allows after `vgg16_bn.` (at most 96
#: characters in all), narrowed to timm's own tags: lower-case letters, digits and `_`, a letter or digit first.
_TIMM_TAG = re.compile(r"[a-z0-9][a-z0-9_]*")
_MAX_TAG = 64
#: The largest safetensors header read (a VGG's lists about 100 tensors in a few kB).
_MAX_HEADER = 1 << 20
_MAX_TENSORS = 1000
#: The largest pool5 side fc6 may be made for (an input of MAX_INPUT_SIZE).
_MAX_FC6_SIDE = MAX_INPUT_SIZE // 32

_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8,
             "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}
_FLOATS = ("F64", "F32", "F16", "BF16")


# ---------------------------------------------------------------------------------------------
# Which values this module handles
# ---------------------------------------------------------------------------------------------


def is_timm_name(weights) -> bool:
    """True for a `timm:NAME` weights value."""
    return isinstance(weights, str) and weights.strip().lower().startswith(TIMM_PREFIX)


def is_safetensors(weights) -> bool:
    return str(os.fspath(weights)).lower().endswith(".safetensors") if weights is not None else False


def is_pickle(weights) -> bool:
    return str(os.fspath(weights)).lower().endswith(PICKLE_SUFFIXES) if weights is not None else False


def handles(weights) -> bool:
    """Whether `weights` is for this module: a timm name, a `.safetensors` file, or a refused `.pth`."""
    if weights is None or isinstance(weights, bool):
        return False
    w = str(os.fspath(weights))
    return is_timm_name(w) or is_safetensors(w) or is_pickle(w)


def refuse_pickle(path):
    """The one-line error for a pickled PyTorch file."""
    base = os.path.basename(os.fspath(path))
    raise WeightsError(
        f"{base} is a pickled PyTorch file, which vggfeat does not read (unpickling runs any code the file "
        "holds); convert it to safetensors where you trust it: python -c \"import torch, safetensors.torch; "
        f"safetensors.torch.save_file(torch.load('{base}', weights_only=True), 'weights.safetensors')\" "
        "(for a checkpoint, save its state_dict), then pass --weights weights.safetensors"
    )


# ---------------------------------------------------------------------------------------------
# Named weights on the Hugging Face Hub
# ---------------------------------------------------------------------------------------------


def _shown(value, limit=40) -> str:
    """`value` quoted for a one-line message, cut to `limit` characters (with its length) when longer."""
    return repr(value) if len(value) <= limit else f"{value[:limit]!r}... ({len(value):,} characters)"


def timm_model_name(weights) -> tuple:
    """`(timm model name with its tag, vggfeat architecture)` of `timm:NAME`, e.g.
    `timm:vgg16_bn` -> `("vgg16_bn.tv_in1k", "vgg16-bn")`. The name is checked here, before `huggingface_hub`
    sees it: a VGG timm publishes (vgg11, vgg13, vgg16, vgg19, each with or without `_bn`) and a tag of at most
    64 lower-case letters, digits and `_`.

    Raises:
        WeightsError: not a timm VGG name (one line naming the bad value, cut when long).
    """
    raw = str(weights).strip()
    name = raw[len(TIMM_PREFIX):].strip().lower() if is_timm_name(raw) else raw.lower()
    expected = (f"expected timm:vgg11, timm:vgg13, timm:vgg16 or timm:vgg19, optionally with _bn and a tag, e.g. "
                f"timm:vgg16_bn.{DEFAULT_TAG}")
    m = _TIMM_NAME.fullmatch(name)
    if not m:
        model = name.split(".", 1)[0]
        raise WeightsError(f"unknown timm weights {_shown(raw)}: {_shown(model)} is not a VGG timm publishes; "
                           f"{expected}")
    tag = m.group(4)
    if tag is not None:
        why = None
        if len(tag) > _MAX_TAG:
            why = f"the tag {tag[:20]!r}... is {len(tag):,} characters long (at most {_MAX_TAG})"
        elif not _TIMM_TAG.fullmatch(tag):
            why = f"the tag {_shown(tag)} may hold only lower-case letters, digits and _ (a letter or digit first)"
        if why:
            raise WeightsError(f"unknown timm weights {_shown(raw)}: {why}; {expected}")
    model = m.group(1)
    arch = f"vgg{m.group(2)}" + ("-bn" if m.group(3) else "")
    return f"{model}.{tag or DEFAULT_TAG}", arch


def timm_repo(weights) -> tuple:
    """`(Hugging Face repository, file name)` of a timm name: `timm:vgg16_bn.tv_in1k` ->
    `("timm/vgg16_bn.tv_in1k", "model.safetensors")`."""
    name, _ = timm_model_name(weights)
    return f"timm/{name}", HF_FILENAME


def hf_cache_dir() -> str:
    """The Hugging Face hub cache, read from the environment now as `huggingface_hub` resolves it:
    `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub` (~/.cache/huggingface/hub)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return os.path.expanduser(os.environ[var])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface")
    return os.path.join(os.path.expanduser(home), "hub")


def hf_offline() -> bool:
    """Whether `HF_HUB_OFFLINE` is set (read now, not when huggingface_hub was imported)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def cached_timm_path(weights) -> str | None:
    """The cached file of a timm name, or None when it is not in the Hugging Face cache (no network)."""
    repo, fname = timm_repo(weights)
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, fname, cache_dir=hf_cache_dir())
    return found if isinstance(found, str) and os.path.isfile(found) else None


def timm_weights_path(weights) -> str:
    """The local file of a timm name: from the Hugging Face cache, else downloaded into it once.

    Raises:
        WeightsError: not a timm VGG name, or not cached and not downloadable (the message names the
            repository, the file, the cache, and the `--weights PATH` alternative). Never falls back.
    """
    repo, fname = timm_repo(weights)
    found = cached_timm_path(weights)
    if found:
        return found
    cache = hf_cache_dir()
    if hf_offline():
        reason = "HF_HUB_OFFLINE is set"
    else:
        import logging

        logging.getLogger("vggfeat").info(f"downloading {fname} of {repo} from the Hugging Face Hub into {cache} "
                                          "(once)")
        try:
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(repo, fname, cache_dir=cache)
            if os.path.isfile(path):
                return path
            reason = "no file came back"
        except Exception as exc:  # noqa: BLE001 - any failure to fetch means the same thing to the user
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    raise WeightsError(
        f"cannot get {TIMM_PREFIX}{repo.split('/', 1)[1]}: {fname} of the Hugging Face repository {repo} is not in "
        f"the Hugging Face cache ({cache}) and downloading it failed ({reason}); on a machine with network fetch "
        f"https://huggingface.co/{repo}/resolve/main/{fname} and pass --weights PATH to it, or run "
        f"`hf download {repo} {fname}` there and copy the cache folder models--timm--{repo.split('/', 1)[1]} into "
        f"{cache}"
    )


# ---------------------------------------------------------------------------------------------
# Reading a safetensors file's header (no Keras, no weights read)
# ---------------------------------------------------------------------------------------------


@dataclass
class _Entry:
    dtype: str
    shape: tuple
    start: int  # absolute offset in the file
    end: int


#: The deepest JSON nesting a header may have (a safetensors header nests 3 deep: the object of tensors, one
#: tensor's object, its shape). Checked on the bytes before `json.loads`, whose recursion a header of
#: thousands of `[` would exhaust (the reference library's parser stops at 128).
_MAX_DEPTH = 64
#: Sizes, element counts and offsets are unsigned 64-bit numbers in the reference library (`usize`).
_U64 = 1 << 64
_ESCAPE = re.compile(rb"\\.", re.S)
_STRING = re.compile(rb'"[^"]*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def json_depth(raw: bytes) -> int:
    """The deepest nesting of `[`/`{` in JSON text `raw`, counted outside strings, in time and memory linear in
    its length and without recursion: escape pairs (`\\x`) are dropped, then strings (each `"` ends at the next
    one: no backtracking), then everything but brackets. For valid JSON this is exactly the depth `json.loads`
    recurses to; for invalid JSON it is at least the depth the parser reaches before its error."""
    text = _STRING.sub(b"", _ESCAPE.sub(b"", raw)).translate(None, _NOT_BRACKETS)
    if not text:
        return 0
    steps = np.frombuffer(text, np.uint8)
    return int(np.cumsum(np.where((steps == 0x5B) | (steps == 0x7B), 1, -1), dtype=np.int32).max())


def _check_header_metadata(header, bad):
    meta = header.get("__metadata__")
    if meta is None:  # absent, or null (the reference library's Option)
        return
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        bad("its __metadata__ is not an object of strings")


def read_safetensors_header(path) -> dict:
    """`{tensor name: _Entry}` from a safetensors file's header (8-byte little-endian length, then JSON),
    with the reference library's rules: the header's size bounded (here 1 MiB) and its JSON nesting too (at
    most `_MAX_DEPTH`), `__metadata__` an object of strings, every tensor a known dtype, a shape of
    non-negative integers and `data_offsets` `[begin, end]` whose length is its element count times its
    dtype's size; taken in offset order, the tensors must cover the data after the header exactly (no
    overlap, no gap, nothing after the last, nothing missing: a truncated file). Anything else is one
    `WeightsError` line naming the file and the tensor."""
    path = os.fspath(path)
    base = os.path.basename(path)

    def bad(message):
        raise WeightsError(f"{base} is not a usable safetensors file: {message}")

    def q(name):  # a tensor's name in a message: quoted, cut when long
        return _shown(name, 80)

    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                bad("it is shorter than a header")
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER or n < 2:
                bad(f"its header declares {n:,} bytes (at most {_MAX_HEADER:,} expected)")
            if 8 + n > size:
                bad(f"its header declares {n:,} bytes but the file has {size:,} (truncated)")
            raw = f.read(n)
    except OSError as exc:
        raise WeightsError(f"cannot read weight file {path}: {exc.strerror or exc}") from None
    if len(raw) != n:
        bad(f"its header declares {n:,} bytes but only {len(raw):,} could be read (truncated)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        bad("its header is not JSON (not UTF-8 text)")
    depth = json_depth(raw)
    if depth > _MAX_DEPTH:
        bad(f"its header nests JSON {depth:,} levels deep (a safetensors header nests 3, at most {_MAX_DEPTH} "
            "accepted)")
    try:
        header = json.loads(text)
    except (ValueError, RecursionError) as exc:
        where = f" ({str(exc).splitlines()[0][:80]})" if str(exc).strip() else ""
        bad(f"its header is not JSON{where}")
    if not isinstance(header, dict):
        bad("its header is not a JSON object")
    if len(header) > _MAX_TENSORS:
        bad(f"it lists {len(header):,} tensors (at most {_MAX_TENSORS:,} expected)")
    _check_header_metadata(header, bad)
    listed = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not (isinstance(entry, dict) and isinstance(entry.get("dtype"), str)
                and isinstance(entry.get("shape"), list) and isinstance(entry.get("data_offsets"), list)):
            bad(f"tensor {q(name)} has no dtype, shape and data_offsets")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in _ITEMSIZE:
            bad(f"tensor {q(name)} has dtype {dtype[:40]!r}, not one of {', '.join(_ITEMSIZE)}")
        if len(shape) > 8 or any(isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < _U64
                                 for s in shape):
            bad(f"tensor {q(name)} has shape {str(shape)[:80]}, not a list of at most 8 sizes (whole numbers >= 0)")
        if (len(offsets) != 2 or any(isinstance(o, bool) or not isinstance(o, int) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] < _U64):
            bad(f"tensor {q(name)} has data_offsets {str(offsets)[:80]}, not [begin, end] with 0 <= begin <= end")
        count = 1
        for s in shape:  # the element count in unsigned 64-bit arithmetic, as the reference library counts
            count *= s
            if count >= _U64:
                bad(f"tensor {q(name)} has shape {tuple(shape)}, more elements than a file can hold")
        if offsets[1] - offsets[0] != count * _ITEMSIZE[dtype]:
            bad(f"tensor {q(name)} stores {offsets[1] - offsets[0]:,} bytes for a {dtype} tensor of shape "
                f"{tuple(shape)} ({count * _ITEMSIZE[dtype]:,} bytes)")
        listed.append((offsets[0], offsets[1], name, dtype, tuple(shape)))
    data = size - 8 - n  # the bytes after the header, which the tensors must cover exactly
    listed.sort(key=lambda t: (t[0], t[1]))
    out = {}
    covered, last = 0, None
    for begin, end, name, dtype, shape in listed:
        if begin < covered:
            bad(f"tensor {q(name)} (data bytes {begin:,}..{end:,}) overlaps tensor {q(last)} (which ends at "
                f"{covered:,})")
        if begin > covered:
            after = f"after tensor {q(last)}" if last is not None else "before the first tensor"
            bad(f"data bytes {covered:,}..{begin:,} ({after}, before tensor {q(name)}) belong to no tensor")
        if end > data:
            bad(f"tensor {q(name)} runs past the end of the file (truncated): it ends at data byte {end:,}, the file "
                f"holds {data:,}")
        out[name] = _Entry(dtype, shape, 8 + n + begin, 8 + n + end)
        covered, last = end, name
    if covered != data:
        after = f"the last tensor, {q(last)}, ends at" if last is not None else "it lists no tensor: the tensors end at"
        bad(f"{after} data byte {covered:,} but {data - covered:,} bytes follow it, which belong to no tensor")
    # in the header's order, as before
    return {name: out[name] for name in header if name != "__metadata__"}


# ---------------------------------------------------------------------------------------------
# The layout: which VGG a file holds, every tensor checked
# ---------------------------------------------------------------------------------------------

_FEATURE = re.compile(r"features\.(\d+)\.(weight|bias|running_mean|running_var|num_batches_tracked)")
_TORCHVISION_TOP = {"classifier.0": "fc1", "classifier.3": "fc2", "classifier.6": "predictions"}
_TIMM_TOP = {"pre_logits.fc1": "fc1", "pre_logits.fc2": "fc2", "head.fc": "predictions"}
_BN_TENSORS = (("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean"),
               ("moving_variance", "running_var"))


@dataclass
class TorchLayout:
    """What a torchvision/timm safetensors file holds, every tensor's shape checked.

    `layout` is `torchvision`, `timm`, or `features only` (no fc6-fc8: the two layouts are the same); `arch` the configuration (`vgg16-bn`); `fc6_side` pool5's side fc6
    was made for (7: 224x224 input) when the file has fc6-fc8; `tensors` maps `(keras layer, role)` to
    `(tensor name, kind)`, kind being how it becomes a Keras weight (`conv`, `fc6_linear`, `fc6_conv`,
    `linear`, `vector`)."""

    path: str
    layout: str
    arch: str
    has_top: bool
    classes: int | None
    fc6_side: int | None
    entries: dict = field(repr=False, default_factory=dict)
    tensors: dict = field(repr=False, default_factory=dict)

    @property
    def input_size(self):
        return 32 * self.fc6_side if self.has_top else None


def read_torch_layout(path, arch=None, name=None) -> TorchLayout:
    """Inspect a torchvision/timm VGG safetensors file from its header: the layout, the configuration
    (convolutions per block, batch norm or not), every tensor's shape and dtype. With `arch`, the file must
    hold that configuration. `name`: what messages call the file (default: its base name).

    Raises `WeightsError` (one line) naming the file's architecture, or the tensor missing or misshapen."""
    path = os.fspath(path)
    base = name or os.path.basename(path)
    entries = read_safetensors_header(path)

    def bad(message):
        raise WeightsError(f"weight file {base}: {message}")

    features, top = {}, {}
    for name in entries:
        m = _FEATURE.fullmatch(name)
        if m:
            features.setdefault(int(m.group(1)), {})[m.group(2)] = name
            continue
        prefix, _, role = name.rpartition(".")
        if role in ("weight", "bias") and (prefix in _TORCHVISION_TOP or prefix in _TIMM_TOP):
            top[name] = prefix
            continue
        bad(f"holds tensor {name!r}, which no torchvision or timm VGG has")
    if not features:
        bad("holds no features.N tensors: it is not a torchvision or timm VGG")
    layouts = {"torchvision" if p in _TORCHVISION_TOP else "timm" for p in top.values()}
    if len(layouts) > 1:
        bad("mixes torchvision's classifier.* and timm's pre_logits.*/head.* tensors")
    layout = layouts.pop() if layouts else "features only"

    # convolutions and batch norms by their position in torch's `features` Sequential
    convs, norms = [], []
    for index in sorted(features):
        roles = features[index]
        if "running_mean" in roles or "running_var" in roles or "num_batches_tracked" in roles:
            norms.append(index)
        elif "weight" in roles:
            convs.append(index)
        else:
            bad(f"holds {', '.join(sorted(roles.values()))} without features.{index}.weight")
    bn = bool(norms)
    if bn and norms != [i + 1 for i in convs]:
        odd = sorted(set(norms) ^ {i + 1 for i in convs})[0]
        bad(f"batch norm must follow every convolution (features.N+1 after features.N); features.{odd} does not fit")
    step = 3 if bn else 2  # conv[, bn], relu
    blocks = [[convs[0]]]
    for prev, index in zip(convs, convs[1:]):
        if index - prev == step:
            blocks[-1].append(index)
        elif index - prev == step + 1:  # a max pool in between
            blocks.append([index])
        else:
            bad(f"features.{index} follows features.{prev} at a position no VGG has (a convolution"
                f"{', its batch norm' if bn else ''} and a ReLU, then the next, with a max pool between blocks)")
    kernels = []
    for block in blocks:
        sizes = []
        for index in block:
            w = features[index].get("weight")
            shape = entries[w].shape
            if len(shape) != 4 or shape[2] != shape[3]:
                bad(f"tensor {w!r} has shape {shape}, expected a convolution kernel (out, in, k, k)")
            sizes.append(shape[2])
        kernels.append(tuple(sizes))
    kernels = tuple(kernels)
    found = next((n for n, s in ARCHS.items() if s.kernels == kernels and s.bn == bn and not s.lrn), None)
    if found is None:
        bad(f"does not hold a VGG network (convolutions per block: {[len(k) for k in kernels]}"
            f"{', with batch norm' if bn else ''})")
    if arch is not None:
        wanted = get_arch(arch).name
        if wanted != found:
            held = f"{layout} layout" if top else "convolutions only"
            raise WeightsError(f"{base} holds a {found} network ({held}), not {wanted}; "
                               "drop --arch or fix it")
    spec = ARCHS[found]

    def check(name, expected, what):
        if name not in entries:
            bad(f"tensor {name!r} ({what} of {found}) is missing")
        e = entries[name]
        if e.shape != tuple(expected):
            bad(f"tensor {name!r} ({what}) has shape {e.shape}, {found} needs {tuple(expected)}")
        if e.dtype not in _FLOATS:
            bad(f"tensor {name!r} holds {e.dtype} values, not floating-point weights")

    tensors = {}
    flat = [i for block in blocks for i in block]
    for index, (kname, (k, _, c_in, c_out), _) in zip(flat, conv_weight_shapes(spec)):
        what = kname.replace("block", "conv").replace("_conv", "_")
        check(f"features.{index}.weight", (c_out, c_in, k, k), f"{what} kernel")
        check(f"features.{index}.bias", (c_out,), f"{what} bias")
        tensors[(kname, "kernel")] = (f"features.{index}.weight", "conv")
        tensors[(kname, "bias")] = (f"features.{index}.bias", "vector")
        if bn:
            bname = kname.replace("_conv", "_bn")
            for role, tname in _BN_TENSORS:
                check(f"features.{index + 1}.{tname}", (c_out,), f"{what} batch norm {tname}")
                tensors[(bname, role)] = (f"features.{index + 1}.{tname}", "vector")

    names = _TORCHVISION_TOP if layout == "torchvision" else _TIMM_TOP
    has_top = bool(top)
    classes = side = None
    if has_top:
        for prefix in names:
            for role in ("weight", "bias"):
                if f"{prefix}.{role}" not in entries:
                    bad(f"tensor '{prefix}.{role}' ({prefix} of {found}) is missing; the file holds only part "
                        "of fc6-fc8")
        fc6, fc7, fc8 = list(names)
        c_last = BLOCK_WIDTHS[-1]
        shape6 = entries[f"{fc6}.weight"].shape
        if layout == "torchvision":
            n_in = shape6[1] if len(shape6) == 2 else -1
            side = math.isqrt(max(n_in, 0) // c_last)
            if len(shape6) != 2 or side < 1 or side * side * c_last != n_in or side > _MAX_FC6_SIDE:
                bad(f"tensor '{fc6}.weight' (fc6) has shape {shape6}, {found} needs ({FC_WIDTH}, 512*s*s) "
                    f"(s = 7 for 224x224 input)")
            check(f"{fc6}.weight", (FC_WIDTH, n_in), "fc6 kernel")
            check(f"{fc7}.weight", (FC_WIDTH, FC_WIDTH), "fc7 kernel")
        else:
            side = shape6[2] if len(shape6) == 4 else 0
            if not 1 <= side <= _MAX_FC6_SIDE:
                bad(f"tensor '{fc6}.weight' (fc6) has shape {shape6}, {found} needs ({FC_WIDTH}, {c_last}, 7, 7)")
            check(f"{fc6}.weight", (FC_WIDTH, c_last, side, side), "fc6 kernel")
            check(f"{fc7}.weight", (FC_WIDTH, FC_WIDTH, 1, 1), "fc7 kernel")
        shape8 = entries[f"{fc8}.weight"].shape
        classes = shape8[0] if len(shape8) == 2 else 0
        if not 1 <= classes <= MAX_CLASSES:
            bad(f"tensor '{fc8}.weight' (fc8) has shape {shape8}, {found} needs (classes, {FC_WIDTH}) with "
                f"1..{MAX_CLASSES:,} classes")
        check(f"{fc8}.weight", (classes, FC_WIDTH), "fc8 kernel")
        for prefix, width, what in ((fc6, FC_WIDTH, "fc6"), (fc7, FC_WIDTH, "fc7"), (fc8, classes, "fc8")):
            check(f"{prefix}.bias", (width,), f"{what} bias")
        tensors[("fc1", "kernel")] = (f"{fc6}.weight", "fc6_linear" if layout == "torchvision" else "fc6_conv")
        tensors[("fc2", "kernel")] = (f"{fc7}.weight", "linear")
        tensors[("predictions", "kernel")] = (f"{fc8}.weight", "linear")
        for prefix, kname in ((fc6, "fc1"), (fc7, "fc2"), (fc8, "predictions")):
            tensors[(kname, "bias")] = (f"{prefix}.bias", "vector")
    return TorchLayout(path, layout, found, has_top, classes, side, entries, tensors)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def to_keras(array, kind, side=None):
    """A torch tensor (NumPy array) in Keras's layout: conv `(O, I, H, W)` -> `(H, W, I, O)`; linear
    `(out, in)` -> `(in, out)`; fc6 (torchvision's Linear over (C, H, W)-flattened pool5, or timm's conv)
    -> `(H, W, C, out)`, whose C-order flatten is Keras's (H, W, C) Dense kernel. Returns a view."""
    a = np.asarray(array)
    if kind == "conv" or kind == "fc6_conv":
        return a.transpose(2, 3, 1, 0)
    if kind == "fc6_linear":
        return a.reshape(a.shape[0], BLOCK_WIDTHS[-1], side, side).transpose(2, 3, 1, 0)
    if kind == "linear":
        return a.reshape(a.shape[0], -1).T
    return a


def keras_shape(shape, kind, side=None) -> tuple:
    """The shape `to_keras` gives a tensor of `shape`."""
    shape = tuple(shape)
    if kind in ("conv", "fc6_conv"):
        return (shape[2], shape[3], shape[1], shape[0])
    if kind == "fc6_linear":
        return (side, side, BLOCK_WIDTHS[-1], shape[0])
    if kind == "linear":
        return (math.prod(shape[1:]), shape[0])
    return shape


def check_finite(values, what, infinite="infinite values"):
    """Refuse weights that are not finite numbers (NaN, +-inf): a network built from them gives NaN, or wrong
    features with no word where ReLU and max pooling swallow the NaN. `min` and `max` propagate NaN and show an
    inf, so the check reads the array twice and allocates nothing (no boolean mask of its size).

    Raises:
        WeightsError: one line: `what` (naming the file and the tensor or variable), then what it holds.
    """
    values = np.asarray(values)
    if values.size == 0 or values.dtype.kind != "f":
        return
    low, high = values.min(), values.max()
    if np.isfinite(low) and np.isfinite(high):
        return
    found = "NaN" if np.isnan(low) or np.isnan(high) else infinite
    raise WeightsError(f"{what} holds {found}: weights must be finite numbers (the file is damaged, or was saved "
                       "from a training run that diverged)")


#: Bytes of a tensor converted at a time (fc6 of VGG-16 is 411 MB: it is never held twice).
_CHUNK_BYTES = 32 << 20


class _SafetensorsSource:
    """A torchvision/timm safetensors file as a weight source for `build_vgg`: each variable is made from
    its tensor when its layer is built, converted to Keras's layout straight into one aligned float32 array
    (which a TensorFlow variable adopts without a copy), a slice of output units at a time, so no tensor is
    held twice and no whole-file dict is made."""

    def __init__(self, layout: TorchLayout, chunk_bytes=_CHUNK_BYTES):
        self.layout = layout
        self.base = os.path.basename(layout.path)
        self.chunk_bytes = chunk_bytes

    def initializers(self, layer_name):
        roles = [role for (lname, role) in self.layout.tensors if lname == layer_name]
        if not roles:
            raise WeightsError(f"weight file {self.base} has no weights for layer {layer_name} of {self.layout.arch}")
        return {f"{role}_initializer": functools.partial(self._initial, layer_name, role) for role in roles}

    def _rows(self, name, start, stop):
        """Rows `start:stop` of a tensor (its first axis: output units) as float32, read from the offsets the
        checked header gives (`np.fromfile`: into process memory only what is asked; a memory map of the
        file, as `safe_open` makes, adds the file's pages to the peak RSS: 1716 vs 1389 MB loading VGG-16)."""
        entry = self.layout.entries[name]
        per_row = math.prod(entry.shape[1:])
        size = _ITEMSIZE[entry.dtype]
        dtype = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2"}[entry.dtype]
        raw = np.fromfile(self.layout.path, dtype=dtype, count=(stop - start) * per_row,
                          offset=entry.start + start * per_row * size)
        if raw.size != (stop - start) * per_row:
            raise WeightsError(f"weight file {self.base}: {name} is truncated")
        what = f"weight file {self.base}: tensor {name!r}"
        if entry.dtype == "BF16":  # NumPy has no bfloat16: widen the bits
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        check_finite(raw, what)  # as stored (each slice as it is read: never the whole tensor at once)
        if entry.dtype == "F64":
            with np.errstate(over="ignore"):
                raw = raw.astype(np.float32)
            check_finite(raw, what, "values beyond float32's range (infinite once converted)")
        elif entry.dtype == "F16":
            raw = raw.astype(np.float32)
        return raw.reshape((stop - start,) + entry.shape[1:])

    def _initial(self, layer_name, role, shape, dtype=None):
        name, kind = self.layout.tensors[(layer_name, role)]
        entry = self.layout.entries[name]
        side = self.layout.fc6_side
        shape = tuple(int(d) for d in shape)
        if math.prod(shape) != math.prod(entry.shape):
            raise WeightsError(f"weight file {self.base}: {name} has shape {entry.shape}, {self.layout.arch} "
                               f"needs {shape}")
        out = aligned_empty(shape)
        target = out.reshape(keras_shape(entry.shape, kind, side))  # a view: C order, Keras's Dense rows
        rows = entry.shape[0]
        step = max(1, self.chunk_bytes // max(1, 4 * math.prod(entry.shape[1:])))
        for start in range(0, rows, step):
            stop = min(rows, start + step)
            values = to_keras(self._rows(name, start, stop), kind, side)
            if kind == "vector":
                target[start:stop] = values
            else:
                target[..., start:stop] = values
        return adoptable(out, dtype)


def resolve(weights, *, download=True):
    """`(local path or None, display name, timm repository or None)` of a value this module handles; a
    `.pth` is refused here."""
    w = str(os.fspath(weights))
    if is_timm_name(w):
        name, _ = timm_model_name(w)
        repo, _ = timm_repo(w)
        path = timm_weights_path(w) if download else cached_timm_path(w)
        return path, f"{TIMM_PREFIX}{name}", repo
    if is_pickle(w) and not os.path.exists(w):  # a mistyped path is not found, whatever its extension
        raise WeightsError(f"weights file not found: {w}")
    if is_pickle(w):
        refuse_pickle(w)
    if not os.path.exists(w):
        raise WeightsError(f"weights must be 'imagenet', 'random', a timm:NAME or an existing file. Received: {w!r}")
    if os.path.isdir(w):
        raise WeightsError(f"weights path is a folder, not a file: {w}")
    return w, os.path.basename(w), None


def describe(weights, arch=None) -> dict:
    """What a torchvision/timm file or a timm name holds, without Keras: `weights`, `arch`, `classes`,
    `has_top`, `input_size`, `preprocessing`, `layout` (and `source`, the Hugging Face repository, for a
    name). A name not in the cache is described from the name, without downloading."""
    path, display, repo = resolve(weights, download=False)
    if path is None:  # a timm name not downloaded yet
        _, named = timm_model_name(weights)
        if arch is not None and get_arch(arch).name != named:
            raise WeightsError(f"{display} holds a {named} network, not {get_arch(arch).name}; drop --arch or fix it")
        return {"weights": display, "arch": named, "classes": 1000, "has_top": True, "input_size": 224,
                "preprocessing": PREPROCESSING, "layout": "timm", "source": f"huggingface.co/{repo}",
                "note": f"not downloaded yet: {HF_FILENAME} of {repo} is fetched into {hf_cache_dir()} on first use"}
    layout = read_torch_layout(path, arch, display)
    if repo is not None:
        _check_name_fits(display, layout)
    out = {"weights": display, "arch": layout.arch, "classes": layout.classes, "has_top": layout.has_top,
           "input_size": layout.input_size, "preprocessing": PREPROCESSING, "layout": layout.layout}
    if repo is not None:
        out["source"] = f"huggingface.co/{repo}"
    return out


def _check_name_fits(display, layout):
    _, named = timm_model_name(display)
    if named != layout.arch:
        raise WeightsError(f"the cached file of {display} ({layout.path}) holds a {layout.arch} network, not {named}")


def load_torch_network(arch=None, weights=None, *, include_top=True, input_size=224, dtype=None, form="standard"):
    """Build the network a torchvision/timm file (or timm name) holds, each variable made from its tensor,
    straight in `form` (`standard`, `dense`, `fully_conv`). Returns `(model, name, path, named)`: the name
    to record (the file's base name, or `timm:NAME`), the file read, and whether it was a timm name (these
    weights want the `PREPROCESSING` of this module)."""
    from .models import build_vgg

    path, display, repo = resolve(weights)
    layout = read_torch_layout(path, arch, display)
    if repo is not None:
        _check_name_fits(display, layout)
    name = layout.arch
    if include_top and not layout.has_top:
        raise WeightsError(f"weight file {display} has no fc6/fc7/fc8 weights; use a conv layer or "
                           "--fully-convolutional")
    source = _SafetensorsSource(layout)
    if include_top and form == "dense":
        model = build_vgg(name, form="dense", classes=layout.classes, fc6_kernel=layout.fc6_side, dtype=dtype,
                          seed=source)
    elif include_top:
        model = build_vgg(name, include_top=True, input_size=layout.input_size, classes=layout.classes,
                          dtype=dtype, seed=source)
    elif form != "standard":
        model = build_vgg(name, form="fully_conv", dtype=dtype, seed=source)
    else:
        model = build_vgg(name, include_top=False, input_size=input_size, dtype=dtype, seed=source)
    return model, display, path, repo is not None


def check(weights, arch=None, *, fetch=True) -> dict:
    """What `check_extractor` needs to know, without Keras: `arch`, `has_top`, `base_size` (the input
    fc6 was made for), `path` (None for a timm name not fetched when `fetch` is false), `name`."""
    w = str(os.fspath(weights))
    path, display, repo = resolve(w, download=fetch)
    if path is None:  # a timm name, not cached, not fetched: known from its name
        meta = describe(w, arch)
        return {"arch": meta["arch"], "has_top": True, "base_size": 224, "path": None, "name": display}
    layout = read_torch_layout(path, arch, display)
    if repo is not None:
        _check_name_fits(display, layout)
    return {"arch": layout.arch, "has_top": layout.has_top, "base_size": layout.input_size or 224, "path": path,
            "name": display}
