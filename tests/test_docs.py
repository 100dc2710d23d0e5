"""The documentation site builds with `mkdocs build --strict`: a link to a missing page or heading, a missing
snippet or picture, an API name that no module defines, or a docstring griffe cannot parse fails the test.

The site is mkdocs.yml + docs/; the API reference and the CLI reference are written at build time
(scripts/gen_docs_pages.py), so they follow the code. A few seconds on 2 cores."""

import os
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("mkdocs", reason="the docs need the dev extra: pip install -e '.[dev]'")
pytest.importorskip("mkdocstrings_handlers.python", reason="the docs need the dev extra: pip install -e '.[dev]'")
pytest.importorskip("mkdocs_gen_files", reason="the docs need the dev extra: pip install -e '.[dev]'")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Material and one plugin print a banner about MkDocs 2 on every build; these turn it off
QUIET = {"NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}


def build(config, site, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config),
                           "--site-dir", str(site)], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **QUIET})


def test_site_builds_strict(tmp_path):
    done = build(os.path.join(REPO, "mkdocs.yml"), tmp_path / "site")
    assert done.returncode == 0, done.stdout + done.stderr
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text()
    import vggfeat

    for name in vggfeat._API:  # every public name has its entry, rendered from its docstring
        assert f'id="vggfeat.{name}"' in api, name
    assert "Usage: vggfeat extract" in (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()


def test_a_broken_link_fails_the_build(tmp_path):
    """The same configuration over a copy of docs/ with one link to a page that does not exist."""
    copy = tmp_path / "repo"
    shutil.copytree(os.path.join(REPO, "docs"), copy / "docs")
    shutil.copy(os.path.join(REPO, "mkdocs.yml"), copy / "mkdocs.yml")
    shutil.copytree(os.path.join(REPO, "scripts"), copy / "scripts")
    shutil.copytree(os.path.join(REPO, "vggfeat"), copy / "vggfeat")
    with open(copy / "docs" / "guides" / "extract.md", "a") as f:
        f.write("\nSee [the missing page](no-such-page.md).\n")
    done = build(copy / "mkdocs.yml", tmp_path / "site", cwd=copy)
    assert done.returncode != 0
    assert "no-such-page.md" in done.stdout + done.stderr
