"""`vggfeat merge`: the index of an `extract --output-shards` run, made one ordinary features file."""

from __future__ import annotations

import click

from ._common import output_options, quiet_option, reports_errors


@click.command("merge")
@click.argument("index", type=click.Path(dir_okay=False))
@output_options("The single HDF5 file to write.", resume=False)
@quiet_option
@reports_errors
def merge_command(index, output, overwrite, quiet):
    """Write the parts listed by INDEX (from `vggfeat extract --output-shards`) into one features file
    OUTPUT: the rows, values and failures, in order, that a single-file run writes. INDEX and its parts
    are left as they are. OUTPUT is written under a temporary name beside it (OUTPUT.vggfeat-tmp) and
    renamed into place only when complete: a merge cut short (an error, a full disk, a kill) leaves no
    OUTPUT (or, with --overwrite, the old one as it was); run it again.

    \b
    Example: vggfeat merge features.h5 -o features-all.h5
    """
    from vggfeat import merge_parts

    rows, failures = merge_parts(index, output, overwrite=overwrite, progress=None if not quiet else False)
    if not quiet:
        click.echo(f"{rows} rows and {failures} failures merged into {output}", err=True)
