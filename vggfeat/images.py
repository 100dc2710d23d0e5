"""Finding images and turning any image file into an RGB uint8 array of the network's geometry.

This is the one image-loading path of vggfeat: `extract`, `finetune`, `predict` and `VGGFeaturizer`
all read images through `load_image`, so a fine-tuned network sees exactly the pixels at extraction
that it saw in training.
"""

from __future__ import annotations

import contextlib
import os
import stat
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import ImageError, InputError

try:
    import fcntl
except ImportError:  # Windows: no fcntl, and no O_NONBLOCK to clear
    fcntl = None

#: File name extensions (lower case) that are taken for images; any letter case matches.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")

#: Images with more pixels than this are refused as decompression bombs (Pillow's own limit, read at
#: import). A JPEG is judged at the size it is decoded at (see `load_image`), any other image at its own
#: size; the network input of `short` geometry is held to the same limit. Independently of it, Pillow's
#: `Image.open` refuses any image over twice `PIL.Image.MAX_IMAGE_PIXELS` (179 million pixels by default).
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485

#: Images (and `short`-geometry network inputs) with a side longer than this are refused: a very thin
#: image has few pixels but can need a huge resize. 65,535 is also the largest side a JPEG can have.
MAX_SIDE = 65_535


def _quiet_bomb_warnings():
    """Pillow warns (DecompressionBombWarning) on every image between 1x and 2x its pixel limit, once
    per distinct size; load_image applies its own limits, so for a folder of photos that is noise.
    An `ignore` filter for that category only, appended (a filter the user sets still wins), and
    Pillow's own settings untouched. Ensured again by each load_image (cheaply: only when missing),
    because a filter added at import is lost when the import happens inside `warnings.catch_warnings`
    (as pytest's collection does)."""
    for f in warnings.filters:
        if f[0] == "ignore" and f[1] is None and f[2] is Image.DecompressionBombWarning and f[3] is None:
            return
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning, append=True)


_quiet_bomb_warnings()

RESIZE_MODES = ("crop", "squash", "short")

#: How a JPEG is decoded (`Geometry.jpeg_decode`): `full` (every pixel, as an array of the image is
#: resized) or `reduced` (Pillow's `draft`: a 1/2, 1/4 or 1/8 DCT scale, never below twice the target size).
JPEG_DECODES = ("full", "reduced")


