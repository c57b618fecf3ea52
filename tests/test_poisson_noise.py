"""The ``poisson`` input noise: each pixel in units of its own noise (crscale.detection.normalise)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

import crscale
from conftest import SHARED_REAL
from crscale.detection.normalise import ImageStats, compute_stats, normalise, poisson_sigmas
from crscale.detection.sky_noise import median_residual
from crscale.detection.torch_block import normalise_tensor
from crscale.io import read_exposure
from crscale.models import ModelCard, UNet, preset, save_model
from crscale.models.card import input_normalisation

HEAR_ARC = SHARED_REAL / "eso_midas_testdata" / "HeAr_gr2_extr.fits"
POISSON = input_normalisation("poisson")
PIXEL = input_normalisation("pixel")


def _noise(resid: np.ndarray) -> float:
    """Robust σ of a 5×5-median residual (its MAD is 0.95 σ for white noise)."""
    return 1.4826 * float(np.median(np.abs(resid))) / 0.95


@pytest.fixture(scope="module")
def arc() -> tuple[np.ndarray, float]:
    if not HEAR_ARC.exists():
        pytest.skip(f"{HEAR_ARC} is not here")
    det = read_exposure(HEAR_ARC).detectors[0]
    return det.image.astype(np.float64), float(det.meta.gain)


def test_a_real_arcs_lines_are_at_their_own_noise_and_not_many_sigma(arc):
    image, gain = arc
    stats = compute_stats(image, gain=gain, pixel=True)
    level = ndimage.median_filter(image, 5)
    on_lines = (level > 5 * stats.sky) & (level < 20 * stats.sky)  # bright lines, not their peaks
    assert on_lines.sum() > 5_000
    v = poisson_sigmas(image, stats).astype(np.float64)
    linear = (image - stats.sky) / stats.pixel_noise  # the ``pixel`` input noise, before asinh
    # the shot noise of the lines is what the pixel-noise input shows the network as structure
    assert 0.7 < _noise(median_residual(v)[on_lines]) < 1.4
    assert _noise(median_residual(linear)[on_lines]) > 3.0
    # at and below the sky the two inputs are the same
    below = image <= stats.sky
    assert np.allclose(v[below], linear[below], rtol=1e-4, atol=1e-4)


def test_poisson_light_of_any_level_has_unit_noise_in_electrons_and_in_adu():
    rng = np.random.default_rng(4)
    readnoise, sky = 5.0, 40.0
    for gain in (1.0, 2.5):
        at_sky = np.hypot(readnoise, np.sqrt(sky)) / gain
        stats = ImageStats(sky=sky / gain, noise=1.0, gain=gain, pixel_noise=at_sky)
        for level in (0.0, 300.0, 3_000.0, 40_000.0):
            e = rng.poisson(sky + level, 200_000) + rng.normal(0, readnoise, 200_000)
            v = poisson_sigmas((e / gain).astype(np.float32), stats)
            assert float(np.std(v)) == pytest.approx(1.0, abs=0.06), (gain, level)


def test_numpy_and_torch_inputs_agree_and_need_the_pixel_noise(arc):
    image, gain = arc
    stats = compute_stats(image, gain=gain, pixel=True)
    x = image.astype(np.float32)
    a = normalise(x, stats, POISSON)
    b = normalise_tensor(torch.from_numpy(x), stats, POISSON).numpy()
    assert np.allclose(a, b, rtol=1e-5, atol=1e-5)
    assert not np.allclose(a, normalise(x, stats, PIXEL))  # the lines are compressed
    with pytest.raises(ValueError, match="pixel-to-pixel"):
        normalise(x, ImageStats(sky=0.0, noise=1.0), POISSON)


def test_a_poisson_model_tiled_equals_whole_image_on_a_real_arc(arc, tmp_path):
    image, gain = arc
    torch.manual_seed(5)
    model = UNet(preset("deepcr-2-32")).train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(2, 1, 64, 64) * 3)
    card = ModelCard(name="poisson", architecture={}, normalisation=POISSON)
    path = save_model(model.eval(), card, tmp_path / "p")
    kw = {"model": str(path), "precision": "float32", "inpaint": False, "gain": gain}
    whole = crscale.detect(image, tile=4096, **kw)
    tiled = crscale.detect(image, tile=128, **kw)
    assert whole.stats.pixel_noise is not None
    assert np.abs(whole.prob - tiled.prob).max() < 1e-5
