"""write-fits: real exposures through ingest and detect, back to FITS in each pipeline's convention."""

from __future__ import annotations

import hashlib
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from conftest import DECAM, DECAM_DQ, FZ, GMOS, HST, MEF, copy_to
from crscale.engine.detect_stage import detect_archive
from crscale.engine.ingest import ingest
from crscale.engine.write_fits_stage import output_names, write_fits_archive
from crscale.io.archive import Archive
from crscale.io.errors import InputError
from crscale.io.fits_writer import output_path, safe_name
from crscale.io.inputs import InputSpec

# The module's fixture detects 2.7 Mpix of real images once; on a shared, loaded machine that
# alone can take minutes.
pytestmark = pytest.mark.timeout(900)

RECOMPUTED = {"CHECKSUM", "DATASUM"}  # recomputed where the source had them (headers changed)
STRUCTURAL = {"BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "EXTEND"}


@pytest.fixture(scope="module")
def archive(client, tmp_path_factory):
    """Copies of the real files (so that one can go missing), ingested and detected."""
    folder = tmp_path_factory.mktemp("wf-in")
    files = {p.name: copy_to(p, folder) for p in (MEF, FZ, DECAM, DECAM_DQ, GMOS, HST)}
    specs = [InputSpec(str(files[p.name])) for p in (FZ, GMOS, HST)]
    specs.append(InputSpec(str(files[DECAM.name]), str(files[DECAM_DQ.name])))
    path = folder / "a.zarr"
    assert ingest(specs, path, client=client, progress=False, echo=None).ok
    # Two of the MEF's four amplifiers keep the detection short; the other two must be copied as they are.
    assert ingest([str(files[MEF.name])], path, hdus=["SCI,1", "SCI,3"], client=client, progress=False,
                  echo=None).ok
    assert detect_archive(path, client=client, progress=False, echo=None).ok
    return path


@pytest.fixture(scope="module")
def native(archive, client, tmp_path_factory):
    out = tmp_path_factory.mktemp("wf-native")
    report = write_fits_archive(archive, out, client=client, progress=False, echo=None)
    assert report.ok and report.counts()["done"] == 5, report.summary()
    return out, report


def _mask(arch: Archive, eid: str, det: str) -> np.ndarray:
    return np.asarray(arch.root[f"exposures/{eid}/{det}/mask"][...]) != 0


def _eid(arch: Archive, name: str) -> str:
    return next(e for e in arch.exposure_ids() if arch.exposure_attrs(e)["source"]["name"] == name)


def _assert_copied(src: Path, out: Path, changed: set[int] = frozenset()) -> None:
    """Same HDUs in order, every source card with its value; pixels equal except in ``changed``."""
    with fits.open(src) as s, fits.open(out) as o:
        assert [(h.name, h.ver) for h in o[: len(s)]] == [(h.name, h.ver) for h in s]
        for i, (hs, ho) in enumerate(zip(s, o, strict=False)):
            assert type(ho) is type(hs), (out.name, i)  # compressed stays compressed
            for card in hs.header.cards:
                key = card.keyword
                if key in RECOMPUTED or key in STRUCTURAL or key in ("", "HISTORY", "COMMENT"):
                    continue
                assert ho.header[key] == hs.header[key], (out.name, i, key)
            if "CTYPE1" in hs.header:
                assert WCS(hs.header).wcs.compare(WCS(ho.header).wcs), (out.name, i)
            if i not in changed and isinstance(hs, fits.PrimaryHDU | fits.ImageHDU | fits.CompImageHDU):
                assert (hs.data is None) == (ho.data is None)
                if hs.data is not None:
                    assert hs.data.dtype == ho.data.dtype
                    np.testing.assert_array_equal(ho.data, hs.data)
        for hs, ho in zip(s, o, strict=False):
            for tag in ("HISTORY", "COMMENT"):
                before = list(hs.header.get(tag, []))
                assert list(ho.header.get(tag, []))[: len(before)] == before


def _assert_checksums_valid(out: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with fits.open(out, checksum=True) as h:
            for hdu in h:
                _ = hdu.data
    text = [str(w.message) for w in caught]
    bad = [t for t in text if "checksum" in t.lower() or "datasum" in t.lower()]
    assert not bad, bad


def test_lco_mef_gets_one_crmask_per_sci(archive, native):
    out, _ = native
    arch = Archive(archive)
    eid = _eid(arch, MEF.name)
    target = out / MEF.name
    _assert_copied(MEF, target)
    _assert_checksums_valid(target)
    with fits.open(target) as o:
        assert [(h.name, h.ver) for h in o[5:]] == [("CRMASK", 1), ("CRMASK", 3)]  # detected amplifiers
        total = 0
        for v in (1, 3):
            crm = o["CRMASK", v]
            assert crm.data.dtype == np.uint8
            np.testing.assert_array_equal(crm.data != 0, _mask(arch, eid, f"SCI_{v}"))
            assert crm.header["CRSNPIX"] == int(crm.data.sum())
            total += int(crm.data.sum())
        ph = o[0].header
        assert total > 0 and ph["CRSNPIX"] == total
        assert ph["CRSMODEL"] == "crscale-default" and 0 < ph["CRSTHRES"] < 1
        assert len(ph["CRSWSHA"]) == 64 and ph["CRSDILAT"] == 1 and ph["CRSFLAGS"] == "native"
        # The digest recorded by the detection itself (not the model file's at write time).
        from crscale.models.store import weights_file

        shipped = hashlib.sha256(weights_file("default").read_bytes()).hexdigest()
        assert arch.status(eid)["detect"]["weights_sha256"] == ph["CRSWSHA"] == shipped
        assert any("crscale" in str(h) for h in ph["HISTORY"])


def test_banzai_fz_stays_compressed_and_flags_bpm_bit_8(archive, native):
    out, _ = native
    arch = Archive(archive)
    eid = _eid(arch, FZ.name)
    target = out / FZ.name
    _assert_copied(FZ, target, changed={3})
    _assert_checksums_valid(target)
    mask = _mask(arch, eid, "SCI")
    assert mask.any()
    with fits.open(FZ) as s, fits.open(target) as o:
        assert isinstance(o["SCI"], fits.CompImageHDU) and isinstance(o["BPM"], fits.CompImageHDU)
        src_bpm, bpm = s["BPM"].data, o["BPM"].data
        assert bpm.dtype == src_bpm.dtype
        np.testing.assert_array_equal((bpm & 8) != 0, mask | ((src_bpm & 8) != 0))
        np.testing.assert_array_equal(bpm & ~np.uint8(8), src_bpm & ~np.uint8(8))  # other bits kept
        assert len(o) == len(s)  # flagged in place: no CRMASK
    raw = {"disable_image_compression": True}
    with fits.open(FZ, **raw) as s, fits.open(target, **raw) as o:
        # the untouched compressed SCI is copied compressed, tile bytes and all
        assert o["SCI"].header["ZCMPTYPE"] == s["SCI"].header["ZCMPTYPE"]
        assert bytes(o["SCI"].data.tobytes()) == bytes(s["SCI"].data.tobytes())


def test_decam_companion_gets_code_5_only_where_0(archive, native):
    out, _ = native
    arch = Archive(archive)
    eid = _eid(arch, DECAM.name)
    _assert_copied(DECAM, out / DECAM.name)
    _assert_copied(DECAM_DQ, out / DECAM_DQ.name, changed={1})
    mask = _mask(arch, eid, "N2")
    src = fits.getdata(DECAM_DQ, 1)
    new = fits.getdata(out / DECAM_DQ.name, 1)
    assert new.dtype == src.dtype and np.count_nonzero(src) == 177  # the pipeline's own CR codes
    np.testing.assert_array_equal(new[src != 0], src[src != 0])  # no existing code overwritten
    zero = src == 0
    np.testing.assert_array_equal(new[zero] == 5, mask[zero])
    assert np.all(new[zero & ~mask] == 0)
    with fits.open(out / DECAM.name) as o:
        assert len(o) == 2 and o[0].header["CRSNPIX"] == int(mask.sum())  # flags in the ood, no CRMASK


def test_gmos_crmask_equals_the_archive_mask(archive, native):
    out, _ = native
    arch = Archive(archive)
    eid = _eid(arch, GMOS.name)
    _assert_copied(GMOS, out / GMOS.name)
    with fits.open(out / GMOS.name) as o:
        hdus = [(h.name, h.ver) for h in o]
        assert hdus == [("PRIMARY", 1), ("SCI", 1), ("VAR", 1), ("SKYFIT", 1), ("CRMASK", 1)]
        np.testing.assert_array_equal(o["CRMASK"].data != 0, _mask(arch, eid, "SCI"))
        assert o["CRMASK"].header["CRSSRC"] == "SCI"
        assert WCS(o["SCI"].header).wcs.compare(WCS(o["CRMASK"].header).wcs)


def test_hst_raw_empty_dq_planes_get_data_with_bit_8192(archive, native):
    out, _ = native
    arch = Archive(archive)
    eid = _eid(arch, HST.name)
    target = out / HST.name
    _assert_copied(HST, target, changed={3, 6})
    with fits.open(HST) as s, fits.open(target) as o:
        assert len(o) == len(s) == 7
        for ver in (1, 2):
            assert s["DQ", ver].data is None  # raw file: a null DQ extension (NPIX1/NPIX2/PIXVALUE)
            dq = o["DQ", ver].data
            assert dq.shape == s["SCI", ver].data.shape and dq.dtype.newbyteorder("=") == np.int16
            mask = _mask(arch, eid, f"SCI_{ver}")
            np.testing.assert_array_equal(dq & 8192 != 0, mask)
            np.testing.assert_array_equal(dq & ~8192, s["DQ", ver].header["PIXVALUE"])
            assert o["ERR", ver].data is None  # untouched null HDU stays null
        assert o[0].header["CRSNPIX"] == sum(int(_mask(arch, eid, f"SCI_{v}").sum()) for v in (1, 2))


def test_crmask_clean_and_prob(archive, client, tmp_path):
    arch = Archive(archive)
    eid = _eid(arch, HST.name)
    report = write_fits_archive(archive, tmp_path, exposures=[eid], pixels="clean", flags="crmask",
                                prob=True, client=client, progress=False, echo=None)
    assert report.ok, report.summary()
    with fits.open(HST) as s, fits.open(tmp_path / HST.name) as o:
        added = [(h.name, h.ver) for h in o[7:]]
        assert added == [("CRMASK", 1), ("CRPROB", 1), ("CRMASK", 2), ("CRPROB", 2)]
        for ver in (1, 2):
            base = f"exposures/{eid}/SCI_{ver}"
            assert o["DQ", ver].data is None  # --flags crmask leaves the pipeline's plane alone
            np.testing.assert_array_equal(o["SCI", ver].data, arch.root[f"{base}/clean"][...])
            assert o["SCI", ver].header["CRSPIXEL"] == "clean"
            np.testing.assert_array_equal(o["CRMASK", ver].data != 0, arch.root[f"{base}/mask"][...] != 0)
            np.testing.assert_array_equal(o["CRPROB", ver].data, arch.root[f"{base}/prob"][...])
            for key in ("CRVAL1", "CD1_1", "EXPNAME"):
                assert o["SCI", ver].header[key] == s["SCI", ver].header[key]


def test_rerun_skips_and_force_rewrites_identically(archive, native, client):
    out, first = native
    digest = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir()}
    again = write_fits_archive(archive, out, client=client, progress=False, echo=None)
    assert again.counts() == {"done": 0, "skipped": 5, "failed": 0}
    forced = write_fits_archive(archive, out, force=True, client=client, progress=False, echo=None)
    assert forced.counts()["done"] == 5
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir()} == digest
    assert len(digest) == 6  # 5 exposures + the DECam ood companion, no temporary left


