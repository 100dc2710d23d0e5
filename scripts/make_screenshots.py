"""Make the pictures and the command output that the documentation site shows, from the code as it is.

    python scripts/make_screenshots.py              # both: the CLI's output, then the notebooks' plots
    python scripts/make_screenshots.py --only cli   # a minute or so
    python scripts/make_screenshots.py --only notebooks

- `docs/snippets/*.txt`: real runs of the `vggfeat` command (`extract` with `--weights random` on tiny images
  it draws, the refusal of an existing output, `verify`, `classify`, `predict`, `info`), each file the command
  line after `$ ` and what it printed (stdout and stderr, as a terminal shows them; no progress bar, since the
  output is not a terminal). The guides include them with pymdownx.snippets (`--8<-- "snippets/NAME.txt"`),
  so no page shows output typed by hand; README.md's copy of the `extract` run is replaced between its
  `<!-- make_screenshots: extract -->` markers. (The `--help` texts need no run: `scripts/gen_docs_pages.py` writes
  them at build time.)
- `docs/img/NOTEBOOK-N.png`: the plots of each notebook in `notebooks/`, executed top to bottom in a fresh
  kernel (as `tests/test_notebooks.py` runs them: nbclient, offline, the notebooks' own images and
  `weights="random"`), reduced to 256 colours so the pictures stay small.

Run it after changing what a command prints or what a notebook plots, and commit what it writes;
`tests/test_docs.py` builds the site with `mkdocs build --strict`, which fails on a missing snippet or picture.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import shlex
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(REPO, "docs")
SNIPPETS = os.path.join(DOCS, "snippets")
IMG = os.path.join(DOCS, "img")

#: class -> (colour, shape) of the drawn images (as the tests draw them)
CLASSES = {"circles": ((220, 40, 40), "circle"), "squares": ((40, 200, 60), "square"),
           "stripes": ((40, 60, 220), "stripes")}


def draw_images(root, per_class=4, size=(48, 40)):
    """root/<class>/img_<i>.png: small shapes on noise, plus one truncated JPEG (a file that fails)."""
    for ci, (name, (colour, kind)) in enumerate(CLASSES.items()):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(per_class):
            rng = np.random.default_rng(ci * 1000 + i)
            w, h = size
            a = rng.integers(0, 60, (h, w, 3)).astype(np.uint8)
            yy, xx = np.mgrid[0:h, 0:w]
            cx, cy, r = w / 2 + rng.uniform(-4, 4), h / 2 + rng.uniform(-4, 4), min(w, h) * rng.uniform(0.25, 0.4)
            if kind == "circle":
                mask = (xx - cx) ** 2 + (yy - cy) ** 2 < r ** 2
            elif kind == "square":
                mask = (abs(xx - cx) < r) & (abs(yy - cy) < r)
            else:
                mask = (xx // 4) % 2 == 0
            a[mask] = colour
            Image.fromarray(a).save(os.path.join(root, name, f"img_{i:03d}.png"))
    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(buf, "JPEG")
    with open(os.path.join(root, "circles", "truncated.jpg"), "wb") as f:
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])


def run(command, cwd, name, expect=0, env=None):
    """Run `vggfeat ...` in cwd as a user would; write `$ command` and its output to docs/snippets/NAME.txt.

    HOME is a fresh folder in cwd (no cached weights, no user settings); its path is written as `~`."""
    args = shlex.split(command)
    assert args[0] == "vggfeat"
    home = os.path.join(cwd, "home")
    os.makedirs(home, exist_ok=True)
    env = {**os.environ, "COLUMNS": "110", "HOME": home, **(env or {})}
    for name_ in ("TF_CPP_MIN_LOG_LEVEL", "KERAS_HOME", "HF_HOME", "HF_HUB_CACHE"):
        env.pop(name_, None)  # what a user sees: vggfeat quiets TensorFlow itself; the caches are HOME's
    done = subprocess.run([sys.executable, "-m", "vggfeat_cli", *args[1:]], cwd=cwd, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    if done.returncode != expect:
        raise SystemExit(f"{command}: exit {done.returncode}, expected {expect}:\n{done.stdout}")
    text = f"$ {command}\n{done.stdout.rstrip().replace(home, '~')}\n"
    if expect:
        text += f"$ echo $?\n{done.returncode}\n"
    with open(os.path.join(SNIPPETS, f"{name}.txt"), "w") as f:
        f.write(text)
    print(text, end="")


def cli_outputs():
    os.makedirs(SNIPPETS, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vggfeat-docs-") as work:
        draw_images(os.path.join(work, "images"))
        opts = "--weights random --input-size 64"
        run(f"vggfeat extract images/ -o features.h5 {opts} --layer fc7 --layer pool5", work, "extract")
        run(f"vggfeat extract images/ -o features.h5 {opts} --layer fc7 --layer pool5", work, "extract-exists",
            expect=2)
        run("vggfeat verify features.h5", work, "verify")
        run("vggfeat classify features.h5 --layer fc7 --cv 3 -o clf.skops", work, "classify")
        run("vggfeat predict --classifier clf.skops images/ -o predictions.csv", work,
            "predict")
        with open(os.path.join(work, "predictions.csv")) as f:
            rows = f.readlines()
        with open(os.path.join(SNIPPETS, "predict.txt"), "a") as f:
            f.write(f"$ head -3 predictions.csv; grep truncated predictions.csv\n{''.join(rows[:3])}"
                    f"{''.join(r for r in rows if 'truncated' in r)}")
        run("vggfeat info --arch vgg16", work, "info")
        # offline: no fallback to random weights, one line saying what to fetch and where to put it (a proxy
        # that refuses every connection stands for the missing network, so nothing is downloaded here)
        offline = {"https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9", "no_proxy": ""}
        run("vggfeat extract images/ -o imagenet.h5", work, "offline-imagenet", expect=2, env=offline)
        run("vggfeat extract images/ -o timm.h5 --weights timm:vgg16_bn", work, "offline-timm", expect=2,
            env={**offline, "HF_HUB_OFFLINE": "1"})


def update_readme():
    """README.md shows the extract run too, between its `<!-- make_screenshots: extract -->` markers."""
    path = os.path.join(REPO, "README.md")
    with open(path) as f:
        text = f.read()
    start, end = "<!-- make_screenshots: extract -->\n", "<!-- /make_screenshots -->"
    with open(os.path.join(SNIPPETS, "extract.txt")) as f:
        block = f"```console\n{f.read().rstrip()}\n```\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        with open(path, "w") as f:
            f.write(head + start + block + end + rest.split(end, 1)[1])


def small_png(data):
    """A notebook's PNG output, reduced to 256 colours (plots have few), optimised."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    out = io.BytesIO()
    image.quantize(256, method=Image.Quantize.MEDIANCUT).save(out, "PNG", optimize=True)
    return out.getvalue()


