"""Two ``crscale run`` processes at once on one archive: no false failures, one run's results.

Each exposure's lease (crscale.io.lease) lets only one run work on it at a time; the other run
skips it, records nothing about it and exits 0. Before the leases, two concurrent ingests both
exited 1 with false "exists" failures, and two detections each redid all the work.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from crscale.io.archive import Archive

SAMPLE = Path(__file__).resolve().parents[1] / "crscale" / "data" / "sample" / "images"
INPUTS = [SAMPLE / "emmi_image_sum3.fits", SAMPLE / "gmos.fits"]
PLANES = ("image", "dq", "prob", "mask", "clean")


def _run(archive: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "crscale.cli", "run", *map(str, INPUTS), "--archive", str(archive),
         "--workers", "1", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def test_two_concurrent_runs_record_no_failures_and_equal_a_single_run(tmp_path):
    shared, single = tmp_path / "shared.zarr", tmp_path / "single.zarr"
    first, second, reference = _run(shared), _run(shared), _run(single)
    outs = [p.communicate(timeout=300) for p in (first, second)]
    ref_out = reference.communicate(timeout=300)
    for proc, (out, err) in zip((first, second, reference), [*outs, ref_out], strict=True):
        assert proc.returncode == 0, out + err
        assert "FAILED" not in out

    a, b = Archive(shared), Archive(single)
    assert a.failures() == []
    assert a.exposure_ids() == b.exposure_ids() == ["emmi_image_sum3", "gmos"]
    # The other run's exposures were skipped, not done twice: across the two runs, each stage
    # of each exposure was done once (one run's summary says so).
    text = outs[0][0] + outs[1][0]
    for pattern in (r"ingest: (\d+) ingested", r"detect: (\d+) exposure\(s\) done",
                    r"catalogue: (\d+) exposure\(s\) done"):
        assert sum(int(n) for n in re.findall(pattern, text)) == 2, (pattern, text)
    for eid in b.exposure_ids():
        status = a.exposure_attrs(eid)["status"]
        assert {k: v["state"] for k, v in status.items()} == {
            "ingest": "done", "detect": "done", "catalogue": "done"
        }
        for det in b.detectors(eid):
            x, y = a.open_detector(eid, det), b.open_detector(eid, det)
            assert set(x.data_vars) == set(y.data_vars)
            for name in PLANES:
                if name in y:
                    assert np.array_equal(x[name].values, y[name].values, equal_nan=True), (eid, det, name)
    for table in ("crs", "exposures"):
        names = sorted(p.name for p in (single / "catalogue" / table).glob("*.parquet"))
        assert names == sorted(p.name for p in (shared / "catalogue" / table).glob("*.parquet"))
        for name in names:
            assert (shared / "catalogue" / table / name).read_bytes() == (
                single / "catalogue" / table / name
            ).read_bytes()
    # No lease outlives the runs.
    assert list((shared / "jobs" / "leases").rglob("*.json")) == []


@pytest.mark.parametrize("between", ["exposure_ids", "index_by_sha256"])
def test_a_file_another_run_ingests_while_this_one_plans_is_skipped_not_ingested_twice(
        client, tmp_path, monkeypatch, between):
    """The race behind a CI failure: a second run must not ingest ``gmos`` again as ``gmos_<sha>``.

    The other run's ingest is made to land right after one of the plan's two passes over the
    archive (the ids taken, the contents indexed) returns, which is where a real concurrent run
    can land it; every component is real, only the moment is forced.
    """
    # The module, not the function of the same name that crscale.engine exports.
    ingest_mod = importlib.import_module("crscale.engine.ingest")

    archive = tmp_path / "a.zarr"
    gmos = SAMPLE / "gmos.fits"
    state = {"planning": False, "fired": False}
    real_plan, real_method = ingest_mod._plan, getattr(Archive, between)

    def plan(*args, **kwargs):
        state["planning"] = True
        try:
            return real_plan(*args, **kwargs)
        finally:
            state["planning"] = False

    def method(self, *args, **kwargs):
        out = real_method(self, *args, **kwargs)
        if state["planning"] and not state["fired"]:
            state["fired"] = True
            other = ingest_mod.ingest([str(gmos)], archive, client=client, progress=False, echo=None)
            assert [r.status for r in other.results] == ["done"]
        return out

    monkeypatch.setattr(ingest_mod, "_plan", plan)
    monkeypatch.setattr(Archive, between, method)
    report = ingest_mod.ingest([str(gmos)], archive, client=client, progress=False, echo=None)

    assert state["fired"]
    assert [(r.status, r.exposure_id) for r in report.results] == [("skipped", "gmos")], report.results
    assert report.ok
    monkeypatch.undo()
    a = Archive(archive)
    assert a.exposure_ids() == ["gmos"]
    assert a.failures() == []
