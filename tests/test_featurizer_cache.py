"""VGGFeaturizer in a grid search: one network per parameters, and Pipeline(memory=...) caching (issue 14, point 5)."""

import logging

import joblib
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline

from vggfeat import VGGFeaturizer
from vggfeat.extractor import FeatureExtractor

from conftest import make_folder

SMALL = dict(arch="vgg11", weights="random", input_size=32, batch_size=8)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    make_folder(str(root), per_class=4)
    files = sorted(root.rglob("*.png"))
    names = sorted({p.parent.name for p in files})
    return [str(p) for p in files], np.array([names.index(p.parent.name) for p in files])


@pytest.fixture
def calls(monkeypatch):
    """Images passed to FeatureExtractor.predict, counted (no timing)."""
    seen = []
    original = FeatureExtractor.predict

    def counting(self, imgs):
        seen.append(len(imgs))
        return original(self, imgs)

    monkeypatch.setattr(FeatureExtractor, "predict", counting)
    return seen


def test_equal_parameters_share_one_network(images):
    paths, _ = images
    a = VGGFeaturizer(**SMALL).fit(paths)
    b = clone(a).fit(paths)
    assert b.extractor_ is a.extractor_
    c = VGGFeaturizer(**{**SMALL, "seed": 1}).fit(paths)
    assert c.extractor_ is not a.extractor_
    np.testing.assert_array_equal(a.transform(paths[:3]), b.transform(paths[:3]))


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_grid_search_does_not_retrace(images):
    """Six fits of one featurizer: with a network built per fit, TensorFlow warned "5 out of the last
    9 calls ... triggered tf.function retracing" (seen with vggfeat.sklearn._BUILT_MAX = 0)."""
    paths, y = images
    pipe = Pipeline([("vgg", VGGFeaturizer(**SMALL)), ("clf", LogisticRegression(max_iter=500))])
    records = _Records()
    tf_logger = logging.getLogger("tensorflow")
    tf_logger.addHandler(records)
    try:
        GridSearchCV(pipe, {"clf__C": [0.1, 1.0, 10.0]}, cv=2).fit(paths, y)
    finally:
        tf_logger.removeHandler(records)
    assert not [m for m in records.messages if "retracing" in m]


def test_pipeline_memory_skips_extraction_on_the_second_fit(images, tmp_path, calls):
    paths, y = images
    memory = joblib.Memory(tmp_path / "cache", verbose=0)
    pipe = Pipeline([("vgg", VGGFeaturizer(**SMALL)), ("clf", LogisticRegression(C=1.0, max_iter=500))],
                    memory=memory)
    first = pipe.fit(paths, y).predict(paths)
    assert sum(calls) == 2 * len(paths)  # fit_transform, then predict
    calls.clear()
    second = clone(pipe).set_params(clf__C=10.0).fit(paths, y)  # same featurizer parameters: cached
    assert calls == []
    second.predict(paths)
    assert sum(calls) == len(paths)  # predicting new data still extracts
    calls.clear()
    clone(pipe).set_params(vgg__seed=1).fit(paths, y)  # other parameters: extracted again
    assert sum(calls) == len(paths)


def test_featurizer_hashes_stably():
    assert joblib.hash(VGGFeaturizer(**SMALL)) == joblib.hash(clone(VGGFeaturizer(**SMALL)))
    assert joblib.hash(VGGFeaturizer(**SMALL)) != joblib.hash(VGGFeaturizer(**{**SMALL, "layer": "fc6"}))