def test_missing_or_changed_source_is_a_recorded_failure(archive, client, tmp_path):
    arch = Archive(archive)
    eid = _eid(arch, HST.name)
    src = Path(arch.exposure_attrs(eid)["source"]["path"])
    hidden = src.with_name("hidden.fits")
    src.rename(hidden)
    try:
        report = write_fits_archive(archive, tmp_path, exposures=[eid], client=client, progress=False,
                                    echo=None)
    finally:
        hidden.rename(src)
    (r,) = report.results
    assert r.status == "failed" and r.kind == "missing"
    assert str(src) in r.message and "gone" in r.message
    recs = [f for f in Archive(archive).failures() if f["stage"] == "write-fits"]
    assert recs and recs[-1]["exposure_id"] == eid and recs[-1]["path"] == str(src)
    assert not list(tmp_path.iterdir())  # nothing half-written
    saved = src.read_bytes()
    try:
        src.write_bytes(saved[:-2880] + b" " * 2880)  # same size, other bytes
        report = write_fits_archive(archive, tmp_path, exposures=[eid], client=client, progress=False,
                                    echo=None)
        assert report.results[0].kind == "changed" and "SHA-256" in report.results[0].message
    finally:
        src.write_bytes(saved)
    report = write_fits_archive(archive, tmp_path, exposures=[eid], client=client, progress=False,
                                echo=None)
    assert report.ok
    assert not [f for f in Archive(archive).failures() if f["stage"] == "write-fits"]  # cleared


