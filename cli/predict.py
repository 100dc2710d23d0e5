"""`vggfeat predict`: classify images with a classifier file of `vggfeat classify -o`."""

from __future__ import annotations

import click

from ._common import quiet_backend, reports_errors


@click.command("predict")
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("--classifier", required=True, type=click.Path(dir_okay=False), help="A .skops file of classify -o.")
@click.option("--weights", default=None, metavar="PATH",
              help="The weight file the features were extracted with (when it was a file; its hash is checked).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="CSV file (default: stdout).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --output.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@reports_errors
def predict_command(inputs, classifier, weights, output, overwrite, batch_size, quiet):
    """Classify the images in INPUTS (folders and/or files) with exactly the extraction settings
    stored in the classifier file; write CSV rows `path,label,score[,p_<class>...],error`.

    Images that cannot be read get an empty label and the reason in `error`.

    \b
    Example: vggfeat predict --classifier clf.skops new_images/ -o predictions.csv
    """
    import csv
    import os
    import sys

    from vggfeat.errors import OutputError

    if output and os.path.exists(output) and not overwrite:
        raise OutputError(f"{output} exists; pass --overwrite to replace it")
    from vggfeat.classifier import load_classifier, predict_images

    loaded = load_classifier(classifier)  # the file and its stored settings are checked before Keras starts
    quiet_backend()
    rows = predict_images(loaded, list(inputs), weights=weights, batch_size=batch_size,
                          progress=False if quiet else None)
    first = next(rows, None)
    handle = open(output, "w", newline="") if output else sys.stdout
    try:
        if first is not None:
            fields = ["path", "label", "score"] + [k for k in first if k.startswith("p_")] + ["error"]
            writer = csv.DictWriter(handle, fieldnames=fields, restval="")
            writer.writeheader()
            writer.writerow(first)
            for row in rows:
                writer.writerow(row)
    finally:
        if output:
            handle.close()
