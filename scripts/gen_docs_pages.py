"""Pages of the documentation site written at build time (mkdocs-gen-files runs this; see mkdocs.yml).

- `reference/api.md`: the public API, one entry per name of `vggfeat._API` (name -> the module that defines
  it), in its order and under its comments as headings. The dict is read from `vggfeat/__init__.py`'s
  source, not imported, and the page names each object through the module the dict gives, so a module
  that moves (the dict says where) moves its entry with it, and no markdown file names a module path.
  mkdocstrings renders the docstrings from the source (griffe, statically: no TensorFlow). Each entry has an
  anchor `vggfeat.NAME` that guides link to with `[text][vggfeat.NAME]`; a name that is gone fails the build.
- `reference/cli.md`: `vggfeat --help` and the `--help` of every command, as click prints them now.
"""

from __future__ import annotations

import ast
import os
import re

import mkdocs_gen_files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def public_api(init_path=os.path.join(REPO, "vggfeat", "__init__.py")):
    """[(heading or None, [(name, module), ...]), ...]: `_API` in source order, grouped under its comments."""
    source = open(init_path, encoding="utf-8").read()
    node = next(n for n in ast.parse(source).body if isinstance(n, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "_API" for t in n.targets))
    api = ast.literal_eval(node.value)
    groups, seen = [(None, [])], set()
    for line in source.splitlines()[node.lineno:node.end_lineno]:
        line = line.strip()
        comment = re.match(r"#\s*(.+)", line)
        entry = re.match(r"""["'](\w+)["']\s*:""", line)
        if comment:
            groups.append((comment.group(1), []))
        elif entry and entry.group(1) in api:
            groups[-1][1].append((entry.group(1), api[entry.group(1)]))
            seen.add(entry.group(1))
    groups[-1][1].extend((name, module) for name, module in api.items() if name not in seen)
    return [(heading, entries) for heading, entries in groups if entries]


def api_page():
    lines = [
        "# Python API",
        "",
        "`import vggfeat` gives these names (`vggfeat.__all__`); importing is cheap, TensorFlow loads when a",
        "function that needs it runs. The errors are in `vggfeat.errors` (`VggfeatError` and its one-line",
        "subclasses). This page is made from the docstrings when the site is built; their examples run with the",
        "tests (`python -m pytest` collects them with `--doctest-modules`).",
        "",
    ]
    for heading, entries in public_api():
        if heading:
            lines += [f"## {heading[0].upper()}{heading[1:]}", ""]
        for name, module in entries:
            lines += [f"[](){{#vggfeat.{name}}}", "", f"::: vggfeat.{module}.{name}", ""]
    return "\n".join(lines)


def cli_page():
    from click.testing import CliRunner

    from vggfeat_cli.main import cli

    def help_of(*args):
        result = CliRunner().invoke(cli, [*args, "--help"], prog_name="vggfeat", terminal_width=100)
        assert result.exit_code == 0, result.output
        return result.output.rstrip()

    lines = [
        "# Command line",
        "",
        "`vggfeat COMMAND --help` prints these; this page is made from them when the site is built. How each",
        "command is used: the [guides](../guides/extract.md).",
        "",
        "```text",
        help_of(),
        "```",
        "",
    ]
    for name in sorted(cli.commands):
        lines += [f"## vggfeat {name}", "", "```text", help_of(name), "```", ""]
    return "\n".join(lines)


with mkdocs_gen_files.open("reference/api.md", "w") as f:
    f.write(api_page())
with mkdocs_gen_files.open("reference/cli.md", "w") as f:
    f.write(cli_page())
