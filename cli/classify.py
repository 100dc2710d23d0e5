"""`vggfeat classify`: train and cross-validate a classifier on stored features."""

from __future__ import annotations

import click

from ._common import output_options, reports_errors


@click.command("classify")
@click.argument("features", type=click.Path())
@click.option("--layer", default=None, help="Layer in the file (default: the only one).")
@click.option("--kind", type=click.Choice(["linear-svm", "logreg", "knn"]), default=None,
              help="The classifier: linear-svm (default, the paper's choice), logreg or knn.")
@click.option("--classifier", "old_kind", type=click.Choice(["linear-svm", "logreg", "knn"]), default=None,
              hidden=True)  # the older name of --kind (predict's --classifier is a file)
@click.option("--C", "C", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Inverse regularisation of linear-svm/logreg (> 0). Default: 10 for linear-svm, 100 for "
                   "logreg, suited to L2-normalised rows (see docs/benchmarks.md).")
@click.option("--neighbors", type=click.IntRange(min=1), default=5, show_default=True, help="k of knn.")
@click.option("--normalize/--no-normalize", default=True, show_default=True,
              help="Scale each feature vector to unit L2 norm first (a Normalizer step of the pipeline).")
@click.option("--cv", type=int, default=5, show_default=True, help="Stratified K-fold cross-validation.")
@click.option("--test-size", type=float, default=None, help="Hold out this fraction instead of --cv.")
@click.option("--test", "test", type=click.Path(dir_okay=False), default=None, metavar="OTHER.h5",
              help="Train on all of FEATURES and score on this other features file instead of --cv (it must be "
                   "extracted with the same settings: architecture, weights, layer, geometry...; checked first).")
@click.option("--split-seed", type=click.IntRange(0, 2 ** 32 - 1), default=None,
              help="Seed of the folds / the held-out split (default 0).")
@click.option("--seed", "old_seed", type=click.IntRange(0, 2 ** 32 - 1), default=None,
              hidden=True)  # the older name of --split-seed (elsewhere --seed seeds random weights)
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Write a confusion-matrix PNG.")
@output_options("Save the fitted pipeline with the extraction settings (.skops).", resume=False,
                required=False, overwrite_help="Replace an existing --output.")
@reports_errors
def classify_command(features, layer, kind, old_kind, C, neighbors, normalize, cv, test_size, test, split_seed,
                     old_seed, plot, output, overwrite):
    """Train a classifier on the features in FEATURES (a file of `vggfeat extract`) and report its
    accuracy: per fold and mean +/- std, and a classification report.

    \b
    Examples:
      vggfeat classify features.h5 --layer fc7 --cv 5 --plot confusion.png -o clf.skops
      vggfeat classify train.h5 --test test.h5 -o clf.skops
    """
    from vggfeat.classifier import check_output, classify, plot_confusion, save_classifier

    classifier = _renamed("--classifier", "--kind", old_kind, kind) or "linear-svm"
    seed = _renamed("--seed", "--split-seed", old_seed, split_seed) or 0

    if output:
        check_output(output, overwrite=overwrite)  # before the work, not only when saving
    result = classify(features, layer, classifier=classifier, C=C, normalize=normalize, neighbors=neighbors, cv=cv,
                      test_size=test_size, seed=seed, test=test)
    if test:
        how = f"trained on {features}, scored on {test}"
    else:
        how = f"held-out {test_size:g}" if test_size else f"{cv}-fold cross-validation"
    held_out = test_size or test
    click.echo(f"{classifier}{' + L2 normalisation' if normalize else ''} on {result.settings['layer']} "
               f"({len(result.y_true)} {'test ' if held_out else ''}samples, {how})")
    if not held_out:
        for i, s in enumerate(result.fold_scores, 1):
            click.echo(f"  fold {i}: accuracy {s:.4f}")
    # one score (a held-out split, a test file) has no spread to report
    spread = f" +/- {result.std:.4f}" if len(result.fold_scores) > 1 else ""
    click.echo(f"accuracy: {result.mean:.4f}{spread}")
    click.echo(result.report.rstrip())
    if plot:
        plot_confusion(result, plot)
        click.echo(f"confusion matrix: {plot}")
    if output:
        save_classifier(result, output, overwrite=overwrite)
        click.echo(f"classifier: {output}")


def _renamed(old, new, old_value, value):
    """The value of an option given by its older name (with a one-line note), else of its name."""
    if old_value is None:
        return value
    if value is not None and value != old_value:
        raise click.UsageError(f"{old} is the older name of {new}; give one of them")
    click.echo(f"vggfeat: {old} of classify is now {new} (one meaning per flag: predict's --classifier is a "
               "file, extract's --seed seeds random weights)", err=True)
    return old_value
