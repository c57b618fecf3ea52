"""write-fits throughput: crscale's parallel write-fits against a plain astropy loop, same run.

Takes a detected archive (default: ingests and detects the bundled sample into a temporary
folder first, which is not timed), then writes every exposure's FITS product

1. with a plain single-process astropy loop: open the source, append each detector's mask from
   the archive as a CRMASK extension, ``writeto`` (no conventions, no checks, no atomic rename);
2. with crscale's writer (:func:`crscale.io.fits_writer.write_exposure`, ``--flags native``)
   in a loop in this process, which is the writer's own cost;
3. with ``crscale.engine.write_fits_stage.write_fits_archive`` on a LocalCluster, which adds
   the cluster's scheduling and the source checks on the workers;

``--repeats`` times each (``--force`` for crscale), and prints files/s and MB/s of both, their
ratio, and the cost of a re-run that finds everything up to date.

Usage: python benchmarks/write_fits_throughput.py [--archive A.zarr] [--repeats 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.io import fits

import crscale
from crscale.engine import dask_client, ingest
from crscale.engine.detect_stage import detect_archive
from crscale.engine.write_fits_stage import output_names, provenance_of, write_fits_archive
from crscale.io import Archive
from crscale.io.fits_writer import WriteOptions, write_exposure


def plain_loop(archive: Path, out: Path) -> tuple[int, int]:
    """The baseline: astropy only. Returns (files, bytes written)."""
    arch = Archive(archive)
    n, nbytes = 0, 0
    for eid in arch.exposure_ids():
        src = arch.exposure_attrs(eid)["source"]
        with fits.open(src["path"]) as hdul:
            for det in arch.detectors(eid):
                mask = np.asarray(arch.root[f"exposures/{eid}/{det}/mask"][...])
                hdul.append(fits.ImageHDU(mask, name="CRMASK"))
            target = out / src["name"]
            hdul.writeto(target, overwrite=True, output_verify="silentfix")
        n, nbytes = n + 1, nbytes + target.stat().st_size
    return n, nbytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archive", type=Path, help="a detected archive (default: the sample, detected)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="crscale-bench-wf-"))
    try:
        with dask_client(n_workers=args.workers, echo=None) as client:
            archive = args.archive
            if archive is None:
                archive = tmp / "sample.zarr"
                ingest([str(crscale.sample_data_dir() / "images")], archive, client=client,
                       progress=False, echo=None)
                detect_archive(archive, client=client, progress=False, echo=None)
            n_exp = len(Archive(archive).exposure_ids())
            print(f"archive: {archive} ({n_exp} exposures), {args.workers} worker(s), "
                  f"{args.repeats} repeat(s)")

            (tmp / "plain").mkdir()
            t0 = time.perf_counter()
            for _ in range(args.repeats):
                files, nbytes = plain_loop(archive, tmp / "plain")
            plain = (time.perf_counter() - t0) / args.repeats

            arch = Archive(archive)
            names = output_names(arch)
            (tmp / "serial").mkdir()
            t0 = time.perf_counter()
            for _ in range(args.repeats):
                done = [write_exposure(arch, eid, tmp / "serial", WriteOptions(),
                                       provenance_of(arch.status(eid)["detect"]), names[eid], force=True)
                        for eid in arch.exposure_ids()]
            serial = (time.perf_counter() - t0) / args.repeats
            s_files = sum(len(o.files) for o in done)
            s_bytes = sum(o.nbytes for o in done)

            write_fits_archive(archive, tmp / "crscale", client=client, progress=False, echo=None)  # warm-up
            t0 = time.perf_counter()
            for _ in range(args.repeats):
                rep = write_fits_archive(archive, tmp / "crscale", force=True, client=client,
                                         progress=False, echo=None)
            ours = (time.perf_counter() - t0) / args.repeats
            c_files = sum(len(r.files) for r in rep.results if r.status == "done")
            c_bytes = sum(r.nbytes for r in rep.results if r.status == "done")
            t0 = time.perf_counter()
            again = write_fits_archive(archive, tmp / "crscale", client=client, progress=False, echo=None)
            rerun = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"plain astropy loop : {files} files, {nbytes / 1e6:.1f} MB in {plain:.2f} s = "
          f"{files / plain:.2f} files/s, {nbytes / 1e6 / plain:.1f} MB/s")
    print(f"crscale, 1 process : {s_files} files, {s_bytes / 1e6:.1f} MB in {serial:.2f} s = "
          f"{s_files / serial:.2f} files/s, {s_bytes / 1e6 / serial:.1f} MB/s")
    print(f"crscale write-fits : {c_files} files, {c_bytes / 1e6:.1f} MB in {ours:.2f} s = "
          f"{c_files / ours:.2f} files/s, {c_bytes / 1e6 / ours:.1f} MB/s "
          f"({'ok' if rep.ok else 'FAILURES'})")
    print(f"ratio to plain, files/s: 1 process {(s_files / serial) / (files / plain):.2f}x, "
          f"cluster {(c_files / ours) / (files / plain):.2f}x; MB/s: 1 process "
          f"{(s_bytes / serial) / (nbytes / plain):.2f}x, cluster {(c_bytes / ours) / (nbytes / plain):.2f}x")
    print(f"re-run, all up to date: {rerun:.2f} s ({again.counts()['skipped']} skipped)")


if __name__ == "__main__":
    main()
