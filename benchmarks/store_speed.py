"""Speed of the HDF5 store: appending fc7 rows in batches of 32 (commits with checksums, guarded writes)
and reading them back with and without verification, median of several runs.

Usage: python benchmarks/store_speed.py [--rows 20000] [--runs 3] [--old REV]
With --old REV, the same appends through `vggfeat/store.py` as of git revision REV (loaded from git)
are timed in the same run, as the baseline.
"""

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np


def load_old(rev):
    src = subprocess.run(["git", "show", f"{rev}:vggfeat/store.py"], capture_output=True, text=True, check=True).stdout
    src = src.replace("from ._version import", "from vggfeat._version import").replace("from .errors import",
                                                                                      "from vggfeat.errors import")
    path = os.path.join(tempfile.mkdtemp(), "old_store.py")
    with open(path, "w") as fh:
        fh.write(src)
    spec = importlib.util.spec_from_file_location("old_store", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write(store, path, rows, compression):
    rng = np.random.default_rng(0)
    block = np.maximum(rng.standard_normal((32, 4096)), 0).astype(np.float32)
    start = time.perf_counter()
    w = store.FeatureWriter.create(path, settings={"arch": "vgg16"}, feature_shapes={"fc7": (4096,)},
                                   class_names=["a"], compression=compression)
    for i in range(0, rows, 32):
        w.append([f"dir/img_{j:08d}.jpg" for j in range(i, i + 32)], [0] * 32, {"fc7": block})
    w.close(complete=True)
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--old", default=None)
    args = ap.parse_args()
    from types import SimpleNamespace

    from vggfeat.io.read import load_file
    from vggfeat.io.writer import FeatureWriter

    store = SimpleNamespace(FeatureWriter=FeatureWriter, load_features=load_file)

    stores = {"new": store}
    if args.old:
        stores["old"] = load_old(args.old)
    results = {}
    with tempfile.TemporaryDirectory() as work:
        for compression in (None, "gzip"):
            for name, module in stores.items():
                times = []
                for r in range(args.runs):
                    path = os.path.join(work, f"{name}-{compression}-{r}.h5")
                    times.append(write(module, path, args.rows, compression))
                mb = args.rows * 4096 * 4 / 1e6
                results[f"write {name} {compression or 'none'}"] = {
                    "median_s": round(statistics.median(times), 3), "rows_per_s": round(args.rows / statistics.median(times)),
                    "MB_per_s": round(mb / statistics.median(times), 1)}
            path = os.path.join(work, f"new-{compression}-0.h5")
            for verify in (True, False):
                times = []
                for _ in range(args.runs):
                    t = time.perf_counter()
                    store.load_features(path, "fc7", verify=verify)
                    times.append(time.perf_counter() - t)
                results[f"load {compression or 'none'} verify={verify}"] = {"median_s": round(statistics.median(times), 3)}
    for k, v in results.items():
        print(f"{k:32s} {json.dumps(v)}")


if __name__ == "__main__":
    sys.exit(main())