@dataclass(frozen=True)
class Geometry:
    """How an image becomes network input.

    Attributes:
        resize: `crop` (shorter side to `size * 256 / 224`, then a centre crop of `size`: the paper's
            single-scale test at 224), `squash` (straight to `size` x `size`, aspect ratio lost) or
            `short` (shorter side to `size`, no crop: for the fully-convolutional forms, whose
            output then depends on the image's aspect ratio).
        size: the crop side (`crop`, `squash`) or the shorter side (`short`).
        jpeg_decode: `full` (default): a JPEG is decoded at its own size, then resized, so a file and its
            decoded array give the same network input; `reduced`: a JPEG over twice the target size is
            decoded at a reduced DCT scale first (Pillow's `draft`: faster, slightly different pixels;
            vggfeat's only behaviour before this setting existed).
    """

    resize: str = "crop"
    size: int = 224
    jpeg_decode: str = "full"

    def __post_init__(self):
        if self.resize not in RESIZE_MODES:
            raise InputError(f"unknown resize mode {self.resize!r}; choose one of {', '.join(RESIZE_MODES)}")
        if self.jpeg_decode not in JPEG_DECODES:
            raise InputError(f"unknown jpeg_decode {self.jpeg_decode!r}; choose one of {', '.join(JPEG_DECODES)}")
        if int(self.size) < 32:
            raise InputError(f"input size must be at least 32 pixels. Received: {self.size}")

    @property
    def fixed(self) -> bool:
        """True when every image comes out the same shape (`size` x `size`)."""
        return self.resize != "short"

    @property
    def resize_side(self) -> int:
        """The shorter side before cropping."""
        if self.resize == "crop":
            return int(round(self.size * 256 / 224))
        return int(self.size)

    def describe(self) -> str:
        if self.resize == "crop":
            return f"shorter side to {self.resize_side}, centre crop {self.size}x{self.size}"
        if self.resize == "squash":
            return f"resized to {self.size}x{self.size} (aspect ratio not kept)"
        return f"shorter side to {self.size}, no crop"


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB. Transparent pixels are composited on white; 16-bit and float images
    are scaled to 0-255 instead of being clipped."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(im, dtype=np.float64)
        if mode.startswith("I;16") or a.max(initial=0) > 255:
            a = a / 257.0
        a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if mode == "F":
        a = np.asarray(im, dtype=np.float64)
        if a.size and np.nanmax(a) <= 1.0:
            a = a * 255.0
        a = np.clip(np.nan_to_num(np.rint(a)), 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    return im.convert("RGB")


def _short_side_size(w, h, side):
    """(width, height) of a w x h image whose shorter side is resized to `side`."""
    if w <= h:
        return side, max(side, int(round(h * side / w)))
    return max(side, int(round(w * side / h))), side


#: `crop` resizes the whole image then crops when the resized image has at most this many times the
#: pixels of the resized shorter side squared (an aspect ratio up to 16:1: every ordinary photo and
#: panorama); beyond it, only the region the crop keeps is resized (see `_resize`).
_WHOLE_RESIZE_ASPECT = 16


def _resize(im: Image.Image, geometry: Geometry) -> Image.Image:
    """Resize (and crop) an RGB image to the geometry: bilinear, antialiased.

    `crop` of an image more elongated than 16:1 resizes only the region the centre crop keeps (Pillow's
    `resize(box=...)`) instead of the whole image, which would be huge (a 20,000 x 1 image would become
    5,120,000 x 256). The result differs from resize-then-crop by at most a grey level or two on a few
    pixels (Pillow passes the box in single precision), so images within 16:1 keep the exact
    resize-then-crop.
    """
    if geometry.resize == "squash":
        return im.resize((geometry.size, geometry.size), Image.Resampling.BILINEAR)
    w, h = im.size
    side = geometry.resize_side
    nw, nh = _short_side_size(w, h, side)
    s = geometry.size
    left, top = (nw - s) // 2, (nh - s) // 2
    if geometry.resize == "short" or nw * nh <= _WHOLE_RESIZE_ASPECT * side * side:
        im = im.resize((nw, nh), Image.Resampling.BILINEAR)
        return im if geometry.resize == "short" else im.crop((left, top, left + s, top + s))
    sx, sy = w / nw, h / nh  # source pixels per resized pixel, as in the whole resize
    box = (left * sx, top * sy, min(w, (left + s) * sx), min(h, (top + s) * sy))
    return im.resize((s, s), Image.Resampling.BILINEAR, box=box)


def _target_size(w, h, geometry: Geometry):
    if geometry.resize == "squash":
        return geometry.size, geometry.size
    scale = geometry.resize_side / min(w, h)
    return int(w * scale), int(h * scale)


_FILE_KINDS = ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"),
               (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"))


def _refuse_unless_regular(mode):
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _FILE_KINDS if test(mode)), "unknown kind")
        raise ImageError(f"not a regular file ({kind})")


