"""The `vggfeat` command. Each command lives in its own module and imports Keras only when it runs,
so `vggfeat --help` and `vggfeat CMD --help` answer at once."""

from __future__ import annotations

import click

from vggfeat._version import __version__

from .classify import classify_command
from .extract import extract_command
from .finetune import finetune_command
from .info import info_command
from .merge import merge_command
from .predict import predict_command
from .verify import verify_command


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="vggfeat")
def cli():
    """VGG-16/19 features for transfer learning: image folders to HDF5 embeddings.

    \b
    Main job:  vggfeat extract --layer fc7 images/ -o features.h5
    Classify:  vggfeat classify features.h5 --layer fc7 -o clf.skops
    Predict:   vggfeat predict --classifier clf.skops new_images/
    Fine-tune: vggfeat finetune photos/ -o mine.keras, then extract --weights mine.keras
    Layers:    vggfeat info --arch vgg16
    Check:     vggfeat verify features.h5
    Merge:     vggfeat merge features.h5 -o one.h5   (an index of extract --output-shards)
    """


cli.add_command(extract_command)
cli.add_command(classify_command)
cli.add_command(predict_command)
cli.add_command(finetune_command)
cli.add_command(info_command)
cli.add_command(verify_command)
cli.add_command(merge_command)


if __name__ == "__main__":  # pragma: no cover
    cli()
