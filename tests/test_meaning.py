"""A shard rewritten between runs is never kept stale (issue 21, case 7): `--resume` of one file refuses
it in one line, an index of parts reads its part again. (The seals themselves, case 6, are tested
without TensorFlow in tests/io/test_io_seals.py.)"""

import os

import h5py
import numpy as np
import pytest
from test_shards import dataset, write_tar

from vggfeat import extract, load_features, verify
from vggfeat.errors import OutputError

SETTINGS = {"arch": "vgg16", "weights": "random", "layers": '["fc7"]', "inputs": "[]"}


@pytest.fixture(scope="module")
def fx():
    from vggfeat import FeatureExtractor

    return FeatureExtractor("vgg11", "random", ["fc7"], input_size=32, batch_size=4)


def rewrite_shard(root, number):
    """Shard `number` with other images under the same names (its size changes)."""
    path = os.path.join(root, "shards", f"{number:05d}.tar")
    members = [(f"{i:06d}.png", open(os.path.join(root, "loose", f"{(i + 1) % 9:06d}.png"), "rb").read())
               for i in range(number * 3, number * 3 + 3)]
    write_tar(path, members + [("extra.png", members[0][1])])


def test_a_rewritten_shard_refuses_resume_of_one_file_and_is_read_again_in_parts(tmp_path, monkeypatch, fx):
    dataset(tmp_path, shards=3, per_shard=3)
    monkeypatch.chdir(tmp_path)
    inputs = ["shards/{00000..00002}.tar"]
    extract(inputs, "one.h5", extractor=fx, progress=False)
    with h5py.File("one.h5") as f:
        assert sorted(n.decode() for n in f["sources/names"][()]) == [f"shards/{i:05d}.tar" for i in range(3)]
    extract(inputs, "idx.h5", extractor=fx, progress=False, output_shards=True)
    before = load_features("idx.h5")
    rewrite_shard(tmp_path, 1)
    with pytest.raises(OutputError, match=r"cannot resume one.h5: the shard shards/00001.tar changed"):
        extract(inputs, "one.h5", extractor=fx, progress=False, resume=True)
    summary = extract(inputs, "idx.h5", extractor=fx, progress=False, output_shards=True, resume=True)
    assert summary.written == 4  # the rewritten shard's part only, read again
    extract(inputs, "fresh.h5", extractor=fx, progress=False)
    a, b = load_features("idx.h5"), load_features("fresh.h5")
    assert list(a.paths) == list(b.paths) != list(before.paths)
    np.testing.assert_array_equal(a.features, b.features)
    assert verify("idx.h5").ok
