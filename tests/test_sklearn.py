"""Downstream scikit-learn: VGGFeaturizer in a Pipeline, classify (CV, report, plot, skops), predict."""

import csv
import io
import pickle

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import Normalizer
from sklearn.svm import LinearSVC
from sklearn.utils.estimator_checks import parametrize_with_checks

from vggfeat import VGGFeaturizer, extract
from vggfeat.classifier import classify, load_classifier, predict_images, save_classifier
from vggfeat.errors import InputError, WeightsError
from vggfeat_cli.main import cli

from conftest import make_folder

SMALL = dict(arch="vgg11", weights="random", input_size=32, batch_size=8)

# scikit-learn's estimator checks feed numeric matrices (n_samples, n_features). VGGFeaturizer takes images
# (file paths or (H, W, 3) arrays), so every check that transforms such a matrix, or expects fit to
# validate it, cannot pass; the API checks (cloning, params, repr, fit returns self, unfitted errors,
# no attributes set in __init__, parameters not overwritten...) all pass. Each exception, and why:
_NUMERIC = "feeds a numeric feature matrix to transform; VGGFeaturizer takes images (paths or HxWx3 arrays)"
_FIT_VALIDATES = ("expects fit to validate a numeric X; VGGFeaturizer's fit only builds the network and "
                  "ignores X (there is nothing to learn from the data)")
