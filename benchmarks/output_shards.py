"""What each output costs: one file vs `--output-shards` (parts + index), and `vggfeat merge` (docs/ray.md).

    python benchmarks/output_shards.py [--shards 32] [--per-shard 128] [--runs 3]

Makes WebDataset shards of small JPEGs, then per run (alternating the modes, medians over runs): extracts
them into one file and into parts (`vggfeat.extract`, vgg11, random weights, 32x32 input, fc7 float32:
16 KB a row, so that the output's cost shows next to a small network), merges the parts into one file,
reads each output whole (`load_features`) and lazily (`open_features(...).iter_batches(4096)`), and
reports seconds, MB/s and bytes on disk.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import sys
import tarfile
import tempfile
import time

import numpy as np


def make_shards(folder, shards, per_shard):
    from PIL import Image

    rng = np.random.default_rng(0)
    os.makedirs(folder)
    for s in range(shards):
        with tarfile.open(os.path.join(folder, f"{s:05d}.tar"), "w") as t:
            for i in range(per_shard):
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
                for ext, data in (("jpg", buf.getvalue()), ("cls", str(i % 3).encode())):
                    info = tarfile.TarInfo(f"{s * per_shard + i:08d}.{ext}")
                    info.size = len(data)
                    t.addfile(info, io.BytesIO(data))


def size_of(path):
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(d, n)) for d, _, names in os.walk(path) for n in names)
    return os.path.getsize(path)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", type=int, default=32)
    ap.add_argument("--per-shard", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()

    from vggfeat import FeatureExtractor, extract, load_features, merge_parts, open_features

    top = tempfile.mkdtemp(prefix="vggfeat-outputs-")
    try:
        make_shards(os.path.join(top, "shards"), args.shards, args.per_shard)
        inputs = [f"{top}/shards/{{00000..{args.shards - 1:05d}}}.tar"]
        fx = FeatureExtractor("vgg11", "random", ["fc7"], input_size=32, batch_size=32)
        extract(inputs, f"{top}/warm.h5", extractor=fx, progress=False)  # the network's first call
        n = args.shards * args.per_shard
        results = {k: [] for k in ("extract one file", "extract parts", "merge", "load_features one file",
                                   "load_features index", "iter_batches one file", "iter_batches index")}
        sizes = {}
        for run in range(args.runs):
            for p in ("one.h5", "idx.h5", "idx.h5.parts", "merged.h5"):
                path = os.path.join(top, p)
                shutil.rmtree(path) if os.path.isdir(path) else (os.path.exists(path) and os.remove(path))
            order = [False, True] if run % 2 == 0 else [True, False]
            for parts in order:
                out = f"{top}/{'idx' if parts else 'one'}.h5"
                s, _ = timed(lambda: extract(inputs, out, extractor=fx, progress=False, output_shards=parts))
                results["extract parts" if parts else "extract one file"].append(s)
            s, _ = timed(lambda: merge_parts(f"{top}/idx.h5", f"{top}/merged.h5", progress=False))
            results["merge"].append(s)
            for name, path in (("one file", f"{top}/one.h5"), ("index", f"{top}/idx.h5")):
                s, data = timed(lambda: load_features(path, "fc7"))
                assert len(data.paths) == n
                results[f"load_features {name}"].append(s)
                s, rows = timed(lambda: sum(len(r.paths) for r in open_features(path, "fc7").iter_batches(4096)))
                assert rows == n
                results[f"iter_batches {name}"].append(s)
            sizes = {"one file": size_of(f"{top}/one.h5"), "parts + index": size_of(f"{top}/idx.h5.parts")
                     + size_of(f"{top}/idx.h5"), "index alone": size_of(f"{top}/idx.h5"),
                     "merged": size_of(f"{top}/merged.h5")}
        a, b = load_features(f"{top}/one.h5", "fc7"), load_features(f"{top}/merged.h5", "fc7")
        assert list(a.paths) == list(b.paths) and np.array_equal(a.features, b.features)
        mb = n * 4096 * 4 / 1e6
        print(f"{args.shards} shards x {args.per_shard} images = {n} rows of fc7 float32 ({mb:.0f} MB); "
              f"medians of {args.runs} runs; python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
        print("| step | seconds | images/s or MB/s |")
        print("|---|---|---|")
        for k, v in results.items():
            m = statistics.median(v)
            rate = f"{n / m:.0f} images/s" if k.startswith("extract") else f"{mb / m:.0f} MB/s"
            print(f"| {k} | {m:.2f} | {rate} |")
        print("| bytes on disk | " + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in sizes.items()) + " | |")
    finally:
        shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    main()
