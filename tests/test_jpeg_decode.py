"""How a JPEG is decoded is a recorded setting (issue 22, point 10): `jpeg_decode="full"` (the default) gives a
JPEG path exactly its decoded array's features; `reduced` (Pillow's `draft`, vggfeat's only decode before) is
recorded in the output, and a file written before the setting existed reads and resumes as `reduced`."""

import numpy as np
import pytest
from PIL import Image

import vggfeat
from conftest import draw
from vggfeat import ExtractorConfig
from vggfeat.errors import InputError, OutputError
from vggfeat.images import Geometry, load_image

SMALL = dict(arch="vgg11", weights="random", form="fully_conv", input_size=32, layers=["pool5"])


def _jpegs(folder, n=2, size=(320, 240)):
    """JPEGs over four times the network's size (32 px): the reduced decode reads them at 1/2 scale (as large
    as twice the target size at least)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"{i}.jpg"
        Image.fromarray(draw("circle", (200, 60 + 50 * i, 40), size, seed=i)).save(p, quality=90)
        paths.append(str(p))
    return paths


def test_a_jpeg_path_gives_its_decoded_arrays_features(tmp_path):
    """VGGFeaturizer's docstring promises it; a JPEG over twice the target size was decoded at a reduced
    DCT scale and an array never was (3% of the range apart on the fully convolutional form at 64 px)."""
    paths = _jpegs(tmp_path / "jpg")
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    featurizer = vggfeat.VGGFeaturizer(arch="vgg11", weights="random", layer="pool5", form="fully_conv",
                                       input_size=32).fit()
    np.testing.assert_array_equal(featurizer.transform(paths), featurizer.transform(arrays))
    fx = vggfeat.build_extractor(ExtractorConfig(**SMALL))
    assert fx.geometry.jpeg_decode == "full" and fx.settings()["jpeg_decode"] == "full"
    pillow = [Image.fromarray(a) for a in arrays]  # an array is network input here: a Pillow image is resized
    np.testing.assert_array_equal(fx.predict(paths)["pool5"], fx.predict(pillow)["pool5"])
    # the reduced decode reads other pixels, so it is a setting that changes features
    reduced = vggfeat.VGGFeaturizer(**{**featurizer.get_params(), "jpeg_decode": "reduced"}).fit()
    assert not np.array_equal(reduced.transform(paths), featurizer.transform(paths))
    assert not np.array_equal(load_image(paths[0], Geometry("short", 32, "reduced")),
                              load_image(paths[0], Geometry("short", 32)))


def test_the_setting_is_validated_and_round_trips():
    assert ExtractorConfig().jpeg_decode == "full" and Geometry().jpeg_decode == "full"
    config = ExtractorConfig(**SMALL, jpeg_decode="reduced")
    assert config.to_attrs()["jpeg_decode"] == "reduced" and ExtractorConfig.from_attrs(config.to_attrs()) == config
    assert config != config.replace(jpeg_decode="full")
    with pytest.raises(InputError, match=r"^unknown jpeg_decode 'draft'; choose one of full, reduced$"):
        ExtractorConfig(jpeg_decode="draft")
    with pytest.raises(InputError, match="unknown jpeg_decode"):
        Geometry(jpeg_decode="fast")
    attrs = config.to_attrs()
    del attrs["jpeg_decode"]  # a file written before the setting was recorded: decoded reduced
    assert ExtractorConfig.from_attrs(attrs).jpeg_decode == "reduced"
    with pytest.raises(InputError, match=r"^the file: stored settings: unknown jpeg_decode"):
        ExtractorConfig.from_attrs({**attrs, "jpeg_decode": "half"})


def test_recorded_in_the_output_and_an_old_file_resumes(tmp_path, monkeypatch):
    images = tmp_path / "images"
    _jpegs(images)
    new, out = tmp_path / "new.h5", tmp_path / "f.h5"
    vggfeat.extract([images], new, config=ExtractorConfig(**SMALL, jpeg_decode="reduced"), progress=False)
    assert vggfeat.read_attrs(new)["jpeg_decode"] == "reduced"
    # a file as vggfeat wrote it before the setting existed (reduced decode, no attribute)
    to_attrs = ExtractorConfig.to_attrs
    monkeypatch.setattr(ExtractorConfig, "to_attrs", lambda c: {k: v for k, v in to_attrs(c).items()
                                                                 if k != "jpeg_decode"})
    vggfeat.extract([images], out, config=ExtractorConfig(**SMALL, jpeg_decode="reduced"), progress=False)
    monkeypatch.undo()
    assert "jpeg_decode" not in vggfeat.read_attrs(out)
    assert ExtractorConfig.from_attrs(vggfeat.read_attrs(out)).jpeg_decode == "reduced"
    _jpegs(images, n=3)  # one more image to read
    with pytest.raises(OutputError, match=r"jpeg_decode='reduced' in the file, 'full' now"):
        vggfeat.extract([images], out, config=ExtractorConfig(**SMALL), resume=True, progress=False)
    summary = vggfeat.extract([images], out, config=ExtractorConfig(**SMALL, jpeg_decode="reduced"), resume=True,
                              progress=False)
    assert summary.written == 1 and len(vggfeat.load_features(out, "pool5").paths) == 3


def test_the_command_line_records_its_choice(tmp_path):
    from click.testing import CliRunner

    from vggfeat_cli.main import cli

    images = tmp_path / "images"
    _jpegs(images, n=1)
    out = tmp_path / "f.h5"
    args = ["extract", str(images), "-o", str(out), "--arch", "vgg11", "--weights", "random", "--input-size", "32",
            "--fully-convolutional", "--layer", "pool5", "-q"]
    result = CliRunner().invoke(cli, args + ["--jpeg-decode", "reduced"])
    assert result.exit_code == 0, result.output
    assert vggfeat.read_attrs(out)["jpeg_decode"] == "reduced"
    result = CliRunner().invoke(cli, args + ["--overwrite"])
    assert result.exit_code == 0 and vggfeat.read_attrs(out)["jpeg_decode"] == "full", result.output
    result = CliRunner().invoke(cli, args + ["--jpeg-decode", "draft", "--overwrite"])
    assert result.exit_code == 2 and "'draft' is not one of 'full', 'reduced'" in result.output
