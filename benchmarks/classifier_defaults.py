"""Old vs new default pipelines of `vggfeat classify` on L2-normalised features (issue 14, point 4).

Usage: python benchmarks/classifier_defaults.py [--source synthetic|vgg|both] [--seeds 7]

Two kinds of features, each split 70/30 (stratified) with several seeds; the table gives the median
(and min-max) held-out accuracy of each pipeline:

- `synthetic`: rows with the statistics of fc7 (4096 columns, non-negative, about 65% zeros after the
  ReLU, a strong component common to every image and a weak one per class, so that images of one class
  are barely closer (mean cosine 0.80-0.83 over the seeds) than images of different classes (at most 0.005
  less): the regime in which
  the old logreg default predicted one class), 4 classes of 36, 30, 27 and 27 rows.
- `vgg`: fc7 of vgg11 with random weights (seed 0) at 64x64 on photos cut from scikit-image's
  public-domain images (4 classes, each a different photo, 30 random crops/flips each), extracted by
  `vggfeat.extract` as the CLI does.

Every pipeline starts with the L2 normalisation `classify` applies by default (Normalizer).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def synthetic(seed, sizes=(36, 30, 27, 27), d=4096):
    """fc7-like rows: a component every image shares, a weak one per class (30% of the units), image
    variation in 20 directions plus small noise, a ReLU, then L2 normalisation."""
    rng = np.random.default_rng(1000 + seed)
    common = rng.gamma(0.6, 1.0, d)
    own = rng.gamma(0.6, 1.0, (len(sizes), d)) * (rng.random((len(sizes), d)) < 0.3)
    basis = rng.normal(0, 1, (20, d)) / np.sqrt(20)
    X, y = [], []
    for c, n in enumerate(sizes):
        pre = common + 0.15 * own[c] + 0.5 * rng.normal(0, 1, (n, 20)) @ basis + 0.3 * rng.normal(0, 1, (n, d))
        X.append(np.maximum(pre - 0.8, 0))
        y += [c] * n
    X = np.concatenate(X).astype(np.float32)
    return X / np.linalg.norm(X, axis=1, keepdims=True), np.array(y)


def vgg_features(n_per_class=30, k=4, size=64):
    import skimage
    from PIL import Image

    import vggfeat

    src = os.path.join(os.path.dirname(skimage.__file__), "data")
    names = ["astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png"][:k]
    rng = np.random.default_rng(0)
    tmp = tempfile.mkdtemp(prefix="vggfeat-bench-")
    for name in names:
        im = Image.open(os.path.join(src, name)).convert("RGB")
        w, h = im.size
        os.makedirs(os.path.join(tmp, "images", name.split(".")[0]))
        for i in range(n_per_class):
            s = rng.uniform(0.4, 0.9)
            cw, ch = int(w * s), int(h * s)
            x0, y0 = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
            crop = im.crop((x0, y0, x0 + cw, y0 + ch)).resize((96, 96))
            if rng.random() < 0.5:
                crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
            crop.save(os.path.join(tmp, "images", name.split(".")[0], f"{i:03d}.png"))
    out = os.path.join(tmp, "f.h5")
    vggfeat.extract([os.path.join(tmp, "images")], out, ["fc7"], arch="vgg11", weights="random",
                    input_size=size, progress=False)
    X, y = vggfeat.load_features(out, "fc7", return_X_y=True)
    return X.reshape(len(X), -1), y


def pipelines():
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer, StandardScaler
    from sklearn.svm import LinearSVC

    from vggfeat.classifier import make_classifier

    return {
        "logreg C=1 (old default)": make_pipeline(Normalizer(), LogisticRegression(C=1.0, max_iter=2000)),
        "logreg C=10": make_pipeline(Normalizer(), LogisticRegression(C=10.0, max_iter=2000)),
        "logreg C=100": make_pipeline(Normalizer(), LogisticRegression(C=100.0, max_iter=2000)),
        "logreg + StandardScaler C=1": make_pipeline(Normalizer(), StandardScaler(),
                                                     LogisticRegression(C=1.0, max_iter=2000)),
        "logreg: make_classifier() now": make_classifier("logreg"),
        "linear-svm C=1 (old default)": make_pipeline(Normalizer(), LinearSVC(C=1.0, max_iter=10000)),
        "linear-svm C=10": make_pipeline(Normalizer(), LinearSVC(C=10.0, max_iter=10000)),
        "linear-svm C=100": make_pipeline(Normalizer(), LinearSVC(C=100.0, max_iter=10000)),
        "linear-svm + StandardScaler C=1": make_pipeline(Normalizer(), StandardScaler(),
                                                         LinearSVC(C=1.0, max_iter=10000)),
        "linear-svm: make_classifier() now": make_classifier("linear-svm"),
        "knn k=5 (old default)": make_pipeline(Normalizer(), KNeighborsClassifier(5)),
        "knn + StandardScaler k=5": make_pipeline(Normalizer(), StandardScaler(), KNeighborsClassifier(5)),
        "knn: make_classifier() now": make_classifier("knn"),
    }


def run(name, data_for_seed, seeds):
    from sklearn.base import clone
    from sklearn.model_selection import train_test_split

    print(f"\n{name}: median held-out accuracy over {len(seeds)} seeds (min-max), 70/30 split")
    scores = {}
    for seed in seeds:
        X, y = data_for_seed(seed)
        Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, stratify=y, random_state=seed)
        for label, pipe in pipelines().items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # LinearSVC convergence notes at C=100
                pred = clone(pipe).fit(Xtr, ytr).predict(Xte)
            scores.setdefault(label, []).append((pred == yte).mean())
            if label.endswith("(old default)") and label.startswith("logreg"):
                scores.setdefault("logreg old: distinct predicted classes", []).append(len(np.unique(pred)))
    print(f"(chance {1 / len(np.unique(y)):.2f}; {len(y)} rows of {X.shape[1]} features)")
    for label, s in scores.items():
        print(f"  {label:40s} {np.median(s):.3f}  ({min(s):.3f}-{max(s):.3f})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", choices=["synthetic", "vgg", "both"], default="both")
    ap.add_argument("--seeds", type=int, default=7)
    a = ap.parse_args()
    seeds = list(range(a.seeds))
    if a.source in ("synthetic", "both"):
        run("synthetic fc7-like features (4 classes, 120 rows)", synthetic, seeds)
    if a.source in ("vgg", "both"):
        X, y = vgg_features()
        run("vgg11 random-weight fc7 at 64x64, photo crops (4 classes x 30)", lambda seed: (X, y), seeds)


if __name__ == "__main__":
    main()
