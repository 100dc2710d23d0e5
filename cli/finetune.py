"""`vggfeat finetune`: adapt VGG to the user's classes, or train it from scratch."""

from __future__ import annotations

import os

import click

from vggfeat.finetuning import AUGMENTS

from ._common import (input_size_option, local_output, model_options, precision_option, quiet_backend,
                      reports_errors, show_progress_lines)


@click.command("finetune")
@click.argument("train_dir", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The .keras file to write.",
              callback=local_output)
@model_options
@click.option("--val-dir", type=click.Path(), default=None, help="Validation images (class subfolders).")
@click.option("--val-split", type=float, default=0.2, show_default=True,
              help="Stratified fraction of TRAIN_DIR held out for validation (without --val-dir; 0 for none).")
@click.option("--train-from", default=None, metavar="LAYER",
              help="First layer that trains; layers below keep their weights. Default: fc6 (new head, fc6, "
                   "fc7), or every layer with --weights random.")
@click.option("--unfreeze-after", type=click.IntRange(min=1), default=None,
              help="Two-stage fine-tuning: after N epochs every layer trains (lr / 10).")
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@input_size_option("Crop side; small sizes such as 64 work for quick experiments and small images.", default=224)
@click.option("--optimizer", type=click.Choice(["sgd", "adam"]), default="sgd", show_default=True,
              help="sgd: momentum 0.9 with weight decay 5e-4.")
@click.option("--lr", type=float, default=None, help="Learning rate (default 1e-2 for sgd, 1e-4 for adam); "
              "divided by 10 when validation accuracy stalls.")
@click.option("--recipe", type=click.Choice(["paper"]), default=None,
              help="The paper's training (Sect. 3.1): SGD 0.9, weight decay 5e-4, lr 1e-2, scale jittering, "
                   "flips, colour shift.")
@click.option("--augment", type=click.Choice(list(AUGMENTS)), default="light", show_default=True,
              help="What happens to training images: " + "; ".join(f"{k}: {v}" for k, v in AUGMENTS.items())
              + ". Flips only with flip, paper or randaugment: a mirrored digit or letter is another image. "
              "The model's metadata records the level.")
@click.option("--class-weights/--no-class-weights", default=True, show_default=True,
              help="Weight classes by inverse frequency.")
@precision_option
@click.option("--patience", type=click.IntRange(min=1), default=5, show_default=True,
              help="Early stopping on validation loss. Whether it stops early or not, OUTPUT holds the weights "
                   "of the epoch with the lowest validation loss (the last epoch's without validation images).")
@click.option("--resume", is_flag=True,
              help="Continue the interrupted run in OUTPUT.work from its last finished epoch.")
@click.option("--overwrite", is_flag=True,
              help="Start again: discard an interrupted run in OUTPUT.work (once every other option is checked) "
                   "and replace OUTPUT (only once the new model is complete).")
@click.option("--tensorboard", type=click.Path(file_okay=False), default=None, help="Write TensorBoard logs here.")
@click.option("--distribute", type=click.Choice(["none", "mirrored"]), default="none", show_default=True,
              help="mirrored: tf.distribute.MirroredStrategy over all local GPUs.")
@click.option("--save-optimizer", is_flag=True,
              help="Keep the optimizer's state in OUTPUT, to continue training it with Keras (about twice the "
                   "size with sgd). Default: the network alone. (The checkpoints in OUTPUT.work keep it.)")
@click.option("-q", "--quiet", is_flag=True, help="No per-epoch progress.")
@reports_errors
def finetune_command(train_dir, output, arch, weights, seed, val_dir, val_split, train_from, unfreeze_after, epochs,
                     batch_size, input_size, optimizer, lr, recipe, augment, class_weights, precision, patience,
                     resume, overwrite, tensorboard, distribute, save_optimizer, quiet):
    """Fine-tune a VGG network on the class subfolders of TRAIN_DIR (or train it from scratch with
    --weights random) and save it as OUTPUT (.keras), with a CSV log and a PNG of the learning curves
    beside it. The saved model feeds `vggfeat extract --weights OUTPUT`.

    Checkpoints go to OUTPUT.work every epoch: an interrupted run continues with --resume, or starts
    again with --overwrite; an existing OUTPUT or OUTPUT.work is refused without one of them.

    OUTPUT holds the weights of the epoch with the lowest validation loss, not necessarily the last epoch's
    (without validation images: the last epoch's); the last line and the model's metadata name the epoch.

    Before training it says what it found (images, classes, the training/validation split); at the end it
    names the files it wrote. Epochs are numbered from 1 in the progress lines, the CSV log and the plot.

    \b
    Example: vggfeat finetune photos/ -o mine.keras --epochs 5 --input-size 224
    """
    from vggfeat.finetuning import prepare_finetune

    # every check that needs no TensorFlow comes first, and says what it found and what it loads next
    show_progress_lines(quiet)
    job = prepare_finetune(train_dir, output, arch=arch, weights=weights, val_dir=val_dir,
                           val_split=val_split or None, train_from=train_from, unfreeze_after=unfreeze_after,
                           epochs=epochs, batch_size=batch_size, input_size=input_size, seed=seed,
                           optimizer=optimizer, lr=lr, recipe=recipe, augment=augment, class_weights=class_weights,
                           precision=precision, patience=patience, resume=resume, overwrite=overwrite,
                           tensorboard=tensorboard, distribute=distribute, save_optimizer=save_optimizer)
    try:
        quiet_backend()
        history = job.run(verbose=0 if quiet else 2)
    except KeyboardInterrupt:
        work = output + ".work"
        kept = (f"the finished epochs are kept in {work}; --resume continues the run" if os.path.isdir(work)
                else f"nothing was written to {output}")
        raise KeyboardInterrupt(kept) from None
    kept = history.kept_metrics
    metrics = ", ".join(f"{k} {kept[k]:.4f}" for k in ("loss", "accuracy", "val_loss", "val_accuracy") if k in kept)
    failed = len(getattr(history, "failed", {}))
    which = (f"the weights of epoch {history.kept_epoch} (lowest val_loss)" if history.kept == "lowest val_loss"
             else "the weights of the last epoch (no validation images to choose by)")
    click.echo(f"saved {output} after {history.epochs_run} epochs, with {which}: {metrics}"
               + (f"; {failed} images could not be read and were skipped" if failed else ""), err=True)
    click.echo(_written(history.files, history.optimizer_saved, output + ".work"), err=True)


def _written(files, optimizer_saved, work):
    """The files a finished run wrote, one per line, and what became of its checkpoints."""
    state = "with optimizer state" if optimizer_saved else "without optimizer state; --save-optimizer keeps it"
    size = os.path.getsize(files["model"]) / 1e6
    what = [(files["model"], f"the fine-tuned model ({size:.1f} MB, {state})"),
            (files.get("curves"), "learning curves (loss and accuracy per epoch)"),
            (files["log"], "CSV log, one row per epoch (numbered from 1)"),
            (files.get("tensorboard"), "TensorBoard logs")]
    what = [(path, text) for path, text in what if path]
    width = max(len(path) for path, _ in what)
    lines = ["wrote:"] + [f"  {path.ljust(width)}  {text}" for path, text in what]
    lines.append(f"checkpoints ({work}) removed: the run is complete")
    return "\n".join(lines)
