"""Instrument profiles: matching on the sample's real metadata, user overrides, validation, guesses."""

from __future__ import annotations

import dask.config
import pytest
from astropy.io import fits

from conftest import DECAM, EMMI, FZ, GMOS, MEF, SAAO
from crscale.catalogue.profiles import (
    DetectorPhysics,
    detector_physics,
    load_profiles,
    match_profile,
    profiles_table,
)
from crscale.io.metadata import extract_metadata

KEY = "crscale.catalogue.profiles"

# Detector attrs as the archive stores them for the bundled sample (`crscale run --sample`).
SAAO_DET = {
    "instrument": "STE3 CCD", "telescope": "SAAO 1.0m", "detector": None, "gain": 1.9,
    "guessed": ["saturation", "detector", "binning"], "binning": [1, 1], "pixel_size_um": None,
    "exptime": 150.04, "darktime": None,
}
SBIG_DET = {
    "instrument": "kb29", "telescope": "0m4-14", "detector": None, "gain": 1.4,
    "guessed": ["detector"], "binning": [2, 2], "pixel_size_um": None,
}
SINISTRO_DET = {
    "instrument": "fa05", "telescope": "1m0-08", "detector": None, "gain": 6.42,
    "guessed": ["detector"], "binning": [2, 2], "pixel_size_um": None, "exptime": 94.975,
}
DECAM_DET = {
    "instrument": "DECam", "telescope": "CTIO 4.0-m telescope", "detector": "S3-222_135959-11-1",
    "gain": 3.877, "guessed": [], "binning": [1, 1], "pixel_size_um": None,
}
EMMI_DET = {
    "instrument": "EMMI", "telescope": "ESONTTB", "detector": None, "gain": 1.0,
    "guessed": ["gain", "readnoise", "saturation", "detector", "binning"], "binning": [1, 1],
    "pixel_size_um": None,
}
GMOS_DET = {
    "instrument": "GMOS-S", "telescope": "Gemini-South", "detector": "GMOS + Hamamatsu_new",
    "gain": 1.0, "guessed": ["gain", "readnoise", "saturation", "binning"], "binning": [1, 1],
    "pixel_size_um": None,
}


def exp_of(det):
    return {"instrument": det["instrument"], "telescope": det["telescope"], "exptime": 100.0,
            "date_obs": "2021-10-08T01:55:17.144", "mjd_obs": 59495.08}


@pytest.mark.parametrize(
    ("det", "profile"),
    [
        (SAAO_DET, "generic"),
        (SBIG_DET, "lco-sbig"),
        (SINISTRO_DET, "lco-sinistro"),
        (DECAM_DET, "decam"),
        (EMMI_DET, "generic"),
        (GMOS_DET, "gemini-gmos-hamamatsu"),
    ],
)
def test_sample_attrs_get_their_profile(det, profile):
    assert detector_physics(exp_of(det), det).profile == profile


@pytest.mark.parametrize(
    ("path", "index", "profile"),
    [
        (SAAO, 0, "generic"),
        (FZ, 1, "lco-sbig"),
        (MEF, 2, "lco-sinistro"),
        (DECAM, 1, "decam"),
        (EMMI, 0, "generic"),
        (GMOS, 1, "gemini-gmos-hamamatsu"),
    ],
)
def test_real_headers_match_their_profile(path, index, profile):
    # The identification strings straight from the bundled files' headers, via ingest's reader.
    with fits.open(path) as hdul:
        hdu = hdul[index]
        m = extract_metadata(hdu.header, hdul[0].header if index else None,
                             fallbacks={"gain": 1.0, "readnoise": 5.0, "binning": [1, 1]},
                             raw_dtype=hdu.data.dtype)
    assert match_profile(m.instrument, m.telescope, m.detector).name == profile


