"""`vggfeat info`: the layers of a network, with the arithmetic the paper argues with."""

from __future__ import annotations

import json

import click

from vggfeat.specs import MAX_CLASSES

from ._common import arch_option, input_size_option, reports_errors


def _fmt_count(n):
    if n >= 1e9:
        return f"{n / 1e9:.2f} G"
    if n >= 1e6:
        return f"{n / 1e6:.2f} M"
    if n >= 1e3:
        return f"{n / 1e3:.1f} k"
    return str(n)


@click.command("info")
@arch_option
@click.option("--weights", default=None, metavar="PATH|timm:NAME",
              help="Describe the network in a weight file, a fine-tuned .keras model (its classes too), a "
                   "torchvision/timm .safetensors file or a timm name (its preprocessing too).")
@input_size_option("Side of the square input (default: the weight file's, else 224).")
@click.option("--dense", is_flag=True, help="The paper's dense form: fc6 as a 7x7 conv, fc7/fc8 as 1x1 convs.")
@click.option("--classes", default=None, type=click.IntRange(1, MAX_CLASSES),
              help="Width of fc8 (default 1000, or the weight file's).")
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON for scripts.")
@reports_errors
def info_command(arch, weights, input_size, dense, classes, as_json):
    """Print one row per layer: name and paper alias, output shape, parameters, multiply-accumulates,
    receptive field and stride in input pixels, with totals.

    Outputs of convs, fc6 and fc7 are taken after the ReLU. No TensorFlow is needed.

    \b
    Example: vggfeat info --arch vgg16 --input-size 224
    """
    from vggfeat.specs import get_arch, layer_table

    meta = {}
    if weights:
        from vggfeat.weights import describe_weights

        meta = describe_weights(weights, arch)  # every shape in the file checked against --arch, no Keras
        arch = meta["arch"]
        classes = classes or meta.get("classes")
        if input_size is None and meta.get("input_size") and not dense:
            input_size = meta["input_size"]
    input_size = input_size or 224
    spec = get_arch(arch or "vgg16")
    rows = layer_table(spec.name, input_size=input_size, dense=dense, classes=classes or 1000,
                       include_top=meta.get("has_top", True))
    total_params = sum(r.params for r in rows)
    total_macs = sum(r.macs for r in rows)
    if as_json:
        out = {"arch": spec.name, "letter": spec.letter, "input_size": input_size, "dense": dense,
               "layers": [r.as_dict() for r in rows], "total_params": total_params, "total_macs": total_macs}
        out.update({k: v for k, v in meta.items() if k not in out})
        click.echo(json.dumps(out, indent=1))
        return
    form = "dense form" if dense else "standard form"
    click.echo(f"{spec.name} (configuration {spec.letter}), {form}, input {input_size}x{input_size}x3")
    for key in ("weights", "source", "class_names", "preprocessing", "note"):
        if meta.get(key):
            value = meta[key] if not isinstance(meta[key], list) else ", ".join(meta[key])
            click.echo(f"{key}: {value}")
    header = f"{'layer':<14} {'paper':<8} {'kind':<11} {'output':>16} {'params':>12} {'MACs':>10} {'RF':>5} {'stride':>6}"
    click.echo(header)
    click.echo("-" * len(header))
    for r in rows:
        shape = "x".join(str(s) for s in r.output_shape)
        rf = "-" if r.receptive_field is None else str(r.receptive_field)
        stride = "-" if r.stride is None else str(r.stride)
        click.echo(f"{r.name:<14} {r.alias:<8} {r.kind:<11} {shape:>16} {r.params:>12,} "
                   f"{_fmt_count(r.macs):>10} {rf:>5} {stride:>6}")
    click.echo("-" * len(header))
    click.echo(f"{'total':<14} {'':<8} {'':<11} {'':>16} {total_params:>12,} {_fmt_count(total_macs):>10}")
    click.echo("RF: receptive field in input pixels (FC layers of the standard form see the whole input).")
