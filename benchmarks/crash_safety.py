"""Kill a vggfeat HDF5 writer with SIGKILL at random moments, many times, and check the file each time.

Each cycle starts a process that resumes the file and appends batches as fast as it can (no model, so
that almost all of its time is spent in the write and flush path), kills it after a random 0.8-2 s,
then checks that the file opens, that /paths holds exactly the rows written in order, and that every
committed feature row is intact. Resume then cuts half-written batches.

Usage: python benchmarks/crash_safety.py [cycles]
"""

import os
import random
import subprocess
import sys
import tempfile
import time

import h5py
import numpy as np

WRITER = r'''
import os, sys, numpy as np
from vggfeat.store import FeatureWriter
path = sys.argv[1]
settings = {"arch": "vgg16", "weights": "random", "layers": '["fc7"]'}
if os.path.exists(path):
    w = FeatureWriter.resume(path, settings=settings)
else:
    w = FeatureWriter.create(path, settings=settings, feature_shapes={"fc7": (4096,), "pool5": (512,)},
                             class_names=["a"])
i = w.rows
while True:
    n = 8
    w.append([f"img{j}" for j in range(i, i + n)], [0] * n,
             {"fc7": np.ones((n, 4096), np.float32) * np.arange(i, i + n)[:, None],
              "pool5": np.ones((n, 512), np.float32)}, failed=[(f"bad{i}", "x")])
    i += n
'''


def main():
    cycles = int(sys.argv[1]) if len(sys.argv) > 1 else 60
    work = tempfile.mkdtemp()
    path = os.path.join(work, "w.h5")
    rows = 0
    for k in range(cycles):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, path])
        time.sleep(random.uniform(0.8, 2.0))
        proc.kill()
        proc.wait()
        with h5py.File(path, "r") as f:
            rows = f["paths"].shape[0]
            assert list(f["paths"].asstr()[()]) == [f"img{j}" for j in range(rows)], f"cycle {k}: paths"
            assert (f["features/fc7"][:rows, 0] == np.arange(rows)).all(), f"cycle {k}: rows"
    print(f"{cycles} kills at random moments: the file was readable and consistent every time ({rows} rows)")


if __name__ == "__main__":
    main()