def _open_regular(path):
    """An ordinary binary file object for `path` and its size; ImageError unless it is a regular file.

    Opened with O_NONBLOCK, so that opening a FIFO does not wait for a writer, and judged by `fstat`
    on the opened descriptor (no race between the check and the read); then blocking mode is restored.
    A stat before opening refuses sockets (which cannot be opened) and devices without opening them.
    """
    try:
        _refuse_unless_regular(os.stat(path).st_mode)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
                     | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise ImageError("file not found") from None
    except PermissionError:
        raise ImageError("permission denied") from None
    except OSError as exc:
        raise ImageError(f"cannot open: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        _refuse_unless_regular(st.st_mode)
        if getattr(os, "O_NONBLOCK", 0) and fcntl is not None:
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb"), st.st_size
    except BaseException:
        os.close(fd)
        raise


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def load_image(path, geometry: Geometry | None = Geometry(), max_pixels: int = MAX_PIXELS,
               max_side: int = MAX_SIDE) -> np.ndarray:
    """Read one image file as an RGB uint8 array of shape (H, W, 3) in the given geometry.

    EXIF orientation is applied; any mode (L, LA, P, RGBA, CMYK, I;16, F...) becomes RGB; GIFs give
    their first frame. The image is decoded at its own size, then resized (bilinear, antialiased), as
    `prepare_array` resizes its decoded array; with `geometry.jpeg_decode="reduced"`, a JPEG much larger
    than needed is decoded at a reduced DCT scale first (Pillow's `draft`, never below twice the target
    size): faster, slightly different pixels. With `geometry=None` the image is returned at its own size.

    Limits, each refused as that image's failure before anything large is decoded: a side longer than
    `max_side`; more than `max_pixels` pixels, counted at the size the image is decoded at (with the
    `reduced` JPEG decode, a JPEG is judged at its reduced `draft` size, so a 108-megapixel photo that
    decodes at 1/8 scale passes; any other image, and every image with the `full` decode, at its own
    size); with `short` geometry, a network input of more than
    `max_pixels` pixels or a side longer than `max_side` (a very thin image). Pillow itself refuses
    any image above twice `PIL.Image.MAX_IMAGE_PIXELS` when it opens it.

    Only regular files are read: a FIFO, device, socket or directory is refused without blocking.

    Raises:
        ImageError: the file cannot be read as an image (the message says why, in one line). Any
            `Exception` while reading, decoding or resizing (Pillow, NumPy, MemoryError...) becomes
            `cannot decode: <type>: <first line of its message>`; KeyboardInterrupt and SystemExit
            are not caught.
    """
    _quiet_bomb_warnings()
    try:
        if hasattr(path, "read"):
            fp, nbytes = path, -1
        else:
            fp, nbytes = _open_regular(path)
        with fp if fp is not path else contextlib.nullcontext():
            arr = _decode(fp, geometry, max_pixels, max_side)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"decompression bomb: {str(exc).strip().splitlines()[0]}") from None
    except UnidentifiedImageError:
        raise ImageError("empty file (0 bytes)" if nbytes == 0 else "not an image Pillow can identify") from None
    except Exception as exc:  # MemoryError included; KeyboardInterrupt is not an Exception
        raise ImageError(f"cannot decode: {_one_line(exc)}") from None
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ImageError(f"unexpected decoded shape {arr.shape}")
    return arr


def _decode(fp, geometry, max_pixels, max_side):
    with Image.open(fp) as im:
        w, h = im.size
        if w < 1 or h < 1:
            raise ImageError(f"empty image ({w}x{h})")
        if w > max_side or h > max_side:
            raise ImageError(f"image too large: {w}x{h} has a side longer than the limit of {max_side} pixels")
        if geometry is not None and im.format == "JPEG" and geometry.jpeg_decode == "reduced":
            tw, th = _target_size(w, h, geometry)
            im.draft("RGB" if im.mode in ("RGB", "YCbCr") else None, (2 * tw, 2 * th))
        dw, dh = im.size
        if dw * dh > max_pixels:
            at = f" (decoded at {dw}x{dh})" if (dw, dh) != (w, h) else ""
            hint = ("; the reduced JPEG decode (--jpeg-decode reduced) reads it at a smaller scale"
                    if geometry is not None and im.format == "JPEG" and geometry.jpeg_decode == "full" else "")
            raise ImageError(f"decompression bomb: {w}x{h}{at} is {dw * dh} pixels, more than the limit of "
                             f"{max_pixels}{hint}")
        if geometry is not None and geometry.resize == "short":
            ow, oh = _short_side_size(dw, dh, geometry.resize_side)
            if ow * oh > max_pixels or max(ow, oh) > max_side:
                limit = (f"{ow * oh} pixels, more than the limit of {max_pixels}" if ow * oh > max_pixels
                         else f"a side longer than the limit of {max_side}")
                raise ImageError(f"image too elongated: {w}x{h} with the shorter side resized to "
                                 f"{geometry.resize_side} gives {ow}x{oh}, {limit}")
        im.load()
        im = ImageOps.exif_transpose(im)
        im = _to_rgb(im)
        if geometry is not None:
            im = _resize(im, geometry)
        return np.asarray(im, dtype=np.uint8)


