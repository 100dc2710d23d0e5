"""Files of the format wing made directly, without a network; and the fast tier's one rule: none of its
tests imports a deep-learning framework (`no_framework_imported`, imported by every module of tests/io)."""

import os
import sys

import numpy as np
import pytest

from vggfeat.io.guard import parts_dir
from vggfeat.io.index import write_index
from vggfeat.io.layout import OutputSpec
from vggfeat.io.writer import FeatureWriter

SETTINGS = {"arch": "vgg16", "weights": "random", "layers": '["fc7"]', "inputs": "[]"}
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FRAMEWORKS = ("tensorflow", "keras", "jax", "torch")


@pytest.fixture(autouse=True)
def no_framework_imported():
    """Fails a test of the format wing that loads a framework (one loaded by an earlier test of the whole
    suite, in the same process, is not this test's doing)."""
    before = {m for m in FRAMEWORKS if m in sys.modules}
    yield
    loaded = [m for m in FRAMEWORKS if m in sys.modules and m not in before]
    assert not loaded, f"a test of the format wing imported {loaded}"


class Unit:
    """What the index records of a unit of input (the run wing's `Unit` has these too)."""

    def __init__(self, number, name):
        self.number, self.name, self.key, self.sources = number, name, f"shard:{name}", {}


class Batch:
    """A batch as an engine hands it to a sink."""

    def __init__(self, paths, labels, features, failed=()):
        self.paths, self.labels, self.features, self.failed = paths, labels, features, list(failed)


def make_index(path, n_parts=3, per=20, width=4, seed=0, complete=True):
    """An index of `n_parts` parts of `per` rows, written with the format wing only."""
    path = str(path)
    folder = parts_dir(path)
    os.makedirs(folder)
    rng = np.random.default_rng(seed)
    units = []
    for k in range(n_parts):
        units.append(Unit(k, f"s/{k:05d}.tar"))
        w = FeatureWriter.create(os.path.join(folder, f"part-{k:06d}.h5"),
                                 settings=dict(SETTINGS, part_number=k, part_key=units[-1].key, run_id="r1"),
                                 feature_shapes={"fc7": (width,)}, class_names=["a", "b"])
        w.append([f"s/{k:05d}.tar/{i}.png" for i in range(per)], [i % 2 for i in range(per)],
                 {"fc7": rng.random((per, width), np.float32)})
        w.close(complete=True)
    write_index(path, OutputSpec(SETTINGS, {"fc7": (width,)}, ["a", "b"]), units,
                [per if complete else -1] * n_parts, [0 if complete else -1] * n_parts,
                folder=folder, complete=complete, run_id="r1")
    return path
