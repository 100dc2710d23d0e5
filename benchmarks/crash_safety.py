"""Kill a vggfeat HDF5 writer with SIGKILL at random moments, many times, and check the file each time.

Each cycle starts a process that resumes the file (`FeatureWriter.resume`: verify, roll back, or
rebuild) and appends batches as fast as it can (no model, so that almost all of its time is spent in
the write and flush path), kills it after a random moment, then runs `vggfeat.io.layout.verify_file` on the
file. Row i always holds the same values (made from i), as an uninterrupted run would write them.
At the end one more resume finishes the file, and every row is compared with what it must be.

It counts, per compression: kills, files that verified intact right after the kill, files whose last
commits failed their check (rolled back by the next resume), files whose structure was broken
(rebuilt by the next resume), and whether the final file equals the uninterrupted result.

Usage: python benchmarks/crash_safety.py [--kills 40] [--compression none gzip lzf] [--rows 6000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time

import numpy as np

WRITER = r'''
import os, sys, numpy as np
from vggfeat.io.recover import resume_file
from vggfeat.io.writer import FeatureWriter
path, compression, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
compression = None if compression == "none" else compression
settings = {"arch": "vgg16", "weights": "random", "layers": '["fc7", "pool5"]'}

BASE = np.maximum(np.random.default_rng(0).standard_normal((64, 4096)), 0).astype(np.float32)

def rows(i, n):
    j = np.arange(i, i + n)
    fc7 = np.where(BASE[j % 64] > 0, BASE[j % 64] + j[:, None].astype(np.float32), 0)
    return {"fc7": fc7, "pool5": np.repeat(j.astype(np.float32)[:, None], 512, 1)}

if os.path.exists(path):
    w = resume_file(path, settings=settings)
else:
    w = FeatureWriter.create(path, settings=settings, feature_shapes={"fc7": (4096,), "pool5": (512,)},
                             class_names=["a"], compression=compression)
print("START", w.rows, flush=True)
i = w.rows
while i < total:
    n = min(32, total - i)
    w.append([f"img{j}" for j in range(i, i + n)], [j % 3 for j in range(i, i + n)], rows(i, n),
             failed=[(f"bad{i}", "x")])
    i += n
w.close(complete=True)
print("DONE", flush=True)
'''


def expected(i, n):
    base = np.maximum(np.random.default_rng(0).standard_normal((64, 4096)), 0).astype(np.float32)
    j = np.arange(i, i + n)
    fc7 = np.where(base[j % 64] > 0, base[j % 64] + j[:, None].astype(np.float32), 0)
    return fc7, np.repeat(j.astype(np.float32)[:, None], 512, 1)


def check_final(path, total):
    from vggfeat.io.layout import verify_file as verify
    from vggfeat.io.read import load_file as load_features

    report = verify(path)
    assert report.ok and report.rows == total, report.line()
    data = load_features(path, "fc7")
    pool5 = load_features(path, "pool5").features
    assert list(data.paths) == [f"img{j}" for j in range(total)], "paths differ"
    assert (data.labels == np.arange(total) % 3).all(), "labels differ"
    for s in range(0, total, 512):
        fc7, p5 = expected(s, min(512, total - s))
        assert np.array_equal(data.features[s:s + len(fc7)], fc7), f"fc7 rows from {s} differ"
        assert np.array_equal(pool5[s:s + len(fc7)], p5), f"pool5 rows from {s} differ"


def series(compression, kills, total, work, rng):
    from vggfeat.errors import OutputError
    from vggfeat.io.layout import verify_file as verify

    path = os.path.join(work, f"kill-{compression}.h5")
    counts = {"kills": 0, "intact": 0, "rolled_back": 0, "broken": 0, "rows_at_kills": []}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd()] + sys.path))
    while counts["kills"] < kills:
        proc = subprocess.Popen([sys.executable, "-c", WRITER, path, compression, str(total)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        line = proc.stdout.readline()  # the resume (verify, roll back) is done: kill while it writes
        if not line.startswith("START"):
            raise SystemExit(f"writer failed: {line}{proc.stderr.read()}")
        time.sleep(rng.uniform(0.0, 0.6))
        if proc.poll() is not None:  # finished before the kill: start over for more kills
            os.remove(path)
            continue
        proc.kill()
        proc.wait()
        counts["kills"] += 1
        try:
            report = verify(path)
            counts["rows_at_kills"].append(report.rows)
            counts["intact" if report.ok else "rolled_back"] += 1
        except OutputError:
            counts["broken"] += 1
    # finish: one resume to the end, then compare every row
    done = subprocess.run([sys.executable, "-c", WRITER, path, compression, str(total)], capture_output=True,
                          text=True, env=env)
    if "DONE" not in done.stdout:
        raise SystemExit(f"final resume failed: {done.stderr[-2000:]}")
    check_final(path, total)
    counts["final_equal"] = True
    rows = counts.pop("rows_at_kills")
    counts["rows_at_kills_median"] = int(np.median(rows)) if rows else 0
    return counts


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=40)
    ap.add_argument("--compression", nargs="+", default=["none", "gzip", "lzf"])
    ap.add_argument("--rows", type=int, default=20000, help="rows of a complete file")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    results = {}
    with tempfile.TemporaryDirectory() as work:
        for compression in args.compression:
            results[compression] = series(compression, args.kills, args.rows, work, rng)
            print(compression, json.dumps(results[compression]), flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