def prepare_array(image, geometry: Geometry | None = Geometry(), max_pixels: int = MAX_PIXELS,
                  max_side: int = MAX_SIDE) -> np.ndarray:
    """The array counterpart of `load_image`: a decoded image (H, W, 3), any numeric dtype on the
    0-255 scale, or a Pillow image of any mode (converted to RGB as a file is), put through the same
    geometry and limits as a file, so that an image gives the same network input whether it comes as
    a path or as its decoded pixels.

    Raises:
        InputError: not an (H, W, 3) or grey (H, W) image, or over the size limits.

    Examples:
        >>> import numpy as np
        >>> from vggfeat.images import Geometry, prepare_array
        >>> prepare_array(np.zeros((480, 640, 3)), Geometry("crop", 224)).shape
        (224, 224, 3)
    """
    if isinstance(image, Image.Image):
        image = _to_rgb(image)
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2:  # grey, as a grey file is read: R = G = B
        a = np.repeat(a[..., None], 3, axis=-1)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise InputError(f"an image must be an array of shape (H, W, 3), or grey (H, W). Received shape: {a.shape}")
    h, w = a.shape[:2]
    if h < 1 or w < 1 or max(h, w) > max_side or h * w > max_pixels:
        raise InputError(f"image of shape {a.shape} is outside the size limits ({max_side} pixels a side, "
                         f"{max_pixels} pixels)")
    if a.dtype != np.uint8:
        a = np.clip(np.nan_to_num(np.rint(a.astype(np.float64))), 0, 255).astype(np.uint8)
    if geometry is None:
        return a
    return np.asarray(_resize(Image.fromarray(a, "RGB"), geometry), dtype=np.uint8)


# Never let Pillow pad a truncated file with grey: a truncated image is a failure.
ImageFile.LOAD_TRUNCATED_IMAGES = False


# ---------------------------------------------------------------------------------------------
# Finding images
# ---------------------------------------------------------------------------------------------


@dataclass
class ImageList:
    """The images of a run, in the order their rows are written.

    Attributes:
        files: absolute paths, in order.
        paths: the paths stored in the output (relative to the one given folder, else absolute).
        labels: class index per file, -1 where the image has no class subfolder.
        class_names: sorted first-level subfolder names that hold images.
        root: the folder `paths` are relative to, or None when they are absolute.
    """

    files: list
    paths: list
    labels: list
    class_names: list
    root: str | None
    excluded: int = 0  # images left out by `exclude`

    def __len__(self):
        return len(self.files)

    def found(self) -> str:
        """What was found, in Keras's words: `Found 12 images in 3 classes` (or `(no classes)`)."""
        n, k = len(self.files), len(self.class_names)
        where = f"in {_plural(k, 'class', 'classes')}" if k else "(no classes)"
        unlabelled = self.labels.count(-1) if k else 0
        extra = [f"{unlabelled} without a class" if unlabelled else "",
                 f"{self.excluded} excluded" if self.excluded else ""]
        extra = "; ".join(e for e in extra if e)
        return f"Found {_plural(n, 'image', 'images')} {where}" + (f" ({extra})" if extra else "")


def _plural(n, one, many):
    return f"{n} {one if n == 1 else many}"


#: Files read as lists of images (one path per line; CSV with a header naming a `path` column).
LIST_EXTENSIONS = (".txt", ".csv")


def is_image_name(name: str, extensions=IMAGE_EXTENSIONS) -> bool:
    return name.lower().endswith(tuple(extensions))


