"""Benchmark `vggfeat extract` against the plain Keras approach on the same folder, in the same run.

Each configuration runs as its own process (start-up, model build and writing included, as a user
sees it), several times, interleaved; reported: median images/s and median peak RSS (the process's
own max resident set, from wait4), and the median images/s of the extraction loop alone (after
start-up and the model build: vggfeat's own summary line, the baseline's `loop_seconds`). The
baseline is ../shared/bench/naive_keras.py, copied here (image_dataset_from_directory +
preprocess_input + model.predict + np.save, on tf.data); where TensorFlow is not the Keras backend or
cannot be imported, naive_keras_jax.py, its Keras 3 equivalent without TensorFlow (keras.utils.PyDataset
+ load_img + preprocess_input + model.predict + np.save).

The backend is the children's KERAS_BACKEND (set it, or pass --backend). On a GPU machine the title
names the card as nvidia-smi reports it.

Usage:
    python benchmarks/extract_benchmark.py [--images 256] [--runs 3] [--rss-images 2560]
        [--configs naive,float32,bfloat16] [--rss-configs float32] [--batch-size 32 | --batch-sizes 32,128]
        [--backend jax] [--json results.json] [--deadline SECONDS] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
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


def backend():
    return os.environ.get("KERAS_BACKEND", "tensorflow")


def naive_script(choice):
    if choice == "auto":
        tf = backend() == "tensorflow" and importlib.util.find_spec("tensorflow") is not None
        choice = "tf" if tf else "keras3"
    return os.path.join(HERE, "naive_keras.py" if choice == "tf" else "naive_keras_jax.py")


def command(config, folder, out, batch_size, naive="auto"):
    if config == "naive":
        return [sys.executable, naive_script(naive), folder, out + ".npy", str(batch_size)]
    # no -q: the summary line on stderr gives the extraction loop's own time (no progress bar: not a terminal)
    return [sys.executable, "-m", "vggfeat_cli", "extract", folder, "-o", out + ".h5", "--overwrite", "--weights",
            "random", "--arch", "vgg16", "--layer", "fc7", "--resize", "squash", "--precision", config,
            "--batch-size", str(batch_size)]


def loop_seconds(config, stdout, stderr):
    """The extraction loop's seconds as the process reported them, or None."""
    if config == "naive":
        m = re.search(r"loop_seconds=([0-9.]+)", stdout)
    else:
        m = re.search(r"images written, .* in ([0-9.]+) s \(", stderr)
    return float(m.group(1)) if m else None


