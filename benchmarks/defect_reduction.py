"""The defect reduction at survey scale: time and peak memory per process.

A synthetic archive of ``--exposures`` exposures (default 10,000, the scale of the
``crscale stats`` benchmark in ``catalogue_throughput.py``) of one ``--size``^2 detector, each with
a CR mask only (what the reduction reads): real LSST ITL footprints at random places (at the
1,500 s-dark rate, x ``--rate-factor``), plus the same 40 hot pixels and a 60-pixel hot-column
segment in every mask. Masks are written as the detect stage writes them (Zarr v3, uint8, Blosc
zstd bit-shuffle, default 1024 chunks).

Measured, each in a fresh process:

- ``update_defects`` on a fresh LocalCluster (2 single-threaded workers): the client's scan of
  the archive, the count/add tree and the finish task; wall time and peak RSS (VmHWM) of the
  client and of each worker;
- the same again after ``--add`` more exposures (the incremental update: only those are read);
- baseline in the same run: one process summing the masks in a loop (the least memory a
  single process can do it with), and the memory that stacking every mask in one process would
  need (computed, not run).

Usage::

    python benchmarks/defect_reduction.py [--exposures 10000] [--size 512] [--add 100]
                                          [--workdir /tmp/crscale-defects-bench] [--reuse]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import engine_throughput as eng  # peak RSS helper


def write_archive(path: Path, n: int, size: int, start: int = 0, rate_factor: float = 1.0) -> float:
    """Add exposures ``start .. start + n - 1`` (masks only); returns seconds."""
    from zarr.codecs import BloscCodec

    from crscale.io.archive import Archive
    from crscale.train.footprints import load_itl_footprints
    from crscale.train.inject import ITL_RATE_1500S, inject_crs

    arch = Archive(path, mode="a")
    lib = load_itl_footprints()
    fixed = np.random.default_rng(0)
    hot = (fixed.integers(0, size, 40), fixed.integers(0, size, 40))
    t0 = time.perf_counter()
    for i in range(start, start + n):
        rng = np.random.default_rng(1000 + i)
        res = inject_crs(np.zeros((size, size), np.float32), lib, rng, rate=ITL_RATE_1500S * rate_factor)
        mask = res.truth.astype(np.uint8)
        mask[hot] = 1
        mask[100:160, size // 3] = 1
        eid = f"exp{i:06d}"
        group = arch.root.require_group(f"exposures/{eid}")
        det = group.require_group("S00")
        arr = det.create_array("mask", shape=mask.shape, dtype=np.uint8, chunks=(min(1024, size),) * 2,
                               compressors=[BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle")],
                               fill_value=0, dimension_names=["y", "x"], overwrite=True)
        arr[...] = mask
        det.attrs.put({"shape": [size, size], "instrument": "BENCH", "gain": 1.0})
        group.attrs.put({"instrument": "BENCH", "detectors": ["S00"], "exptime": 100.0,
                         "status": {"ingest": {"state": "done"},
                                    "detect": {"state": "done", "time": "2026-01-01T00:00:00+00:00"}}})
    return time.perf_counter() - t0


def child(path: str, mode: str, out: str) -> None:
    """Fresh process: the reduction on a LocalCluster, or the one-process loop."""
    t0 = time.perf_counter()
    if mode == "dask":
        from distributed import Client, LocalCluster

        from crscale.engine.defects_stage import update_defects

        with (
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                         dashboard_address=None) as cluster,
            Client(cluster) as client,
        ):
            startup = time.perf_counter() - t0
            t1 = time.perf_counter()
            report = update_defects(path, client=client)
            seconds = time.perf_counter() - t1
            workers = sorted(client.run(eng._peak_rss_gb).values())
        r = report.results[0]
        result = {"startup": startup, "seconds": seconds, "workers_gb": workers, "status": r.status,
                  "n_exposures": r.n_exposures, "n_added": r.n_added, "n_by_kind": r.n_by_kind}
    else:
        import zarr

        t1 = time.perf_counter()
        total = None
        folder = Path(path) / "exposures"
        for d in sorted(p for p in folder.iterdir() if p.is_dir()):
            m = np.asarray(zarr.open_array(str(d / "S00" / "mask"), mode="r")[...]) != 0
            total = m.astype(np.uint32) if total is None else total + m
        seconds = time.perf_counter() - t1
        result = {"seconds": seconds, "workers_gb": []}
    result["client_gb"] = eng._peak_rss_gb()
    Path(out).write_text(json.dumps(result))


def run_child(path: Path, mode: str, work: Path) -> dict:
    out = work / f"defects-{mode}.json"
    subprocess.run([sys.executable, __file__, "--child", str(path), mode, str(out)], check=True)
    return json.loads(out.read_text())


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:5])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--exposures", type=int, default=10_000)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--add", type=int, default=100, help="exposures added for the incremental update")
    ap.add_argument("--rate-factor", type=float, default=1.0, help="CRs per mask x the 1,500 s-dark rate")
    ap.add_argument("--workdir", default="/tmp/crscale-defects-bench")
    ap.add_argument("--reuse", action="store_true", help="reuse the archive of an earlier run")
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    path = work / "bench.zarr"
    if not args.reuse:
        shutil.rmtree(path, ignore_errors=True)
        made = write_archive(path, args.exposures, args.size, rate_factor=args.rate_factor)
        print(f"archive: {args.exposures:,} exposures of {args.size}^2 masks written in {made:.0f} s")
    full = run_child(path, "dask", work)
    mpix = args.size**2 * full["n_exposures"] / 1e6 / full["seconds"]
    print(f"defect reduction, {full['n_exposures']:,} exposures: {full['seconds']:.1f} s "
          f"({full['n_exposures'] / full['seconds']:.0f} exposures/s, {mpix:.0f} Mpix/s; cluster "
          f"start-up {full['startup']:.1f} s apart); peak RSS client {full['client_gb']:.2f} GB, "
          f"workers {', '.join(f'{g:.2f}' for g in full['workers_gb'])} GB; "
          f"{full['status']}: {full['n_by_kind']}")
    write_archive(path, args.add, args.size, start=args.exposures, rate_factor=args.rate_factor)
    inc = run_child(path, "dask", work)
    print(f"incremental update, +{inc['n_added']} exposures: {inc['seconds']:.1f} s; peak RSS client "
          f"{inc['client_gb']:.2f} GB, workers {', '.join(f'{g:.2f}' for g in inc['workers_gb'])} GB")
    loop = run_child(path, "loop", work)
    n_all = args.exposures + args.add
    print(f"baseline, one process summing every mask in a loop: {loop['seconds']:.1f} s; peak RSS "
          f"{loop['client_gb']:.2f} GB; stacking all {n_all:,} masks in one process would need "
          f"{n_all * args.size**2 / 1e9:.1f} GB")


if __name__ == "__main__":
    main()
