"""Ingest throughput: crscale's parallel ingest against a plain serial loop, same run.

Builds a workload from the bundled real images (each copied N times with one extra
header card, so every copy has its own SHA-256 but the real pixels), then ingests it
(1) with a plain single-process loop of read_exposure + Archive.write_exposure and
(2) with ``crscale.engine.ingest`` on the default LocalCluster, and prints files/s,
Mpix/s and MB/s of both and their ratio, plus the cost of a no-op re-run.

Usage: python benchmarks/ingest_throughput.py [--copies 8] [--workers N]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from astropy.io import fits

import crscale
from crscale.engine import dask_client, ingest
from crscale.io import Archive, read_exposure
from crscale.io.inputs import expand_inputs


def build_workload(folder: Path, copies: int) -> list[Path]:
    sources, _ = expand_inputs([str(crscale.sample_data_dir() / "images")])
    out = []
    for i in range(copies):
        for spec in sources:
            with fits.open(spec.path) as hdul:
                hdul[0].header["CRSBENCH"] = (i, "benchmark copy number")
                dst = folder / f"copy{i:03d}_{Path(spec.path).name}"
                hdul.writeto(dst, output_verify="silentfix")
            out.append(dst)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=8)
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="crscale-bench-"))
    try:
        (tmp / "in").mkdir()
        files = build_workload(tmp / "in", args.copies)
        nbytes = sum(f.stat().st_size for f in files)
        print(f"workload: {len(files)} real FITS files, {nbytes / 1e6:.1f} MB")

        t0 = time.perf_counter()
        arch = Archive(tmp / "serial.zarr", mode="a")
        npix = 0
        for f in files:
            exp = read_exposure(f)
            npix += sum(d.image.size for d in exp.detectors)
            arch.write_exposure(exp)
        serial = time.perf_counter() - t0

        with dask_client(n_workers=args.workers, echo=print) as client:
            t0 = time.perf_counter()
            report = ingest([str(f) for f in files], tmp / "dask.zarr", client=client,
                            progress=False, echo=None)
            parallel = time.perf_counter() - t0
            assert report.ok and report.counts()["done"] == len(files), report.summary()
            t0 = time.perf_counter()
            rerun = ingest([str(f) for f in files], tmp / "dask.zarr", client=client,
                           progress=False, echo=None)
            noop = time.perf_counter() - t0
            assert rerun.counts()["skipped"] == len(files)
            workers = len(client.nthreads())

        def line(name: str, sec: float) -> str:
            return (f"{name:<28} {sec:7.2f} s  {len(files) / sec:7.1f} files/s  "
                    f"{npix / 1e6 / sec:7.1f} Mpix/s  {nbytes / 1e6 / sec:7.1f} MB/s")

        print(line("serial loop (1 process)", serial))
        print(line(f"crscale ingest ({workers} workers)", parallel))
        print(f"speed-up crscale / serial: {serial / parallel:.2f}x")
        print(f"no-op re-run (hash + skip): {noop:.2f} s ({len(files) / noop:.1f} files/s)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