def test_all_rules_must_hold_and_none_never_matches():
    # Sinistro instrument name on a 0.4 m telescope: the telescope rule fails.
    assert match_profile("fa05", "0m4-14", None).name == "generic"
    assert match_profile("fa05", None, None).name == "generic"
    # Case-insensitive re.search.
    assert match_profile("decam", None, None).name == "decam"
    assert match_profile("LSSTCam", None, "ITL-3800C-229").name == "lsst-itl"
    assert match_profile("LSSTCam", None, "E2V-CCD250-382").name == "lsst-e2v"
    # GMOS detector strings pick the array; an unknown one the GMOS fallback.
    assert match_profile("GMOS-N", "Gemini-North", "GMOS + e2v DD CCD42-90").name == "gemini-gmos-e2v"
    assert match_profile("GMOS-N", "Gemini-North", None).name == "gemini-gmos"
    assert match_profile("ACS", "HST", "WFC").name == "hst-acs-wfc"
    assert match_profile("WFC3", "HST", "UVIS").name == "hst-wfc3-uvis"
    assert match_profile("WFC3", "HST", "IR").name == "generic"


def test_shipped_table_invariants():
    profiles = load_profiles()
    names = [p.name for p in profiles]
    assert len(names) == len(set(names))
    assert names[-1] == "generic"
    itl = profiles[names.index("lsst-itl")]
    assert (itl.pixel_size_um, itl.readout_time_s) == (10.0, 2.0)
    generic = profiles[-1]
    assert generic.match == {} and generic.thickness_um is None
    assert (generic.pixel_size_um, generic.readout_time_s, generic.gain) == (15.0, 0.0, 1.0)
    assert set(generic.guessed) == {"pixel_size_um", "readout_time_s", "gain"}
    decam = profiles[names.index("decam")]
    assert (decam.pixel_size_um, decam.thickness_um) == (15.0, 250.0)
    for p in profiles:
        assert set(p.guessed) <= {"pixel_size_um", "thickness_um", "readout_time_s", "gain"}
        assert p.is_generic or p.match, p.name
        assert p.is_generic or p.references, p.name


def test_empty_match_never_matches_unless_generic():
    with dask.config.set({KEY: [{"name": "catch-all", "match": {}, "pixel_size_um": 5.0}]}):
        profiles = load_profiles()
        assert profiles[0].name == "catch-all"
        assert match_profile("EMMI", "ESONTTB", None).name == "generic"


def test_generic_flags_pixel_readout_and_gain_as_guessed():
    phys = detector_physics(exp_of(EMMI_DET), EMMI_DET)
    assert phys.profile == "generic"
    assert set(phys.guessed) == {"pixel_size_um", "readout_time_s", "gain"}
    assert (phys.pixel_size_um, phys.readout_time_s, phys.gain, phys.thickness_um) == (15.0, 0.0, 1.0, None)


def test_header_gain_is_kept_and_not_guessed():
    saao = detector_physics(exp_of(SAAO_DET), SAAO_DET)
    assert saao.gain == 1.9 and "gain" not in saao.guessed
    # Generic still guesses the physical values.
    assert "pixel_size_um" in saao.guessed and "readout_time_s" in saao.guessed
    decam = detector_physics(exp_of(DECAM_DET), DECAM_DET)
    assert decam.gain == 3.877
    assert decam.guessed == ()
    assert (decam.readout_time_s, decam.thickness_um) == (20.0, 250.0)


def test_ingest_guessed_gain_falls_back_to_profile_gain():
    phys = detector_physics(exp_of(GMOS_DET), GMOS_DET)
    gmos = match_profile("GMOS-S", "Gemini-South", "GMOS + Hamamatsu_new")
    assert phys.gain == gmos.gain != GMOS_DET["gain"]
    assert "gain" in phys.guessed  # the shipped GMOS gain is itself an estimate
    # A profile with a documented gain: ingest guessed, profile value used, not a guess.
    decam = dict(DECAM_DET, gain=1.0, guessed=["gain"])
    phys = detector_physics(exp_of(decam), decam)
    assert phys.gain == 4.0 and "gain" not in phys.guessed


