"""Peak resident memory of loading a torchvision VGG-16 safetensors file (528 MB) with vggfeat, against the
same network built from zeros (the floor: TensorFlow and the network's variables).

Each figure is a fresh process's peak RSS (`ru_maxrss`). The file (random He-scaled weights in torchvision's
layout, written with the `safetensors` package, no PyTorch) is made once in DIR.

Usage: python benchmarks/torch_weights_memory.py [--work DIR] [--forms standard,dense,fully_conv]

Measured on the development machine (2 cores, TensorFlow 2.21 CPU, vggfeat at commit c5deecf): floor 1377 MB;
standard form 1388 MB, dense 1388 MB, fully convolutional 876 MB (reading through safetensors' `safe_open`,
whose memory map's pages count in the RSS, the standard form peaked at 1716 MB).
"""

import argparse
import os
import subprocess
import sys

CHILD = r'''
import os, resource, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
mode, path = sys.argv[1], sys.argv[2]
if mode == "zeros":
    from vggfeat.models import NO_INIT, build_vgg
    build_vgg("vgg16", seed=NO_INIT)
else:
    from vggfeat.weights import load_network
    load_network(None, path, include_top=mode != "fully_conv", form=mode)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
'''


def make_file(path):
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    state, index, c_in = {}, 0, 3
    for width, convs in ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)):
        for _ in range(convs):
            state[f"features.{index}.weight"] = (rng.standard_normal((width, c_in, 3, 3), dtype=np.float32)
                                                 * np.float32(np.sqrt(2 / (9 * c_in))))
            state[f"features.{index}.bias"] = np.zeros(width, np.float32)
            index, c_in = index + 2, width
        index += 1
    for n, (o, i) in zip((0, 3, 6), ((4096, 25088), (4096, 4096), (1000, 4096))):
        state[f"classifier.{n}.weight"] = rng.standard_normal((o, i), dtype=np.float32) * np.float32(np.sqrt(2 / i))
        state[f"classifier.{n}.bias"] = np.zeros(o, np.float32)
    save_file(state, path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/vggfeat_torch_memory")
    parser.add_argument("--forms", default="standard,dense,fully_conv")
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    path = os.path.join(args.work, "vgg16_torchvision.safetensors")
    if not os.path.exists(path):
        make_file(path)
    for mode in ["zeros"] + args.forms.split(","):
        out = subprocess.run([sys.executable, "-c", CHILD, mode, path], capture_output=True, text=True, check=True)
        print(f"{mode:<12} peak RSS {out.stdout.strip().splitlines()[-1]} MB")


if __name__ == "__main__":
    main()
