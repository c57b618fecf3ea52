"""Catalogue stage throughput, and survey-scale aggregation of a catalogue: time and memory.

Part 1, **catalogue stage** on the engine benchmark's workload (``engine_throughput.py``: ``--n``
exposures of ``--size``^2 real frames mirror-tiled, with real LSST ITL CRs injected at the rate of
1,500 s of dark; ingested with the default chunks and detected by the engine, neither timed here):

- ``catalogue_archive`` on a fresh default LocalCluster, twice: cold workers (the first use
  imports the catalogue code on each worker) and warm ones (as in ``crscale run``, where the
  detection stage ran on them first); exposures per second, cluster start-up reported apart;
- baseline in the same run: a plain loop in one process calling
  :func:`crscale.catalogue.detector.catalogue_detector` on every detector and writing the same
  Parquet files (what a user's script would do), and the detection stage's own time.

Part 2, **aggregation** (``crscale stats``'s :func:`crscale.catalogue.stats.summarise`) over a
synthetic catalogue of ``--exposures`` exposures x ``--crs`` CRs (default 10,000 x 500 = 5 M rows)
written in the archive layout (one Parquet file per exposure and table). Rows are real: each CR
row is one of the 1,764 real ITL footprints measured by crscale's own feature code, drawn at
random and placed at a random position; the exposure rows spread over 4 instruments and 10
years. Run in a fresh process on a fresh LocalCluster (2 single-threaded workers): wall time and
peak memory (VmHWM) of the client and of each worker, against a baseline in the same run that
loads every row into one pandas DataFrame and computes the same per-instrument rates and
histograms.

Usage::

    python benchmarks/catalogue_throughput.py [--n 16] [--size 2048] [--exposures 10000] [--crs 500]
                                              [--workdir /tmp/crscale-catalogue-bench] [--skip-stage]
                                              [--reuse-synthetic]
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
import engine_throughput as eng  # the engine benchmark's workload and helpers

INSTRUMENTS = [  # (instrument, profile pixel um, detector shape, exptime range s)
    ("DECam", 15.0, (4096, 2048), (30.0, 300.0)),
    ("LSSTCam", 10.0, (4000, 4072), (15.0, 30.0)),
    ("ACS", 15.0, (2048, 4096), (300.0, 1200.0)),
    ("fa05", 15.0, (4096, 4096), (60.0, 600.0)),
]


# --------------------------------------------------------------------------- part 1


def catalogue_engine(archive: Path) -> dict:
    from crscale.engine.catalogue_stage import catalogue_archive
    from crscale.engine.cluster import dask_client

    t0 = time.perf_counter()
    with dask_client(echo=None) as client:
        startup = time.perf_counter() - t0
        times = []
        for _ in range(2):  # cold workers (imports on first use), then warm ones as in `crscale run`
            t1 = time.perf_counter()
            report = catalogue_archive(archive, client=client, force=True, progress=False, echo=None)
            times.append(time.perf_counter() - t1)
            assert report.ok, report.summary()
        peaks = sorted(client.run(eng._peak_rss_gb).values())
    return {
        "seconds": times[1],
        "cold": times[0],
        "startup": startup,
        "exposures": report.counts()["done"],
        "n_cr": sum(r.n_cr for r in report.results),
        "peak_gb": peaks,
    }


def catalogue_loop(archive: Path) -> dict:
    """One process, no Dask: the same per-detector work and the same files."""
    from crscale.catalogue.detector import catalogue_detector
    from crscale.catalogue.morphology import MorphologyRules
    from crscale.catalogue.profiles import detector_physics
    from crscale.catalogue.rates import exposure_row
    from crscale.engine.catalogue_stage import write_exposure_task
    from crscale.io.archive import Archive

    arch = Archive(archive)
    rules = MorphologyRules.from_config()
    t0 = time.perf_counter()
    n_cr = 0
    for eid in arch.exposure_ids():
        attrs = arch.exposure_attrs(eid)
        parts = []
        for det in arch.detectors(eid):
            g = arch.root[f"exposures/{eid}/{det}"]
            a = dict(g.attrs)
            phys = detector_physics(attrs, a)
            res = catalogue_detector(
                g["image"],
                g["mask"],
                background=g["clean"],
                gain=phys.gain,
                saturation=a.get("saturation"),
                rules=rules,
                fallback=a["detect"]["stats"]["sky"],
            )
            row = exposure_row(eid, det, res, phys, exposure_attrs=attrs, detector_attrs=a)
            parts.append(({"exposure": eid, "detector": det, **res.columns}, row))
        n_cr += write_exposure_task(str(archive), eid, *parts)
    return {"seconds": time.perf_counter() - t0, "n_cr": n_cr, "peak_gb": eng._peak_rss_gb()}


# --------------------------------------------------------------------------- part 2


def real_rows() -> dict[str, np.ndarray]:
    """crscale's features of each real ITL footprint, measured alone (the rows to resample)."""
    from crscale.catalogue.features import cr_features
    from crscale.catalogue.labels import Band, label_bands
    from crscale.train.footprints import load_itl_footprints

    library = load_itl_footprints()
    width = 4096
    # Stamps side by side along one row band, 2 px apart, so none touch.
    height = max(fp.shape[0] for fp in library) + 2
    rows: dict[str, list] = {}
    x = 1
    strip = np.zeros((height, width), bool)
    values = np.zeros((height, width))
    batches = []
    for fp in library:
        h, w = fp.shape
        if x + w + 1 >= width:
            batches.append((strip, values))
            strip, values, x = np.zeros((height, width), bool), np.zeros((height, width)), 1
        strip[1 : 1 + h, x : x + w] = fp.mask
        values[1 : 1 + h, x : x + w] = fp.values
        x += w + 2
    batches.append((strip, values))
    for mask, vals in batches:
        for comps in label_bands([Band(0, mask, {"image": vals, "background": np.zeros_like(vals)})], width):
            for k, v in cr_features(comps, (4096, 4096), gain=1.0).items():
                rows.setdefault(k, []).append(v)
    return {k: np.concatenate(v) for k, v in rows.items()}


