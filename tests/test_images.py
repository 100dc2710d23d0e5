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
