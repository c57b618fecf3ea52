"""The Zarr v3 archive: layout, xarray view, format version, atomic writes, status."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
import zarr

from conftest import FZ, GMOS, MEF, SAAO, astropy_pixels
from crscale.io import FORMAT_VERSION, Archive, ArchiveError, read_exposure


def test_layout_attrs_and_xarray_view(tmp_path):
    arch = Archive(tmp_path / "a.zarr", mode="a")
    exp = read_exposure(MEF)
    arch.write_exposure(exp, chunks=(200, 256))
    root = zarr.open_group(str(tmp_path / "a.zarr"), mode="r")
    assert root.attrs["crscale_format"] == FORMAT_VERSION
    assert root.metadata.zarr_format == 3
    assert set(root.attrs["software"]) >= {"crscale", "zarr", "numpy", "astropy"}

    attrs = arch.exposure_attrs("mef_raw_test_frame")
    assert attrs["source"]["sha256"] == exp.sha256
    assert attrs["source"]["path"] == str(MEF)
    assert attrs["detectors"] == ["SCI_1", "SCI_2", "SCI_3", "SCI_4"]
    assert attrs["instrument"] == "fa05" and attrs["exptime"] == pytest.approx(94.975)
    assert attrs["status"]["ingest"]["state"] == "done"
    assert attrs["header"]["OBJECT"] == "2021 SO2"

    ds = arch.open_detector("mef_raw_test_frame", "SCI_3")
    assert isinstance(ds, xr.Dataset)
    assert ds["image"].dims == ("y", "x")
    assert ds["image"].dtype == np.float32
    assert ds["image"].encoding["chunks"] == (200, 256)
    np.testing.assert_array_equal(ds["image"].values, astropy_pixels(MEF, 3))
    assert ds.attrs["gain"] == 6.27 and ds.attrs["extver"] == 3
    assert ds.attrs["bzero"] == 32768.0 and ds.attrs["source_dtype"] == "uint16"

    # Plain xarray, without crscale, opens the same group.
    plain = xr.open_zarr(str(tmp_path / "a.zarr"), group="exposures/mef_raw_test_frame/SCI_3",
                         consolidated=False)
    assert plain.sizes == {"y": 522, "x": 544}

    meta = json.loads((tmp_path / "a.zarr/exposures/mef_raw_test_frame/SCI_3/image/zarr.json")
                      .read_text())
    assert meta["zarr_format"] == 3
    assert [c["name"] for c in meta["codecs"]] == ["bytes", "blosc", "crc32c"]
    assert meta["dimension_names"] == ["y", "x"]


def test_dq_and_aux_planes_are_stored(tmp_path):
    arch = Archive(tmp_path / "a.zarr", mode="a")
    arch.write_exposure(read_exposure(FZ))
    arch.write_exposure(read_exposure(GMOS))
    fz = arch.open_detector("banzai_test_frame", "SCI")
    np.testing.assert_array_equal(fz["dq"].values, astropy_pixels(FZ, 3))
    gm = arch.open_detector("gmos", "SCI")
    assert set(gm.data_vars) == {"image", "var", "skyfit"}


def test_image_dtype_policy_keeps_lossless(tmp_path):
    from crscale.io.archive import image_storage_dtype

    assert image_storage_dtype(np.zeros(3, np.uint16), "auto")[0] == np.float32
    big = np.array([1, 2**24 + 1], dtype=np.int32)
    assert image_storage_dtype(big, "auto")[0] == np.int32
    dtype, note = image_storage_dtype(np.array([0.1], dtype=np.float64), "float32")
    assert dtype == np.float32 and "not all exact" in note
    assert image_storage_dtype(np.array([0.5], dtype=np.float64), "auto")[0] == np.float32


def test_failed_write_leaves_nothing_and_keeps_the_old_copy(tmp_path):
    arch = Archive(tmp_path / "a.zarr", mode="a")
    good = read_exposure(MEF)
    arch.write_exposure(good)
    before = arch.open_detector("mef_raw_test_frame", "SCI_1")["image"].values

    broken = read_exposure(MEF)
    # A plane zarr cannot store, on the second detector: the first is already written.
    broken.detectors[1].aux["broken"] = np.array([[object()]], dtype=object)
    with pytest.raises(Exception):  # noqa: B017 - whatever zarr raises, nothing may remain
        arch.write_exposure(broken, overwrite=True)
    assert arch.status("mef_raw_test_frame")["ingest"]["state"] == "done"
    np.testing.assert_array_equal(
        arch.open_detector("mef_raw_test_frame", "SCI_1")["image"].values, before)
    assert "broken" not in arch.open_detector("mef_raw_test_frame", "SCI_2")
    assert not any(p.is_dir() for p in (tmp_path / "a.zarr/staging").iterdir())

    broken.exposure_id = "new_one"
    with pytest.raises(Exception):  # noqa: B017
        arch.write_exposure(broken)
    assert "new_one" not in arch and arch.exposure_ids() == ["mef_raw_test_frame"]


def test_existing_exposure_is_not_overwritten_without_force(tmp_path):
    arch = Archive(tmp_path / "a.zarr", mode="a")
    arch.write_exposure(read_exposure(SAAO))
    with pytest.raises(ArchiveError, match="exists"):
        arch.write_exposure(read_exposure(SAAO))


def test_overwrite_replaces_atomically(tmp_path):
    arch = Archive(tmp_path / "a.zarr", mode="a")
    arch.write_exposure(read_exposure(SAAO), chunks=(64, 64))
    arch.write_exposure(read_exposure(SAAO), chunks=(128, 128), overwrite=True)
    ds = arch.open_detector("a8280271", "PRIMARY")
    assert ds["image"].encoding["chunks"] == (128, 128)
    assert not any(p.is_dir() for p in (tmp_path / "a.zarr/trash").iterdir())


def test_leftover_staging_is_cleaned(tmp_path):
    arch = Archive(tmp_path / "a.zarr", mode="a")
    (tmp_path / "a.zarr/staging/dead-123").mkdir()
    assert arch.summary()["n_staging_leftovers"] == 1
    assert arch.clean_staging() == 1
    assert arch.summary()["n_staging_leftovers"] == 0


def test_status_and_failure_records(tmp_path):
    arch = Archive(tmp_path / "a.zarr", mode="a")
    arch.write_exposure(read_exposure(SAAO))
    arch.set_status("a8280271", "detect", "done", model="deepcr-3-32", threshold=0.5)
    st = arch.status("a8280271")
    assert st["ingest"]["state"] == "done" and st["detect"]["model"] == "deepcr-3-32"
    with pytest.raises(ValueError):
        arch.set_status("a8280271", "nonsense", "done")
    arch.record_failure("/data/x.fits", "/data/x.fits: truncated", kind="truncated")
    arch.record_failure("/data/x.fits", "/data/x.fits: still truncated", kind="truncated")
    assert [f["problem"] for f in arch.failures()] == ["/data/x.fits: still truncated"]
    arch.clear_failure("/data/x.fits")
    assert arch.failures() == []


def test_read_only_and_foreign_stores_are_refused(tmp_path):
    with pytest.raises(ArchiveError, match="no crscale archive"):
        Archive(tmp_path / "missing.zarr", mode="r")
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w", zarr_format=3)
    with pytest.raises(ArchiveError, match="not a crscale archive"):
        Archive(tmp_path / "other.zarr", mode="r")
    Archive(tmp_path / "new.zarr", mode="a")
    g = zarr.open_group(str(tmp_path / "new.zarr"), mode="r+")
    g.attrs["crscale_format"] = "99.0"
    with pytest.raises(ArchiveError, match="newer"):
        Archive(tmp_path / "new.zarr", mode="r")
    ro = Archive(tmp_path / "a.zarr", mode="a")
    ro = Archive(tmp_path / "a.zarr", mode="r")
    with pytest.raises(ArchiveError, match="read-only"):
        ro.write_exposure(read_exposure(SAAO))


def test_forced_reingest_killed_between_renames_is_restored(tmp_path):
    arch = Archive(tmp_path / "a.zarr", mode="a")
    arch.write_exposure(read_exposure(SAAO))
    # The state a kill leaves between "old copy to trash/" and "new copy into place".
    (tmp_path / "a.zarr/exposures/a8280271").rename(tmp_path / "a.zarr/trash/a8280271-0123456789ab")
    assert "a8280271" not in arch
    assert arch.clean_staging() == 1
    assert arch.status("a8280271")["ingest"]["state"] == "done"
    np.testing.assert_array_equal(arch.open_detector("a8280271", "PRIMARY")["image"].values,
                                  astropy_pixels(SAAO, 0))


def test_recent_staging_of_a_live_run_is_left_alone(tmp_path):
    arch = Archive(tmp_path / "a.zarr", mode="a")
    (tmp_path / "a.zarr/staging/live-123").mkdir()
    assert arch.clean_staging(older_than=3600) == 0
    assert (tmp_path / "a.zarr/staging/live-123").exists()
