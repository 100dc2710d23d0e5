"""`vggfeat verify`: check every row of a features file against its commit records (a scrub)."""

from __future__ import annotations

import click

from ._common import reports_errors


@click.command("verify")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--repair", "repair_to", type=click.Path(dir_okay=False), default=None, metavar="OUT",
              help="Write the intact rows (every commit before the first damaged one) into the new file OUT.")
@reports_errors
def verify_command(file, repair_to):
    """Read every row of FILE and check it against the checksums written with it.

    FILE may be the index of `extract --output-shards`: every part it lists is checked; a missing part,
    a part that is not the index's, or an incomplete index is damage (exit 1), never intact.

    Exit code 0: intact. 1: damaged (the damaged row ranges are listed; --repair OUT writes the intact
    part into a new file, leaving FILE as it is). 2: not a vggfeat file, or not readable at all.

    \b
    Example: vggfeat verify features.h5 && vggfeat verify broken.h5 --repair kept.h5
    """
    import os

    from vggfeat import repair, verify
    from vggfeat.io.index import is_index

    if os.path.isfile(file) and is_index(file):
        if repair_to is not None:
            raise click.UsageError(f"{file} is an index of parts: --repair takes one file (repair the damaged "
                                   "part it names)")
        report = verify(file)
        for problem in report.problems:
            click.echo(problem)
        click.echo(report.line())
        if not report.ok:
            raise SystemExit(1)
        return
    try:
        report = verify(file)
        line, damaged = report.line(), not report.ok
    except Exception as exc:  # a broken structure: verify says so in one line
        from vggfeat.errors import VggfeatError

        if not isinstance(exc, VggfeatError):
            raise
        if repair_to is None:
            raise
        line, damaged = str(exc), True
    click.echo(line)
    if repair_to is not None:
        kept, claimed = repair(file, repair_to)
        click.echo(f"{repair_to}: kept {kept} of {claimed} rows (`vggfeat extract --resume -o {repair_to} ...` "
                   "extracts the rest)")
    if damaged:
        raise SystemExit(1)
