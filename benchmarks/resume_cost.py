"""What `--resume` costs for a file closed cleanly (Ctrl-C, SIGTERM: continued in place) against one stopped
mid-write (kill -9, a crash, a full disk: its intact rows copied into a new file first).

    python benchmarks/resume_cost.py --rows 20000 --runs 3

Writes a file of `--rows` fc7 rows (4096 float32 each) with the format wing only (no network), in a child
process that either closes it or dies without closing it (os._exit, as kill -9 leaves it); then times
`resume_file` on it in a fresh process, `--runs` times each, and prints the medians. The page cache is
warm (the file was just written): a cold disk adds its read time to the copy.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = {"arch": "vgg16", "weights": "random", "layers": '["fc7"]', "inputs": "[]"}

WRITE = r"""
import os, sys
import numpy as np
from vggfeat.io.writer import FeatureWriter
path, rows, stop = sys.argv[1], int(sys.argv[2]), sys.argv[3]
w = FeatureWriter.create(path, settings=%r, feature_shapes={"fc7": (4096,)}, class_names=["a", "b"])
block = np.random.default_rng(0).random((1000, 4096), dtype=np.float32)
for i in range(0, rows, 1000):
    n = min(1000, rows - i)
    w.append([f"img/{k:08d}.png" for k in range(i, i + n)], [k %% 2 for k in range(i, i + n)], {"fc7": block[:n]})
w.flush()
if stop == "kill":
    os._exit(0)  # never closed: what kill -9 leaves
w.close(complete=False)
""" % (SETTINGS,)

RESUME = r"""
import sys, time
from vggfeat.io.recover import resume_file
t = time.perf_counter()
w = resume_file(sys.argv[1], settings=%r)
took = time.perf_counter() - t
w.close(complete=False)
print(took, "rebuilt" if w.recovered else "in place")
""" % (SETTINGS,)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "f.h5")
        for stop in ("close", "kill"):
            times, how = [], set()
            for _ in range(args.runs):
                if os.path.exists(path):
                    os.remove(path)
                subprocess.run([sys.executable, "-c", WRITE, path, str(args.rows), stop], cwd=REPO, check=True)
                size = os.path.getsize(path)
                out = subprocess.run([sys.executable, "-c", RESUME, path], cwd=REPO, check=True, capture_output=True,
                                     text=True).stdout.split()
                times.append(float(out[0]))
                how.add(out[1] + (" " + out[2] if len(out) > 2 else ""))
            print(f"{'closed cleanly' if stop == 'close' else 'stopped mid-write'}: {args.rows} rows "
                  f"({size / 1e6:.0f} MB): resume {statistics.median(times):.2f} s median of {args.runs} "
                  f"(min {min(times):.2f}, max {max(times):.2f}); {', '.join(sorted(how))}")


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"({time.perf_counter() - t0:.0f} s in all)")
