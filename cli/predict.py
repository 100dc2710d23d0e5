"""`vggfeat predict`: classify images with a classifier file of `vggfeat classify -o`."""

from __future__ import annotations

import click

from ._common import (input_options, output_options, quiet_backend, quiet_option, reports_errors,
                      shard_label_options, show_progress_lines)


@click.command("predict")
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@input_options
@shard_label_options
@click.option("--classifier", default=None, type=click.Path(dir_okay=False),
              help="A .skops file of `classify -o`, or a .keras model of `finetune -o` (its fc8 predicts). "
                   "Without it: ImageNet's classes, with --weights imagenet (or a file with ImageNet's fc8).")
@click.option("--weights", default=None, metavar="imagenet|PATH",
              help="With a .skops classifier: the weight file its features were extracted with (its hash is "
                   "checked). Without --classifier: the ImageNet weights to predict ImageNet's classes with.")
@click.option("--top-k", type=click.IntRange(min=1), default=None,
              help="Predict the k most probable classes (label, score, label_2, score_2...). Default: by what "
                   "the network's fc8 predicts, whether --classifier or --weights names it: 5 for ImageNet's "
                   "classes, 1 for a fine-tuned model's own (its p_<class> columns give all); skops "
                   "classifiers give one.")
@output_options("CSV file (default: stdout).", resume=False, required=False,
                overwrite_help="Replace an existing --output.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@quiet_option
@reports_errors
def predict_command(inputs, ext, exclude, max_member_size, retries, label_field, class_names, classifier, weights, top_k, output, overwrite,
                    batch_size, quiet):
    """Classify the images in INPUTS (folders, files and/or lists of files; WebDataset tar shards,
    shards/{00000..00009}.tar; s3://bucket/prefix/, read as extract reads them) and write CSV rows
    `path[,true_label],label,score[,...],error`: with a classifier of `vggfeat classify -o` (the images are
    extracted with exactly the settings stored in it), a model of `vggfeat finetune -o`, or, without
    --classifier, ImageNet's top-k classes.

    `score` is a probability (softmax of a network's fc8, logreg's and knn's predict_proba, also given per
    class as p_<class>), except for linear-svm: its decision value (margin), larger is surer. On a folder of
    class subfolders, `true_label` is the image's class and the accuracy is printed (stderr); tar shards
    always have `true_label`: the sample's .cls (or --label-field), named with --class-names. Images (shards,
    members) that cannot be read get an empty label and the reason in `error`. With -o, a summary line
    follows.

    \b
    Examples:
      vggfeat predict --classifier clf.skops new_images/ -o predictions.csv
      vggfeat predict --classifier mine.keras new_images/
      vggfeat predict --weights imagenet --top-k 3 photos/
      vggfeat predict --classifier clf.skops 's3://bucket/shards/{00000..00099}.tar' --class-names classes.txt
    """
    import csv
    import itertools
    import sys

    from vggfeat.classifier import check_output, check_predict, load_predictor, predict_images
    from vggfeat.prediction import PredictionTally, class_names_of

    if output:
        check_output(output, overwrite=overwrite, inputs=list(inputs), extensions=ext or None)
    show_progress_lines(quiet)
    # the classifier file, its settings, the weights and the inputs are checked before Keras starts
    loaded = load_predictor(classifier, weights=weights, top_k=top_k)
    images = check_predict(loaded, list(inputs), weights=weights, extensions=ext or None, exclude=exclude,
                           class_names=class_names, label_field=label_field, max_member_size=max_member_size,
                           retries=retries)
    quiet_backend()
    # A progress bar on stderr and CSV rows on the same terminal overwrite each other; as curl does, there is
    # no bar while the output itself goes to the terminal.
    to_terminal = not output and sys.stdout.isatty()
    rows = predict_images(loaded, images, weights=weights, batch_size=batch_size,
                          progress=False if quiet or to_terminal else None)
    first = next(rows, None)
    tally = PredictionTally(class_names_of(loaded))
    handle = open(output, "w", newline="") if output else sys.stdout
    try:
        if first is not None:
            writer = csv.DictWriter(handle, fieldnames=list(first), restval="")
            writer.writeheader()
            for row in itertools.chain([first], rows):
                writer.writerow(row)
                tally.add(row)
                if to_terminal:
                    handle.flush()
    finally:
        if output:
            handle.close()
    if quiet:
        return
    if output:
        click.echo(f"{tally.rows} {'row' if tally.rows == 1 else 'rows'} written to {output}"
                   f" ({tally.failed} failed)", err=True)
    line = tally.accuracy_line()
    if line:
        click.echo(line, err=True)