def write_synthetic(archive: Path, n_exp: int, n_crs: int, seed: int = 0) -> dict:
    import pyarrow as pa

    from crscale.io.catalogue_schema import CR_SCHEMA, EXPOSURE_SCHEMA
    from crscale.io.catalogue_store import write_exposure_tables

    if archive.exists():
        shutil.rmtree(archive)
    (archive / "exposures").mkdir(parents=True)
    base = real_rows()
    n_real = base["n_pixels"].size
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    start = np.datetime64("2015-01-01T00:00:00")
    for i in range(n_exp):
        eid = f"syn{i:06d}"
        inst, pix, (h, w), (t_lo, t_hi) = INSTRUMENTS[i % len(INSTRUMENTS)]
        pick = rng.integers(0, n_real, n_crs)
        dx = rng.integers(0, w - 64, n_crs) - base["x_min"][pick]
        dy = rng.integers(0, h - 64, n_crs) - base["y_min"][pick]
        cols = {
            "exposure": [eid] * n_crs,
            "detector": ["S00"] * n_crs,
            "id": np.arange(1, n_crs + 1, dtype=np.int32),
        }
        # format 1.3: a few rows on defects, as a real archive has (counted apart by stats)
        cols["kind"] = np.where(rng.random(n_crs) < 0.05, "hot_pixel", "cr").tolist()
        for f in CR_SCHEMA:
            if f.name in cols:
                continue
            v = base[f.name][pick]
            if f.name in ("x", "x_min", "x_max"):
                v = v + dx
            elif f.name in ("y", "y_min", "y_max"):
                v = v + dy
            cols[f.name] = v
        crs = pa.Table.from_arrays(
            [
                pa.array(np.asarray(cols[f.name]) if f.type != pa.string() else cols[f.name], type=f.type)
                for f in CR_SCHEMA
            ],
            schema=CR_SCHEMA,
        )
        exptime = float(rng.uniform(t_lo, t_hi))
        t_eff = exptime + 1.0
        usable = h * w
        area = usable * (pix * 1e-4) ** 2
        date = start + np.timedelta64(int(rng.uniform(0, 10 * 365.25 * 86400)), "s")
        is_cr = np.asarray(cols["kind"]) == "cr"
        morph = np.where(is_cr, cols["morphology"], "")
        n_cr = int(is_cr.sum())
        row = {
            "exposure": eid,
            "detector": "S00",
            "instrument": inst,
            "telescope": None,
            "date_obs": str(date),
            "mjd": 57023.0 + (date - start) / np.timedelta64(1, "D"),
            "exptime": exptime,
            "readout_time": 2.0,
            "effective_exptime": t_eff,
            "n_cr": n_cr,
            "n_defects": n_crs - n_cr,
            **{f"n_{c}": int(np.sum(morph == c)) for c in ("dot", "spot", "track", "worm")},
            "n_cr_pixels": int(cols["n_pixels"].sum()),
            "n_pixels_usable": usable,
            "cr_pixel_fraction": float(cols["n_pixels"].sum()) / usable,
            "pixel_size_um": pix,
            "binning": "1,1",
            "thickness_um": None,
            "area_cm2": area,
            "rate": n_cr / (area * t_eff),
            "rate_err": np.sqrt(n_cr) / (area * t_eff),
            "gain": 1.0,
            "charge_e": float(cols["charge_e"].sum()),
            "profile": inst.lower(),
            "guessed": "",
            "background": "clean",
            "model": "synthetic",
            "threshold": 0.5,
        }
        write_exposure_tables(archive, eid, crs, pa.Table.from_pylist([row], schema=EXPOSURE_SCHEMA))
    size = sum(p.stat().st_size for p in (archive / "catalogue").rglob("*.parquet"))
    return {"seconds": time.perf_counter() - t0, "bytes": size, "rows": n_exp * n_crs}


