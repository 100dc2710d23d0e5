"""Benchmark `vggfeat extract` against the plain Keras approach on the same folder, in the same run.

Each configuration runs as its own process (start-up, model build and writing included, as a user
sees it), several times, interleaved; reported: median images/s and median peak RSS (the process's
own max resident set, from wait4). The baseline (naive_keras.py: image_dataset_from_directory +
preprocess_input + model.predict + np.save) is ../shared/bench/naive_keras.py, copied here.

Usage:
    python benchmarks/extract_benchmark.py [--images 256] [--runs 3] [--rss-images 2560]
        [--configs naive,float32,bfloat16] [--rss-configs float32] [--batch-size 32] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date

HERE = os.path.dirname(os.path.abspath(__file__))


def make_images(folder, n):
    if os.path.isdir(folder) and sum(len(f) for _, _, f in os.walk(folder)) == n:
        return
    shutil.rmtree(folder, ignore_errors=True)
    subprocess.run([sys.executable, os.path.join(HERE, "make_images.py"), folder, str(n)], check=True,
                   stdout=subprocess.DEVNULL)


def command(config, folder, out, batch_size):
    if config == "naive":
        return [sys.executable, os.path.join(HERE, "naive_keras.py"), folder, out + ".npy", str(batch_size)]
    return [sys.executable, "-m", "vggfeat_cli", "extract", folder, "-o", out + ".h5", "--overwrite", "--weights",
            "random", "--arch", "vgg16", "--layer", "fc7", "--resize", "squash", "--precision", config,
            "--batch-size", str(batch_size), "-q"]


def run_once(cmd):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{err[-2000:]}")
    return seconds, usage.ru_maxrss / 1024  # MiB (Linux reports KiB)


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rss-images", type=int, default=0,
                    help="also run vggfeat once per precision on this many images to compare peak RSS")
    ap.add_argument("--configs", default="naive,float32,bfloat16")
    ap.add_argument("--rss-configs", default="float32", help="vggfeat precisions run on --rss-images")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "vggfeat-bench"))
    ap.add_argument("--out", default=None, help="append the results as Markdown to this file")
    args = ap.parse_args()

    configs = args.configs.split(",")
    folder = os.path.join(args.workdir, f"images{args.images}")
    make_images(folder, args.images)
    results = {c: [] for c in configs}
    for r in range(args.runs):
        for c in configs:
            secs, rss = run_once(command(c, folder, os.path.join(args.workdir, f"out_{c}"), args.batch_size))
            results[c].append((secs, rss))
            print(f"run {r + 1} {c:>9}: {args.images / secs:6.2f} images/s, {secs:6.1f} s, peak RSS {rss:6.0f} MiB",
                  flush=True)
    rows = []
    base = statistics.median(args.images / s for s, _ in results["naive"]) if "naive" in results else None
    for c in configs:
        ips = statistics.median(args.images / s for s, _ in results[c])
        rss = statistics.median(m for _, m in results[c])
        rel = f"{ips / base:.2f}x" if base else "-"
        label = "plain Keras (naive_keras.py)" if c == "naive" else f"vggfeat extract --precision {c}"
        rows.append(f"| {label} | {args.images} | {ips:.2f} | {rel} | {rss:.0f} |")
    big = []
    if args.rss_images:
        big_folder = os.path.join(args.workdir, f"images{args.rss_images}")
        make_images(big_folder, args.rss_images)
        for c in args.rss_configs.split(","):
            if c == "naive" or c not in results:
                continue
            secs, rss = run_once(command(c, big_folder, os.path.join(args.workdir, f"big_{c}"), args.batch_size))
            small = statistics.median(m for _, m in results[c])
            big.append(f"| vggfeat --precision {c} | {small:.0f} MiB ({args.images} images) | "
                       f"{rss:.0f} MiB ({args.rss_images} images, {args.rss_images / secs:.2f} images/s) |")
            print(f"{c}: peak RSS {rss:.0f} MiB on {args.rss_images} images", flush=True)
    text = [
        f"### {date.today().isoformat()}: {cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "",
        f"`python benchmarks/extract_benchmark.py --images {args.images} --runs {args.runs}"
        + (f" --rss-images {args.rss_images}" if args.rss_images else "") + "`: VGG-16 fc7 at 224x224, random "
        f"weights, batch {args.batch_size}, median of {args.runs} runs, whole process (start-up included).",
        "",
        "| configuration | images | images/s (median) | vs plain Keras | peak RSS MiB (median) |",
        "|---|---|---|---|---|",
        *rows,
    ]
    if big:
        text += ["", "| memory flat as the folder grows | peak RSS, small folder | peak RSS, large folder |",
                 "|---|---|---|", *big]
    report = "\n".join(text) + "\n"
    print()
    print(report)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n" + report)


if __name__ == "__main__":
    main()
