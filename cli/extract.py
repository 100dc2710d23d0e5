"""`vggfeat extract`: image folders to HDF5 embeddings."""

from __future__ import annotations

import click

from vggfeat.io import COMPRESSIONS, DTYPES
from vggfeat.run import ENGINES

from ._common import (input_options, input_size_option, jpeg_decode_option, model_options, output_options,
                      precision_option, quiet_backend, quiet_option, reports_errors, shard_label_options,
                      show_progress_lines)


@click.command("extract")
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@input_options
@output_options("HDF5 file to write.")
@click.option("--layer", "layers", multiple=True, default=("fc7",), show_default=True,
              help="Layer to extract, Keras or paper name (fc7, fc6, conv5_3, pool5...). Repeat for several "
                   "layers in one pass. Outputs are after the ReLU.")
@model_options
@click.option("--pooling", type=click.Choice(["avg", "max", "none"]), default="avg", show_default=True,
              help="Global pooling of spatial maps (conv layers, dense-form FC layers).")
@click.option("--fully-convolutional", is_flag=True,
              help="Drop the FC layers: conv maps at any input size (shorter side to --input-size, no crop).")
@click.option("--dense", is_flag=True,
              help="The paper's dense form: fc6-fc8 as convolutions, FC features at any size >= 224.")
@input_size_option("Crop side (default 224), or the shorter side with --fully-convolutional/--dense.")
@click.option("--resize", type=click.Choice(["crop", "squash", "short"]), default=None,
              help="crop: shorter side to 256/224 of the size, centre crop (default); squash: straight to "
                   "size x size; short: shorter side to size, no crop (default of the conv forms).")
@click.option("--scales", default=None, metavar="Q1,Q2,...",
              help="The paper's multi-scale descriptor (with --dense or --fully-convolutional): shorter side "
                   "to each scale, no crop, maps pooled per scale, e.g. 256,384,512.")
@click.option("--flip", is_flag=True, help="With --scales: average with the horizontally flipped image.")
@click.option("--aggregate", type=click.Choice(["mean", "stack", "max"]), default="mean", show_default=True,
              help="With --scales: average (VOC), concatenate (Caltech) or max over scales.")
@click.option("--l2", is_flag=True, help="With --scales: L2-normalise the final descriptor.")
@precision_option
@jpeg_decode_option
@click.option("--dtype", type=click.Choice(DTYPES), default=DTYPES[0], show_default=True,
              help="Storage type of the features.")
@click.option("--compression", type=click.Choice(COMPRESSIONS), default=None, help="HDF5 compression.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Images per forward pass. Default: 8 on a CPU (as fast as 32, about 700 MB less memory), 32 "
                   "where a GPU is; the summary line says which.")
@click.option("--engine", type=click.Choice(ENGINES), default=ENGINES[0], show_default=True,
              help="local: this process. ray: a Ray cluster (pip install \"vggfeat[ray]\"): a pool of extractor "
                   "workers writes whole parts (OUTPUT.parts.staging/), taken into OUTPUT in order.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Decoding threads (default: CPUs, 2 to 16), in this process or in each Ray worker.")
@click.option("--ray-workers", type=click.IntRange(min=1), default=None,
              help="With --engine ray: extractor workers (default: one per GPU with --gpus-per-worker, else one "
                   "per node).")
@click.option("--address", default=None, metavar="ADDR",
              help="With --engine ray: the cluster to join (auto, ray://HOST:10001...). Default: $RAY_ADDRESS, "
                   "else a new local Ray.")
@click.option("--gpus-per-worker", type=click.FloatRange(min=0), default=0, show_default=True,
              help="With --engine ray: GPUs each worker reserves (0: CPU workers; 0.5: two workers per GPU).")
@click.option("--block-size", type=click.IntRange(min=1), default=None,
              help="With --engine ray and one OUTPUT file: images per unit of work and of retry "
                   "(default: 8 batches).")
@shard_label_options
@click.option("--output-shards", is_flag=True,
              help="Write OUTPUT as an index and one HDF5 file per input shard (loose images: per 4096) in "
                   "OUTPUT.parts/; load_features reads the index as one dataset, `vggfeat merge` makes one file.")
@click.option("--strict", is_flag=True, help="Stop with an error at the first image that cannot be read.")
@quiet_option
@reports_errors
def extract_command(inputs, ext, exclude, output, layers, arch, weights, seed, pooling, fully_convolutional, dense,
                    input_size, resize, scales, flip, aggregate, l2, precision, jpeg_decode, dtype, compression, batch_size, engine,
                    workers, ray_workers, address, gpus_per_worker, block_size, max_member_size, retries, label_field, class_names, resume,
                    overwrite,
                    output_shards, strict, quiet):
    """Extract features of images in INPUTS (folders, scanned recursively; image files; lists of image
    files, .txt or .csv; WebDataset tar shards, shards/{00000..00009}.tar; s3://bucket/prefix/) into OUTPUT.

    Images in first-level subfolders get the subfolder's name as class label (a CSV list's `label`
    column does the same). Every mistake (inputs, output, settings, weights, layers) is reported before
    TensorFlow is loaded. Images that cannot be read are skipped and recorded under /failed; an
    existing OUTPUT is refused unless --resume or --overwrite; an interrupted run continues with --resume.

    \b
    Example: vggfeat extract --layer fc7 images/ -o features.h5

    \b
    On a Ray cluster (images and OUTPUT's folder on storage every node sees):
      vggfeat extract --engine ray --address auto --gpus-per-worker 1 /data/images -o /data/features.h5
    """
    if fully_convolutional and dense:
        raise click.UsageError("--fully-convolutional and --dense exclude each other")
    scale_list = None
    if scales:
        try:
            scale_list = [int(q) for q in scales.replace(" ", "").split(",") if q]
        except ValueError:
            raise click.BadParameter(f"expected integers separated by commas, got {scales!r}", param_hint="--scales")
    from vggfeat import ExtractorConfig, RunOptions
    from vggfeat.run.job import prepare_extract

    # every check that needs no TensorFlow (settings, output, inputs, weights, layers) comes first; it
    # says what it found and what it loads next (stderr, unless -q)
    show_progress_lines(quiet)
    config = ExtractorConfig(layers=list(layers), arch=arch, weights=weights, seed=seed, pooling=pooling,
                             form="dense" if dense else ("fully_conv" if fully_convolutional else "standard"),
                             input_size=input_size, resize=resize, precision=precision, scales=scale_list,
                             flip=flip, aggregate=aggregate, l2=l2, jpeg_decode=jpeg_decode)
    options = RunOptions(dtype=dtype, compression=compression, batch_size=batch_size, resume=resume,
                         overwrite=overwrite, strict=strict, engine=engine, address=address,
                         gpus_per_worker=gpus_per_worker, block_size=block_size, decode_workers=workers,
                         ray_workers=ray_workers, extensions=ext or None, exclude=exclude, class_names=class_names,
                         label_field=label_field, output_shards=output_shards, max_member_size=max_member_size,
                         retries=retries)
    job = prepare_extract(list(inputs), output, config=config, options=options)
    try:
        quiet_backend()
    except KeyboardInterrupt:
        from vggfeat.errors import ExtractInterrupted

        raise ExtractInterrupted(f"stopped before any row was written; {output} was not changed") from None

    summary = job.run(progress=None if not quiet else False)
    if not quiet:
        click.echo(summary.line(), err=True)
