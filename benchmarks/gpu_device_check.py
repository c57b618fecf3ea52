"""The one device check of issue #17: `crscale detect` on one GPU, end to end, within 15 minutes.

Steps (each timed; a JSON summary is written to ``--out``/gpu_check.json):

1. workload: ``--n`` exposures of ``--size``² built from the real bundled frames with real ITL CRs
   (``benchmarks/engine_throughput.py``'s builder), ingested into an archive;
2. ``crscale detect ARCHIVE`` as a subprocess (LocalCluster: one worker per GPU with
   ``crscale.cluster.gpu_worker_threads`` task threads; the device path is the default there),
   while a sampler polls ``nvidia-smi`` for GPU utilisation and memory: end-to-end Mpix/s;
3. network only: the predictor's network on batches of GPU tiles (CUDA-synchronised): Mpix/s;
4. device path only: ``detect_torch`` on one exposure in this process: Mpix/s and peak memory;
5. agreement: masks (and prob, clean) of one exposure from the archive against the CPU numpy
   reference (``crscale.detect(device="cpu", backend="numpy", precision="float32")``).

Dry run on a CPU (no CUDA): ``python benchmarks/gpu_device_check.py --size 256 --n 2 --device cpu``
(the engine is then told ``crscale.detect.backend: torch`` so the device path itself runs).

Usage: python benchmarks/gpu_device_check.py [--n 16] [--size 4096] [--out DIR] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine_throughput import ingest_workload, make_workload


class Sampler(threading.Thread):
    """Polls nvidia-smi (utilisation %, memory MiB of GPU 0) until stopped."""

    def __init__(self, period: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.period, self.samples, self.stop = period, [], threading.Event()

    def run(self) -> None:
        if shutil.which("nvidia-smi") is None:
            return
        query = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                 "-i", "0"]
        while not self.stop.is_set():
            out = subprocess.run(query, capture_output=True, text=True, check=False).stdout.strip()
            if out:
                util, mem = (float(v) for v in out.split(",")[:2])
                self.samples.append((time.perf_counter(), util, mem))
            time.sleep(self.period)

    def summary(self, t0: float, t1: float) -> dict:
        inside = [(u, m) for t, u, m in self.samples if t0 <= t <= t1]
        if not inside:
            return {"gpu_util_mean": None, "gpu_util_p90": None, "gpu_mem_peak_mib": None, "samples": 0}
        util = np.array([u for u, _ in inside])
        return {"gpu_util_mean": float(util.mean()), "gpu_util_p90": float(np.percentile(util, 90)),
                "gpu_mem_peak_mib": float(max(m for _, m in inside)), "samples": len(inside)}


def run_cli(archive: Path, device: str, env: dict) -> tuple[float, dict]:
    report = archive.parent / "detect_report.json"
    cmd = [sys.executable, "-m", "crscale.cli", "detect", str(archive), "--no-progress",
           "--report", str(report)]
    if device == "cpu":
        cmd += ["--device", "cpu"]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    if res.returncode:
        tail = f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        raise RuntimeError(f"crscale detect failed ({res.returncode}):\n{tail}")
    return seconds, json.loads(report.read_text())


def network_only(device: str, tile: int, batch: int, repeats: int) -> dict:
    import torch

    from crscale.detection import get_predictor, required_halo

    pred = get_predictor("default", device=device, precision="auto")
    side = tile + 2 * required_halo(pred.config)
    x = torch.randn(batch, 1, side, side, device=pred.device).to(pred.dtype)
    x = x.contiguous(memory_format=torch.channels_last)

    def sync() -> None:
        if pred.device.type == "cuda":
            torch.cuda.synchronize()

    with torch.inference_mode():
        pred.net(x)
        sync()
        t0 = time.perf_counter()
        for _ in range(repeats):
            pred.net(x)
        sync()
    seconds = (time.perf_counter() - t0) / repeats
    return {"tile": tile, "batch": batch, "dtype": str(pred.dtype),
            "core_mpix_s": batch * tile**2 / seconds / 1e6, "input_mpix_s": batch * side**2 / seconds / 1e6}


def device_path(archive: Path, device: str, repeats: int) -> dict:
    import torch

    from crscale.detection import get_predictor
    from crscale.detection.torch_block import detect_torch
    from crscale.io.archive import Archive

    arch = Archive(archive)
    eid = arch.exposure_ids()[0]
    det = arch.detectors(eid)[0]
    group = arch.root[f"exposures/{eid}/{det}"]
    image = group["image"][:]
    stats = _stats(group)
    pred = get_predictor("default", device=device, precision="auto")
    kw = dict(pred=pred, stats=stats, threshold=pred.card.recommended_threshold)
    detect_torch(image, **kw)
    if pred.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(repeats):
        detect_torch(image, **kw)
    seconds = (time.perf_counter() - t0) / repeats
    peak = torch.cuda.max_memory_allocated() / 2**30 if pred.device.type == "cuda" else None
    return {"mpix_s": image.size / seconds / 1e6, "seconds_per_exposure": seconds, "peak_alloc_gib": peak}


def _stats(group):
    from crscale.detection.normalise import ImageStats

    s = dict(group.attrs["detect"]["stats"])
    return ImageStats(sky=s["sky"], noise=s["noise"], gain=s["gain"], mean=s["mean"], std=s["std"])


def agreement(archive: Path) -> dict:
    import crscale
    from crscale.io.archive import Archive

    arch = Archive(archive)
    eid = arch.exposure_ids()[-1]
    det = arch.detectors(eid)[0]
    group = arch.root[f"exposures/{eid}/{det}"]
    attrs = dict(group.attrs)
    image = group["image"][:]
    ref = crscale.detect(image, gain=attrs["gain"], readnoise=attrs["readnoise"],
                         saturation=attrs["saturation"], device="cpu", precision="float32", backend="numpy")
    mask = group["mask"][:].astype(bool)
    prob, clean = group["prob"][:], group["clean"][:]
    same = mask == ref.mask
    ok = same & np.isfinite(ref.clean)
    rel = np.abs(clean[ok] - ref.clean[ok]) / np.maximum(np.abs(ref.clean[ok]), ref.stats.noise)
    return {"exposure": eid, "mask_agreement": float(same.mean()), "mask_differs": int((~same).sum()),
            "cr_pixels_cpu": int(ref.mask.sum()), "cr_pixels_device": int(mask.sum()),
            "prob_max_abs_diff": float(np.abs(prob - ref.prob).max()),
            "clean_max_rel_diff_where_masks_agree": float(rel.max()) if rel.size else 0.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--device", default="cuda", help="cuda, or cpu for a dry run")
    ap.add_argument("--workdir", default="/tmp/crscale-gpu-check")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--threads", type=int, default=4, help="crscale.cluster.gpu_worker_threads for the run")
    args = ap.parse_args()

    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    out: dict = {"n": args.n, "size": args.size, "device": args.device}
    Path(args.out).mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every step, so that a run cut short still reports what it measured
        (Path(args.out) / "gpu_check.json").write_text(json.dumps(out, indent=1))
    t0 = time.perf_counter()
    paths, n_crs, sources = make_workload(work / "fits", args.n, args.size, "gpu")
    out["build_s"] = time.perf_counter() - t0
    archive = work / "archive.zarr"
    out["ingest_s"] = ingest_workload(paths, archive)
    print(f"workload: {args.n} x {args.size}^2 from {sources}, {n_crs} CRs; built {out['build_s']:.0f} s, "
          f"ingested {out['ingest_s']:.0f} s", flush=True)

    env = dict(os.environ, DASK_CRSCALE__CLUSTER__GPU_WORKER_THREADS=str(args.threads))
    out["gpu_worker_threads"] = args.threads
    if args.device == "cpu":
        env.update(DASK_CRSCALE__DETECT__BACKEND="torch", DASK_CRSCALE__CLUSTER__GPUS="0")
    sampler = Sampler()
    sampler.start()
    t1 = time.perf_counter()
    seconds, report = run_cli(archive, args.device, env)
    t2 = time.perf_counter()
    sampler.stop.set()
    pixels = args.n * args.size**2
    out["end_to_end"] = {"seconds": seconds, "mpix_s": pixels / seconds / 1e6,
                         "stage_seconds": report.get("seconds"),
                         "stage_mpix_s": pixels / report["seconds"] / 1e6 if report.get("seconds") else None,
                         **sampler.summary(t1, t2)}
    print("end to end:", json.dumps(out["end_to_end"]), flush=True)
    save()
    if args.device == "cpu":
        out["network"] = network_only("cpu", 256, 1, 2)
    else:
        out["network"] = network_only("cuda", 1024, 8, 20)
    print("network only:", json.dumps(out["network"]), flush=True)
    save()
    out["device_path"] = device_path(archive, args.device, 1 if args.device == "cpu" else 5)
    print("device path only:", json.dumps(out["device_path"]), flush=True)
    save()
    out["agreement"] = agreement(archive)
    print("agreement with the CPU reference:", json.dumps(out["agreement"]), flush=True)
    e2e, net = out["end_to_end"]["mpix_s"], out["network"]["core_mpix_s"]
    out["bound"] = "device (network)" if e2e > 0.8 * net else "host/I-O (end to end well below the network)"
    save()
    print(f"summary: end to end {e2e:.0f} Mpix/s, network {net:.0f} Mpix/s, device path "
          f"{out['device_path']['mpix_s']:.0f} Mpix/s, mask agreement "
          f"{out['agreement']['mask_agreement']:.6f}; bound: {out['bound']}")


if __name__ == "__main__":
    main()