def test_binning_guess_is_not_propagated_and_enters_the_area():
    phys = detector_physics(exp_of(SAAO_DET), SAAO_DET)  # ingest guessed the binning
    assert phys.binning == (1, 1) and "binning" not in phys.guessed
    sbig = detector_physics(exp_of(SBIG_DET), SBIG_DET)
    assert sbig.binning == (2, 2)
    assert sbig.pixel_area_cm2 == pytest.approx((9e-4) ** 2 * 4)
    asym = DetectorPhysics("x", 15.0, (1, 3), None, 0.0, 1.0)
    assert asym.pixel_area_cm2 == pytest.approx(2.25e-6 * 3)
    # No binning in the attrs: (1, 1).
    nobin = {k: v for k, v in DECAM_DET.items() if k != "binning"}
    assert detector_physics({}, nobin).binning == (1, 1)


def test_detector_pixel_size_takes_precedence():
    det = dict(EMMI_DET, pixel_size_um=24.0)
    phys = detector_physics(exp_of(det), det)
    assert phys.profile == "generic"
    assert phys.pixel_size_um == 24.0 and "pixel_size_um" not in phys.guessed
    assert phys.pixel_area_cm2 == pytest.approx((24e-4) ** 2)
    sbig = dict(SBIG_DET, pixel_size_um=10.0)
    assert detector_physics({}, sbig).pixel_area_cm2 == pytest.approx((10e-4) ** 2 * 4)


def test_detector_attrs_win_over_exposure_attrs():
    exp = {"instrument": "EMMI", "telescope": "ESONTTB"}
    assert detector_physics(exp, DECAM_DET).profile == "decam"
    # The exposure's values are used where the detector has none.
    det = {k: v for k, v in SINISTRO_DET.items() if k not in ("instrument", "telescope")}
    assert detector_physics(exp_of(SINISTRO_DET), det).profile == "lco-sinistro"


def test_readout_and_thickness_guesses_follow_the_profile():
    sinistro = detector_physics(exp_of(SINISTRO_DET), SINISTRO_DET)
    assert sinistro.guessed == ("readout_time_s",)  # header gain, documented pixel size
    gmos = detector_physics(exp_of(GMOS_DET), GMOS_DET)
    assert {"thickness_um", "readout_time_s"} <= set(gmos.guessed)


def test_user_override_of_a_shipped_entry_is_field_by_field():
    shipped = load_profiles()
    before = [p.name for p in shipped]
    sbig0 = next(p for p in shipped if p.name == "lco-sbig")
    with dask.config.set({KEY: [{"name": "lco-sbig", "readout_time_s": 12.5, "thickness_um": 20.0}]}):
        profiles = load_profiles()
        assert [p.name for p in profiles] == before  # same position
        sbig = next(p for p in profiles if p.name == "lco-sbig")
        assert (sbig.readout_time_s, sbig.thickness_um) == (12.5, 20.0)
        assert (sbig.pixel_size_um, sbig.gain, sbig.match) == (sbig0.pixel_size_um, sbig0.gain, sbig0.match)
        assert "readout_time_s" not in sbig.guessed  # the user's value, not a guess
        phys = detector_physics(exp_of(SBIG_DET), SBIG_DET)
        assert phys.readout_time_s == 12.5 and phys.guessed == ()
    # Leaving the context restores the shipped values.
    assert next(p for p in load_profiles() if p.name == "lco-sbig").readout_time_s == sbig0.readout_time_s


def test_user_override_of_generic():
    with dask.config.set({KEY: [{"name": "generic", "pixel_size_um": 13.5, "guessed": ["pixel_size_um"]}]}):
        phys = detector_physics(exp_of(EMMI_DET), EMMI_DET)
        assert phys.profile == "generic" and phys.pixel_size_um == 13.5
        assert load_profiles()[-1].name == "generic"


