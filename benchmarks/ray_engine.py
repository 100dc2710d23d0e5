"""What the Ray engine costs and what bounds it, measured on this machine.

1. The take (the one serial step, on the driver): the staged parts the workers write (one per unit of
   256 rows) appended into one file in unit order; median seconds, rows/s and MB/s of feature data.
2. Whole runs, each as its own process as a user starts it (`vggfeat extract`), interleaved: the local
   engine, then `--engine ray` with 1 and 2 workers on a new local Ray; median seconds and images/s.

Usage:
    python benchmarks/ray_engine.py [--merge-rows 20000] [--images 64] [--runs 3] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def bench_merge(rows, dims=4096, block=256, shards=4, runs=3):
    """The driver's serial step: staged parts (one per unit of `block` rows, as the actors write them)
    taken into one file in unit order (`vggfeat.io.merge.append_part`, what `FileSink.take` does)."""
    from vggfeat.io.merge import append_part
    from vggfeat.io.writer import FeatureWriter

    settings = {"arch": "vgg16", "weights": "random", "seed": 0, "layers": '["fc7"]'}
    tmp = tempfile.mkdtemp(prefix="vggfeat-merge-")
    try:
        rng = np.random.default_rng(0)
        parts = []
        for k, s in enumerate(range(0, rows, block)):
            b = list(range(s, min(rows, s + block)))
            path = os.path.join(tmp, f"part-{k:06d}.h5")
            w = FeatureWriter.create(path, settings=settings, feature_shapes={"fc7": (dims,)}, class_names=["a"])
            w.append([f"{i}.jpg" for i in b], [0] * len(b), {"fc7": rng.random((len(b), dims), dtype=np.float32)})
            w.close(complete=True)
            parts.append(path)
        times = []
        for _ in range(runs):
            out = os.path.join(tmp, "out.h5")
            if os.path.exists(out):
                os.remove(out)
            writer = FeatureWriter.create(out, settings=settings, feature_shapes={"fc7": (dims,)}, class_names=["a"])
            start = time.perf_counter()
            for path in parts:
                append_part(writer, path, ["fc7"])
            writer.close(complete=True)
            times.append(time.perf_counter() - start)
        t = statistics.median(times)
        mb = rows * dims * 4 / 1e6
        return {"rows": rows, "MB": mb, "seconds": t, "rows_per_s": rows / t, "MB_per_s": mb / t}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bench_runs(images, runs, workers):
    tmp = tempfile.mkdtemp(prefix="vggfeat-ray-")
    folder = os.path.join(tmp, "images")
    subprocess.run([sys.executable, os.path.join(HERE, "make_images.py"), folder, str(images)], check=True,
                   stdout=subprocess.DEVNULL)
    base = [sys.executable, "-m", "vggfeat_cli", "extract", folder, "--weights", "random", "--arch", "vgg16",
            "--layer", "fc7", "--resize", "squash", "-q", "--overwrite"]
    configs = {"local": []}
    for w in workers:
        configs[f"ray, {w} worker{'s' if w > 1 else ''}"] = ["--engine", "ray", "--ray-workers", str(w)]
    times = {k: [] for k in configs}
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    try:
        for _ in range(runs):
            for name, extra in configs.items():
                out = os.path.join(tmp, "f.h5")
                start = time.perf_counter()
                proc = subprocess.run(base + extra + ["-o", out], env=env, capture_output=True, text=True)
                times[name].append(time.perf_counter() - start)
                if proc.returncode != 0:
                    raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
        return {k: statistics.median(v) for k, v in times.items()}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--merge-rows", type=int, default=20000)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--skip-runs", action="store_true", help="only the merge")
    args = ap.parse_args()
    m = bench_merge(args.merge_rows, runs=args.runs)
    print(f"merge: {m['rows']} rows of fc7 ({m['MB']:.0f} MB) from staged parts in {m['seconds']:.2f} s "
          f"(median of {args.runs}): {m['rows_per_s']:.0f} rows/s, {m['MB_per_s']:.0f} MB/s")
    if args.skip_runs:
        return
    workers = [int(w) for w in args.workers.split(",") if w]
    t = bench_runs(args.images, args.runs, workers)
    print(f"\nwhole runs, {args.images} images 224x224, VGG-16 fc7, median of {args.runs} (seconds, images/s):")
    for name, sec in t.items():
        print(f"  {name:<16} {sec:7.1f} s  {args.images / sec:6.2f} images/s")


if __name__ == "__main__":
    main()
