"""Ingest through a real distributed LocalCluster (worker processes) into real Zarr stores."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest

from conftest import (
    DECAM,
    DECAM_DQ,
    EMMI,
    FZ,
    GMOS,
    IMAGES,
    MEF,
    SAAO,
    astropy_pixels,
    copy_to,
    make_bad_inputs,
)
from crscale.engine import ingest
from crscale.io import Archive, sha256_file

pytestmark = pytest.mark.timeout(300)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of every file under exposures/: any write shows up."""
    out = {}
    for dirpath, _, files in os.walk(root / "exposures"):
        for name in files:
            st = os.stat(os.path.join(dirpath, name))
            out[os.path.join(dirpath, name)] = (st.st_size, st.st_mtime_ns)
    return out


def assert_round_trip(arch: Archive, eid: str, source: Path) -> None:
    for det in arch.detectors(eid):
        ds = arch.open_detector(eid, det)
        ref = astropy_pixels(source, ds.attrs["hdu_index"])
        values = ds["image"].values
        np.testing.assert_array_equal(values.astype(ref.dtype), ref)
        np.testing.assert_array_equal(values, ref.astype(values.dtype))


def test_ingest_sample_round_trip_and_idempotent(client, tmp_path):
    archive = tmp_path / "demo.zarr"
    report = ingest([str(IMAGES)], archive, client=client, progress=False, echo=None,
                    chunks=(300, 300))
    assert report.ok, report.summary()
    assert report.counts() == {"done": 6, "skipped": 0, "duplicate": 0, "failed": 0}
    arch = Archive(archive)
    assert arch.exposure_ids() == sorted([
        "a8280271", "banzai_test_frame", "c4d_170316_062107_ooi_z_ls9.N2",
        "emmi_image_sum3", "gmos", "mef_raw_test_frame"])
    for eid, src in [("a8280271", SAAO), ("banzai_test_frame", FZ), ("gmos", GMOS),
                     ("emmi_image_sum3", EMMI), ("mef_raw_test_frame", MEF),
                     ("c4d_170316_062107_ooi_z_ls9.N2", DECAM)]:
        assert_round_trip(arch, eid, src)
        attrs = arch.exposure_attrs(eid)
        assert attrs["source"]["sha256"] == sha256_file(src)
        assert attrs["status"]["ingest"]["state"] == "done"
    # The DECam DQ companion was found by name and stored with its image.
    decam = arch.open_detector("c4d_170316_062107_ooi_z_ls9.N2", "N2")
    np.testing.assert_array_equal(decam["dq"].values, astropy_pixels(DECAM_DQ, 1))
    assert decam.attrs["dq_source"].startswith(str(DECAM_DQ))
    assert arch.exposure_attrs("c4d_170316_062107_ooi_z_ls9.N2")["source"]["dq_path"] == str(DECAM_DQ)
    assert arch.open_detector("mef_raw_test_frame", "SCI_2")["image"].encoding["chunks"] == (300, 300)

    # A re-run is a no-op: nothing is written.
    before = snapshot(archive)
    again = ingest([str(IMAGES)], archive, client=client, progress=False, echo=None)
    assert again.counts() == {"done": 0, "skipped": 6, "duplicate": 0, "failed": 0}
    assert snapshot(archive) == before

    # --force redoes a file in place, same id, same pixels.
    forced = ingest([str(SAAO)], archive, client=client, force=True, progress=False, echo=None)
    assert [r.status for r in forced.results] == ["done"]
    assert forced.results[0].exposure_id == "a8280271"
    assert_round_trip(Archive(archive), "a8280271", SAAO)
    assert len(Archive(archive).exposure_ids()) == 6


