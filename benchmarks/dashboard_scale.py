"""Per-tick cost of the dashboard's reading on an archive listing of 10⁵ exposures.

Builds a synthetic archive of metadata only (root, ``exposures/<id>/zarr.json`` with the status
attributes a real job writes, a header subset, no arrays) with a mix of states, then prints:

* the first look: how many ticks (each reading at most ``budget_s`` of metadata) until every
  exposure is read, and their cost;
* steady ticks on an unchanged archive (one ``stat`` per unsettled exposure), and the ticks that
  also sweep the settled ones;
* ticks while a job moves ``--changes`` exposures a tick to their next stage (files replaced by
  a rename, as Zarr does);
* the baseline, the text monitor's full re-read (:func:`crscale.engine.monitor.archive_progress`,
  which opens every exposure's group), and the ratio.

Run: ``python benchmarks/dashboard_scale.py [--n 100000] [--changes 200] [--folder DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from crscale.engine.monitor import archive_progress
from crscale.monitor.state import DashboardState

HEADER = {f"KEY{i:03d}": f"value {i} of a typical header card" for i in range(40)}


def status(stages: int, failed: bool = False) -> dict:
    out = {}
    for k, stage in enumerate(("ingest", "detect", "catalogue")[:stages]):
        state = "failed" if failed and k == stages - 1 else "done"
        out[stage] = {"state": state, "time": "2026-12-01T12:00:00+00:00", "crscale_version": "0.1.0"}
    return out


def write_json(path: Path, attrs: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": attrs}))
    os.replace(tmp, path)


def exposure_attrs(i: int, stages: int, failed: bool = False) -> dict:
    return {"exposure_id": f"e{i:06d}", "instrument": ("ACS", "WFC3", "DECam")[i % 3], "exptime": 100.0,
            "date_obs": "2020-01-01T00:00:00", "detectors": ["SCI"], "header": HEADER,
            "status": status(stages, failed)}


def build(root: Path, n: int) -> dict[int, int]:
    write_json(root / "zarr.json", {"crscale_format": "1.2"})
    (root / "exposures").mkdir()
    write_json(root / "exposures" / "zarr.json", {})
    stages = {}
    for i in range(n):
        # 60 % catalogued, 20 % detected, 15 % ingested, 5 % failed in detection.
        r = i % 20
        s, failed = (3, False) if r < 12 else (2, False) if r < 16 else (1, False) if r < 19 else (2, True)
        folder = root / "exposures" / f"e{i:06d}"
        folder.mkdir()
        write_json(folder / "zarr.json", exposure_attrs(i, s, failed))
        stages[i] = s if not failed else -1
    return stages


def reuse(root: Path, n: int) -> dict[int, int]:
    """The stages of a kept archive's exposures (as :func:`build` made or a job run left them)."""
    stages = {}
    for i in range(n):
        attrs = json.loads((root / "exposures" / f"e{i:06d}" / "zarr.json").read_text())["attributes"]
        status = attrs["status"]
        failed = any(v["state"] == "failed" for v in status.values())
        stages[i] = -1 if failed else len(status)
    return stages


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="exposures (default 100000)")
    ap.add_argument("--changes", type=int, default=200, help="exposures moved on per job tick")
    ap.add_argument("--folder", help="where to build the archive (default: a temporary folder)")
    ap.add_argument("--keep", metavar="DIR",
                    help="build the archive in DIR and keep it; reuse it when it is already there")
    args = ap.parse_args()
    if args.keep:
        base = Path(args.keep)
    else:
        base = Path(tempfile.mkdtemp(prefix="crscale-dash-bench-", dir=args.folder))
    root = base / "synthetic.zarr"
    try:
        t = time.perf_counter()
        if (root / "exposures").is_dir() and args.keep:
            stages, made = reuse(root, args.n), "reused"
        else:
            root.mkdir(parents=True, exist_ok=True)
            stages, made = build(root, args.n), "built"
        size = sum(f.stat().st_size for f in (root / "exposures").glob("*/zarr.json"))
        print(f"{made} {args.n} exposures ({size / 1e6:.0f} MB of metadata) "
              f"in {time.perf_counter() - t:.1f} s")

        state = DashboardState(root, scheduler=False, settled_every=10, budget_s=1.0)
        first = []
        while True:
            view = state.tick()
            first.append(view.cost_s)
            if view.unread == 0:
                break
        print(f"first look: {len(first)} tick(s) to read every exposure, {sum(first):.1f} s in all, "
              f"longest tick {max(first):.2f} s (budget 1.0 s of reading a tick)")

        steady, sweeps = [], []
        for _ in range(20):
            tick = state.tick()
            (sweeps if state.tracker.updates % 10 == 1 else steady).append(tick.cost_s)
        print(f"unchanged archive: {statistics.median(steady) * 1e3:.0f} ms a tick (median of {len(steady)}),"
              f" {statistics.median(sweeps) * 1e3:.0f} ms on the ticks that also sweep settled exposures")

        moving = [i for i, s in stages.items() if s in (1, 2)]
        job = []
        for tick_no in range(10):
            for i in moving[tick_no * args.changes:(tick_no + 1) * args.changes]:
                stages[i] += 1
                write_json(root / "exposures" / f"e{i:06d}" / "zarr.json", exposure_attrs(i, stages[i]))
            job.append(state.tick().cost_s)
        print(f"running job ({args.changes} exposures move on a tick): "
              f"{statistics.median(job) * 1e3:.0f} ms a tick (median of {len(job)})")

        t = time.perf_counter()
        counts = archive_progress(root)
        full = time.perf_counter() - t
        view = state.tick()
        assert view.counts()["catalogued"] == counts["catalogued"], (view.counts(), counts)
        assert view.counts()["detected"] == counts["detected"]
        print(f"baseline, the whole archive re-read (text monitor's archive_progress): {full:.1f} s; "
              f"a steady dashboard tick costs {statistics.median(steady) / full:.1%} of it, "
              f"a job tick {statistics.median(job) / full:.1%}")
        print(f"counts agree: {counts['exposures']} exposures, {counts['catalogued']} catalogued, "
              f"{counts['failed']} failed")
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
