"""One image-loading path: every mode to RGB, EXIF, geometry, failures, scanning order and labels."""

import io
import os

import numpy as np
import pytest
from PIL import Image

from vggfeat.errors import ImageError, InputError
from vggfeat.images import Geometry, load_image, scan_images


def rgb(w=40, h=30, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3)).astype(np.uint8)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "1", "I;16", "I", "F", "YCbCr"])
def test_every_mode_becomes_rgb(tmp_path, mode):
    im = Image.fromarray(rgb())
    if mode == "I;16":
        im = Image.fromarray((np.arange(40 * 30).reshape(30, 40) * 50).astype(np.uint16)).convert("I;16")
        ext = ".png"
    elif mode == "I":
        im = Image.fromarray((np.arange(40 * 30).reshape(30, 40) * 50).astype(np.int32))
        ext = ".tif"
    elif mode == "F":
        im = Image.fromarray(np.linspace(0, 1, 40 * 30).reshape(30, 40).astype(np.float32))
        ext = ".tif"
    else:
        im = im.convert(mode)
        ext = ".jpg" if mode in ("CMYK", "YCbCr") else ".png"
    if mode == "YCbCr":
        ext = ".jpg"
        im = im.convert("RGB")  # a JPEG stores YCbCr
    path = tmp_path / f"x{ext}"
    im.save(path)
    a = load_image(path, Geometry("squash", 32))
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    im = Image.fromarray(np.full((8, 8), 65535 // 2, dtype=np.uint16))
    im.save(tmp_path / "g.png")
    a = load_image(tmp_path / "g.png", None)
    assert 120 <= a.mean() <= 135  # mid-grey, not saturated white


def test_transparent_pixels_become_white(tmp_path):
    a = np.zeros((8, 8, 4), np.uint8)
    a[..., 0] = 255  # red, fully transparent
    Image.fromarray(a, "RGBA").save(tmp_path / "t.png")
    out = load_image(tmp_path / "t.png", None)
    assert (out == 255).all()


def test_gif_first_frame_webp_bmp_tiff(tmp_path):
    frames = [Image.fromarray(np.full((20, 20, 3), c, np.uint8)) for c in (10, 200)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    assert load_image(tmp_path / "a.gif", None).mean() < 50
    for ext in (".webp", ".bmp", ".tiff"):
        Image.fromarray(rgb()).save(tmp_path / f"b{ext}")
        assert load_image(tmp_path / f"b{ext}", None).shape == (30, 40, 3)


def test_exif_orientation_is_applied(tmp_path):
    im = Image.fromarray(rgb(40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    im.save(tmp_path / "r.jpg", exif=exif)
    assert load_image(tmp_path / "r.jpg", None).shape == (40, 20, 3)


@pytest.mark.parametrize("resize,size,shape", [("crop", 224, (224, 224, 3)), ("squash", 64, (64, 64, 3)),
                                               ("short", 256, (256, 341, 3)), ("crop", 32, (32, 32, 3))])
def test_geometry_shapes(tmp_path, resize, size, shape):
    Image.fromarray(rgb(400, 300)).save(tmp_path / "x.png")
    assert load_image(tmp_path / "x.png", Geometry(resize, size)).shape == shape


def test_crop_is_centred(tmp_path):
    a = np.zeros((256, 512, 3), np.uint8)
    a[:, 128:384] = 255  # the centre square is white, the sides black
    Image.fromarray(a).save(tmp_path / "c.png")
    out = load_image(tmp_path / "c.png", Geometry("crop", 224))
    assert out.mean() > 250


def test_bad_geometry():
    with pytest.raises(InputError, match="unknown resize mode"):
        Geometry("stretch", 224)
    with pytest.raises(InputError, match="at least 32"):
        Geometry("crop", 16)


def test_failures_say_why(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    buf = io.BytesIO()
    Image.fromarray(rgb(200, 200)).save(buf, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError, match="empty file"):
        load_image(tmp_path / "empty.jpg")
    with pytest.raises(ImageError, match="not an image"):
        load_image(tmp_path / "text.png")
    with pytest.raises(ImageError, match="truncated|cannot decode"):
        load_image(tmp_path / "cut.jpg")
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "missing.png")


def test_decompression_bomb_is_refused(tmp_path):
    Image.new("L", (300, 300)).save(tmp_path / "big.png")
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(tmp_path / "big.png", max_pixels=100 * 100)


def test_scan_is_sorted_recursive_with_labels(tmp_path):
    for rel in ["b/z.JPG", "b/a.png", "a/sub/x.jpeg", "a/y.TIF", "top.png", "notes.txt", "a/readme.md"]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    found = scan_images([tmp_path])
    assert found.paths == ["a/sub/x.jpeg", "a/y.TIF", "b/a.png", "b/z.JPG", "top.png"]
    assert found.class_names == ["a", "b"]
    assert found.labels == [0, 0, 1, 1, -1]
    assert found.root == str(tmp_path)


def test_several_inputs_give_absolute_paths(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "a.png").write_bytes(b"x")
    (tmp_path / "b.png").write_bytes(b"x")
    found = scan_images([tmp_path / "one", tmp_path / "b.png"])
    assert found.paths == [str(tmp_path / "one" / "a.png"), str(tmp_path / "b.png")]
    assert found.root is None


def test_scan_errors(tmp_path):
    with pytest.raises(InputError, match="input not found"):
        scan_images([tmp_path / "nope"])
    with pytest.raises(InputError, match="no images found"):
        scan_images([tmp_path])


def test_symlink_loops_do_not_hang_the_scan(tmp_path):
    (tmp_path / "a").mkdir()
    Image.fromarray(rgb()).save(tmp_path / "a" / "x.png")
    os.symlink(tmp_path, tmp_path / "a" / "loop")
    found = scan_images([tmp_path])
    assert "a/x.png" in found.paths and len(found.paths) < 10


def test_file_names_that_are_not_utf8_are_kept_with_escapes(tmp_path):
    name = os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes, invalid UTF-8
    Image.fromarray(rgb()).save(os.path.join(str(tmp_path), name))
    found = scan_images([tmp_path])
    assert found.paths == ["caf\\xe9.png"]
    assert load_image(found.files[0], None).shape == (30, 40, 3)


# ---------------------------------------------------------------------------------------------
# Hostile files: each is that image's failure (ImageError), never the run's, and never a hang
# ---------------------------------------------------------------------------------------------


def grey_png(path, w, h):
    """A black 1-bit greyscale PNG written by hand: tiny on disk whatever its size (80,000,000 x 1 is
    about 10 KB), so the tests cost nothing until something decodes it."""
    import struct
    import zlib

    row = b"\x00" * (1 + (w + 7) // 8)  # filter byte, then the packed pixels
    co = zlib.compressobj(9)
    data = b"".join(co.compress(row) for _ in range(h)) + co.flush()

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("geometry", [Geometry("crop", 224), Geometry("short", 224), Geometry("squash", 64), None])
def test_80_million_by_1_png_is_refused_not_an_overflow(tmp_path, geometry):
    path = grey_png(tmp_path / "wide.png", 80_000_000, 1)
    assert path.stat().st_size < 20_000
    with pytest.raises(ImageError, match=r"80000000x1 has a side longer than the limit of 65535"):
        load_image(path, geometry)


def test_max_side_is_a_parameter(tmp_path):
    path = grey_png(tmp_path / "w.png", 300, 10)
    with pytest.raises(ImageError, match="300x10 has a side longer than the limit of 299"):
        load_image(path, None, max_side=299)
    assert load_image(path, None, max_side=300).shape == (10, 300, 3)


@pytest.mark.parametrize("where", ["_to_rgb", "_resize"])
def test_any_exception_while_decoding_is_the_images_failure(tmp_path, monkeypatch, where):
    import vggfeat.images as images

    Image.fromarray(rgb()).save(tmp_path / "x.png")

    def overflow(*args):
        raise OverflowError("signed integer is greater than maximum\nsecond line")

    monkeypatch.setattr(images, where, overflow)
    with pytest.raises(ImageError) as info:
        load_image(tmp_path / "x.png")
    assert str(info.value) == "cannot decode: OverflowError: signed integer is greater than maximum"

    def no_memory(*args):
        raise MemoryError()

    monkeypatch.setattr(images, where, no_memory)
    with pytest.raises(ImageError, match=r"^cannot decode: MemoryError$"):
        load_image(tmp_path / "x.png")


def test_keyboard_interrupt_is_not_caught(tmp_path, monkeypatch):
    import vggfeat.images as images

    Image.fromarray(rgb()).save(tmp_path / "x.png")

    def interrupt(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(images, "_to_rgb", interrupt)
    with pytest.raises(KeyboardInterrupt):
        load_image(tmp_path / "x.png")


THIN_PNG_CHILD = r"""
import resource, sys
from vggfeat.images import Geometry, load_image
# Cap the address space 1 GiB above what the interpreter holds now: the old loader's 5 GB resize
# then fails (as an ImageError) instead of taking the machine's memory.
vm = [int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize:")][0]
resource.setrlimit(resource.RLIMIT_AS, (vm + 2**30, resource.RLIM_INFINITY))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
a = load_image(sys.argv[1], Geometry("crop", 224))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(a.shape, (after - before) // 1024)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmSize from Linux's /proc")
def test_20000_by_1_png_loads_in_little_memory(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "thin.png"
    Image.new("L", (20_000, 1), 128).save(path)
    assert path.stat().st_size < 1000
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", THIN_PNG_CHILD, str(path)], capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    shape, grown_mib = out.stdout.split(")")
    assert shape + ")" == "(224, 224, 3)"
    assert int(grown_mib) < 200  # was 5 GB: the whole image resized to 5,120,000 x 256 before the crop


def test_20000_by_1_png_in_short_geometry_is_refused_with_the_sizes(tmp_path):
    Image.new("L", (20_000, 1), 128).save(tmp_path / "thin.png")
    with pytest.raises(ImageError, match=r"too elongated: 20000x1 .* gives 5120000x256, 1310720000 pixels"):
        load_image(tmp_path / "thin.png", Geometry("short", 256))
    assert load_image(tmp_path / "thin.png", Geometry("squash", 32)).shape == (32, 32, 3)
    a = load_image(tmp_path / "thin.png", Geometry("crop", 32))
    assert a.shape == (32, 32, 3) and (a == 128).all()


def old_resize_then_crop(im, geometry):
    """The loader's crop before it learnt to resize only the kept region: the whole image to the
    shorter side, then the centre crop."""
    w, h = im.size
    side = geometry.resize_side
    nw, nh = (side, max(side, int(round(h * side / w)))) if w <= h else (max(side, int(round(w * side / h))), side)
    im = im.resize((nw, nh), Image.Resampling.BILINEAR)
    s = geometry.size
    left, top = (nw - s) // 2, (nh - s) // 2
    return np.asarray(im.crop((left, top, left + s, top + s)))


def ordinary_images():
    skdata = pytest.importorskip("skimage.data")
    out = {name: getattr(skdata, name)() for name in ("chelsea", "coffee", "rocket")}  # 451x300, 600x400, 640x427
    for w, h in [(640, 480), (333, 500), (1000, 563), (257, 256)]:
        yy, xx = np.mgrid[0:h, 0:w]
        gradient = np.stack([xx * 255 // w, yy * 255 // h, (3 * xx + 7 * yy) % 256], -1)
        out[f"gradient {w}x{h}"] = gradient.astype(np.uint8)
        out[f"noise {w}x{h}"] = rgb(w, h, seed=w)
    return out


def test_crop_of_ordinary_images_is_unchanged(tmp_path):
    for name, a in ordinary_images().items():
        path = tmp_path / f"{name}.png"
        Image.fromarray(a).save(path)
        for size in (224, 97, 64):
            g = Geometry("crop", size)
            np.testing.assert_array_equal(load_image(path, g), old_resize_then_crop(Image.fromarray(a), g),
                                          err_msg=f"{name} at {size}")


@pytest.mark.parametrize("w,h", [(5000, 200), (200, 5000)])
def test_crop_of_very_elongated_images_stays_close_to_resize_then_crop(tmp_path, w, h):
    a = rgb(w, h, seed=1)
    Image.fromarray(a).save(tmp_path / "long.png")
    for size in (224, 97):
        g = Geometry("crop", size)
        new = load_image(tmp_path / "long.png", g).astype(int)
        ref = old_resize_then_crop(Image.fromarray(a), g).astype(int)
        assert new.shape == ref.shape == (size, size, 3)
        assert np.abs(new - ref).max() <= 2 and (new != ref).mean() < 0.3


FIFO_CHILD = r"""
import os, stat, sys
from vggfeat.errors import ImageError
from vggfeat.images import load_image
for race in (False, True):
    if race:  # the FIFO appears after a stat said "regular file": the check on the open descriptor holds
        real_stat = os.stat
        os.stat = lambda p, *a, **k: os.stat_result((stat.S_IFREG | 0o644,) + tuple(real_stat(p))[1:])
    try:
        load_image(sys.argv[1])
        print("loaded?")
    except ImageError as exc:
        print(exc)
"""


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifo_is_refused_without_blocking(tmp_path):
    import subprocess
    import sys

    os.mkfifo(tmp_path / "x.jpg")
    assert scan_images([tmp_path]).paths == ["x.jpg"]  # listed by name; refused when read
    out = subprocess.run([sys.executable, "-c", FIFO_CHILD, str(tmp_path / "x.jpg")], capture_output=True,
                         text=True, timeout=60)  # a blocking open would wait for a writer forever
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines() == ["not a regular file (FIFO)"] * 2


def test_devices_sockets_and_folders_are_refused(tmp_path):
    (tmp_path / "d.jpg").mkdir()
    with pytest.raises(ImageError, match=r"^not a regular file \(directory\)$"):
        load_image(tmp_path / "d.jpg")
    if os.path.exists(os.devnull) and os.name == "posix":
        with pytest.raises(ImageError, match=r"^not a regular file \(character device\)$"):
            load_image(os.devnull)
    import socket

    if hasattr(socket, "AF_UNIX") and len(str(tmp_path / "s.png")) < 100:
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(tmp_path / "s.png"))
            with pytest.raises(ImageError, match=r"^not a regular file \(socket\)$"):
                load_image(tmp_path / "s.png")


@pytest.fixture(scope="module")
def camera_jpeg(tmp_path_factory):
    """A 12000 x 9000 (108-megapixel) JPEG: more than Pillow's 89.5-megapixel limit, less than twice it."""
    path = tmp_path_factory.mktemp("camera") / "big.jpg"
    Image.new("RGB", (12_000, 9_000), (200, 120, 40)).save(path, quality=50)
    return path


def test_camera_sized_jpeg_is_judged_at_its_draft_size(camera_jpeg):
    """With the reduced JPEG decode (jpeg_decode="reduced"); the full decode judges it at its own size."""
    import warnings

    max_image_pixels = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings(record=True) as caught:
        a = load_image(camera_jpeg, Geometry("crop", 224, "reduced"))
    assert a.shape == (224, 224, 3) and np.abs(a.astype(int) - (200, 120, 40)).max() <= 3
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]  # no warning spam
    assert Image.MAX_IMAGE_PIXELS == max_image_pixels == 1024 * 1024 * 1024 // 4 // 3  # Pillow's untouched
    # decoded at 1/8 scale, 1500 x 1125: the limit counts those pixels
    with pytest.raises(ImageError, match=r"decompression bomb: 12000x9000 \(decoded at 1500x1125\) is 1687500 pixels"):
        load_image(camera_jpeg, Geometry("crop", 224, "reduced"), max_pixels=1_000_000)
    # at its own size (no geometry, or the full decode: no draft) it is still too big
    with pytest.raises(ImageError, match=r"decompression bomb: 12000x9000 is 108000000 pixels"):
        load_image(camera_jpeg, None)
    with pytest.raises(ImageError, match=r"decompression bomb: 12000x9000 is 108000000 pixels, more than the "
                                         r"limit of \d+; the reduced JPEG decode \(--jpeg-decode reduced\)"):
        load_image(camera_jpeg, Geometry("crop", 224))


def test_other_formats_keep_the_source_size_limit(tmp_path):
    path = grey_png(tmp_path / "big.png", 12_000, 9_000)
    with pytest.raises(ImageError, match=r"decompression bomb: 12000x9000 is 108000000 pixels"):
        load_image(path, Geometry("crop", 224))


def test_pillows_own_limit_at_twice_max_image_pixels_stays(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = (12_000).to_bytes(2, "big") + (15_000).to_bytes(2, "big")  # 180 megapixels
    (tmp_path / "huge.jpg").write_bytes(bytes(data))
    with pytest.raises(ImageError, match=r"^decompression bomb: Image size \(180000000 pixels\) exceeds limit"):
        load_image(tmp_path / "huge.jpg", Geometry("crop", 224))


# ---------------------------------------------------------------------------------------------
# Folder walk: symbolic links, unique and reversible stored paths
# ---------------------------------------------------------------------------------------------


def make_images(root, *rels):
    for rel in rels:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb(8, 8)).save(p)


def test_link_to_a_sibling_class_folder_is_skipped(tmp_path):
    make_images(tmp_path, "a/1.png", "b/2.png", "b/3.png")
    os.symlink("../b", tmp_path / "a" / "also_b")  # walked first ("a" < "b"): once took b's images as a's
    os.symlink("b", tmp_path / "c")  # a first-level link inside the tree: not a class
    found = scan_images([tmp_path])
    assert found.paths == ["a/1.png", "b/2.png", "b/3.png"]
    assert found.class_names == ["a", "b"]
    assert found.labels == [0, 1, 1]


def test_links_to_outside_folders_are_followed_once(tmp_path):
    root, outside = tmp_path / "deep" / "root", tmp_path / "outside"
    make_images(root, "a/1.png")
    make_images(outside, "imgs/x.png", "imgs/y.png", "other/z.png")
    make_images(tmp_path / "deep", "sibling/s.png")
    os.symlink(outside / "imgs", root / "ext")  # a first-level link out of the tree: class "ext"
    os.symlink(outside / "imgs", root / "a" / "more")  # the same folder again: not followed twice
    os.symlink(outside / "imgs", outside / "imgs" / "loop")  # loops in the outside folder
    os.symlink(outside, outside / "imgs" / "up")
    os.symlink(tmp_path, root / "a" / "up")  # folders that hold the given one
    os.symlink(tmp_path / "deep", outside / "imgs" / "deep")
    found = scan_images([root])
    assert found.paths == ["a/1.png", "ext/x.png", "ext/y.png"]
    assert found.class_names == ["a", "ext"]
    assert found.labels == [0, 1, 1]
    assert load_image(found.files[1], None).shape == (8, 8, 3)


def make_file(folder, name: bytes):
    """A file with exactly these name bytes (skipped where the file system wants UTF-8 names)."""
    try:
        fd = os.open(os.path.join(os.fsencode(str(folder)), name), os.O_WRONLY | os.O_CREAT, 0o644)
    except (OSError, UnicodeError):
        pytest.skip("this file system does not take such file names")
    with os.fdopen(fd, "wb") as f:
        Image.fromarray(rgb(8, 8)).save(f, "PNG")


def test_undecodable_and_backslash_names_are_stored_apart_and_reversibly(tmp_path):
    from vggfeat.images import escape_path, stored_path_to_file, unescape_path

    names = [b"\xff.png", b"\\xff.png", b"a\\b.png", b"caf\xc3\xa9.png", b"plain.png"]
    for name in names:
        make_file(tmp_path, name)
    found = scan_images([tmp_path])
    assert len(set(found.paths)) == len(found.paths) == len(names)  # the first two once collided
    assert sorted(found.paths) == sorted(["\\xff.png", "\\\\xff.png", "a\\\\b.png", "café.png", "plain.png"])
    for stored, file in zip(found.paths, found.files):
        back = stored_path_to_file(stored, found.root)
        assert os.fsencode(back) == os.fsencode(file)
        assert os.fsencode(unescape_path(stored)) in names
        assert load_image(back, None).shape == (8, 8, 3)
    assert escape_path("plain.png") == "plain.png" and escape_path("日本/写真.jpg") == "日本/写真.jpg"
    with pytest.raises(ValueError):
        unescape_path("a\\b")


def test_class_names_go_through_the_same_escaping(tmp_path):
    for folder in (b"cl\xe9", b"cl\\xe9"):
        path = os.path.join(os.fsencode(str(tmp_path)), folder)
        try:
            os.mkdir(path)
        except (OSError, UnicodeError):
            pytest.skip("this file system does not take such file names")
        make_file(os.fsdecode(path), b"x.png")
    found = scan_images([tmp_path])
    assert found.class_names == ["cl\\\\xe9", "cl\\xe9"]
    assert found.paths == ["cl\\\\xe9/x.png", "cl\\xe9/x.png"]
    assert found.labels == [0, 1]


def test_escaping_is_a_bijection_on_random_names():
    from vggfeat.images import escape_path, unescape_path

    rng = np.random.default_rng(0)
    alphabet = [b for b in range(1, 256) if b != ord("/")]
    stored = {}
    for _ in range(3000):
        name = bytes(rng.choice(alphabet, rng.integers(1, 12)).astype(np.uint8))
        name = name if rng.random() < 0.5 else name.replace(b"x", b"\\x")
        s = escape_path(os.fsdecode(name))
        s.encode("utf-8")  # always valid UTF-8
        assert os.fsencode(unescape_path(s)) == name
        assert stored.setdefault(s, name) == name  # no two names share a stored path
