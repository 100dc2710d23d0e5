"""Steady-state forward-pass throughput of vggfeat's VGG-16 fc7 model (no decoding, no I/O).

Separates the network's speed from the pipeline's: which precision and backend are fast on this machine.
Run with KERAS_BACKEND=jax to measure JAX; set ONEDNN_VERBOSE=1 (TensorFlow) to see the oneDNN kernels.

Usage: python benchmarks/forward_pass.py [--arch vgg16] [--precision float32|bfloat16|float16] [--batch-size 16] [--seconds 20]
"""

import argparse
import os
import resource
import time

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--precision", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--arch", default="vgg16", help="e.g. vgg16-bn, to see what batch norm costs")
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    from vggfeat import FeatureExtractor

    fx = FeatureExtractor(args.arch, "random", ["fc7"], input_size=args.size, precision=args.precision,
                          batch_size=args.batch_size, resize="squash")
    x = np.random.default_rng(0).integers(0, 256, (args.batch_size, args.size, args.size, 3)).astype(np.uint8)
    fx.model.predict_on_batch(x)
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < args.seconds:
        fx.model.predict_on_batch(x)
        n += args.batch_size
    rate = n / (time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(f"{keras.backend.backend()} {args.precision} batch {args.batch_size}: {rate:.2f} images/s, "
          f"peak RSS {peak} MiB")


if __name__ == "__main__":
    main()
