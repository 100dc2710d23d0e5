"""classify's default classifiers work on L2-normalised features (issue 14, point 4)."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import Normalizer

from vggfeat.classifier import DEFAULT_C, make_classifier


def fc7_like(seed, per_class=(24, 20, 18, 18), d=2048):
    """Separable, fc7-like rows: non-negative, sparse (a ReLU), L2-normalised, with a component every row
    shares and a small one per class, so that all rows are close to each other (cosine > 0.9)."""
    rng = np.random.default_rng(seed)
    common = rng.gamma(0.6, 1.0, d)
    own = rng.gamma(0.6, 1.0, (len(per_class), d)) * (rng.random((len(per_class), d)) < 0.3)
    X, y = [], []
    for c, n in enumerate(per_class):
        X.append(np.maximum(common + 0.1 * own[c] + 0.1 * rng.normal(0, 1, (n, d)) - 0.8, 0))
        y += [c] * n
    X = np.concatenate(X)
    return X / np.linalg.norm(X, axis=1, keepdims=True), np.array(y)


def held_out(pipe, seed):
    X, y = fc7_like(seed)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), bool)
    for c in np.unique(y):  # a third of each class held out
        idx = rng.permutation(np.flatnonzero(y == c))
        test[idx[: len(idx) // 3]] = True
    pred = pipe.fit(X[~test], y[~test]).predict(X[test])
    return (pred == y[test]).mean(), len(np.unique(pred))


@pytest.mark.parametrize("seed", [0, 1])
def test_default_logreg_does_not_collapse_on_normalised_features(seed):
    X, _ = fc7_like(seed)
    assert (X >= 0).all() and (X == 0).mean() > 0.5 and np.allclose(np.linalg.norm(X, axis=1), 1)
    # the regime of the issue: the old default (C=1 after L2 normalisation) predicts one class
    old_acc, old_classes = held_out(make_pipeline(Normalizer(), LogisticRegression(C=1.0, max_iter=2000)), seed)
    assert old_classes == 1 and old_acc < 0.4
    acc, classes = held_out(make_classifier("logreg"), seed)
    assert classes == 4 and acc > 0.8  # chance is 0.25-0.3


@pytest.mark.parametrize("kind", ["linear-svm", "logreg", "knn"])
def test_every_default_classifier_beats_chance_on_normalised_features(kind):
    acc, classes = held_out(make_classifier(kind), 0)
    assert classes == 4 and acc > 0.8


def test_defaults_reach_classify_and_the_cli():
    assert make_classifier("logreg").named_steps["classifier"].C == DEFAULT_C["logreg"] == 100.0
    assert make_classifier("linear-svm").named_steps["classifier"].C == DEFAULT_C["linear-svm"] == 10.0
    assert make_classifier("logreg", C=0.5).named_steps["classifier"].C == 0.5
    import inspect

    from vggfeat.classifier import classify
    from vggfeat_cli.classify import classify_command

    assert inspect.signature(classify).parameters["C"].default is None
    assert next(p for p in classify_command.params if p.name == "C").default is None
