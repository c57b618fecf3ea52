"""Header metadata: keywords, per-amplifier values, fallbacks and what was guessed."""

from __future__ import annotations

import pytest
from astropy.io import fits

from conftest import DECAM, EMMI, MEF, SAAO
from crscale.io.metadata import extract_metadata, header_to_json

FALLBACKS = {"gain": 1.0, "readnoise": 5.0, "binning": [1, 1]}


def meta_of(path, index):
    with fits.open(path) as hdul:
        return extract_metadata(hdul[index].header, hdul[0].header if index else None,
                                fallbacks=FALLBACKS, raw_dtype=hdul[index].data.dtype)


def test_lco_mef_extension_gain_wins_over_absurd_primary_gain():
    # The LCO raw MEF has GAIN = 0.0 in the primary and the real gains per extension.
    gains = [meta_of(MEF, i).gain for i in range(1, 5)]
    assert gains == [6.42, 6.23, 6.27, 6.26]
    m = meta_of(MEF, 2)
    assert "gain" not in m.guessed and not any("GAIN" in w for w in m.warnings)
    assert m.exptime == pytest.approx(94.975)
    assert m.readnoise == 7.0
    assert m.saturation == 40000.0
    assert m.binning == [2, 2]
    assert m.date_obs.startswith("2021-10-08T01:55:17")
    assert m.instrument == "fa05"
    assert "detector" in m.guessed  # DETECTOR = 'UNKNOWN'


def test_decam_per_amplifier_gain_and_saturation():
    m = meta_of(DECAM, 1)
    assert set(m.gain_per_amp) == {"GAINA", "GAINB"}
    assert m.gain == pytest.approx(sum(m.gain_per_amp.values()) / 2)
    with fits.open(DECAM) as h:
        hdr = h[1].header
        assert m.saturation == pytest.approx(min(hdr["SATURATE"], hdr["SATURATA"], hdr["SATURATB"]))
    assert m.detector == "S3-222_135959-11-1"
    assert m.instrument == "DECam"
    assert m.guessed == []


def test_raw_uint16_saturation_fallback_and_time_of_day():
    m = meta_of(SAAO, 0)
    assert m.gain == 1.9 and m.readnoise == 5.0
    assert m.saturation == 65535.0 and "saturation" in m.guessed
    assert m.date_obs.startswith("2013-07-13T")  # DATE-OBS date + UT/TIME-OBS time


def test_pre_y2k_date_and_missing_gain_on_real_emmi_header():
    m = meta_of(EMMI, 0)
    assert m.date_obs.startswith("1992-10-26")
    assert {"gain", "readnoise"} <= set(m.guessed)
    assert m.gain == 1.0 and m.readnoise == 5.0


def _header(**cards):
    h = fits.Header()
    for k, v in cards.items():
        h[k.replace("_", "-") if k.startswith("DATE") else k] = v
    return h


def test_absurd_keywords_are_reported_and_not_used():
    m = extract_metadata(_header(EXPTIME=0.0, GAIN=-2.0, RDNOISE=0.0, SATURATE=-5),
                         None, fallbacks=FALLBACKS)
    assert m.exptime is None and "exptime" in m.guessed
    assert m.gain == 1.0 and "gain" in m.guessed
    assert m.readnoise == 5.0 and "readnoise" in m.guessed
    text = " ".join(m.warnings)
    for word in ("EXPTIME=0.0", "GAIN=-2.0", "RDNOISE=0.0", "SATURATE=-5"):
        assert word in text


def test_empty_header_guesses_everything():
    m = extract_metadata(fits.Header(), None, fallbacks=FALLBACKS)
    assert set(m.guessed) >= {"exptime", "gain", "readnoise", "saturation", "date_obs",
                              "instrument", "detector", "binning"}
    assert m.binning == [1, 1]


def test_nominal_gain_loses_to_measured_per_amp_gains():
    h = _header(CCDGAIN=2.0, ATODGNA=2.02, ATODGNB=1.98, ATODGNC=2.00, ATODGND=2.04)
    m = extract_metadata(h, None, fallbacks=FALLBACKS)
    assert m.gain == pytest.approx(2.01)
    assert len(m.gain_per_amp) == 4


@pytest.mark.parametrize("cards, expected", [
    ({"CCDSUM": "2 2"}, [2, 2]),
    ({"BINNING": "1x2"}, [1, 2]),
    ({"XBINNING": 3, "YBINNING": 3}, [3, 3]),
])
def test_binning_keywords(cards, expected):
    assert extract_metadata(_header(**cards), None, fallbacks=FALLBACKS).binning == expected


def test_mjd_only_date():
    h = fits.Header()
    h["MJD-OBS"] = 50518.40347397
    m = extract_metadata(h, None, fallbacks=FALLBACKS)
    assert m.date_obs.startswith("1997-03-11T09:41")


def test_header_to_json_drops_structure_and_keeps_history():
    with fits.open(SAAO) as h:
        out = header_to_json(h[0].header)
    assert "NAXIS1" not in out and "BITPIX" not in out
    assert out["EXPTIME"] == pytest.approx(150.04)
    import json
    json.dumps(out)
