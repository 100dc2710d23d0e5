"""Peak resident memory of `vggfeat extract --layer fc7` (VGG-16, 224, float32), and of its floor.

The floor is what any run must hold: TensorFlow imported, the network with its weights, and one batch's
largest activations (measured by a script that builds keras.applications' VGG-16 from the same weight
file and runs `predict_on_batch` once). Each figure is the child process's peak RSS
(`resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`), median of the runs.

Usage: python benchmarks/peak_memory.py [--images 256,2560] [--batch 8,32] [--runs 2] [--work DIR]
                                       [--forms standard,dense,fully_conv] [--pythonpath OLD_CHECKOUT]
(`--pythonpath` runs the vggfeat of another checkout, e.g. `git archive REV | tar -x -C DIR` with a
`vggfeat_cli -> cli` link in DIR, for a before/after comparison.)
Needs scikit-image (the dev extra) for the images; the weight file (528 MB, legacy Keras layout, made from
keras.applications.VGG16(weights=None)) is made once in DIR.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

FLOOR = r'''
import os, sys, numpy as np
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras
m = keras.applications.VGG16(weights=None)
m.load_weights(sys.argv[1])
fc2 = keras.Model(m.input, m.get_layer("fc2").output)
fc2.predict_on_batch(np.zeros((int(sys.argv[2]), 224, 224, 3), np.float32))
'''

MAKE_WEIGHTS = r'''
import os, sys, h5py
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras
from keras.src.legacy.saving import legacy_h5_format
m = keras.applications.VGG16(weights=None)
with h5py.File(sys.argv[1], "w") as f:
    legacy_h5_format.save_weights_to_hdf5_group(f, m)
'''


def peak(cmd):
    """Peak RSS in MB of one child process (a fresh Python runs each command, so children do not mix)."""
    code = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r.returncode)")
    out = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True, check=True)
    kb, rc = out.stdout.split()[-2:]
    if rc != "0":
        raise SystemExit(f"failed: {' '.join(cmd)}\n{out.stderr[-2000:]}")
    return int(kb) / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", default="256,2560")
    ap.add_argument("--batch", default="8,32")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--work", default="/tmp/vggfeat-peak-memory")
    ap.add_argument("--forms", default="standard", help="standard, dense (--dense), fully_conv (pool5)")
    ap.add_argument("--pythonpath", default=None, help="Run the vggfeat found here (another checkout).")
    args = ap.parse_args()
    if args.pythonpath:
        os.environ["PYTHONPATH"] = os.path.abspath(args.pythonpath)
    os.makedirs(args.work, exist_ok=True)
    weights = os.path.join(args.work, "vgg16.h5")
    if not os.path.exists(weights):
        subprocess.run([sys.executable, "-c", MAKE_WEIGHTS, weights], check=True)
    results = {}
    for batch in [int(b) for b in args.batch.split(",")]:
        results[f"floor, batch {batch}"] = statistics.median(
            peak([sys.executable, "-c", FLOOR, weights, str(batch)]) for _ in range(args.runs))
        for n in [int(x) for x in args.images.split(",")]:
            folder = os.path.join(args.work, f"images-{n}")
            if not os.path.isdir(folder):
                subprocess.run([sys.executable, os.path.join(HERE, "make_images.py"), folder, str(n)], check=True)
            for form in args.forms.split(","):
                flags = {"standard": ["--layer", "fc7"], "dense": ["--dense", "--layer", "fc7"],
                         "fully_conv": ["--fully-convolutional", "--layer", "pool5"]}[form]
                runs = []
                for r in range(args.runs):
                    out = os.path.join(args.work, f"out-{n}-{batch}-{r}.h5")
                    if os.path.exists(out):
                        os.remove(out)
                    runs.append(peak([sys.executable, "-m", "vggfeat_cli", "extract", folder, *flags,
                                      "--weights", weights, "--batch-size", str(batch), "-q", "-o", out]))
                    os.remove(out)
                results[f"extract {' '.join(flags)}, {n} images, batch {batch}"] = statistics.median(runs)
                print(json.dumps({k: round(v) for k, v in results.items()}), flush=True)
    for k, v in results.items():
        print(f"{k:60s} {v:8.0f} MB")


if __name__ == "__main__":
    main()