def test_bad_inputs_are_recorded_and_the_rest_is_ingested(client, tmp_path):
    bad = make_bad_inputs(tmp_path / "in")
    good = [copy_to(SAAO, tmp_path / "in"), copy_to(GMOS, tmp_path / "in")]
    dup = copy_to(SAAO, tmp_path / "in" / "copies", "same_as_saao.fits")
    missing = tmp_path / "in" / "does_not_exist.fits"
    archive = tmp_path / "a.zarr"
    inputs = [str(p) for p in (*bad.values(), *good, dup, missing)]
    report = ingest(inputs, archive, client=client, progress=False, echo=None)
    status = {Path(r.path).name: r for r in report.results}

    assert not report.ok
    for name in ("a8280271.fits", "gmos.fits", "saao_nan_pixels.fits",
                 "saao_absurd_keywords.fits"):
        assert status[name].status == "done", status[name].message
    expected_failures = {
        "junk.fits": "corrupt", "truncated.fits": "truncated",
        "truncated_tail.fits": "truncated", "empty.fits": "corrupt",
        "itl_crs_table.fits.gz": "no-image", "saao_all_nan.fits": "no-finite-pixels",
        "does_not_exist.fits": "missing",
    }
    for name, kind in expected_failures.items():
        r = status[name]
        assert r.status == "failed" and r.kind == kind, (name, r)
        assert name in r.message
    assert status["same_as_saao.fits"].status == "duplicate"
    assert status["same_as_saao.fits"].exposure_id == "a8280271"
    assert "a8280271.fits" in status["same_as_saao.fits"].message

    arch = Archive(archive)
    recorded = {Path(f["path"]).name: f for f in arch.failures()}
    assert set(recorded) == set(expected_failures) | {"same_as_saao.fits"}
    assert recorded["truncated.fits"]["kind"] == "truncated"
    assert recorded["same_as_saao.fits"]["kind"] == "duplicate"
    assert arch.index_by_sha256().keys() == {
        sha256_file(p) for p in (good[0], good[1], bad["nan_pixels"], bad["absurd_keywords"])}

    # Warnings and guesses land in the archive.
    nan_attrs = arch.open_detector("saao_nan_pixels", "PRIMARY").attrs
    assert nan_attrs["n_nonfinite"] == 51
    absurd = arch.open_detector("saao_absurd_keywords", "PRIMARY").attrs
    assert absurd["exptime"] is None and {"exptime", "gain"} <= set(absurd["guessed"])
    assert any("EXPTIME=0.0" in w for w in arch.exposure_attrs("saao_absurd_keywords")["warnings"])

    # Fix a failed file and re-run: it is ingested and its failure record disappears.
    shutil.copyfile(MEF, bad["truncated"])
    report2 = ingest([str(bad["truncated"])], archive, client=client, progress=False, echo=None)
    assert report2.ok
    assert "truncated.fits" not in {Path(f["path"]).name for f in Archive(archive).failures()}
    assert_round_trip(Archive(archive), "truncated", MEF)


def test_name_clash_gets_a_unique_id(client, tmp_path):
    a = copy_to(SAAO, tmp_path / "n1", "frame.fits")
    b = copy_to(EMMI, tmp_path / "n2", "frame.fits")
    report = ingest([str(a), str(b)], tmp_path / "a.zarr", client=client, progress=False,
                    echo=None)
    ids = sorted(r.exposure_id for r in report.results)
    assert ids[0] == "frame" and ids[1].startswith("frame_") and len(ids[1]) == len("frame_") + 8


def test_manifest_with_explicit_dq(client, tmp_path):
    img = copy_to(DECAM, tmp_path / "img", "decam_image.fits")
    dq = copy_to(DECAM_DQ, tmp_path / "dq", "decam_mask.fits")
    manifest = tmp_path / "files.lst"
    manifest.write_text(f"img/{img.name} dq=dq/{dq.name}\n")
    report = ingest([f"@{manifest}"], tmp_path / "a.zarr", client=client, progress=False,
                    echo=None)
    assert report.ok
    ds = Archive(tmp_path / "a.zarr").open_detector("decam_image", "N2")
    assert int((ds["dq"].values == 5).sum()) == 177


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    try:
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return res.returncode == 0


@pytest.mark.needs_root
def test_full_disk_mid_write_loses_nothing_and_the_run_goes_on(client, tmp_path):
    disk = Path("/tmp") / f"crscale-full-{uuid.uuid4().hex[:8]}"
    if not _mount_tmpfs(disk, "700k"):
        pytest.skip("cannot mount a small tmpfs here (needs root and mount permission)")
    try:
        archive = disk / "a.zarr"
        first = ingest([str(GMOS)], archive, client=client, progress=False, echo=None)
        assert first.ok
        before = snapshot(archive)
        # The raw MEF needs about 1 MB in the archive: it cannot fit on what is left.
        report = ingest([str(MEF), str(SAAO)], archive, client=client, progress=False,
                        echo=None)
        by_name = {Path(r.path).name: r for r in report.results}
        assert set(by_name) == {MEF.name, SAAO.name}  # every file got an outcome
        mef = by_name[MEF.name]
        assert mef.status == "failed" and mef.kind == "archive"
        assert "no space left on device" in mef.message and MEF.name in mef.message
        assert not report.ok

        arch = Archive(archive)
        # What was there before is untouched, and every exposure present is complete.
        assert {k: v for k, v in snapshot(archive).items() if k in before} == before
        assert_round_trip(arch, "gmos", GMOS)
        assert "mef_raw_test_frame" not in arch
        for eid in arch.exposure_ids():
            assert arch.status(eid)["ingest"]["state"] == "done"
        if by_name[SAAO.name].status == "done":
            assert_round_trip(arch, "a8280271", SAAO)
        assert arch.summary()["n_staging_leftovers"] == 0
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True, timeout=30)
        shutil.rmtree(disk, ignore_errors=True)
