"""The pixel-to-pixel noise (crscale.detection.sky_noise.pixel_noise) and the models fed with it."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from conftest import SAAO
from crscale.detection.normalise import (
    ImageStats,
    compute_stats,
    input_noise,
    needs_pixel_noise,
    with_noise_floor,
)
from crscale.detection.sky_noise import pixel_noise, pixel_noise_boxes, robust_sky_noise


def _saao() -> np.ndarray:
    with fits.open(SAAO) as hdul:
        return hdul[0].data.astype(np.float64)  # whole ADU (uint16 on disk)


def _illumination(shape: tuple[int, int], level: float) -> np.ndarray:
    """A flat's smooth light: ``level`` falling by half across the frame, a vignetted corner."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    falloff = 1 - 0.5 * xx / shape[1]
    vignetting = 1 - 0.7 * np.exp(-(np.hypot(yy, xx) / (0.3 * max(shape))) ** 2)
    return level * falloff * vignetting


def test_pixel_noise_of_a_real_sky_frame_is_its_robust_noise():
    image = _saao()
    sky, noise = robust_sky_noise(image)
    pn = pixel_noise(image)
    assert pn is not None
    # a sky-dominated frame: the spread of its pixel values is its pixel-to-pixel noise
    assert 0.85 < pn / noise < 1.1, (pn, noise)


def test_smooth_structure_raises_the_robust_noise_and_not_the_pixel_noise():
    image = _saao()
    lit = image + np.round(_illumination(image.shape, 20_000.0))  # still whole ADU
    before, after = pixel_noise(image), pixel_noise(lit)
    assert before is not None and after is not None
    # a 5×5 median follows the ramp; only the vignetting's curvature leaves a little residual
    assert before <= after < 1.12 * before
    assert robust_sky_noise(lit)[1] > 20 * after  # the spread holds the illumination


def test_pixel_noise_of_white_noise_float_and_integer():
    rng = np.random.default_rng(2)
    assert pixel_noise(rng.normal(0.0, 7.0, (700, 900))) == pytest.approx(7.0, rel=0.02)
    # a raw bias's few ADU: the residual of whole numbers is quantised, the fallback is not
    quantised = np.round(rng.normal(1000.0, 2.26, (600, 600)))
    assert pixel_noise(quantised) == pytest.approx(np.hypot(2.26, 1 / np.sqrt(12)), rel=0.04)


def test_bad_pixels_are_left_out():
    rng = np.random.default_rng(3)
    image = rng.normal(100.0, 5.0, (512, 512))
    bad = np.zeros(image.shape, bool)
    bad[rng.integers(0, 512, 3000), rng.integers(0, 512, 3000)] = True
    bad[:, 100:104] = True
    hit = image.copy()
    hit[bad] = 60_000.0
    hit[0, :50] = np.nan  # non-finite pixels are always left out
    clean = pixel_noise(image)
    assert clean is not None
    assert pixel_noise(hit, bad=bad) == pytest.approx(clean, rel=0.03)
    assert pixel_noise(np.full((64, 64), np.nan)) is None
    with pytest.raises(ValueError, match="2-D"):
        pixel_noise(np.zeros(10))
    with pytest.raises(ValueError, match="shape"):
        pixel_noise(image, bad=bad[:10])


@pytest.mark.parametrize("shape", [(4096, 4096), (4100, 2046), (150, 200), (30, 40), (1000, 3), (1, 1)])
def test_the_boxes_lie_in_the_image_and_depend_on_its_shape_only(shape):
    boxes = pixel_noise_boxes(shape)
    assert 1 <= len(boxes) <= 64
    assert len({(ys.start, xs.start) for ys, xs in boxes}) == len(boxes)
    for ys, xs in boxes:
        assert 0 <= ys.start < ys.stop <= shape[0] and 0 <= xs.start < xs.stop <= shape[1]
        assert ys.stop - ys.start == min(64, shape[0]) and xs.stop - xs.start == min(64, shape[1])
    assert pixel_noise_boxes(shape) == boxes
    # spread from edge to edge
    assert max(b[0].stop for b in boxes) == shape[0] and max(b[1].stop for b in boxes) == shape[1]


def test_a_pixel_noise_model_gets_stats_with_it_or_a_clear_error():
    image = _saao()
    pixel = {"method": "robust-asinh", "asinh_scale": 3.0, "noise": "pixel"}
    stats = compute_stats(image, pixel=True)
    assert stats.pixel_noise == pytest.approx(pixel_noise(image))
    assert input_noise(stats, pixel) == stats.pixel_noise
    assert input_noise(stats, {"method": "robust-asinh"}) == stats.noise
    with pytest.raises(ValueError, match="pixel-to-pixel"):
        input_noise(ImageStats(sky=1.0, noise=2.0), pixel)
    with pytest.raises(ValueError, match="unknown input noise"):
        input_noise(stats, {"method": "robust-asinh", "noise": "local"})
    with pytest.raises(ValueError, match="unknown input noise 'local'"):
        needs_pixel_noise({"method": "robust-asinh", "noise": "local"})
    assert needs_pixel_noise(pixel) and not needs_pixel_noise({"method": "robust-asinh"})
    # the read-noise floor holds for both noises
    floored = with_noise_floor(ImageStats(sky=0.0, noise=0.1, pixel_noise=0.1), readnoise=10.0, gain=2.0)
    assert floored.noise == floored.pixel_noise == 2.5


def test_a_card_naming_an_unknown_input_noise_is_refused_naming_the_file(tmp_path):
    import json
    import shutil

    from crscale.errors import InputError
    from crscale.models import load_model
    from crscale.models.store import available_models

    weights = tmp_path / "m.safetensors"
    shutil.copy(available_models()["crscale-v2p-bn-3-16"], weights)
    card = json.loads(available_models()["crscale-v2p-bn-3-16"].with_suffix(".json").read_text())
    card["normalisation"]["noise"] = "locl"
    (tmp_path / "m.json").write_text(json.dumps(card))
    with pytest.raises(InputError, match=r"m\.safetensors.*unknown input noise 'locl'"):
        load_model(str(weights))


def test_the_small_box_median_is_scipys_median_filter_to_the_bit():
    """median_residual sorts small boxes itself; every box of a real frame gives scipy's values."""
    from scipy import ndimage

    from crscale.detection.sky_noise import median_residual

    image = _saao()  # whole ADU: many ties among the 25 neighbours
    boxes = [image[b] for b in pixel_noise_boxes(image.shape)]
    boxes += [image[:1, :64], image[:64, :1], image[:2, :2], image[:5, :7], image[:300, :300]]
    for box in boxes:
        expected = box - ndimage.median_filter(box, 5, mode="reflect")
        assert np.array_equal(median_residual(box), expected), box.shape
