"""What a row means is under checksum (issue 21, case 6): settings, class names and each input shard's
identity are sealed when a file or an index is created; a hand edit is damage to `verify`, to readers,
to `--resume`, to `repair` and to `merge`. Files of format 2 (no seals) are still read and resumed."""

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from vggfeat import load_features, merge_parts, open_features, verify
from vggfeat.errors import OutputError
from vggfeat.io.guard import parts_dir
from vggfeat.io.recover import repair, resume_file
from vggfeat.io.writer import FeatureWriter

from io_helpers import REPO, SETTINGS, make_index, no_framework_imported  # noqa: F401 - the autouse check


def small_file(path, class_names=("cat", "dog")):
    w = FeatureWriter.create(str(path), settings=SETTINGS, feature_shapes={"fc7": (8,)}, class_names=class_names,
                             sources={"s/00000.tar": "size=10 mtime_ns=1"})
    w.append([f"s/00000.tar/{i}.png" for i in range(6)], [i % 2 for i in range(6)],
             {"fc7": np.arange(48, dtype=np.float32).reshape(6, 8)})
    w.close(complete=True)
    return str(path)


def swap_names(path, group=""):
    with h5py.File(path, "r+") as f:
        names = [n.decode() for n in f[group + "class_names"][()]]
        f[group + "class_names"][...] = np.array(names[::-1], dtype=object)


def test_a_file_with_swapped_class_names_is_damaged_everywhere(tmp_path):
    path = small_file(tmp_path / "f.h5")
    assert verify(path).ok
    swap_names(path)
    report = verify(path)
    assert not report.ok and "/class_names were changed" in report.line()
    with pytest.raises(OutputError, match="class_names were changed"):
        load_features(path)
    with pytest.raises(OutputError, match="class_names were changed"):
        open_features(path)
    with pytest.raises(OutputError, match="cannot resume .*class_names were changed"):
        resume_file(path, settings=SETTINGS)
    with pytest.raises(OutputError, match="cannot repair"):
        repair(path, tmp_path / "copy.h5")
    assert len(load_features(path, verify=False).paths) == 6  # read as it is, when asked for


def test_an_edited_setting_or_source_identity_is_damage(tmp_path):
    a = small_file(tmp_path / "a.h5")
    with h5py.File(a, "r+") as f:
        f.attrs["arch"] = "vgg19"
    assert "its settings (root attributes) were changed" in verify(a).line()
    b = small_file(tmp_path / "b.h5")
    with h5py.File(b, "r+") as f:
        f["sources/identities"][0] = "size=11 mtime_ns=2"
    assert "its /sources" in verify(b).line() and not verify(b).ok
    c = small_file(tmp_path / "c.h5")
    with h5py.File(c, "r+") as f:  # the run's state is not what a row means
        f.attrs["complete"] = False
    assert verify(c).ok


def test_verify_cli_and_merge_refuse_an_index_or_part_with_swapped_names(tmp_path):
    index = make_index(tmp_path / "idx.h5", n_parts=2, per=10, width=4)
    swap_names(index)
    r = subprocess.run([sys.executable, "-m", "vggfeat_cli", "verify", index], cwd=REPO, capture_output=True,
                       text=True)
    assert r.returncode != 0 and "class_names were changed" in r.stderr + r.stdout, r
    assert "Traceback" not in r.stderr
    with pytest.raises(OutputError, match="class_names were changed"):
        merge_parts(index, tmp_path / "m.h5", progress=False)
    assert not os.path.exists(tmp_path / "m.h5")
    index2 = make_index(tmp_path / "idx2.h5", n_parts=2, per=10, width=4)
    swap_names(os.path.join(parts_dir(index2), "part-000001.h5"))
    with pytest.raises(OutputError, match="part-000001.h5 is damaged: its /class_names"):
        merge_parts(index2, tmp_path / "m2.h5", progress=False)
    with pytest.raises(OutputError, match="part-000001.h5 is damaged"):
        load_features(index2)


def test_files_of_format_2_are_read_and_resumed_without_seals(tmp_path):
    path = small_file(tmp_path / "old.h5")
    with h5py.File(path, "r+") as f:  # what format 2 wrote: no seals, no /sources
        f.attrs["format_version"] = 2
        del f.attrs["meaning_keys"], f.attrs["meaning_crc32"]
        del f["sources"]
    assert verify(path).ok and len(load_features(path).paths) == 6
    w = resume_file(path, settings=SETTINGS)
    w.close(complete=True)


def test_verify_tells_a_shard_changed_since_its_rows_were_written(tmp_path):
    from vggfeat.io.layout import local_identity

    shard = tmp_path / "00000.tar"
    shard.write_bytes(b"x" * 1000)
    path = str(tmp_path / "f.h5")
    w = FeatureWriter.create(path, settings=SETTINGS, feature_shapes={"fc7": (8,)}, class_names=["a"],
                             sources={str(shard): local_identity(str(shard)), "s3://b/1.tar": "ETag=\"abc\""})
    w.append([f"{shard}/0.png"], [0], {"fc7": np.zeros((1, 8), np.float32)})
    w.close(complete=True)
    report = verify(path)
    assert report.ok and report.unchecked == 1 and "1 input shards not looked at" in report.line()
    shard.write_bytes(b"y" * 1001)  # rewritten: another size
    report = verify(path)
    assert not report.ok and f"the shard {shard} changed since its rows were written" in report.line()
    r = subprocess.run([sys.executable, "-m", "vggfeat_cli", "verify", path], cwd=REPO, capture_output=True,
                       text=True)
    assert r.returncode == 1 and "changed since its rows were written" in r.stdout
