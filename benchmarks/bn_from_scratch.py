"""Training from scratch: the plain configurations against their batch-norm variants.

A small task that needs shape, not colour: four classes (disc, square, horizontal stripes, vertical
stripes), each shape drawn in a random colour on a noisy background of random brightness, 32x32 pixels.
Each network is trained by `vggfeat.finetune` from random weights (Adam, the same settings for all),
for several seeds; the table gives the median over seeds of the best and of the last validation accuracy.

Usage: python benchmarks/bn_from_scratch.py [--archs vgg11,vgg11-bn,vgg16,vgg16-bn] [--seeds 3] [--epochs 8]
"""

import argparse
import os
import statistics
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
from PIL import Image


def draw(kind, rng, size=32):
    img = rng.integers(0, 40, (size, size, 3)) + rng.integers(0, 120)
    yy, xx = np.mgrid[0:size, 0:size]
    cx, cy = size / 2 + rng.uniform(-5, 5), size / 2 + rng.uniform(-5, 5)
    r = size * rng.uniform(0.2, 0.35)
    period = int(rng.integers(3, 6))
    mask = {"disc": (xx - cx) ** 2 + (yy - cy) ** 2 < r ** 2,
            "square": (abs(xx - cx) < r) & (abs(yy - cy) < r),
            "hstripes": (yy // period) % 2 == 0,
            "vstripes": (xx // period) % 2 == 0}[kind]
    img[mask] = rng.integers(60, 256, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_task(root, per_class=40, seed=0):
    rng = np.random.default_rng(seed)
    for kind in ("disc", "square", "hstripes", "vstripes"):
        os.makedirs(os.path.join(root, kind), exist_ok=True)
        for i in range(per_class):
            Image.fromarray(draw(kind, rng)).save(os.path.join(root, kind, f"{i:03d}.png"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--archs", default="vgg11,vgg11-bn,vgg16,vgg16-bn")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-4)
    args = ap.parse_args()
    import vggfeat

    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "task")
        make_task(data)
        rows = []
        for arch in args.archs.split(","):
            best, last = [], []
            for seed in range(args.seeds):
                history = vggfeat.finetune(data, os.path.join(tmp, f"{arch}-{seed}.keras"), arch=arch,
                                           weights="random", input_size=32, batch_size=16, augment="none",
                                           epochs=args.epochs, optimizer="adam", lr=args.lr, val_split=0.25,
                                           seed=seed, verbose=0)
                val = history.history["val_accuracy"]
                best.append(max(val))
                last.append(val[-1])
                print(f"{arch} seed {seed}: validation accuracy per epoch {[round(v, 2) for v in val]}", flush=True)
            rows.append((arch, statistics.median(best), statistics.median(last), min(best)))
    print(f"\n| network | best val. accuracy (median of {args.seeds} seeds) | last epoch (median) | worst seed's best |")
    print("|---|---|---|---|")
    for arch, b, l, w in rows:
        print(f"| {arch} | {b:.2f} | {l:.2f} | {w:.2f} |")
    print("chance: 0.25")


if __name__ == "__main__":
    main()