@pytest.mark.parametrize("name", ["../../etc/passwd", "/abs/x.fits", "..", ".hidden.fits", "a b/../c.fits"])
def test_output_names_never_leave_outdir(tmp_path, name):
    try:
        target = output_path(tmp_path, name)
    except InputError:
        return
    assert target.parent == tmp_path.resolve() and not target.name.startswith(".")


def test_safe_name_keeps_plain_basenames():
    assert safe_name("/data/night1/c4d_170316_ooi_z.fits.fz") == "c4d_170316_ooi_z.fits.fz"
    with pytest.raises(InputError):
        safe_name("..")


def test_same_basename_in_two_folders_gets_distinct_names(client, tmp_path):
    one = copy_to(HST, tmp_path / "night1")
    two = tmp_path / "night2" / HST.name
    two.parent.mkdir()
    with fits.open(HST) as h:
        h[0].header["OBSERVER"] = "second copy"  # other content: not a duplicate
        h.writeto(two)
    path = tmp_path / "b.zarr"
    assert ingest([str(one), str(two)], path, client=client, progress=False, echo=None).ok
    names = output_names(Archive(path))
    images = sorted(n for n, _ in names.values())
    assert len(set(images)) == 2 and all(n.endswith(HST.name) for n in images)
    assert all(n == f"{eid}.{HST.name}" for eid, (n, _) in names.items())
    shutil.rmtree(path)


