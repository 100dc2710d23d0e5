"""What the paper's multi-scale descriptor costs, and what its batching strategy costs.

Images of different shapes cannot share a forward pass at their native aspect ratio; vggfeat groups each
batch by resized shape, so a folder of same-shaped photos (one camera) runs in full batches, while a
folder of mixed shapes degrades towards one image per pass. This script measures both cases at one
scale, then the full descriptor (several scales, flip), in-process after a warm-up, as seconds per image.

Usage: python benchmarks/multiscale_cost.py [--images 12] [--arch vgg16] [--scales 256,384,512]
"""

import argparse
import os
import time

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=12)
    ap.add_argument("--arch", default="vgg16")
    ap.add_argument("--scales", default="256,384,512")
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from vggfeat import ExtractorConfig, build_extractor

    def build_extractor(layers, batch_size=32, dense=False, **kw):
        return build_extractor(ExtractorConfig(layers=layers, form="dense" if dense else "standard", **kw),
                               batch_size=batch_size)

    rng = np.random.default_rng(0)
    same = [rng.integers(0, 256, (480, 640, 3)).astype(np.uint8) for _ in range(args.images)]
    mixed = [rng.integers(0, 256, (int(rng.integers(300, 480)), int(rng.integers(400, 640)), 3)).astype(np.uint8)
             for _ in range(args.images)]
    scales = [int(q) for q in args.scales.split(",")]
    rows = []

    def timed(label, extractor, images):
        extractor.predict(images[:1])  # warm-up: build and compile for one shape
        start = time.perf_counter()
        extractor.predict(images)
        per = (time.perf_counter() - start) / len(images)
        rows.append((label, per))
        print(f"{label:>60}: {per:.2f} s/image", flush=True)

    one = build_extractor(["fc7"], arch=args.arch, weights="random", dense=True, scales=[scales[0]], batch_size=8)
    timed(f"scale {scales[0]}, all images 640x480 (full batches)", one, same)
    timed(f"scale {scales[0]}, mixed shapes (a pass and a compile per shape)", one, mixed)
    full = build_extractor(["fc7"], arch=args.arch, weights="random", dense=True, scales=scales, flip=True,
                           aggregate="mean", batch_size=8)
    timed(f"scales {args.scales} + flip, all images 640x480", full, same)
    print()
    print(f"| {args.arch} dense fc7 ({args.images} images) | seconds per image |")
    print("|---|---|")
    for label, per in rows:
        print(f"| {label} | {per:.2f} |")


if __name__ == "__main__":
    main()
