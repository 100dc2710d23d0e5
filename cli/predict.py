"""`vggfeat predict`: classify images with a classifier file of `vggfeat classify -o`."""

from __future__ import annotations

import click

from ._common import (input_options, output_options, quiet_backend, quiet_option, reports_errors,
                      show_progress_lines)


@click.command("predict")
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@input_options
@click.option("--classifier", required=True, type=click.Path(dir_okay=False), help="A .skops file of classify -o.")
@click.option("--weights", default=None, metavar="PATH",
              help="The weight file the features were extracted with (when it was a file; its hash is checked).")
@output_options("CSV file (default: stdout).", resume=False, required=False,
                overwrite_help="Replace an existing --output.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@quiet_option
@reports_errors
def predict_command(inputs, ext, exclude, classifier, weights, output, overwrite, batch_size, quiet):
    """Classify the images in INPUTS (folders, files and/or lists of files) with exactly the extraction settings
    stored in the classifier file; write CSV rows `path,label,score[,p_<class>...],error`.

    Images that cannot be read get an empty label and the reason in `error`.

    \b
    Example: vggfeat predict --classifier clf.skops new_images/ -o predictions.csv
    """
    import csv
    import sys

    from vggfeat.classifier import check_output, check_predict, load_classifier, predict_images

    if output:
        check_output(output, overwrite=overwrite)
    show_progress_lines(quiet)
    # the classifier file, its settings, the weights and the inputs are checked before Keras starts
    loaded = load_classifier(classifier)
    images = check_predict(loaded, list(inputs), weights=weights, extensions=ext or None, exclude=exclude)
    quiet_backend()
    rows = predict_images(loaded, images, weights=weights, batch_size=batch_size,
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