def test_decam_pipeline_cr_is_detected_catalogued_and_compared(archive, client):
    """Code 5 (CR) is not a bad pixel: the CR is found, catalogued, its area kept, and compared."""
    from crscale.cli import format_exposure
    from crscale.engine.catalogue_stage import catalogue_archive
    from crscale.io.catalogue_store import read_table

    arch = Archive(archive)
    eid = _eid(arch, DECAM.name)
    prior = fits.getdata(DECAM_DQ, 1) == 5
    mask = _mask(arch, eid, "N2")
    assert (mask & prior).sum() >= 0.9 * mask.sum() > 0  # crscale's CR is the pipeline's
    assert catalogue_archive(archive, exposures=[eid], client=client, progress=False, echo=None).ok
    crs = read_table(archive, "crs")
    rows = read_table(archive, "exposures")
    assert (crs.exposure == eid).sum() >= 1
    assert rows[rows.exposure == eid].n_pixels_usable.item() == prior.size  # no pixel lost to code 5
    text = format_exposure(arch, eid)
    both = int((mask & prior).sum())
    assert "dq means   noirlab-cp (codes)" in text
    assert f"pipeline flagged 177 px, crscale {int(mask.sum())} px, both {both}" in text


def test_cli_write_fits(archive, client, tmp_path):
    import subprocess
    import sys

    arch = Archive(archive)
    eid = _eid(arch, GMOS.name)
    cmd = [sys.executable, "-m", "crscale.cli", "write-fits", str(archive), str(tmp_path / "out"), "-e", eid,
           "--flags", "crmask", "--prob", "--scheduler", client.scheduler.address, "--no-progress"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "write-fits: 1 exposure(s) written, 0 skipped, 0 failed; 1 file(s)" in res.stdout
    with fits.open(tmp_path / "out" / GMOS.name) as o:
        assert [h.name for h in o[4:]] == ["CRMASK", "CRPROB"] and o[0].header["CRSFLAGS"] == "crmask"
    res = subprocess.run(cmd[:5] + [str(tmp_path / "out2"), "-e", "nope"], capture_output=True, text=True)
    assert res.returncode == 2 and "no exposure(s) 'nope'" in res.stderr
