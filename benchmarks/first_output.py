"""Time from starting `vggfeat` to its first line on the terminal: for a mistake (the error message) and
for a normal run (the first line of output), median of several runs, each in a fresh interpreter.

    python benchmarks/first_output.py --runs 5
    python benchmarks/first_output.py --runs 5 --pythonpath /tmp/old-checkout   # another version's code

Each case is a `vggfeat extract` (or `finetune`) command on 12 small PNGs in 3 classes with tiny,
random-weight settings (`--arch vgg11 --weights random --input-size 32`), so the time is the command's
own start-up, checks and imports, not the work. Prints one table (Markdown) of medians in seconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

FAST = ["--arch", "vgg11", "--weights", "random", "--input-size", "32"]

CASES = {
    "error: unknown layer (--layer fc9)": ["extract", "{images}", "-o", "{out}", "--layer", "fc9", *FAST],
    "error: output exists": ["extract", "{images}", "-o", "{taken}", *FAST],
    "error: --dense --input-size 64": ["extract", "{images}", "-o", "{out}", "--dense", "--input-size", "64",
                                       "--arch", "vgg11", "--weights", "random"],
    "error: input folder missing": ["extract", "{missing}", "-o", "{out}", *FAST],
    "error: finetune --train-from fc9": ["finetune", "{images}", "-o", "{model}", "--train-from", "fc9", *FAST],
    "run: extract (12 images)": ["extract", "{images}", "-o", "{out}", *FAST],
}


def make_images(root, per_class=4):
    rng = np.random.default_rng(0)
    for c in ("a", "b", "c"):
        os.makedirs(os.path.join(root, c), exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(os.path.join(root, c, f"{i}.png"))


def time_lines(argv, env):
    """(seconds to the first stderr line, seconds to exit, the first line, exit code)."""
    start = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    first_line, first_at = None, None
    for line in p.stderr:
        if first_at is None and line.strip():
            first_at, first_line = time.perf_counter() - start, line.strip()
    code = p.wait()
    return first_at, time.perf_counter() - start, first_line, code


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--pythonpath", default=None, help="Run the vggfeat found here (another checkout).")
    args = ap.parse_args()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    if args.pythonpath:
        env["PYTHONPATH"] = os.path.abspath(args.pythonpath)
    with tempfile.TemporaryDirectory() as tmp:
        make_images(os.path.join(tmp, "images"))
        with open(os.path.join(tmp, "taken.h5"), "wb") as f:
            f.write(b"an earlier output")
        fill = dict(images=os.path.join(tmp, "images"), out=os.path.join(tmp, "out.h5"),
                    taken=os.path.join(tmp, "taken.h5"), missing=os.path.join(tmp, "missing"),
                    model=os.path.join(tmp, "m.keras"))
        print(f"| case | first line (s) | exit (s) | first line |")
        print("|---|---|---|---|")
        for name, template in CASES.items():
            argv = [sys.executable, "-m", "vggfeat_cli"] + [a.format(**fill) for a in template]
            firsts, exits, line = [], [], ""
            for _ in range(args.runs):
                if os.path.exists(fill["out"]):
                    os.remove(fill["out"])
                first, total, line, code = time_lines(argv, env)
                firsts.append(first if first is not None else float("nan"))
                exits.append(total)
            shown = (line or "")[:70] + ("..." if line and len(line) > 70 else "")
            print(f"| {name} | {statistics.median(firsts):.2f} | {statistics.median(exits):.2f} | `{shown}` |",
                  flush=True)


if __name__ == "__main__":
    main()
