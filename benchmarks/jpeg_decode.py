"""What `jpeg_decode` (full vs reduced, ExtractorConfig / --jpeg-decode) costs and changes, on photos.

The photos are scikit-image's astronaut, coffee and chelsea, upscaled (Lanczos) to a camera's size and saved as
JPEG (quality 90), so that the reduced decode (Pillow's `draft`) applies. Measured:

- decode speed: `load_image` alone (decode, EXIF, RGB, resize; no network), images/s, `--runs` runs of every
  photo, the median run reported, for each geometry;
- the effect on features: for each form, the largest |full - reduced| of a feature over the layer's range of
  values on that photo (max - min of the full decode's features), the largest over the photos. Random VGG-16
  weights (He init, seed 0): ImageNet's cannot be downloaded on every machine; say which were used.

Usage: python benchmarks/jpeg_decode.py [--side 4000] [--runs 5] [--weights random|imagenet|PATH]
"""

import argparse
import os
import statistics
import tempfile
import time

import numpy as np


def photos(folder, long_side):
    from PIL import Image
    from skimage import data

    paths = []
    for name in ("astronaut", "coffee", "chelsea"):
        a = getattr(data, name)()
        h, w = a.shape[:2]
        scale = long_side / max(h, w)
        im = Image.fromarray(a).resize((round(w * scale), round(h * scale)), Image.LANCZOS)
        path = os.path.join(folder, f"{name}.jpg")
        im.save(path, quality=90)
        paths.append(path)
    return paths


def decode_rate(paths, geometry, runs):
    from vggfeat.images import load_image

    for p in paths:  # warm the page cache and Pillow
        load_image(p, geometry)
    rates = []
    for _ in range(runs):
        start = time.perf_counter()
        for p in paths:
            load_image(p, geometry)
        rates.append(len(paths) / (time.perf_counter() - start))
    return statistics.median(rates), min(rates), max(rates)


def feature_effect(paths, config):
    from vggfeat import build_extractor

    full = build_extractor(config)
    reduced = build_extractor(config.replace(jpeg_decode="reduced"))
    worst = {}
    for p in paths:
        a, b = full.predict([p]), reduced.predict([p])
        for layer in a:
            span = float(a[layer].max() - a[layer].min()) or 1.0
            worst[layer] = max(worst.get(layer, 0.0), float(np.abs(a[layer] - b[layer]).max()) / span)
    return worst


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--side", type=int, default=4000, help="the photos' longer side (4000: 12 megapixels at 4:3)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--weights", default="random")
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from PIL import Image

    from vggfeat import ExtractorConfig
    from vggfeat.images import Geometry

    with tempfile.TemporaryDirectory() as folder:
        paths = photos(folder, args.side)
        sizes = [Image.open(p).size for p in paths]
        print(f"photos: {', '.join(f'{os.path.basename(p)} {w}x{h}' for p, (w, h) in zip(paths, sizes))}; "
              f"{sum(os.path.getsize(p) for p in paths) / 3e6:.1f} MB each on average")
        for geometry in (Geometry("crop", 224), Geometry("short", 64)):
            line = []
            for mode in ("full", "reduced"):
                med, lo, hi = decode_rate(paths, Geometry(geometry.resize, geometry.size, mode), args.runs)
                line.append(f"{mode} {med:.2f} images/s (runs {lo:.2f}-{hi:.2f})")
            print(f"decode, {geometry.describe()}: " + "; ".join(line))
        forms = [("standard, crop 224", ExtractorConfig(layers=["fc7", "pool5"], weights=args.weights)),
                 ("fully_conv, shorter side 64", ExtractorConfig(layers=["pool5", "conv3_3"], weights=args.weights,
                                                                 form="fully_conv", input_size=64))]
        for name, config in forms:
            worst = feature_effect(paths, config)
            print(f"features, {name} ({args.weights} weights): largest |full - reduced| / range: "
                  + ", ".join(f"{layer} {100 * v:.2f}%" for layer, v in worst.items()))


if __name__ == "__main__":
    main()
