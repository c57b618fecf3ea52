"""Engine throughput and memory: `crscale run`'s detection stage against a plain detect() loop.

Workload (real data only): ``--n`` exposures of ``--size`` x ``--size`` pixels, each a real image
mirror-tiled to that size (the bundled LCO BANZAI, SAAO, EMMI and GMOS frames and, when
``../shared`` is present, an M13 frame, in turn), in electrons, with real
LSST ITL cosmic-ray footprints injected at the rate of 1,500 s of dark on an ITL CCD. They are
written as FITS and ingested into an archive (default Zarr chunks, 1024^2).

Then, one after the other (never concurrently, so neither steals the other's cores):

1. **engine**: ``detect_archive`` (what ``crscale run`` / ``crscale detect`` call) on a fresh
   default LocalCluster (one single-threaded worker per core, torch 1 thread each), default
   settings; timed from the call to the last status written, model loading on the workers
   included, cluster start-up and the workers' module imports (torch, crscale, zarr: about
   2.5 s) reported apart, as the loop's imports are not timed either. Peak memory per worker =
   the worker processes' peak resident set (``VmHWM``).
2. **plain loop**: one fresh process, torch with as many threads as cores, that reads each image
   from the archive, runs ``crscale.detect`` on it whole, and writes prob, mask and clean to a
   Zarr store chunked like the archive: the script a user would write. Model loading included.
3. **big exposure** (``--big 8192``; 0 skips): one ``--big`` x ``--big`` exposure through the
   engine on a fresh cluster, and through the plain loop, for the peak memory per worker
   (which must not grow with the image) against the loop's (which does).

Prints pixels per second of both, their ratio (target >= 0.9: Dask overhead <= 10 %), peak
memory per worker (target <= 2 GB, independent of image size), and the fraction of mask pixels
on which engine and loop agree.

Usage::

    python benchmarks/engine_throughput.py [--n 16] [--size 2048] [--big 8192]
                                           [--workdir /tmp/crscale-engine-bench] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED_REAL = REPO.parent / "shared" / "data" / "real"


def _peak_rss_gb() -> float:
    """This process's peak resident memory (VmHWM), in GB.

    Not ``ru_maxrss``: Linux keeps that across ``execve``, so a worker spawned by a process that
    had built an 8192^2 image would report its parent's peak.
    """
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e9
    scale = 1 if sys.platform == "darwin" else 1024  # no /proc: fall back to ru_maxrss
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1e9


def real_sources() -> list[tuple[str, Path, str | int]]:
    """(name, FITS path, HDU) of the real frames the exposures are made from."""
    import crscale

    images = crscale.sample_data_dir() / "images"
    out: list[tuple[str, Path, str | int]] = [
        ("LCO BANZAI", images / "banzai_test_frame.fits.fz", "SCI"),
        ("SAAO", images / "a8280271.fits", 0),
        ("EMMI", images / "emmi_image_sum3.fits", 0),
        ("GMOS-S", images / "gmos.fits", "SCI"),
    ]
    m13 = sorted((SHARED_REAL / "astropy_data_m13").glob("*.fits"))
    if m13:
        out.insert(1, ("M13", m13[0], 0))
    return out


def build_exposure(source: tuple[str, Path, str | int], size: int, seed: int, path: Path) -> int:
    """Write one ``size`` x ``size`` exposure (electrons, GAIN = 1) with injected ITL CRs."""
    from astropy.io import fits

    from crscale.train.footprints import load_itl_footprints
    from crscale.train.inject import ITL_RATE_1500S, inject_crs

    name, fits_path, hdu = source
    with fits.open(fits_path) as hdul:
        ext = hdul[hdu]
        data = np.asarray(ext.data, dtype=np.float32)
        header = ext.header
        gain = float(header.get("GAIN", header.get("EGAIN", 1.0)) or 1.0)
        exptime = float(header.get("EXPTIME", 100.0) or 100.0)
        rdnoise = float(header.get("RDNOISE", 5.0) or 5.0)
    image_e = np.nan_to_num(data, nan=float(np.nanmedian(data))) * np.float32(gain)
    image_e = np.pad(image_e, ((0, max(0, size - image_e.shape[0])), (0, max(0, size - image_e.shape[1]))),
                     mode="symmetric")[:size, :size]
    injected = inject_crs(image_e, load_itl_footprints(), np.random.default_rng(seed), rate=ITL_RATE_1500S)
    hdr = fits.Header()
    hdr.update(INSTRUME=name[:60], GAIN=1.0, RDNOISE=rdnoise * gain, EXPTIME=exptime, BUNIT="electron",
               DATE_OBS="2024-01-01T00:00:00", OBJECT=f"bench {fits_path.name}"[:60])
    fits.PrimaryHDU(injected.image.astype(np.float32), hdr).writeto(path, overwrite=True)
    return len(injected.indices)


def make_workload(folder: Path, n: int, size: int, prefix: str) -> tuple[list[Path], int, list[str]]:
    folder.mkdir(parents=True, exist_ok=True)
    sources = real_sources()
    paths, n_crs = [], 0
    for i in range(n):
        src = sources[i % len(sources)]
        path = folder / f"{prefix}{i:03d}.fits"
        n_crs += build_exposure(src, size, 1000 + i, path)
        paths.append(path)
    return paths, n_crs, [s[0] for s in sources]


# --------------------------------------------------------------------------- runs


def _import_modules() -> None:
    """What a worker imports before its first task: the loop imports the same before its timer."""
    import torch  # noqa: F401
    import zarr  # noqa: F401

    import crscale.detection  # noqa: F401
    import crscale.engine.plugin  # noqa: F401


def engine_run(archive: Path, device: str | None) -> dict:
    """Detection of every exposure of ``archive`` on a fresh default LocalCluster."""
    from crscale.engine.cluster import dask_client
    from crscale.engine.detect_stage import detect_archive

    t0 = time.perf_counter()
    with dask_client(echo=None) as client:
        started = time.perf_counter() - t0
        n_workers = len(client.nthreads())
        t_imp = time.perf_counter()
        client.run(_import_modules)
        imports = time.perf_counter() - t_imp
        t1 = time.perf_counter()
        report = detect_archive(archive, client=client, device=device, progress=False, echo=None)
        seconds = time.perf_counter() - t1

        peaks = sorted(client.run(_peak_rss_gb).values())
    assert report.ok, report.summary()
    return {"seconds": seconds, "startup": started, "imports": imports, "pixels": report.pixels_done,
            "workers": n_workers,
            "peak_gb": peaks, "n_cr_pixels": sum(r.n_cr_pixels for r in report.results)}


def loop_child(archive: str, out: str, device: str, threads: int) -> None:
    """The plain loop, in this (fresh) process: read, detect() whole, write; print JSON figures."""
    import torch
    import zarr

    torch.set_num_threads(threads)
    import crscale
    from crscale.detection import get_predictor
    from crscale.io.archive import Archive

    t0 = time.perf_counter()
    predictor = get_predictor("default", device=device, precision="auto")
    arch = Archive(archive)
    store = zarr.open_group(out, mode="w")
    pixels = n_cr = 0
    for eid in arch.exposure_ids():
        for det in arch.detectors(eid):
            group = arch.root[f"exposures/{eid}/{det}"]
            attrs = group.attrs
            image = group["image"][:]
            dq = group["dq"][:] if "dq" in group else None
            res = crscale.detect(image, model=predictor, gain=attrs["gain"], readnoise=attrs["readnoise"],
                                 saturation=attrs["saturation"], dq=dq)
            chunks = group["image"].chunks
            for name, data in (("prob", res.prob), ("mask", res.mask.astype(np.uint8)), ("clean", res.clean)):
                arr = store.create_array(f"{eid}/{det}/{name}", shape=data.shape, dtype=data.dtype,
                                         chunks=chunks, compressors=group["image"].compressors)
                arr[...] = data
            pixels += image.size
            n_cr += int(res.mask.sum())
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "pixels": pixels, "peak_gb": _peak_rss_gb(), "n_cr_pixels": n_cr}))


def loop_run(archive: Path, out: Path, device: str, threads: int) -> dict:
    res = subprocess.run(
        [sys.executable, __file__, "--loop-child", str(archive), str(out), device, str(threads)],
        capture_output=True, text=True, check=False,
    )
    if res.returncode:
        raise RuntimeError(f"plain loop failed:\n{res.stdout}\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def mask_agreement(archive: Path, loop_out: Path) -> tuple[float, int]:
    import zarr

    from crscale.io.archive import Archive

    arch = Archive(archive)
    loop = zarr.open_group(str(loop_out), mode="r")
    same = total = 0
    for eid in arch.exposure_ids():
        for det in arch.detectors(eid):
            a = arch.root[f"exposures/{eid}/{det}/mask"][:]
            b = loop[f"{eid}/{det}/mask"][:]
            same += int((a == b).sum())
            total += a.size
    return same / total, total - same


def ingest_workload(paths: list[Path], archive: Path) -> float:
    from crscale.engine.ingest import ingest

    if archive.exists():
        shutil.rmtree(archive)
    t0 = time.perf_counter()
    report = ingest([str(p) for p in paths], archive, progress=False, echo=None)
    assert report.ok, report.summary()
    return time.perf_counter() - t0


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--loop-child":
        loop_child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=16, help="exposures in the workload")
    ap.add_argument("--size", type=int, default=2048, help="exposure side in pixels")
    ap.add_argument("--big", type=int, default=8192, help="side of the single big exposure (0: skip)")
    ap.add_argument("--workdir", default="/tmp/crscale-engine-bench")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the engine pins one worker per GPU)")
    args = ap.parse_args()

    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    work = Path(args.workdir)
    device = args.device
    print(f"machine: {cores} cores, torch {torch.__version__}, device {device}")

    paths, n_crs, names = make_workload(work / "fits", args.n, args.size, f"exp{args.size}_")
    mpix = args.n * args.size**2 / 1e6
    print(f"workload: {args.n} exposures of {args.size}x{args.size} ({mpix:.1f} Mpix) mirror-tiled from real "
          f"frames ({', '.join(names)}), {n_crs:,} real ITL CRs injected")
    archive = work / "workload.zarr"
    t_ingest = ingest_workload(paths, archive)
    print(f"ingest (not in the ratio): {t_ingest:.1f} s")

    eng = engine_run(archive, device if device != "cpu" else None)
    e_rate = eng["pixels"] / eng["seconds"] / 1e6
    print(f"engine     ({eng['workers']} workers, LocalCluster start {eng['startup']:.1f} s and worker "
          f"imports {eng['imports']:.1f} s not counted): "
          f"{eng['seconds']:.1f} s = {e_rate:.3f} Mpix/s; peak RSS per worker "
          f"{', '.join(f'{g:.2f}' for g in eng['peak_gb'])} GB")
    loop = loop_run(archive, work / "loop.zarr", device, cores)
    l_rate = loop["pixels"] / loop["seconds"] / 1e6
    print(f"plain loop (1 process, torch {cores} threads): {loop['seconds']:.1f} s = {l_rate:.3f} Mpix/s; "
          f"peak RSS {loop['peak_gb']:.2f} GB")
    agree, differ = mask_agreement(archive, work / "loop.zarr")
    print(f"engine / plain loop throughput: {e_rate / l_rate:.3f}  (target >= 0.9)")
    print(f"masks: engine and loop agree on {100 * agree:.4f} % of pixels ({differ} differ); CR pixels "
          f"engine {eng['n_cr_pixels']:,}, loop {loop['n_cr_pixels']:,}")

    if args.big:
        big_paths, big_crs, _ = make_workload(work / "fits_big", 1, args.big, f"exp{args.big}_")
        big_archive = work / "big.zarr"
        ingest_workload(big_paths, big_archive)
        big = engine_run(big_archive, device if device != "cpu" else None)
        b_rate = big["pixels"] / big["seconds"] / 1e6
        print(f"{args.big}x{args.big} exposure ({big_crs:,} CRs): engine {big['seconds']:.1f} s = "
              f"{b_rate:.3f} Mpix/s, peak RSS per worker {', '.join(f'{g:.2f}' for g in big['peak_gb'])} GB "
              f"(vs {max(eng['peak_gb']):.2f} GB on {args.size}^2 exposures)")
        big_loop = loop_run(big_archive, work / "loop_big.zarr", device, cores)
        big_rate = big_loop["pixels"] / big_loop["seconds"] / 1e6
        print(f"{args.big}x{args.big} exposure: plain loop {big_loop['seconds']:.1f} s = {big_rate:.3f} "
              f"Mpix/s, "
              f"peak RSS {big_loop['peak_gb']:.2f} GB (grows with the image)")


if __name__ == "__main__":
    main()