def test_new_user_entry_wins_over_shipped_ones():
    entries = [
        {"name": "my-sbig", "match": {"instrument": "^kb29$"}, "pixel_size_um": 9.0,
         "readout_time_s": 11.0, "gain": 1.3, "references": ["site log"]},
        {"name": "emmi-red", "match": {"instrument": "emmi", "telescope": "ntt"}, "pixel_size_um": 15.0},
    ]
    with dask.config.set({KEY: entries}):
        profiles = load_profiles()
        assert [p.name for p in profiles[:2]] == ["my-sbig", "emmi-red"]
        assert profiles[-1].name == "generic"
        phys = detector_physics(exp_of(SBIG_DET), SBIG_DET)
        assert phys.profile == "my-sbig" and phys.readout_time_s == 11.0 and phys.guessed == ()
        # Other LCO SBIGs still get the shipped profile.
        assert match_profile("kb88", "0m4-03", None).name == "lco-sbig"
        emmi = detector_physics(exp_of(EMMI_DET), EMMI_DET)
        # Missing readout and gain: defaults, flagged; ingest guessed the gain, so 1.0 guessed.
        assert emmi.profile == "emmi-red"
        assert emmi.readout_time_s == 0.0 and emmi.gain == 1.0
        assert set(emmi.guessed) == {"readout_time_s", "gain"}
        assert "emmi-red" in profiles_table()


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"name": "x", "match": {"instrument": "a"}, "pixel_size_um": 9.0, "pixle": 1}, "unknown key"),
        ({"name": "x", "match": {"instrument": "a"}}, "pixel_size_um is missing"),
        ({"name": "x", "match": {"instrument": "a"}, "pixel_size_um": 0}, "pixel_size_um must be positive"),
        ({"name": "x", "match": {"instrument": "a"}, "pixel_size_um": 9.0, "gain": -2},
         "gain must be positive"),
        ({"name": "x", "match": {"instrument": "a"}, "pixel_size_um": 9.0, "readout_time_s": -1},
         "readout_time_s must not be negative"),
        ({"name": "x", "match": {"instrument": "fa(0"}, "pixel_size_um": 9.0}, "bad regex"),
        ({"name": "x", "match": {"filter": "r"}, "pixel_size_um": 9.0}, "unknown match key"),
        ({"name": "x", "match": {"instrument": "a"}, "pixel_size_um": 9.0, "guessed": ["binning"]},
         "unknown field"),
        ({"name": "x", "match": {"instrument": "a"}, "pixel_size_um": "9"}, "must be a number"),
    ],
)
def test_validation_errors_name_the_entry(entry, problem):
    with dask.config.set({KEY: [entry]}), pytest.raises(ValueError, match=problem) as info:
        load_profiles()
    assert "'x'" in str(info.value)


def test_validation_of_overrides_names_the_shipped_entry():
    with dask.config.set({KEY: [{"name": "decam", "gain": 0}]}), pytest.raises(ValueError) as info:
        load_profiles()
    assert "'decam'" in str(info.value) and "gain must be positive" in str(info.value)
    with dask.config.set({KEY: [{"name": "decam", "match": {"detector": "[S"}}]}), \
            pytest.raises(ValueError, match=r"'decam'.*bad regex"):
        load_profiles()


def test_validation_of_the_user_list():
    with dask.config.set({KEY: [{"match": {"instrument": "a"}, "pixel_size_um": 9.0}]}), \
            pytest.raises(ValueError, match="name"):
        load_profiles()
    dup = {"name": "d", "match": {"instrument": "a"}, "pixel_size_um": 9.0}
    with dask.config.set({KEY: [dup, dup]}), pytest.raises(ValueError, match="'d'.*duplicate"):
        load_profiles()
    with dask.config.set({KEY: "decam"}), pytest.raises(ValueError, match="must be a list"):
        load_profiles()


def test_default_config_has_no_user_profiles():
    # Works whether or not crscale.yaml has `catalogue: profiles: []`.
    from crscale import config

    assert list(config.get("catalogue.profiles", [])) == []
    assert [p.name for p in load_profiles()][0] == "decam"


def test_profiles_table_lists_every_profile():
    text = profiles_table()
    lines = text.splitlines()
    assert lines[0].split() == ["name", "match", "pixel_um", "thick_um", "readout_s", "gain", "guessed"]
    names = [line.split()[0] for line in lines[1:]]
    assert names == [p.name for p in load_profiles()]
    itl = next(line for line in lines if line.startswith("lsst-itl "))
    assert " 10 " in itl and " 2 " in itl
    assert "(fallback)" in next(line for line in lines if line.startswith("generic "))
