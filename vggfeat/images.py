"""Finding images and turning any image file into an RGB uint8 array of the network's geometry.

This is the one image-loading path of vggfeat: `extract`, `finetune`, `predict` and `VGGFeaturizer`
all read images through `load_image`, so a fine-tuned network sees exactly the pixels at extraction
that it saw in training.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import ImageError, InputError

#: File name extensions (lower case) that are taken for images; any letter case matches.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")

#: Images with more pixels than this are refused as decompression bombs (Pillow's own limit).
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485

RESIZE_MODES = ("crop", "squash", "short")


@dataclass(frozen=True)
class Geometry:
    """How an image becomes network input.

    Attributes:
        resize: `crop` (shorter side to `size * 256 / 224`, then a centre crop of `size`: the paper's
            single-scale test at 224), `squash` (straight to `size` x `size`, aspect ratio lost) or
            `short` (shorter side to `size`, no crop: for the fully-convolutional forms, whose
            output then depends on the image's aspect ratio).
        size: the crop side (`crop`, `squash`) or the shorter side (`short`).
    """

    resize: str = "crop"
    size: int = 224

    def __post_init__(self):
        if self.resize not in RESIZE_MODES:
            raise InputError(f"unknown resize mode {self.resize!r}; choose one of {', '.join(RESIZE_MODES)}")
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


def _resize(im: Image.Image, geometry: Geometry) -> Image.Image:
    if geometry.resize == "squash":
        return im.resize((geometry.size, geometry.size), Image.Resampling.BILINEAR)
    w, h = im.size
    side = geometry.resize_side
    nw, nh = (side, max(side, int(round(h * side / w)))) if w <= h else (max(side, int(round(w * side / h))), side)
    im = im.resize((nw, nh), Image.Resampling.BILINEAR)
    if geometry.resize == "crop":
        s = geometry.size
        left, top = (nw - s) // 2, (nh - s) // 2
        im = im.crop((left, top, left + s, top + s))
    return im


def _target_size(w, h, geometry: Geometry):
    if geometry.resize == "squash":
        return geometry.size, geometry.size
    scale = geometry.resize_side / min(w, h)
    return int(w * scale), int(h * scale)


def load_image(path, geometry: Geometry | None = Geometry(), max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read one image file as an RGB uint8 array of shape (H, W, 3) in the given geometry.

    EXIF orientation is applied; any mode (L, LA, P, RGBA, CMYK, I;16, F...) becomes RGB; GIFs give
    their first frame. A JPEG much larger than needed is decoded at a reduced DCT scale (Pillow's
    `draft`, never below twice the target size) before the bilinear, antialiased resize.
    With `geometry=None` the image is returned at its own size.

    Raises:
        ImageError: the file cannot be read as an image (the message says why).
    """
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise ImageError(f"decompression bomb: {w}x{h} pixels is more than the limit of {max_pixels}")
            if w < 1 or h < 1:
                raise ImageError(f"empty image ({w}x{h})")
            if geometry is not None and im.format == "JPEG":
                tw, th = _target_size(w, h, geometry)
                im.draft("RGB" if im.mode in ("RGB", "YCbCr") else None, (2 * tw, 2 * th))
            im.load()
            im = ImageOps.exif_transpose(im)
            im = _to_rgb(im)
            if geometry is not None:
                im = _resize(im, geometry)
            arr = np.asarray(im, dtype=np.uint8)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        size = _size(path)
        raise ImageError("empty file (0 bytes)" if size == 0 else "not an image Pillow can identify") from None
    except FileNotFoundError:
        raise ImageError("file not found") from None
    except PermissionError:
        raise ImageError("permission denied") from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as exc:
        raise ImageError(f"cannot decode: {exc}") from None
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ImageError(f"unexpected decoded shape {arr.shape}")
    return arr


def _size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return -1


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

    def __len__(self):
        return len(self.files)


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _walk_sorted(folder):
    """Image files under `folder`, recursively, in a deterministic (sorted) order."""
    out = []
    seen = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symbolic link back up the tree: do not loop
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames.sort()
        for name in sorted(filenames):
            if is_image_name(name):
                out.append(os.path.join(dirpath, name))
    # os.walk yields a folder's files before its subfolders'; sort the whole list by path components
    out.sort(key=lambda p: os.path.relpath(p, folder).split(os.sep))
    return out


def _printable(path: str) -> str:
    """A path as valid UTF-8 for the output file: bytes that are not UTF-8 (undecodable file names,
    which Python holds as lone surrogates) become backslash escapes such as \\xff."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return os.fsencode(path).decode("utf-8", "backslashreplace")


def scan_images(inputs) -> ImageList:
    """Collect the images of one or more folders and/or image files.

    Folders are scanned recursively, in sorted order, for files whose name ends in one of
    `IMAGE_EXTENSIONS` (any letter case). Images inside a first-level subfolder of a given folder are
    labelled with that subfolder's name. Paths are stored relative to the folder when a single folder
    is given, absolute otherwise.

    Raises:
        InputError: an input does not exist, or no image was found.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    inputs = [os.fspath(p) for p in inputs]
    if not inputs:
        raise InputError("no input given: pass one or more image folders or files")
    entries = []  # (absolute file, class name or None)
    for given in inputs:
        if not os.path.exists(given):
            raise InputError(f"input not found: {given}")
        if os.path.isdir(given):
            folder = os.path.abspath(given)
            for f in _walk_sorted(folder):
                rel = os.path.relpath(f, folder).split(os.sep)
                entries.append((f, rel[0] if len(rel) > 1 else None))
        else:
            entries.append((os.path.abspath(given), None))
    if not entries:
        raise InputError(
            f"no images found in {', '.join(inputs)} (looked for {', '.join(IMAGE_EXTENSIONS)} in any letter case)"
        )
    seen = set()
    unique = []
    for f, c in entries:
        if f not in seen:
            seen.add(f)
            unique.append((f, c))
    unique = [(f, _printable(c) if c is not None else None) for f, c in unique]
    class_names = sorted({c for _, c in unique if c is not None})
    index = {c: i for i, c in enumerate(class_names)}
    root = os.path.abspath(inputs[0]) if len(inputs) == 1 and os.path.isdir(inputs[0]) else None
    files = [f for f, _ in unique]
    paths = [_printable(os.path.relpath(f, root) if root else f) for f in files]
    if os.sep != "/":
        paths = [p.replace(os.sep, "/") for p in paths]
    labels = [index[c] if c is not None else -1 for _, c in unique]
    return ImageList(files, paths, labels, class_names, root)
