"""FITS reading: pixel round trip against astropy, HDU selection, DQ planes, bad files."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest
from astropy.io import fits

from conftest import (
    DECAM,
    DECAM_DQ,
    EMMI,
    FZ,
    GMOS,
    ITL_CRS,
    MEF,
    SAAO,
    astropy_pixels,
    make_bad_inputs,
)
from crscale.io import InputError, read_exposure, sha256_file
from crscale.io.fits_reader import exposure_id_from_path


@pytest.mark.parametrize("path, expected", [
    (SAAO, {"PRIMARY": 0}),
    (EMMI, {"PRIMARY": 0}),
    (MEF, {"SCI_1": 1, "SCI_2": 2, "SCI_3": 3, "SCI_4": 4}),
    (FZ, {"SCI": 1}),
    (GMOS, {"SCI": 1}),
    (DECAM, {"N2": 1}),
])
def test_pixels_equal_astropy_bit_for_bit(path, expected):
    exp = read_exposure(path)
    assert {d.name: d.hdu_index for d in exp.detectors} == expected
    for det in exp.detectors:
        ref = astropy_pixels(path, det.hdu_index)
        assert det.image.dtype == ref.dtype
        assert det.image.dtype.isnative
        np.testing.assert_array_equal(det.image, ref)
        # Bit for bit, not just equal values (NaN payloads, -0.0).
        assert det.image.tobytes() == ref.tobytes()


def test_bzero_bscale_conventions_are_applied():
    saao = read_exposure(SAAO).detectors[0]
    assert saao.image.dtype == np.uint16 and saao.bzero == 32768.0 and saao.bitpix == 16
    emmi = read_exposure(EMMI).detectors[0]
    assert emmi.bitpix == 16 and emmi.bscale != 1.0
    with fits.open(EMMI, do_not_scale_image_data=True) as h:
        raw = h[0].data.astype(np.float64)
        bzero, bscale = h[0].header["BZERO"], h[0].header["BSCALE"]
    np.testing.assert_allclose(emmi.image, (raw * bscale + bzero).astype(np.float32), rtol=1e-6)


def test_big_endian_source_becomes_native_without_changing_values():
    with fits.open(GMOS) as h:
        assert h["SCI"].data.dtype.byteorder == ">"
    det = read_exposure(GMOS).detectors[0]
    assert det.image.dtype == np.dtype("float32") and det.image.dtype.isnative


def test_gzip_file_reads_like_the_plain_file(tmp_path):
    gz = tmp_path / "a8280271.fits.gz"
    with open(SAAO, "rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    plain, packed = read_exposure(SAAO), read_exposure(gz)
    assert packed.exposure_id == "a8280271"
    np.testing.assert_array_equal(plain.detectors[0].image, packed.detectors[0].image)
    assert packed.sha256 == sha256_file(gz) != plain.sha256


def test_mef_metadata_per_detector():
    exp = read_exposure(MEF)
    assert [d.meta.gain for d in exp.detectors] == [6.42, 6.23, 6.27, 6.26]
    assert all(d.extname == "SCI" for d in exp.detectors)
    assert [d.extver for d in exp.detectors] == [1, 2, 3, 4]
    assert exp.primary_header["INSTRUME"] == "fa05"


@pytest.mark.parametrize("selector, names", [
    (["SCI,2"], ["SCI_2"]),
    (["sci , 3"], ["SCI_3"]),
    ([4], ["SCI_4"]),
    (["1", "4"], ["SCI_1", "SCI_4"]),
    (["SCI   "], ["SCI_1", "SCI_2", "SCI_3", "SCI_4"]),  # EXTNAME with trailing spaces
])
def test_hdu_selection(selector, names):
    assert [d.name for d in read_exposure(MEF, hdus=selector).detectors] == names


def test_hdu_selection_matching_nothing_is_an_error():
    with pytest.raises(InputError, match="no HDU matches"):
        read_exposure(MEF, hdus=["VAR"])


def test_bpm_extension_of_compressed_file_becomes_dq():
    det = read_exposure(FZ).detectors[0]
    assert det.dq_source == "HDU 3 (BPM)"
    np.testing.assert_array_equal(det.dq, astropy_pixels(FZ, 3))
    assert det.dq.dtype == np.uint8


def test_aux_planes_are_attached_not_treated_as_detectors():
    det = read_exposure(GMOS).detectors[0]
    assert set(det.aux) == {"var", "skyfit"}
    np.testing.assert_array_equal(det.aux["var"], astropy_pixels(GMOS, 2))


def test_separate_dq_file_is_matched_by_extname():
    exp = read_exposure(DECAM, dq_path=DECAM_DQ)
    det = exp.detectors[0]
    ref = astropy_pixels(DECAM_DQ, 1)
    np.testing.assert_array_equal(det.dq, ref)
    assert det.dq.dtype.kind == "u"
    assert (det.dq == 5).sum() == 177  # the CP's cosmic-ray code, as the manifest says
    assert exp.dq_path == str(DECAM_DQ)


def test_dq_file_of_the_wrong_shape_names_the_dq_file():
    with pytest.raises(InputError, match="shape") as err:
        read_exposure(DECAM, dq_path=SAAO)
    assert err.value.path == str(SAAO)


def test_exposure_ids_from_names():
    assert exposure_id_from_path("/x/banzai_test_frame.fits.fz") == "banzai_test_frame"
    assert exposure_id_from_path("/x/c4d.N2.fits") == "c4d.N2"
    assert exposure_id_from_path("/x/a b#c.FITS") == "a_b_c"
    assert exposure_id_from_path("/x/__odd.fits") == "odd"


@pytest.mark.parametrize("name, kind, words", [
    ("junk", "corrupt", "not a readable FITS file"),
    ("truncated", "truncated", "truncated"),
    ("truncated_tail", "truncated", "truncated"),
    ("empty", "corrupt", "empty file"),
    ("table_only", "no-image", "no 2-D image"),
    ("all_nan", "no-finite-pixels", "no finite pixel"),
])
def test_bad_files_raise_errors_naming_file_and_problem(tmp_path, name, kind, words):
    bad = make_bad_inputs(tmp_path)[name]
    with pytest.raises(InputError) as err:
        read_exposure(bad)
    assert err.value.kind == kind
    assert words in str(err.value)
    assert str(bad) in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_exposure(tmp_path / "nope.fits")


def test_nan_pixels_are_kept_and_reported(tmp_path):
    path = make_bad_inputs(tmp_path)["nan_pixels"]
    det = read_exposure(path).detectors[0]
    assert det.n_nonfinite == 51
    assert np.isnan(det.image[10:20, 30:35]).all() and np.isinf(det.image[100, 100])
    assert any("NaN/inf" in w for w in det.meta.warnings)


def test_table_only_real_file_is_the_itl_cr_table():
    with fits.open(ITL_CRS) as h:
        assert isinstance(h[1], fits.BinTableHDU)


def test_checksum_mismatch_is_a_warning_not_a_failure(tmp_path):
    path = tmp_path / "saao_checksummed.fits"
    with fits.open(SAAO) as h:
        h.writeto(path, checksum=True)
    raw = bytearray(path.read_bytes())
    raw[-3000] ^= 0xFF  # flip one data byte: DATASUM no longer matches
    path.write_bytes(bytes(raw))
    exp = read_exposure(path)
    assert len(exp.detectors) == 1
    assert any("Checksum" in w or "Datasum" in w for w in exp.warnings), exp.warnings


def _mef_with_dq_planes(tmp_path):
    """The real LCO MEF plus one DQ extension per amplifier (saturated pixels flagged)."""
    out = tmp_path / "mef_with_dq.fits"
    with fits.open(MEF) as hdul:
        hdus = [hdu.copy() for hdu in hdul]
        for ver in range(1, 5):
            flag = (hdul[ver].data > 2000 + 100 * ver).astype(np.uint8) * ver
            hdus.append(fits.ImageHDU(flag, name="DQ", ver=ver))
    fits.HDUList(hdus).writeto(out)
    return out


def test_dq_extensions_follow_extver_and_hdu_selection(tmp_path):
    path = _mef_with_dq_planes(tmp_path)
    full = read_exposure(path)
    assert [d.dq_source for d in full.detectors] == [f"HDU {4 + v} (DQ)" for v in range(1, 5)]
    for ver, det in enumerate(full.detectors, 1):
        assert set(np.unique(det.dq)) <= {0, ver}
    only2 = read_exposure(path, hdus=["SCI,2"]).detectors
    assert [d.name for d in only2] == ["SCI_2"]
    np.testing.assert_array_equal(only2[0].dq, astropy_pixels(path, 6))


def test_stored_header_keeps_real_keywords_starting_with_z():
    exp = read_exposure(DECAM)
    assert "ZD" in exp.primary_header  # zenith distance, not a compression keyword
    assert exp.detectors[0].meta.keywords["saturation"] == "SATURATE+SATURATA+SATURATB"
