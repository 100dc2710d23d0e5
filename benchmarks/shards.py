"""Local tar shards (WebDataset) vs the same images as files: images/s and peak RSS of `extract`.

Writes N JPEGs (photo-like noise, WxH) once as files in one folder and once as tar shards of S images
(KEY.jpg + KEY.cls), then runs `vggfeat.extract` on each, alternately, R times, each run in a fresh
Python process (peak RSS is that process's `ru_maxrss`, from `os.wait4`). A cheap network (vgg11, random
weights, 32x32 input) keeps the forward pass small, so reading and decoding dominate.

    python benchmarks/shards.py --images 2000 --per-shard 250 --runs 3
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile

import numpy as np
from PIL import Image

CHILD = r"""
import json, sys
from vggfeat import extract
s = extract(sys.argv[1:-1], sys.argv[-1], ["fc7"], arch="vgg11", weights="random", input_size=32,
            batch_size=64, progress=False, overwrite=True)
print(json.dumps({"written": s.written, "failed": s.failed, "seconds": s.seconds}))
"""

# the input path alone, without Keras: scan, read (shards streamed), decode to 224x224 on the threads
READ_ONLY = r"""
import json, sys, time
from vggfeat.images import Geometry
from vggfeat.shards import ShardInputs, Sample, iter_samples, scan_inputs
from vggfeat.stream import _decode_in_order, _prefetch, default_workers
t = time.perf_counter()
inputs = scan_inputs(sys.argv[1:-1])
if isinstance(inputs, ShardInputs):
    samples = _prefetch(iter_samples(inputs), 64)
else:
    samples = (Sample(p, l, f) for f, p, l in zip(inputs.files, inputs.paths, inputs.labels))
ok = bad = 0
for _, r in _decode_in_order(samples, Geometry("crop", 224), default_workers(), 64 + default_workers(), 89478485):
    ok, bad = (ok + 1, bad) if not isinstance(r, Exception) else (ok, bad + 1)
print(json.dumps({"written": ok, "failed": bad, "seconds": time.perf_counter() - t}))
"""


def make_data(root, n, per_shard, size):
    rng = np.random.default_rng(0)
    files = os.path.join(root, "files")
    shards = os.path.join(root, "shards")
    os.makedirs(files)
    os.makedirs(shards)
    tar = None
    for i in range(n):
        w, h = size
        base = rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)
        im = Image.fromarray(base).resize((w, h), Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=90)
        data = buf.getvalue()
        key = f"{i:07d}"
        with open(os.path.join(files, key + ".jpg"), "wb") as f:
            f.write(data)
        if i % per_shard == 0:
            if tar is not None:
                tar.close()
            tar = tarfile.open(os.path.join(shards, f"{i // per_shard:05d}.tar"), "w")
        for name, payload in ((key + ".jpg", data), (key + ".cls", str(i % 10).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    tar.close()
    n_shards = (n + per_shard - 1) // per_shard
    return [files], [os.path.join(shards, f"{{00000..{n_shards - 1:05d}}}.tar")]


def run_once(inputs, output, code=CHILD):
    proc = subprocess.Popen([sys.executable, "-c", code, *inputs, output], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES=""))
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"the extract run failed (status {status})")
    r = json.loads(out.strip().splitlines()[-1])
    r["peak_rss_mib"] = usage.ru_maxrss / 1024
    r["images_per_s"] = (r["written"] + r["failed"]) / r["seconds"]
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--per-shard", type=int, default=250)
    ap.add_argument("--size", default="320x240", help="WxH of the JPEGs")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    size = tuple(int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory() as root:
        files, shards = make_data(root, args.images, args.per_shard, size)
        modes = {"files, extract": (files, CHILD), "shards, extract": (shards, CHILD),
                 "files, read+decode only": (files, READ_ONLY), "shards, read+decode only": (shards, READ_ONLY)}
        results = {name: [] for name in modes}
        for r in range(args.runs):
            for name, (inputs, code) in modes.items():
                res = run_once(inputs, os.path.join(root, "out.h5"), code)
                assert res["written"] == args.images and res["failed"] == 0, res
                results[name].append(res)
                print(f"run {r + 1} {name:25s}: {res['images_per_s']:7.1f} images/s, peak RSS "
                      f"{res['peak_rss_mib']:.0f} MiB", flush=True)
    print(f"\n{args.images} JPEGs {size[0]}x{size[1]}, {args.per_shard} per shard; extract: vgg11 random 32x32 "
          f"fc7, batch 64; read+decode only: to 224x224 crop, no model; {os.cpu_count()} CPUs; median of "
          f"{args.runs} runs")
    print("| input | images/s | peak RSS (MiB) |")
    print("|---|---|---|")
    for name, rs in results.items():
        print(f"| {name} | {statistics.median(r['images_per_s'] for r in rs):.1f} | "
              f"{statistics.median(r['peak_rss_mib'] for r in rs):.0f} |")


if __name__ == "__main__":
    main()