def aggregate_child(archive: str, mode: str, out: str) -> None:
    """Fresh process: the aggregation (dask on a LocalCluster, or all rows in pandas)."""
    t0 = time.perf_counter()
    if mode == "dask":
        from distributed import Client, LocalCluster

        from crscale.catalogue.stats import summarise

        with (
            LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
            ) as cluster,
            Client(cluster) as client,
        ):
            startup = time.perf_counter() - t0
            t1 = time.perf_counter()
            stats = summarise(archive)
            seconds = time.perf_counter() - t1
            workers = sorted(client.run(eng._peak_rss_gb).values())
        # every row: kind cr (stats.n_cr) and the artefacts it counts apart
        result = {"n_cr": stats.n_cr + sum(stats.artefacts.values()), "rate": stats.total.rate,
                  "startup": startup, "workers_gb": workers}
    else:
        from crscale.catalogue.stats import DEFAULT_BINS, log_bins
        from crscale.io.catalogue_store import read_table

        t1 = time.perf_counter()
        crs = read_table(archive, "crs")
        exp = read_table(archive, "exposures")
        grouped = exp.groupby("instrument").agg(n=("n_cr", "sum"), a=("area_cm2", "sum"))
        for q in ("n_pixels", "length", "energy_ev"):
            lo, hi, per = DEFAULT_BINS[q]
            edges = log_bins(lo, hi, per)
            for _cls, sub in crs.groupby("morphology"):
                np.histogram(sub[q].to_numpy(), edges)
        seconds = time.perf_counter() - t1
        result = {"n_cr": int(len(crs)), "groups": len(grouped), "workers_gb": []}
    result.update(seconds=seconds, client_gb=eng._peak_rss_gb())
    Path(out).write_text(json.dumps(result))


def aggregate(archive: Path, mode: str, workdir: Path) -> dict:
    out = workdir / f"agg-{mode}.json"
    subprocess.run([sys.executable, __file__, "--aggregate-child", str(archive), mode, str(out)], check=True)
    return json.loads(out.read_text())


