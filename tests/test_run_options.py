"""`RunOptions`: every option of a run checked once, in one line, before anything is built; the default
batch chosen for the device (issue 22, point 9) and said in the summary line."""

import pytest

from vggfeat import RunOptions, extract
from vggfeat.errors import InputError
from vggfeat.run.options import CPU_BATCH, GPU_BATCH, default_batch_size


@pytest.mark.parametrize("kwargs,message", [
    (dict(resume=True, overwrite=True), "--resume and --overwrite exclude each other"),
    (dict(dtype="float64"), "unknown storage dtype 'float64'; choose float32 or float16"),
    (dict(compression="zstd"), "unknown compression 'zstd'; choose gzip or lzf"),
    (dict(batch_size=0), "batch size must be at least 1"),
    (dict(decode_workers=2.5), "decode workers must be at least 1"),
    (dict(engine="spark"), "unknown engine 'spark'; choose one of local, ray"),
    (dict(ray_workers=2), "need --engine ray"),
    (dict(max_member_size="lots"), "max-member-size"),
])
def test_each_invalid_option_is_one_line(kwargs, message):
    with pytest.raises(InputError, match=message) as info:
        RunOptions(**kwargs)
    assert "\n" not in str(info.value)


def test_extract_keywords_map_once_and_unknown_ones_are_refused(tmp_path):
    assert RunOptions.of(workers=3).decode_workers == 3  # --workers: decoding threads, not Ray actors
    with pytest.raises(InputError, match="unknown option 'batchsize'"):
        RunOptions.of(batchsize=8)
    from vggfeat.run.job import prepare_extract

    with pytest.raises(InputError, match="unknown argument 'batchsize'"):
        prepare_extract([str(tmp_path)], tmp_path / "f.h5", batchsize=8)
    with pytest.raises(InputError, match="pass dtype in options, not beside it"):
        prepare_extract([str(tmp_path)], tmp_path / "f.h5", options=RunOptions(), dtype="float16")


def test_the_default_batch_is_the_devices(image_folder, tmp_path, monkeypatch):
    assert default_batch_size() == (CPU_BATCH, "CPU")  # the machine the tests run on has no GPU
    summary = extract([image_folder], tmp_path / "f.h5", ["fc7"], arch="vgg11", weights="random", input_size=32,
                      progress=False)
    assert summary.batch_size == CPU_BATCH == 8
    assert summary.line().endswith("; batch 8 (the default on a CPU)")
    given = extract([image_folder], tmp_path / "g.h5", ["fc7"], arch="vgg11", weights="random", input_size=32,
                    progress=False, batch_size=3)
    assert given.batch_size == 3 and "batch" not in given.line().split("]")[-1]
    import tensorflow as tf

    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: ["GPU:0"] if kind == "GPU" else [])
    assert default_batch_size() == (GPU_BATCH, "GPU")
