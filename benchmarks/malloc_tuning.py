"""glibc's malloc thresholds and crscale.detect: time, system time and page faults per image.

``crscale.detection.cpu_memory.keep_freed_memory`` raises glibc's mmap and trim thresholds when
a CPU predictor is made, so that each tile reuses the memory the last one freed. This script
measures what that does, in fresh processes (malloc's state is per process), for the four
cases of {a plain process, a process started as dask's nanny starts workers
(``MALLOC_TRIM_THRESHOLD_=65536``)} × {tuning on, off (``CRSCALE_KEEP_FREED_MEMORY=0``)}.
The cases alternate ``--repeat`` times, because this machine's speed drifts over minutes; each
child times ``--runs`` full-image runs after a warm-up and reports the median.

Then the same in real dask workers (``distributed.LocalCluster``, whose nanny sets
``MALLOC_TRIM_THRESHOLD_=65536``; crscale's own LocalCluster does not), tuning off and on,
each in a fresh one-worker cluster with ``--threads`` torch threads: the model runs in the
worker's task thread, as in the engine (``--no-dask`` skips this).

The image is the bundled real LCO BANZAI frame mirror-tiled to ``--size``², with real ITL CRs
(as ``detect_speed.py`` builds it); mask only, the default model, ``--threads`` threads.

Usage::

    python benchmarks/malloc_tuning.py [--size 2048] [--threads 2] [--repeat 2] [--runs 3] [--no-dask]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

TUNABLES = ("CRSCALE_KEEP_FREED_MEMORY", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")
CASES = {
    "plain process, tuning off": {"CRSCALE_KEEP_FREED_MEMORY": "0"},
    "plain process, tuning on": {},
    "dask worker env, tuning off": {"CRSCALE_KEEP_FREED_MEMORY": "0", "MALLOC_TRIM_THRESHOLD_": "65536"},
    "dask worker env, tuning on": {"MALLOC_TRIM_THRESHOLD_": "65536"},
}
DASK_CASES = {
    "real dask worker, tuning off": {"CRSCALE_KEEP_FREED_MEMORY": "0"},
    "real dask worker, tuning on": {},
}


def child(args: argparse.Namespace) -> None:
    """Time crscale.detect in this process and print one JSON line."""
    import resource
    import time

    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from detect_speed import build_image

    import crscale
    from crscale.detection import get_predictor
    from crscale.detection.cpu_memory import keep_freed_memory

    img, _ = build_image(args.size, 2e-5, 0)
    pred = get_predictor("default", device="cpu", precision="auto")
    crscale.detect(img[:1024, :1024], model=pred, gain=1.0, inpaint=False)
    mpix = img.size / 1e6
    runs = []
    for _ in range(args.runs):
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        crscale.detect(img, model=pred, gain=1.0, inpaint=False)
        wall = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        runs.append((wall / mpix, (r1.ru_stime - r0.ru_stime) / mpix, (r1.ru_minflt - r0.ru_minflt) / mpix))
    med = np.median(np.array(runs), axis=0)
    print(json.dumps({"s_per_mpix": med[0], "sys_s_per_mpix": med[1], "faults_per_mpix": med[2],
                      "tuned": keep_freed_memory()}))


def _in_worker(size: int, runs: int) -> dict:
    """In a dask worker: median s/Mpix and page faults per Mpix of ``runs`` detects after a warm-up."""
    import resource
    import time

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from detect_speed import build_image

    import crscale
    from crscale.detection import Predictor
    from crscale.detection.cpu_memory import keep_freed_memory
    from crscale.models import load_model

    img, _ = build_image(size, 2e-5, 0)
    pred = Predictor(*load_model("default"), device="cpu", precision="auto")
    crscale.detect(img[:1024, :1024], model=pred, gain=1.0, inpaint=False)
    mpix = img.size / 1e6
    out = []
    for _ in range(runs):
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        crscale.detect(img, model=pred, gain=1.0, inpaint=False)
        wall = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        out.append((wall / mpix, (r1.ru_stime - r0.ru_stime) / mpix, (r1.ru_minflt - r0.ru_minflt) / mpix))
    med = np.median(np.array(out), axis=0)
    return {"s_per_mpix": med[0], "sys_s_per_mpix": med[1], "faults_per_mpix": med[2],
            "tuned": keep_freed_memory()}


def dask_worker_case(env: dict[str, str], args: argparse.Namespace) -> dict:
    """One fresh one-worker distributed.LocalCluster (nanny), ``env`` added to the worker's."""
    from distributed import Client, LocalCluster

    threads = str(args.threads)
    worker_env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, **env}
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, env=worker_env) as cluster, Client(cluster) as client:
        return client.submit(_in_worker, args.size, args.runs, pure=False).result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-dask", action="store_true", help="skip the real dask worker cases")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    results: dict[str, list[dict]] = {name: [] for name in CASES}
    for _ in range(args.repeat):
        for name, extra in CASES.items():
            env = {k: v for k, v in os.environ.items() if k not in TUNABLES}
            env.update(extra)
            cmd = [sys.executable, __file__, "--child", "--size", str(args.size),
                   "--threads", str(args.threads), "--runs", str(args.runs)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
            results[name].append(json.loads(out.strip().splitlines()[-1]))
            print(f"  ran {name}: {results[name][-1]['s_per_mpix']:.3f} s/Mpix", flush=True)
        if not args.no_dask:
            for name, extra in DASK_CASES.items():
                results.setdefault(name, []).append(dask_worker_case(extra, args))
                print(f"  ran {name}: {results[name][-1]['s_per_mpix']:.3f} s/Mpix", flush=True)

    print(f"\ncrscale.detect, default model, {args.size}², {args.threads} threads, mask only; "
          f"median of {args.runs} runs per process, {args.repeat} processes per case (alternated)")
    print(f"{'case':<30}{'s/Mpix':>9}{'system s/Mpix':>15}{'page faults/Mpix':>18}  tuned  per process")
    for name, rs in results.items():
        s = np.median([r["s_per_mpix"] for r in rs])
        sysm = np.median([r["sys_s_per_mpix"] for r in rs])
        flt = np.median([r["faults_per_mpix"] for r in rs])
        per = " ".join(f"{r['s_per_mpix']:.3f}" for r in rs)
        print(f"{name:<30}{s:>9.3f}{sysm:>15.3f}{flt:>18,.0f}  {str(rs[0]['tuned']):<6} {per}")
    for env_name in ("plain process", "dask worker env", "real dask worker"):
        if f"{env_name}, tuning off" not in results:
            continue
        off = np.median([r["s_per_mpix"] for r in results[f"{env_name}, tuning off"]])
        on = np.median([r["s_per_mpix"] for r in results[f"{env_name}, tuning on"]])
        print(f"{env_name}: tuning on is {off / on:.2f}x as fast")


if __name__ == "__main__":
    main()