# --------------------------------------------------------------------------- main


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--aggregate-child":
        aggregate_child(*sys.argv[2:5])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=16, help="exposures in the stage workload")
    ap.add_argument("--size", type=int, default=2048, help="exposure side in pixels")
    ap.add_argument("--exposures", type=int, default=10_000, help="exposures in the synthetic catalogue")
    ap.add_argument("--crs", type=int, default=500, help="CRs per synthetic exposure")
    ap.add_argument("--workdir", default="/tmp/crscale-catalogue-bench")
    ap.add_argument("--skip-stage", action="store_true", help="only the aggregation")
    ap.add_argument("--reuse-synthetic", action="store_true",
                    help="aggregate the synthetic catalogue left in --workdir by an earlier run")
    args = ap.parse_args()
    import os

    import torch

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}")
    if not args.skip_stage:
        paths, n_inj, sources = eng.make_workload(work / "fits", args.n, args.size, "cat")
        archive = work / "stage.zarr"
        t_ingest = eng.ingest_workload(paths, archive)
        det = eng.engine_run(archive, "cpu")
        mpix = args.n * args.size**2 / 1e6
        print(
            f"stage workload: {args.n} exposures of {args.size}x{args.size} ({mpix:.1f} Mpix) from "
            f"{', '.join(sources)}, {n_inj:,} real ITL CRs injected; ingest {t_ingest:.1f} s, "
            f"detect {det['seconds']:.1f} s (not in the figures below)"
        )
        loop = catalogue_loop(archive)
        run = catalogue_engine(archive)
        assert run["n_cr"] == loop["n_cr"]
        n_workers = len(run["peak_gb"])
        print(
            f"catalogue stage (LocalCluster {n_workers} workers, start {run['startup']:.1f} s not "
            f"counted), warm workers as in `crscale run`: {run['seconds']:.2f} s = "
            f"{run['exposures'] / run['seconds']:.2f} exposures/s = {mpix / run['seconds']:.1f} Mpix/s, "
            f"{run['n_cr']:,} CRs; peak RSS per worker {', '.join(f'{g:.2f}' for g in run['peak_gb'])} GB"
        )
        print(
            f"  cold workers (first use imports the catalogue code, as a lone `crscale catalogue`): "
            f"{run['cold']:.2f} s = {run['exposures'] / run['cold']:.2f} exposures/s"
        )
        print(
            f"plain loop (1 process): {loop['seconds']:.2f} s = {args.n / loop['seconds']:.2f} "
            f"exposures/s; peak RSS {loop['peak_gb']:.2f} GB"
        )
        print(
            f"stage / plain loop throughput: {loop['seconds'] / run['seconds']:.2f}; catalogue time / "
            f"detection time: {run['seconds'] / det['seconds']:.3f}"
        )
    archive = work / "synthetic.zarr"
    if args.reuse_synthetic and (archive / "catalogue").is_dir():
        size = sum(p.stat().st_size for p in (archive / "catalogue").rglob("*.parquet"))
        made = {"seconds": 0.0, "bytes": size, "rows": args.exposures * args.crs}
    else:
        made = write_synthetic(archive, args.exposures, args.crs)
    print(
        f"synthetic catalogue: {args.exposures:,} exposures x {args.crs} CRs = {made['rows']:,} rows "
        f"(resampled real ITL footprint rows), {2 * args.exposures:,} Parquet files, "
        f"{made['bytes'] / 1e6:.0f} MB, written in {made['seconds']:.0f} s"
    )
    dask_run = aggregate(archive, "dask", work)
    pandas_run = aggregate(archive, "pandas", work)
    assert dask_run["n_cr"] == pandas_run["n_cr"] == made["rows"]
    print(
        f"aggregation, dask.dataframe on LocalCluster (2 workers x 1 thread, start "
        f"{dask_run['startup']:.1f} s not counted): {dask_run['seconds']:.1f} s = "
        f"{made['rows'] / dask_run['seconds'] / 1e6:.2f} M rows/s; peak RSS client "
        f"{dask_run['client_gb']:.2f} GB, workers "
        f"{', '.join(f'{g:.2f}' for g in dask_run['workers_gb'])} GB"
    )
    print(
        f"baseline, all rows in one pandas DataFrame: {pandas_run['seconds']:.1f} s; peak RSS "
        f"{pandas_run['client_gb']:.2f} GB"
    )
    biggest = max([dask_run["client_gb"], *dask_run["workers_gb"]])
    print(
        f"largest process: dask {biggest:.2f} GB vs pandas {pandas_run['client_gb']:.2f} GB "
        f"(ratio {biggest / pandas_run['client_gb']:.2f}); time dask / pandas "
        f"{dask_run['seconds'] / pandas_run['seconds']:.2f}"
    )


if __name__ == "__main__":
    main()