def run_once(cmd, timeout=None):
    """(seconds, peak RSS MiB, stdout, stderr) of one whole process."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if timeout and time.perf_counter() - start > timeout:
                proc.kill()
                _, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.005)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"failed (exit {proc.returncode}, {seconds:.0f} s): {' '.join(cmd)}\n{stdout[-1000:]}\n"
                         f"{stderr[-3000:]}")
    return seconds, usage.ru_maxrss / 1024, stdout, stderr  # MiB (Linux reports KiB)


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def gpu_names():
    """The GPUs as nvidia-smi names them ([] without nvidia-smi)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def versions():
    out = {}
    for name in ("keras", "jax", "jaxlib", "tensorflow", "torch", "numpy", "h5py", "pillow"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def median_or_none(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rss-images", type=int, default=0,
                    help="also run vggfeat once per precision on this many images to compare peak RSS")
    ap.add_argument("--configs", default="naive,float32,bfloat16")
    ap.add_argument("--rss-configs", default="float32", help="vggfeat precisions run on --rss-images")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--batch-sizes", default=None, help="several batch sizes, e.g. 32,128 (overrides --batch-size)")
    ap.add_argument("--backend", default=None, help="KERAS_BACKEND of the runs (default: the environment's)")
    ap.add_argument("--naive", choices=("auto", "tf", "keras3"), default="auto",
                    help="baseline: tf (naive_keras.py, tf.data), keras3 (naive_keras_jax.py, no TensorFlow), "
                    "auto: tf when the backend is tensorflow and TensorFlow imports")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "vggfeat-bench"))
    ap.add_argument("--json", default=None, help="write every run and the medians to this JSON file (after each run)")
    ap.add_argument("--deadline", type=float, default=0,
                    help="seconds: start no further round of runs that would end after this (0: no limit)")
    ap.add_argument("--timeout", type=float, default=0, help="seconds after which one process is killed (0: none)")
    ap.add_argument("--keep-going", action="store_true",
                    help="a configuration whose process fails is recorded and dropped, the others go on")
    ap.add_argument("--out", default=None, help="append the results as Markdown to this file")
    args = ap.parse_args()

    t0 = time.perf_counter()
    if args.backend:
        os.environ["KERAS_BACKEND"] = args.backend
    configs = args.configs.split(",")
    sizes = [int(b) for b in args.batch_sizes.split(",")] if args.batch_sizes else [args.batch_size]
    naive = os.path.basename(naive_script(args.naive))
    gpus = gpu_names()
    meta = {"date": date.today().isoformat(), "backend": backend(), "gpus": gpus, "cpu": cpu_name(),
            "cores": os.cpu_count(), "python": platform.python_version(), "versions": versions(),
            "images": args.images, "runs_asked": args.runs, "batch_sizes": sizes, "configs": configs,
            "naive": naive, "argv": sys.argv[1:]}
    print(json.dumps(meta), flush=True)
    record = {"meta": meta, "runs": [], "medians": []}

    def save():
        if args.json:
            with open(args.json + ".tmp", "w") as f:
                json.dump(record, f, indent=1)
            os.replace(args.json + ".tmp", args.json)

    folder = os.path.join(args.workdir, f"images{args.images}")
    make_images(folder, args.images)
    print(f"images ready in {time.perf_counter() - t0:.1f} s", flush=True)
    keys = [(c, b) for b in sizes for c in configs]
    results = {k: [] for k in keys}
    done_runs = 0
    for r in range(args.runs):
        round_start = time.perf_counter()
        for c, b in list(keys):
            try:
                secs, rss, stdout, stderr = run_once(command(c, folder, os.path.join(args.workdir, f"out_{c}_{b}"), b,
                                                             args.naive), timeout=args.timeout or None)
            except SystemExit as e:
                if not args.keep_going:
                    raise
                print(f"run {r + 1} {c} batch {b}: {e}", flush=True)
                record["runs"].append({"run": r + 1, "config": c, "batch_size": b, "error": str(e)[-4000:]})
                save()
                keys.remove((c, b))
                continue
            loop = loop_seconds(c, stdout, stderr)
            results[(c, b)].append((secs, rss, loop))
            record["runs"].append({"run": r + 1, "config": c, "batch_size": b, "seconds": secs, "peak_rss_mib": rss,
                                   "loop_seconds": loop, "images_per_s": args.images / secs,
                                   "loop_images_per_s": args.images / loop if loop else None})
            save()
            print(f"run {r + 1} {c:>9} batch {b:>4}: {args.images / secs:8.2f} images/s, {secs:6.1f} s"
                  + (f" (loop {args.images / loop:8.2f} images/s, {loop:5.1f} s)" if loop else "")
                  + f", peak RSS {rss:6.0f} MiB", flush=True)
        done_runs = r + 1
        took = time.perf_counter() - round_start
        if (args.deadline and r + 1 < args.runs
                and time.perf_counter() - t0 + 1.15 * took > args.deadline):
            print(f"stopping after {done_runs} runs: another round ({took:.0f} s) would pass the deadline", flush=True)
            break
    meta["runs_done"] = done_runs
    rows = []
    for b in sizes:
        has_base = ("naive", b) in keys and results[("naive", b)]
        base = statistics.median(args.images / s for s, _, _ in results[("naive", b)]) if has_base else None
        base_loop = (median_or_none(args.images / lp if lp else None for _, _, lp in results[("naive", b)])
                     if has_base else None)
        for c in configs:
            if (c, b) not in keys or not results[(c, b)]:
                continue
            ips = statistics.median(args.images / s for s, _, _ in results[(c, b)])
            loop = median_or_none(args.images / lp if lp else None for _, _, lp in results[(c, b)])
            rss = statistics.median(m for _, m, _ in results[(c, b)])
            rel = f"{ips / base:.2f}x" if base else "-"
            rel_loop = f"{loop / base_loop:.2f}x" if loop and base_loop else "-"
            record["medians"].append({"config": c, "batch_size": b, "images_per_s": ips, "loop_images_per_s": loop,
                                      "peak_rss_mib": rss, "vs_naive": ips / base if base else None,
                                      "loop_vs_naive": loop / base_loop if loop and base_loop else None})
            label = f"plain Keras ({naive})" if c == "naive" else f"vggfeat extract --precision {c}"
            rows.append(f"| {label} | {b} | {args.images} | {ips:.2f} | {rel} | "
                        + (f"{loop:.1f}" if loop else "-") + f" | {rel_loop} | {rss:.0f} |")
    save()
    big = []
    if args.rss_images:
        b = sizes[0]
        big_folder = os.path.join(args.workdir, f"images{args.rss_images}")
        make_images(big_folder, args.rss_images)
        for c in args.rss_configs.split(","):
            if c == "naive" or c not in configs:
                continue
            secs, rss, _, _ = run_once(command(c, big_folder, os.path.join(args.workdir, f"big_{c}"), b, args.naive),
                                       timeout=args.timeout or None)
            if not results.get((c, b)):
                continue
            small = statistics.median(m for _, m, _ in results[(c, b)])
            big.append(f"| vggfeat --precision {c} | {small:.0f} MiB ({args.images} images) | "
                       f"{rss:.0f} MiB ({args.rss_images} images, {args.rss_images / secs:.2f} images/s) |")
            print(f"{c}: peak RSS {rss:.0f} MiB on {args.rss_images} images", flush=True)
    where = f"{cpu_name()}, {os.cpu_count()} cores"
    if gpus:
        where = f"{'; '.join(gpus)} (nvidia-smi: name, driver, memory), {where}"
    vers = meta["versions"]
    stack = ", ".join(f"{k} {vers[k]}" for k in ("keras", backend() if backend() != "tensorflow" else "tensorflow")
                      if k in vers)
    cmd = "python benchmarks/extract_benchmark.py " + " ".join(sys.argv[1:])
    text = [
        f"### {date.today().isoformat()}: {where}, Python {platform.python_version()}, KERAS_BACKEND={backend()}"
        + (f" ({stack})" if stack else ""),
        "",
        f"`{cmd}`: VGG-16 fc7 at 224x224, random weights, median of {done_runs} runs, whole process (start-up "
        "included); loop: the extraction loop alone (after start-up and the model build).",
        "",
        "| configuration | batch | images | images/s (median) | vs plain Keras | loop images/s (median) | "
        "loop vs plain Keras | peak RSS MiB (median) |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    if big:
        text += ["", "| memory flat as the folder grows | peak RSS, small folder | peak RSS, large folder |",
                 "|---|---|---|", *big]
    report = "\n".join(text) + "\n"
    record["markdown"] = report
    save()
    print()
    print(report)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n" + report)


if __name__ == "__main__":
    main()
