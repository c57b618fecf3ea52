"""Lone bright pixels (hot pixels or one-pixel CRs) left out of training (ignore_spikes_nsigma)."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from conftest import SAAO
from crscale.errors import SettingsError
from crscale.injection.sources import load_source_images, lone_spikes
from crscale.train.config import TrainConfig


def _saao_e() -> tuple[np.ndarray, float]:
    with fits.open(SAAO) as hdul:
        gain = float(hdul[0].header["GAIN"])
        return hdul[0].data.astype(np.float64) * gain, gain


def test_a_lone_spike_is_found_and_a_two_pixel_hit_or_a_star_is_not():
    image, _ = _saao_e()
    noise = 1.4826 * float(np.median(np.abs(np.diff(image, axis=1)))) / np.sqrt(2)
    planted = image.copy()
    planted[100, 100] += 50 * noise  # a hot pixel
    planted[200, 200] += 50 * noise  # a two-pixel hit: neither pixel stands above the other
    planted[200, 201] += 50 * noise
    bad = np.zeros(image.shape, bool)
    bad[300, 300] = True
    planted[300, 300] = 1e9  # a flagged pixel is never a spike
    found = lone_spikes(planted, bad, noise, 10.0)
    assert found[100, 100]
    assert not found[200, 200] and not found[200, 201] and not found[300, 300]
    # every flagged pixel stands more than 10 σ above each of its 8 neighbours
    for y, x in np.argwhere(found):
        if 0 < y < image.shape[0] - 1 and 0 < x < image.shape[1] - 1:
            win = planted[y - 1 : y + 2, x - 1 : x + 2].copy()
            centre = win[1, 1]
            win[1, 1] = -np.inf
            assert centre - win.max() > 10 * noise
    # the real frame's stars are PSF-blurred: their peaks do not stand alone
    assert found.sum() - 1 < 1e-4 * image.size


def test_spikes_are_left_out_only_where_own_crs_are_not_looked_for(tmp_path):
    image, gain = _saao_e()
    noise = 1.4826 * float(np.median(np.abs(np.diff(image, axis=1)))) / np.sqrt(2)
    with fits.open(SAAO) as hdul:
        header = hdul[0].header.copy()
    for key in ("BZERO", "BSCALE"):
        header.remove(key, ignore_missing=True)
    data = image / gain
    data[50, 60] += 80 * noise / gain
    plain, short = tmp_path / "plain.fits", tmp_path / "short.fits"
    fits.PrimaryHDU(data.astype(np.float32), header).writeto(plain)
    header["CRSOWNCR"] = "none"
    fits.PrimaryHDU(data.astype(np.float32), header).writeto(short)
    without = load_source_images([plain, short])
    with_spikes = load_source_images([plain, short], spike_nsigma=10.0)
    # astroscrappy's own CRs of a normal frame are what they were
    assert np.array_equal(without[0].own_cr, with_spikes[0].own_cr)
    # a frame whose own CRs are not looked for: nothing left out, or its lone spikes
    assert not without[1].own_cr.any()
    own = with_spikes[1].own_cr
    assert own[50, 60]
    expected = lone_spikes(with_spikes[1].image_e, with_spikes[1].bad, with_spikes[1].pixel_noise_e, 10.0)
    assert np.array_equal(own, expected)


@pytest.mark.parametrize("bad", [0, -1.0, True, "abc", 1e4])
def test_ignore_spikes_nsigma_refuses_bad_values(bad):
    with pytest.raises(SettingsError, match="ignore_spikes_nsigma"):
        TrainConfig(ignore_spikes_nsigma=bad)
    assert TrainConfig(ignore_spikes_nsigma=10.0).ignore_spikes_nsigma == 10.0


@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_val_ignore_spikes_is_a_boolean(bad):
    with pytest.raises(SettingsError, match="val_ignore_spikes"):
        TrainConfig(val_ignore_spikes=bad)
