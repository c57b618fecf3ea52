"""DQ conventions: what each pipeline's data-quality values mean, and how a CR is flagged back."""

from __future__ import annotations

import dask.config
import numpy as np
import pytest
from astropy.io import fits

from conftest import DECAM, DECAM_DQ, FZ, GMOS, HST, MEF
from crscale.io.dq import ExcludedView, cr_flag_agreement, load_conventions, match_convention
from crscale.io.fits_reader import read_exposure


@pytest.mark.parametrize(
    ("path", "expected"),
    [(DECAM, "noirlab-cp"), (FZ, "lco-banzai"), (MEF, "lco-banzai"), (HST, "hst"), (GMOS, "generic")],
)
def test_real_files_match_their_pipeline(path, expected):
    meta = read_exposure(path).detectors[0].meta
    assert match_convention(meta.instrument, meta.telescope, detector=meta.detector).name == expected


def test_decam_cp_codes():
    cp = match_convention("DECam", "CTIO 4.0-m telescope")
    codes = np.arange(10)
    assert cp.excluded(codes).tolist() == [0, 1, 1, 1, 1, 0, 1, 0, 1, 1]  # 9 is unknown: bad
    assert cp.cr_mask(codes).tolist() == [c == 5 for c in codes]
    assert cp.saturated_mask(codes).tolist() == [c == 3 for c in codes]
    real = fits.getdata(DECAM_DQ, 1)
    assert np.count_nonzero(cp.cr_mask(real)) == 177 and not cp.excluded(real).any()  # its CR is usable


def test_hst_bits():
    hst = match_convention("ACS", "HST", detector="WFC")
    dq = np.array([0, 8192, 4096 | 64, 256, 2048, 4, 16, 32 | 64, 8192 | 4], np.int16)
    assert hst.excluded(dq).tolist() == [0, 0, 0, 1, 1, 1, 1, 0, 1]
    assert hst.cr_mask(dq).tolist() == [0, 1, 1, 0, 0, 0, 0, 0, 1]
    assert hst.saturated_mask(dq).tolist() == [0, 0, 0, 1, 1, 0, 0, 0, 0]


def test_banzai_and_generic():
    lco = match_convention("kb29", "0m4-14")
    bpm = np.array([0, 1, 2, 4, 8, 8 | 2, 16], np.uint8)
    assert lco.excluded(bpm).tolist() == [0, 1, 1, 1, 0, 1, 1]  # 16: unknown bit, bad
    assert lco.cr_mask(bpm).tolist() == [0, 0, 0, 0, 1, 1, 0]
    gen = match_convention("GMOS-S", "Gemini-South")
    assert gen.kind == "nonzero" and gen.excluded(np.array([0, 5, 8192])).tolist() == [0, 1, 1]
    assert not gen.cr_mask(np.array([0, 5, 8192])).any() and gen.flag_plane is None


def test_flag_keeps_existing_bits_and_codes():
    crs = np.array([1, 1, 0, 1], bool)
    hst = match_convention("WFC3", "HST", detector="UVIS")
    out = hst.flag(np.array([0, 4 | 64, 16, 8192], np.int16), crs)
    assert out.tolist() == [8192, 4 | 64 | 8192, 16, 8192] and out.dtype == np.int16
    cp = match_convention("DECam", "CTIO")
    codes = cp.flag(np.array([0, 3, 7, 0], ">i4"), crs)
    assert codes.tolist() == [5, 3, 7, 5]  # never overwrite a code: codes are not bits
    assert hst.flag(np.zeros(4, np.uint8), crs).dtype == np.uint16  # 8192 does not fit a byte


def test_agreement_with_pipeline_flags():
    cp = match_convention("DECam", "CTIO")
    dq = np.array([5, 5, 5, 0, 0, 1])
    mask = np.array([1, 1, 0, 1, 0, 1])
    g = cr_flag_agreement(dq, mask, cp)
    assert g == {"convention": "noirlab-cp", "pipeline": 3, "crscale": 3, "both": 2,
                 "recall": 2 / 3, "precision": 2 / 3}  # the bad pixel (code 1) does not count


def test_excluded_view_reads_slices():
    cp = match_convention("DECam", "CTIO")
    dq = np.array([[0, 5], [3, 1]])
    view = ExcludedView(dq, cp)
    assert view.shape == (2, 2) and view[1:2].tolist() == [[1, 1]] and view[0:1].tolist() == [[0, 0]]


def test_user_conventions_override_and_extend():
    user = [
        {"name": "lco-banzai", "cosmic_ray": [8, 16]},
        {"name": "my-camera", "match": {"instrument": "^mycam$"}, "kind": "codes", "bad": [1],
         "cosmic_ray": [9], "flag_cr": {"plane": "FLAGS", "value": 9}},
    ]
    with dask.config.set({"crscale.dq.conventions": user}):
        table = load_conventions()
        assert table[0].name == "my-camera" and table[-1].name == "generic"
        assert match_convention("mycam", None).flag_plane == "FLAGS"
        lco = match_convention("fa05", "1m0-08")
        assert lco.cosmic_ray == (8, 16) and lco.saturated == (2,)  # other fields kept
    with pytest.raises(ValueError, match="'broken'.*powers of two"):
        load_conventions([{"name": "broken", "kind": "bits", "bad": [3]}])
    with pytest.raises(ValueError, match="kind must be one of"):
        load_conventions([{"name": "x", "kind": "flags"}])


def test_evaluate_against_the_pipelines_own_cr_flags(tmp_path):
    from crscale.evaluate.api import evaluate

    report = evaluate([DECAM], ["pipeline"], tmp_path / "ev", baselines=(), progress=False,
                      log=lambda _msg: None)
    data = report.run["data"]
    assert data["mode"] == "pipeline" and data["n_cr_pixels"] == 177 and data["n_pixels"] == 251 * 245
    m = report.metrics["crscale:crscale-default"]
    assert m["n_cr_pixels"] == 177 and m["tpr"] > 0.2 and m["fdr"] < 0.1  # crscale finds the CP's CR
    said: list[str] = []
    with pytest.raises(ValueError, match="no usable image"):
        evaluate([GMOS], ["pipeline"], None, baselines=(), progress=False, log=said.append)
    assert any("no DQ plane with pipeline CR flags" in m and "'generic'" in m for m in said), said
