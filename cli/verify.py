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
    from vggfeat.parts import is_index

    if os.path.isfile(file) and is_index(file):
        if repair_to is not None:
            raise click.UsageError(f"{file} is an index of parts: --repair takes one file (repair the damaged "
                                   "part it names)")
        _verify_index(file, verify)
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


def _verify_index(file, verify):
    """Every part of the index `file`: a missing part, a part that is not the index's, a damaged part
    or an incomplete index is damage (one line each, exit 1), never "intact"."""
    import os

    import h5py

    from vggfeat.errors import VggfeatError
    from vggfeat.parts import check_part, read_index

    index = read_index(file)
    bad = rows = 0
    missing = []
    for i in range(len(index.files)):
        part = index.part_path(i)
        if not os.path.isfile(part):
            missing.append(part)
            if index.complete:
                click.echo(f"{part} is missing: {file} lists it; `vggfeat extract --resume --output-shards -o "
                           f"{file}` with the same inputs writes it again")
                bad += 1
            continue
        try:
            report = verify(part)
            with h5py.File(part, "r") as f:
                check_part(index, i, f)  # this index's own part, with the rows it records
        except VggfeatError as exc:
            click.echo(str(exc))
            bad += 1
            continue
        if not report.ok:
            click.echo(report.line())
            bad += 1
        rows += report.rows
    n = len(index.files)
    if not index.complete:
        click.echo(f"{file} is incomplete (the run was interrupted): {len(missing)} of {n} parts are missing"
                   + (f" (first: {missing[0]})" if missing else "")
                   + "; `vggfeat extract --resume --output-shards` completes it")
        bad += 1
    failures = int(index.failed[index.failed >= 0].sum())
    click.echo(f"{file}: {n} part{'' if n == 1 else 's'}, {rows} rows, {failures} failed images; "
               + (f"{bad} damaged or missing" if bad else "every part intact"))
    if bad:
        raise SystemExit(1)
