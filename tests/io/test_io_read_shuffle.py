"""`FeatureSet.iter_X_y` shuffles by default in a bounded buffer (issue 22, point 2): a file of a folder
is sorted by class, and `partial_fit` over it in file order learns mostly the last class."""

import tracemalloc

import h5py
import numpy as np
import pytest

from vggfeat import open_features
from vggfeat.errors import InputError, OutputError
from vggfeat.io.writer import FeatureWriter

from io_helpers import no_framework_imported  # noqa: F401 - the autouse check

SETTINGS = {"arch": "vgg16", "weights": "random", "layers": '["fc7"]', "inputs": "[]"}


def sorted_file(path, per_class=600, classes=3, dim=16, commit=50, spread=1.0, seed=0, unlabelled=0):
    """A vggfeat file of Gaussian blobs, one class after another (as a folder's run writes them), in
    commits of `commit` rows; `unlabelled` rows of label -1 at the end."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (classes, dim)).astype(np.float32)
    labels = np.concatenate([np.repeat(np.arange(classes), per_class), np.full(unlabelled, -1)])
    feats = np.concatenate([centres[max(c, 0)] + spread * rng.normal(size=dim).astype(np.float32)[None]
                            for c in labels]).astype(np.float32)
    w = FeatureWriter.create(path, settings=SETTINGS, feature_shapes={"fc7": (dim,)},
                             class_names=[f"c{k}" for k in range(classes)])
    for a in range(0, len(labels), commit):
        b = min(len(labels), a + commit)
        w.append([f"c{max(labels[i], 0)}/{i:06d}.png" for i in range(a, b)], labels[a:b], {"fc7": feats[a:b]})
        w.flush()  # one commit each
    w.close(complete=True)
    return feats, labels


def test_default_iter_X_y_mixes_classes_and_every_row_comes_once(tmp_path):
    feats, labels = sorted_file(tmp_path / "f.h5", unlabelled=40)
    fs = open_features(tmp_path / "f.h5")
    batches = list(fs.iter_X_y(64, seed=1))
    assert all(len(np.unique(y)) > 1 for X, y in batches), [np.unique(y) for _, y in batches]
    X = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    assert len(y) == 1800 and (y >= 0).all() and all(len(b[1]) <= 64 for b in batches)
    # exactly the labelled rows, each once: the same multiset of (row, label)
    got = sorted(map(tuple, np.column_stack([X, y])))
    want = sorted(map(tuple, np.column_stack([feats[labels >= 0], labels[labels >= 0]])))
    assert got == want
    # file order on request
    y0 = np.concatenate([y for _, y in fs.iter_X_y(64, shuffle=0)])
    assert (y0 == labels[labels >= 0]).all()
    assert (np.concatenate([y for _, y in fs.iter_X_y(64, shuffle=False)]) == y0).all()


@pytest.mark.parametrize("buffer", [100, 1000])  # smaller than one class (600 rows) and larger
def test_iter_batches_shuffled_rows_match_their_paths_and_come_once(tmp_path, buffer):
    feats, labels = sorted_file(tmp_path / "f.h5")
    fs = open_features(tmp_path / "f.h5")
    assert [r.start for r in fs.iter_batches(100)] == list(range(0, 1800, 100))  # the default: file order
    seen = []
    for r in fs.iter_batches(30, shuffle=buffer, seed=3):
        assert len(r.paths) == len(r.labels) == len(r.index) <= 30 and r.start == -1
        assert [int(p.split("/")[1][:6]) for p in r.paths] == r.index.tolist()  # each path with its row
        assert (r.features == feats[r.index]).all() and (r.labels == labels[r.index]).all()
        seen.extend(r.index.tolist())
    assert sorted(seen) == list(range(1800)) and seen != sorted(seen)
    # classes mix even with a buffer smaller than a class: the first tenth holds every class
    assert len(set(labels[seen[:180]])) == 3


def test_same_seed_same_order_and_none_a_fresh_one(tmp_path):
    sorted_file(tmp_path / "f.h5")
    fs = open_features(tmp_path / "f.h5")

    def order(seed, **kw):
        return np.concatenate([r.index for r in fs.iter_batches(50, shuffle=200, seed=seed, **kw)]).tolist()

    assert order(7) == order(7)
    assert order(7) != order(8)
    assert order(None) != order(None)
    a = [X for X, _ in fs.iter_X_y(50, seed=5)]
    b = [X for X, _ in fs.iter_X_y(50, seed=5)]
    assert all((x == z).all() for x, z in zip(a, b)) and len(a) == len(b)


def test_shuffle_arguments(tmp_path):
    sorted_file(tmp_path / "f.h5", per_class=10)
    fs = open_features(tmp_path / "f.h5")
    assert fs.shuffle_buffer(100, 0) == fs.shuffle_buffer(100, False) == 0
    assert fs.shuffle_buffer(100, 50) == 100  # at least one batch
    assert fs.shuffle_buffer(100, True) == max(400, (256 << 20) // (16 * 4 + 136))
    with pytest.raises(InputError, match="shuffle"):
        fs.shuffle_buffer(100, -1)


def test_shuffled_memory_is_bounded_by_the_buffer_not_the_file(tmp_path):
    """20,000 rows of 1,024 float32 (80 MB): shuffling 500-row batches in a 2,000-row buffer (8 MB)
    peaks at a few buffers, far below the file."""
    path = tmp_path / "big.h5"
    dim, n = 1024, 20_000
    w = FeatureWriter.create(path, settings=SETTINGS, feature_shapes={"fc7": (dim,)}, class_names=["a", "b"])
    rng = np.random.default_rng(0)
    for a in range(0, n, 500):
        w.append([f"x/{i}.png" for i in range(a, a + 500)], [int(i >= n // 2) for i in range(a, a + 500)],
                 {"fc7": rng.random((500, dim), np.float32)})
    w.close(complete=True)
    fs = open_features(path)
    row = dim * 4
    tracemalloc.start()
    try:
        count = 0
        for X, y in fs.iter_X_y(500, shuffle=2000, seed=0):
            count += len(y)
        _, peak_xy = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        seen = 0
        for r in fs.iter_batches(500, shuffle=2000, seed=0):
            seen += len(r.index)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == seen == n
    assert peak_xy < 2.5 * 2000 * row, peak_xy  # 8 MB of buffer; the file is 80 MB
    assert peak < 2.5 * 2000 * row, peak
    print(f"peak {peak_xy / 2**20:.1f} MB (iter_X_y), {peak / 2**20:.1f} MB (iter_batches); "
          f"buffer {2000 * row / 2**20:.1f} MB, file {n * row / 2**20:.1f} MB")


def test_partial_fit_over_the_default_reaches_a_shuffled_fit(tmp_path):
    """SGDClassifier.partial_fit, one pass over a class-sorted file of overlapping blobs: file order
    learns mostly the last class; the default iter_X_y scores within a few points of a fit on the
    rows shuffled whole in memory."""
    from sklearn.linear_model import SGDClassifier

    feats, labels = sorted_file(tmp_path / "train.h5", per_class=2000, classes=4, spread=3.0, commit=100)
    rng = np.random.default_rng(99)  # a test set: the same centres, fresh noise
    centres = np.stack([feats[labels == c].mean(0) for c in range(4)])
    test_y = np.repeat(np.arange(4), 500)
    test_X = (centres[test_y] + 3.0 * rng.normal(size=(len(test_y), feats.shape[1]))).astype(np.float32)
    fs = open_features(tmp_path / "train.h5")

    def score(batches):
        clf = SGDClassifier(random_state=0)
        for X, y in batches:
            clf.partial_fit(X, y, classes=fs.classes)
        return clf.score(test_X, test_y)

    perm = np.random.default_rng(0).permutation(len(labels))
    shuffled = score((feats[perm[a:a + 200]], labels[perm[a:a + 200]]) for a in range(0, len(perm), 200))
    default = score(fs.iter_X_y(200, seed=0))
    small = score(fs.iter_X_y(200, shuffle=1000, seed=0))  # a buffer half a class
    file_order = score(fs.iter_X_y(200, shuffle=0))
    print(f"accuracy: shuffled in memory {shuffled:.3f}, default {default:.3f}, buffer 1000 {small:.3f}, "
          f"file order {file_order:.3f}")
    assert default >= shuffled - 0.05 and small >= shuffled - 0.05
    assert file_order < shuffled - 0.15


def test_shuffled_rows_are_checked_against_their_checksums(tmp_path):
    sorted_file(tmp_path / "f.h5")
    with h5py.File(tmp_path / "f.h5", "r+") as f:
        f["features/fc7"][1234, 0] += 1
    fs = open_features(tmp_path / "f.h5")
    with pytest.raises(OutputError, match="is damaged: features/fc7 rows 1200-1250"):
        for _ in fs.iter_X_y(64, seed=0):
            pass
    with pytest.raises(OutputError, match="is damaged"):
        for _ in fs.iter_batches(64, shuffle=100, seed=0):
            pass
    assert sum(len(y) for _, y in fs.iter_X_y(64, seed=0, verify=False)) == 1800


def test_a_commit_larger_than_a_read_is_checked_whole_when_shuffled(tmp_path):
    feats, labels = sorted_file(tmp_path / "f.h5", commit=600)  # each class one commit of 600 rows
    fs = open_features(tmp_path / "f.h5")
    idx = np.concatenate([r.index for r in fs.iter_batches(20, shuffle=80, seed=2)])
    assert sorted(idx.tolist()) == list(range(1800))
    with h5py.File(tmp_path / "f.h5", "r+") as f:
        f["features/fc7"][700, 0] += 1
    with pytest.raises(OutputError, match="features/fc7 rows 600-1024"):
        for _ in fs.iter_batches(20, shuffle=80, seed=2):
            pass