def normalize_extensions(extensions) -> tuple:
    """`("jpg", ".PNG")` -> `(".jpg", ".png")`; None: `IMAGE_EXTENSIONS`.

    Raises:
        InputError: an empty or odd extension (one with a path separator or a wildcard).
    """
    if extensions is None:
        return IMAGE_EXTENSIONS
    if isinstance(extensions, str):
        extensions = [extensions]
    out = []
    for e in extensions:
        e = str(e).strip().lower()
        e = e if e.startswith(".") else "." + e
        if len(e) < 2 or any(c in e for c in "/\\*?[] ,") or e.count(".") > 2:
            raise InputError(f"not a file name extension: {e!r} (give e.g. jpg or .png)")
        if e not in out:
            out.append(e)
    if not out:
        raise InputError("no extension given: name at least one, e.g. jpg")
    return tuple(out)


def _excluded(patterns, *names) -> bool:
    import fnmatch

    return any(fnmatch.fnmatchcase(n, p) or fnmatch.fnmatchcase(n.lower(), p.lower())
               for p in patterns for n in names)


def _within(path: str, folder: str) -> bool:
    """True when real path `path` is `folder` or inside it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _walk_sorted(folder, extensions=IMAGE_EXTENSIONS):
    """Image files under `folder`, recursively, in a deterministic (sorted) order.

    Symbolic links to folders: a link to a folder inside `folder` is skipped (its images are already
    found under their own path; this also covers links back up the tree); a link to a folder outside
    it is followed, each such folder at most once (the first link in sorted order names it), and a link
    to a folder that holds `folder` or the link itself (a loop) is skipped. Links to files are kept.
    Folders that cannot be read are skipped.
    """
    top = os.path.abspath(folder)
    real_top = os.path.realpath(top)
    followed = [real_top]  # real folders whose whole content is walked: links into them are skipped
    seen = set()
    out = []
    stack = [(top, real_top)]
    while stack:
        path, real = stack.pop()
        if real in seen:
            continue
        seen.add(real)
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue
        subfolders = []
        for entry in entries:
            try:
                is_dir = entry.is_dir()  # follows links
            except OSError:
                is_dir = False
            if not is_dir:
                if is_image_name(entry.name, extensions):
                    out.append(entry.path)
                continue
            if not entry.is_symlink():
                subfolders.append((entry.path, os.path.join(real, entry.name)))
                continue
            target = os.path.realpath(entry.path)
            if (any(_within(target, f) for f in followed)  # inside the tree, or a folder already followed
                    or _within(real, target) or _within(real_top, target)):  # a loop back up
                continue
            followed.append(target)
            subfolders.append((entry.path, target))
        stack.extend(reversed(subfolders))
    # sort the whole list by path components (a folder's files and subfolders interleave by name)
    out.sort(key=lambda p: os.path.relpath(p, top).split(os.sep))
    return out


def escape_path(path: str) -> str:
    r"""How a path (a file name, a relative path or a class name) is stored in the output: valid UTF-8,
    unique and reversible (`unescape_path`).

    A path that is valid UTF-8 and holds no backslash is stored as it is (every ordinary name). Any
    other is stored with every backslash doubled and every byte that is not UTF-8 (Python holds such
    file-name bytes as lone surrogates) as `\xHH`: so the raw byte 0xff and a file literally named
    `\xff` are stored as `\xff` and `\\xff`.
    """
    if "\\" not in path:
        try:
            path.encode("utf-8")
            return path
        except UnicodeEncodeError:
            pass
    return os.fsencode(path).replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")


def unescape_path(stored: str) -> str:
    """The inverse of `escape_path`: the path as the operating system functions take it (bytes that are
    not UTF-8 come back as the same surrogate escapes `os.fsdecode` gives, so
    `os.fsencode(unescape_path(p))` is the file name's exact bytes).

    Raises:
        ValueError: `stored` is not something `escape_path` produces.
    """
    if "\\" not in stored:
        return stored
    out = bytearray()
    i, n = 0, len(stored)
    while i < n:
        c = stored[i]
        if c != "\\":
            j = stored.find("\\", i)
            j = n if j < 0 else j
            out += stored[i:j].encode("utf-8")
            i = j
        elif stored.startswith("\\\\", i):
            out += b"\\"
            i += 2
        elif stored.startswith("\\x", i) and len(stored[i + 2:i + 4]) == 2 and all(
                ch in "0123456789abcdefABCDEF" for ch in stored[i + 2:i + 4]):
            out.append(int(stored[i + 2:i + 4], 16))
            i += 4
        else:
            raise ValueError(f"not a stored path (a backslash starts neither \\\\ nor \\xHH): {stored!r}")
    return os.fsdecode(bytes(out))


def stored_path_to_file(stored: str, root=None) -> str:
    """The file a stored `/paths` entry names: `unescape_path`, joined to `root` (the file's `root`
    attribute, for paths stored relative to one folder; None for absolute paths)."""
    path = unescape_path(stored)
    if os.sep != "/":
        path = path.replace("/", os.sep)
    return os.path.join(os.fspath(root), path) if root is not None else path


_printable = escape_path  # the former name


def read_image_list(path) -> list:
    """The entries of a list file: `[(file, label or None, as written)]`, in the list's order.

    `.txt`: one path per line (blank lines and lines starting with `#` are skipped). `.csv`: a header
    row naming a `path` column and optionally a `label` column (other columns are ignored), then one
    row per image; an empty label means no class. Relative paths are taken relative to the list
    file's folder.

    Raises:
        InputError: the list cannot be read, has no `path` column, or names no file.
    """
    import csv

    path = os.fspath(path)
    base = os.path.dirname(os.path.abspath(path))
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            if path.lower().endswith(".csv"):
                rows = list(csv.reader(f))
            else:
                rows = [[line.rstrip("\r\n")] for line in f]
    except UnicodeDecodeError:
        raise InputError(f"cannot read the list {path}: not UTF-8 text") from None
    except csv.Error as exc:
        raise InputError(f"cannot read the list {path}: {exc}") from None
    except OSError as exc:
        raise InputError(f"cannot read the list {path}: {exc.strerror or exc}") from None
    out = []
    if path.lower().endswith(".csv"):
        if not rows:
            raise InputError(f"the list {path} is empty")
        header = [h.strip().lower() for h in rows[0]]
        if "path" not in header:
            raise InputError(f"the CSV list {path} needs a header row naming a 'path' column (and optionally "
                             f"'label'); its first row is {','.join(rows[0])!r}")
        ip, il = header.index("path"), header.index("label") if "label" in header else None
        for n, row in enumerate(rows[1:], 2):
            if not any(c.strip() for c in row):
                continue
            if len(row) <= ip or not row[ip].strip():
                raise InputError(f"{path}, line {n}: no path")
            label = row[il].strip() if il is not None and len(row) > il else ""
            out.append((row[ip].strip(), label or None))
    else:
        for (line,) in rows:
            if line.strip() and not line.lstrip().startswith("#"):
                out.append((line.strip(), None))
    if not out:
        raise InputError(f"the list {path} names no image")
    return [(os.path.normpath(os.path.join(base, os.path.expanduser(p))), label, p) for p, label in out]


def is_list_file(path) -> bool:
    """True for an existing regular file named `.txt` or `.csv` (any letter case): a list of images."""
    return os.fspath(path).lower().endswith(LIST_EXTENSIONS) and os.path.isfile(path)


def scan_images(inputs, *, extensions=None, exclude=()) -> ImageList:
    """Collect the images of one or more folders, image files and/or list files.

    Folders are scanned recursively, in sorted order, for files whose name ends in one of
    `extensions` (default `IMAGE_EXTENSIONS`, any letter case). Images inside a first-level subfolder
    of a given folder are labelled with that subfolder's name. A `.txt` or `.csv` file is a list of
    images (see `read_image_list`): its files in its order, labelled with its `label` column; list
    labels and folder classes together make `class_names`, sorted. Image files given directly, or
    named in a list, are taken whatever their extension. `exclude`: glob patterns (`fnmatch`, any
    letter case) matched against each image's path relative to its folder (with `/`), as written in a
    list, and against its file name: matching images are left out.

    Paths are stored relative to the folder when a single folder is given (relative to a single list's
    folder when every file it names is inside that folder), absolute otherwise; stored paths and class
    names go through `escape_path` (unique, reversible with `unescape_path` / `stored_path_to_file`).
    A file found twice (overlapping inputs) is kept once, where it first appears.

    Symbolic links to folders: a link to a folder inside the given folder is skipped (its images are
    found there under their own names and class, e.g. `a/also_b -> ../b` adds nothing to class `a`);
    a link to a folder outside it is followed, each such folder at most once, and a first-level link
    to an outside folder is a class named after the link. Links that loop back up are skipped. Links to
    files are kept as they are.

    Raises:
        InputError: an input does not exist, a list names files that do not exist (all counted, the
            first few named) or one file with two labels, or no image was found.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    inputs = [os.fspath(p) for p in inputs]
    if not inputs:
        raise InputError("no input given: pass one or more image folders, files or lists")
    extensions = normalize_extensions(extensions)
    exclude = [exclude] if isinstance(exclude, str) else [str(p) for p in (exclude or ())]
    entries = []  # (absolute file, class name or None)
    excluded = 0
    list_root = None
    for given in inputs:
        if not os.path.exists(given):
            raise InputError(f"input not found: {given}")
        if os.path.isdir(given):
            folder = os.path.abspath(given)
            for f in _walk_sorted(folder, extensions):
                rel = os.path.relpath(f, folder).split(os.sep)
                if exclude and _excluded(exclude, "/".join(rel), rel[-1]):
                    excluded += 1
                    continue
                entries.append((f, rel[0] if len(rel) > 1 else None))
        elif is_list_file(given) and not is_image_name(given, extensions):
            listed = read_image_list(given)
            missing = [written for f, _, written in listed if not os.path.exists(f)]
            if missing:
                shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
                raise InputError(f"{len(missing)} of {len(listed)} files named in {given} do not exist "
                                 f"({shown}); relative paths are read from the list's folder "
                                 f"{os.path.dirname(os.path.abspath(given))}")
            labels = {}
            for f, label, written in listed:
                if labels.setdefault(f, label) != label:
                    raise InputError(f"{given} names {written} twice, with labels {labels[f]!r} and {label!r}")
                if exclude and _excluded(exclude, written.replace(os.sep, "/"), os.path.basename(f)):
                    excluded += 1
                    continue
                entries.append((f, label))
            if len(inputs) == 1:
                folder = os.path.dirname(os.path.abspath(given))
                if all(_within(f, folder) for f, _, _ in listed):
                    list_root = folder
        else:
            f = os.path.abspath(given)
            if exclude and _excluded(exclude, given.replace(os.sep, "/"), os.path.basename(f)):
                excluded += 1
                continue
            entries.append((f, None))
    if not entries:
        looked = ", ".join(extensions)
        why = f"; {excluded} excluded by {', '.join(exclude)}" if excluded else ""
        raise InputError(f"no images found in {', '.join(inputs)} (looked for {looked} in any letter case{why})")
    seen = set()
    unique = []
    for f, c in entries:
        if f not in seen:
            seen.add(f)
            unique.append((f, c))
    unique = [(f, escape_path(c) if c is not None else None) for f, c in unique]
    class_names = sorted({c for _, c in unique if c is not None})
    index = {c: i for i, c in enumerate(class_names)}
    root = os.path.abspath(inputs[0]) if len(inputs) == 1 and os.path.isdir(inputs[0]) else list_root
    files = [f for f, _ in unique]
    paths = [os.path.relpath(f, root) if root else f for f in files]
    if os.sep != "/":
        paths = [p.replace(os.sep, "/") for p in paths]
    paths = [escape_path(p) for p in paths]
    labels = [index[c] if c is not None else -1 for _, c in unique]
    return ImageList(files, paths, labels, class_names, root, excluded)
