"""A multi-node Ray run simulated on one machine, with a node killed mid-run (docs/ray.md).

Starts a Ray head and two worker nodes with `ray start` (separate raylets, one CPU slot each), makes
WebDataset shards, runs `vggfeat extract --engine ray --address HEAD` over them with two extractor workers,
SIGKILLs one worker node (its raylet and everything under it) once a few shards are done, and checks that
the run finishes with every image exactly once, equal to the local engine's output. Prints the timings.

    python benchmarks/ray_multinode.py [--shards 24] [--per-shard 32] [--output-shards]

Needs the `ray` extra. Everything is written under a temporary folder, removed at the end; the three
nodes are stopped (`ray stop`) whatever happens.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
from output_shards import make_shards  # benchmarks/ is the script's folder


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_bin():
    return os.path.join(os.path.dirname(sys.executable), "ray")


def raylet_pids(node_manager_port):
    """The raylet of the node started with this port, and its children (the node's workers)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ")
        except OSError:
            continue
        if b"raylet" in cmd and f"--node_manager_port={node_manager_port}".encode() in cmd:
            out.append(int(d))
    children = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid in out:
            children.append(int(d))
    return out, children


def runs_part_worker(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"PartWorker" in f.read()
    except OSError:
        return False


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", type=int, default=24)
    ap.add_argument("--per-shard", type=int, default=32)
    ap.add_argument("--kill-after", type=int, default=4, help="shards done before the node is killed")
    ap.add_argument("--output-shards", action="store_true", help="write an index and parts instead of one file")
    args = ap.parse_args()

    import h5py

    top = tempfile.mkdtemp(prefix="vggfeat-multinode-")
    env = dict(os.environ, RAY_AUTH_MODE="disabled", TF_CPP_MIN_LOG_LEVEL="3")
    port = free_port()
    head = f"127.0.0.1:{port}"
    ports = [free_port(), free_port()]
    ray = ray_bin()
    try:
        make_shards(os.path.join(top, "shards"), args.shards, args.per_shard)
        inputs = f"{top}/shards/{{00000..{args.shards - 1:05d}}}.tar"
        common = ["--weights", "random", "--arch", "vgg11", "--input-size", "64", "--layer", "fc7", "--batch-size",
                  "8"]
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "vggfeat_cli", "extract", inputs, "-o", f"{top}/local.h5", *common, "-q"],
                       check=True, env=env)
        local_s = time.perf_counter() - t
        subprocess.run([ray, "start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
                        "--disable-usage-stats"], check=True, env=env, stdout=subprocess.DEVNULL)
        for p in ports:
            subprocess.run([ray, "start", f"--address={head}", "--num-cpus=1", f"--node-manager-port={p}",
                            "--disable-usage-stats"], check=True, env=env, stdout=subprocess.DEVNULL)
        out = f"{top}/ray.h5"
        cmd = [sys.executable, "-m", "vggfeat_cli", "extract", inputs, "-o", out, "--engine", "ray", "--address",
               head, "--ray-workers", "2", *common] + (["--output-shards"] if args.output_shards else [])
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
        work = out + (".parts" if args.output_shards else ".shards")
        killed_at, killed = None, []
        while proc.poll() is None:
            done = [n for n in os.listdir(work) if n.endswith(".h5")] if os.path.isdir(work) else []
            if killed_at is None and len(done) >= args.kill_after:
                # the worker node that runs an extractor (the head has a slot too)
                victim = next((p for p in ports if any(runs_part_worker(c) for c in raylet_pids(p)[1])), ports[1])
                raylets, workers = raylet_pids(victim)
                for pid in raylets + workers:
                    try:
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)
                    except ProcessLookupError:
                        pass
                killed_at = (time.perf_counter() - t, len(done))
            time.sleep(0.05)
        stderr = proc.stderr.read()
        ray_s = time.perf_counter() - t
        if proc.returncode != 0:
            print(stderr[-3000:])
            raise SystemExit(f"the Ray run failed with exit code {proc.returncode}")
        from vggfeat import load_features

        a, b = load_features(f"{top}/local.h5", "fc7"), load_features(out, "fc7")
        n = args.shards * args.per_shard
        missing = set(a.paths) - set(b.paths)
        duplicated = len(b.paths) - len(set(b.paths))
        same = list(a.paths) == list(b.paths) and np.array_equal(a.features, b.features)
        print(f"nodes: head + 2 workers (1 CPU slot each) on one machine; {args.shards} shards x {args.per_shard} "
              f"images = {n}")
        print(f"local engine: {local_s:.1f} s; Ray run with a node killed: {ray_s:.1f} s")
        if killed_at:
            print(f"killed a worker node running an extractor (its raylet and {len(killed) - 1} processes under it) at {killed_at[0]:.1f} s, "
                  f"after {killed_at[1]} shards were complete")
        else:
            print("the run ended before a node could be killed")
        print(f"rows {len(b.paths)} of {n}; missing {len(missing)}; duplicated {duplicated}; equal to the local "
              f"engine's rows and values: {same}")
        print("summary: " + (stderr.strip().splitlines() or ["(none)"])[-1])
        with h5py.File(out, "r") as f:
            print(f"output complete: {bool(f.attrs['complete'])}")
        return 0 if (killed_at and not missing and not duplicated and same) else 1
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