def notebook_images():
    import nbformat
    from nbclient import NotebookClient

    os.makedirs(IMG, exist_ok=True)
    folder = os.path.join(REPO, "notebooks")
    for name in sorted(f for f in os.listdir(folder) if f.endswith(".ipynb")):
        book = nbformat.read(os.path.join(folder, name), as_version=4)
        with tempfile.TemporaryDirectory(prefix="vggfeat-docs-nb-") as work:
            print(f"running {name}...", flush=True)
            NotebookClient(book, timeout=900, kernel_name="python3",
                           resources={"metadata": {"path": work}}).execute(env={**os.environ, "TMPDIR": work})
        pngs = [o["data"]["image/png"] for c in book.cells if c.cell_type == "code" for o in c.outputs
                if "image/png" in o.get("data", {})]
        stem = name.removesuffix(".ipynb")
        for old in os.listdir(IMG):
            if old.startswith(stem + "-"):
                os.remove(os.path.join(IMG, old))
        for i, png in enumerate(pngs, 1):
            path = os.path.join(IMG, f"{stem}-{i}.png")
            with open(path, "wb") as f:
                f.write(small_png(base64.b64decode(png)))
            print(f"wrote {os.path.relpath(path, REPO)} ({os.path.getsize(path) // 1024} KB)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=["cli", "notebooks"])
    args = parser.parse_args()
    if args.only in (None, "cli"):
        cli_outputs()
        update_readme()
    if args.only in (None, "notebooks"):
        notebook_images()


if __name__ == "__main__":
    main()