EXPECTED_FAILED_CHECKS = {
    **{name: _NUMERIC for name in (
        "check_fit_score_takes_y", "check_estimators_dtypes", "check_dtype_object", "check_pipeline_consistency",
        "check_estimators_pickle", "check_f_contiguous_array_estimator", "check_transformer_data_not_an_array",
        "check_transformer_general", "check_transformer_preserve_dtypes", "check_methods_sample_order_invariance",
        "check_methods_subset_invariance", "check_dict_unchanged", "check_fit_idempotent",
        "check_fit2d_predict1d")},
    **{name: _FIT_VALIDATES for name in (
        "check_complex_data", "check_estimators_empty_data_messages", "check_estimators_nan_inf",
        "check_estimator_sparse_tag", "check_fit1d")},
    "check_n_features_in": "n_features_in_ counts input columns; images have no columns",
    "check_n_features_in_after_fitting": "n_features_in_ counts input columns; images have no columns",
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Three visibly different classes, 8 images each, and their fc7 features."""
    root = tmp_path_factory.mktemp("data")
    make_folder(str(root / "images"), per_class=8)
    out = root / "features.h5"
    extract([root / "images"], out, ["fc7", "pool5"], progress=False, **SMALL)
    return root


def _paths_labels(dataset):
    files = sorted((dataset / "images").rglob("*.png"))
    names = sorted({p.parent.name for p in files})
    return [str(p) for p in files], np.array([names.index(p.parent.name) for p in files])


def test_featurizer_in_pipeline_with_grid_search(dataset):
    X, y = _paths_labels(dataset)
    pipe = make_pipeline(VGGFeaturizer(layer="pool5", **SMALL), Normalizer(), LinearSVC())
    search = GridSearchCV(pipe, {"linearsvc__C": [0.1, 10.0]}, cv=3)
    search.fit(X, y)
    assert search.best_score_ > 0.8  # chance is 1/3
    assert search.predict(X[:3]).shape == (3,)


def test_featurizer_params_clone_and_feature_names(dataset):
    X, _ = _paths_labels(dataset)
    fz = VGGFeaturizer(layer="fc7", **SMALL)
    assert not hasattr(fz, "extractor_")  # __init__ only stores parameters
    assert clone(fz).get_params() == fz.get_params()
    out = fz.fit(X[:2]).transform(X[:5])
    assert out.shape == (5, 4096) and out.dtype == np.float32
    names = fz.get_feature_names_out()
    assert names[0] == "fc7_0" and len(names) == 4096
    # arrays of images (decoded at their own size) work too, and give the same features as the files
    from vggfeat.images import load_image

    imgs = [load_image(p, None) for p in X[:2]]
    np.testing.assert_allclose(fz.transform(imgs), out[:2], rtol=1e-5, atol=1e-6)
    # pickles without the Keras model, and rebuilds it when used
    again = pickle.loads(pickle.dumps(fz))
    np.testing.assert_allclose(again.transform(X[:2]), out[:2], rtol=1e-5, atol=1e-6)


def test_featurizer_errors(tmp_path):
    fz = VGGFeaturizer(**SMALL).fit()
    with pytest.raises(InputError, match="cannot read image"):
        fz.transform([str(tmp_path / "missing.png")])
    with pytest.raises(InputError, match="file paths, RGB images of shape"):
        fz.transform(np.zeros((2, 10)))
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        VGGFeaturizer(**SMALL).transform(["x.png"])


@parametrize_with_checks([VGGFeaturizer(**SMALL)], expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_classify_beats_chance_and_round_trips(dataset, tmp_path):
    result = classify(dataset / "features.h5", "fc7", cv=4)
    assert len(result.fold_scores) == 4
    assert result.mean > 0.8, result.fold_scores  # chance is 1/3
    assert "circles" in result.report
    path = tmp_path / "clf.skops"
    save_classifier(result, path)
    pipeline, settings, names = load_classifier(path)
    assert settings["arch"] == "vgg11" and settings["layer"] == "fc7" and settings["weights"] == "random"
    assert names == ["circles", "squares", "stripes"]
    from vggfeat import load_features

    data = load_features(dataset / "features.h5", "fc7")
    np.testing.assert_array_equal(pipeline.predict(data.features), result.pipeline.predict(data.features))


@pytest.mark.parametrize("kind", ["logreg", "knn"])
def test_other_classifiers(dataset, kind):
    # L2-normalised features are close together: logistic regression needs weak regularisation (large C)
    assert classify(dataset / "features.h5", "fc7", classifier=kind, C=100.0, cv=3).mean > 0.7  # chance is 1/3


def test_classify_errors(dataset, tmp_path):
    with pytest.raises(InputError, match="--cv 9 needs at least 9 samples per class"):
        classify(dataset / "features.h5", "fc7", cv=9)
    from vggfeat.errors import LayerError

    with pytest.raises(LayerError, match="'fc6' is not in"):
        classify(dataset / "features.h5", "fc6")
    unlabelled = tmp_path / "u"
    unlabelled.mkdir()
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.full((40, 40, 3), i * 50, np.uint8)).save(unlabelled / f"{i}.png")
    extract([unlabelled], tmp_path / "u.h5", ["fc7"], progress=False, **SMALL)
    with pytest.raises(InputError, match="has no labels"):
        classify(tmp_path / "u.h5", "fc7")
    one = tmp_path / "one"
    make_folder(str(one), per_class=3, classes={"only": ((200, 0, 0), "circle")})
    extract([one], tmp_path / "one.h5", ["fc7"], progress=False, **SMALL)
    with pytest.raises(InputError, match="one class only"):
        classify(tmp_path / "one.h5", "fc7")


def test_classify_cli_prints_folds_report_and_writes_plot_and_model(dataset, tmp_path):
    runner = CliRunner()
    args = ["classify", str(dataset / "features.h5"), "--layer", "fc7", "--cv", "4", "--plot",
            str(tmp_path / "cm.png"), "-o", str(tmp_path / "clf.skops")]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "fold 4: accuracy" in result.output and "accuracy: " in result.output and "+/-" in result.output
    assert "precision" in result.output and "stripes" in result.output
    with open(tmp_path / "cm.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    again = runner.invoke(cli, args)
    assert again.exit_code == 2 and "exists; pass --overwrite" in again.output


def test_predict_uses_stored_settings_and_reports_corrupt_images(dataset, tmp_path):
    result = classify(dataset / "features.h5", "fc7", classifier="logreg", cv=3)
    clf = tmp_path / "clf.skops"
    save_classifier(result, clf)
    new = tmp_path / "new"
    make_folder(str(new), per_class=2)
    (new / "broken.jpg").write_bytes(b"nope")
    runner = CliRunner()
    out = runner.invoke(cli, ["predict", "--classifier", str(clf), str(new), "-q"])
    assert out.exit_code == 0, out.output
    rows = list(csv.DictReader(io.StringIO(out.output)))
    assert [r["path"] for r in rows] == sorted(r["path"] for r in rows)
    by_path = {r["path"]: r for r in rows}
    assert by_path["broken.jpg"]["label"] == "" and "not an image" in by_path["broken.jpg"]["error"]
    good = [r for r in rows if r["label"]]
    assert len(good) == 6 and sum(r["label"] == r["path"].split("/")[0] for r in good) >= 5
    assert {"p_circles", "p_squares", "p_stripes"} <= set(rows[0])


def test_predict_refuses_other_weights(dataset, tmp_path):
    from vggfeat.models import build_vgg

    wfile = tmp_path / "mine.weights.h5"
    build_vgg("vgg11", input_size=32, seed=1).save_weights(wfile)
    extract([dataset / "images"], tmp_path / "f.h5", ["fc7"], arch="vgg11", weights=str(wfile), resize="squash",
            progress=False)
    result = classify(tmp_path / "f.h5", "fc7", cv=3)
    clf = tmp_path / "clf.skops"
    save_classifier(result, clf)
    other = tmp_path / "other.weights.h5"
    build_vgg("vgg11", input_size=32, seed=2).save_weights(other)
    with pytest.raises(WeightsError, match="differ from those the classifier was trained with"):
        list(predict_images(clf, [dataset / "images"], weights=str(other)))
    with pytest.raises(WeightsError, match="pass it with --weights PATH"):
        list(predict_images(clf, [dataset / "images"]))
    rows = list(predict_images(clf, [dataset / "images"], weights=str(wfile)))
    assert len(rows) == 24


def test_untrusted_classifier_file_is_refused(tmp_path):
    import skops.io as sio
    from collections import Counter

    path = tmp_path / "bad.skops"
    sio.dump({"pipeline": Counter(a=1), "settings": "{}", "class_names": []}, path)
    with pytest.raises(InputError, match="does not trust: collections.Counter"):
        load_classifier(path)
