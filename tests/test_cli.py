"""The crscale command line, run as a user runs it (subprocesses, real cluster, real stores)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import DECAM, DECAM_DQ, GMOS, SAAO, SAMPLE, make_bad_inputs

pytestmark = pytest.mark.timeout(300)


def crscale(*args, check=None):
    res = subprocess.run([sys.executable, "-m", "crscale.cli", *map(str, args)],
                         capture_output=True, text=True, timeout=240)
    if check is not None:
        assert res.returncode == check, res.stdout + res.stderr
    return res


def test_run_sample_with_defaults_then_info(tmp_path):
    archive = tmp_path / "demo.zarr"
    res = crscale("run", "--sample", "--archive", archive, "--no-progress", check=0)
    assert "dashboard http://127.0.0.1:" in res.stdout
    assert "6 ingested" in res.stdout and "0 failed" in res.stdout
    assert "detect: 6 exposure(s) done, 0 already done (skipped), 0 failed" in res.stdout
    info = crscale("info", archive, check=0).stdout
    for eid in ("mef_raw_test_frame", "banzai_test_frame", "gmos", "a8280271",
                "emmi_image_sum3", "c4d_170316_062107_ooi_z_ls9.N2"):
        assert eid in info
    assert "format 1.4" in info and "Failures: 0 (none)" in info
    assert info.count("ingest:done,detect:done") == 6
    detail = crscale("info", archive, "-e", "mef_raw_test_frame", check=0).stdout
    assert "detector SCI_4" in detail and "gain 6.26" in detail
    from crscale.detection import get_predictor  # not through crscale_pkg: only imported lazily

    thr = get_predictor("default").card.recommended_threshold
    assert detail.count("CR pixels") == 4 and f"with crscale-default at threshold {thr:g}" in detail
    summary = json.loads(crscale("info", archive, "--json", check=0).stdout)
    assert summary["n_exposures"] == 6 and summary["n_detectors"] == 9
    # The cleaned images are in the archive, readable with xarray.
    from crscale.io import Archive

    ds = Archive(archive).open_detector("gmos", "SCI")
    assert {"image", "prob", "mask", "clean"} <= set(ds.data_vars)
    assert int(ds["mask"].sum()) > 0 and float(ds["prob"].max()) <= 1.0

    # A second run does nothing and says so; --stages detect alone also works on the archive.
    res = crscale("run", "--sample", "--archive", archive, "--no-progress", check=0)
    assert "6 already in the archive" in res.stdout and "6 already done (skipped)" in res.stdout
    res = crscale("detect", archive, "--no-progress", "-e", "gmos", "--force", "--threshold", "0.5", check=0)
    assert "detect: 1 exposure(s) done" in res.stdout and "threshold 0.5" in res.stdout
    res = crscale("detect", archive, "-e", "nope", check=2)
    assert "no exposure(s) 'nope'" in res.stderr


def test_failures_set_exit_status_and_are_listed(client, tmp_path):
    bad = make_bad_inputs(tmp_path / "in")
    archive = tmp_path / "a.zarr"
    addr = client.scheduler.address
    res = crscale("ingest", bad["junk"], bad["truncated"], SAAO, "--archive", archive,
                  "--scheduler", addr, "--no-progress", "--report", tmp_path / "r.json", check=1)
    assert "1 ingested" in res.stdout and "2 failed" in res.stdout
    assert f"FAILED: {bad['junk']}: not a readable FITS file" in res.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["counts"]["failed"] == 2
    info = crscale("info", archive, check=0).stdout
    assert "Failures: 2" in info and str(bad["truncated"]) in info

    # Re-running the good file alone: nothing to do, success.
    res = crscale("ingest", SAAO, "--archive", archive, "--scheduler", addr, "--no-progress",
                  check=0)
    assert "1 already in the archive" in res.stdout


def test_dq_option_and_usage_errors(client, tmp_path):
    archive = tmp_path / "a.zarr"
    addr = client.scheduler.address
    crscale("ingest", DECAM, "--dq", DECAM_DQ, "--archive", archive, "--scheduler", addr,
            "--no-progress", "--hdu", "N2", "--chunks", "128", check=0)
    detail = crscale("info", archive, "-e", "c4d_170316_062107_ooi_z_ls9.N2", check=0).stdout
    assert f"dq from    {DECAM_DQ}[1]" in detail and "chunks (128, 128)" in detail
    res = crscale("ingest", DECAM, GMOS, "--dq", DECAM_DQ, "--archive", archive, check=2)
    assert "--dq needs exactly one input" in res.stderr
    res = crscale("info", tmp_path / "nothing.zarr", check=2)
    assert "no crscale archive" in res.stderr
    res = crscale("ingest", SAAO, "--archive", archive, "--chunks", "0,5", check=2)
    assert "chunks" in res.stderr
    res = crscale("ingest", SAAO, "--archive", archive, "--scheduler", tmp_path / "none.json",
                  check=2)
    assert "scheduler file" in res.stderr and "does not exist" in res.stderr
    (tmp_path / "file").write_text("a file, not a folder")
    res = crscale("ingest", SAAO, "--archive", tmp_path / "file" / "a.zarr", "--scheduler", addr,
                  check=2)
    assert "crscale:" in res.stderr and "Traceback" not in res.stderr


def test_sample_data_and_version():
    assert crscale("sample-data", check=0).stdout.strip() == str(SAMPLE)
    assert crscale("--version", check=0).stdout.startswith("crscale ")
