"""crscale.detect on real images: exact tiling, bad pixels, CCDData, precisions, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from astropy.io import fits
from astropy.nddata import CCDData, StdDevUncertainty

import crscale
from crscale.detection import compute_stats, get_predictor, required_halo
from crscale.detection.badpix import FILL_RADIUS
from crscale.models import ModelCard, UNet, preset, save_model
from crscale.train.footprints import load_itl_footprints
from crscale.train.inject import inject_crs
from tests.conftest import FZ, SAAO


@pytest.fixture(scope="module")
def banzai() -> np.ndarray:
    """LCO BANZAI SBIG frame, 1020 x 1523 (odd width), in electrons (GAIN = 1.0)."""
    return fits.getdata(FZ, "SCI").astype(np.float32)


@pytest.fixture(scope="module")
def injected(banzai):
    """The BANZAI frame with real LSST ITL CR footprints injected (truth known)."""
    rng = np.random.default_rng(7)
    return inject_crs(banzai, load_itl_footprints(), rng, rate=1e-4)


@pytest.fixture(scope="module")
def random_bn_model(tmp_path_factory):
    """An untrained deepcr-3-32 with non-trivial BatchNorm statistics: tiling is exact for any weights."""
    torch.manual_seed(3)
    model = UNet(preset("deepcr-3-32")).train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(2, 1, 64, 64) * 3)
    path = tmp_path_factory.mktemp("model") / "random"
    return str(save_model(model.eval(), ModelCard(name="random", architecture={}), path))


def test_shipped_default_model_and_card():
    pred = get_predictor("default", device="cpu", precision="float32")
    card = pred.card
    assert card.name == "crscale-default"
    assert card.parameters == sum(p.numel() for p in UNet(card.config).parameters())
    assert card.normalisation["method"] == "robust-asinh"
    assert 0 < card.recommended_threshold < 1
    for key in ("tpr@fpr=1e-3", "tpr@fpr=1e-4", "loss"):
        assert key in card.validation
    assert card.training["val_sources"] and card.training["train_sources"]
    val_names = {s["sha256"] for s in card.training["val_sources"]}
    assert val_names.isdisjoint({s["sha256"] for s in card.training["train_sources"]})


@pytest.mark.parametrize("model_kind", ["random", "default"])
def test_tiled_equals_whole_image_on_a_real_odd_sized_image(banzai, random_bn_model, model_kind):
    model = random_bn_model if model_kind == "random" else "default"
    img = banzai[:1021] if banzai.shape[0] > 1021 else banzai  # 1020 x 1523
    whole = crscale.detect(img, model=model, precision="float32", tile=4096, inpaint=False)
    assert whole.info["tile"] == 4096  # one tile covers the whole image
    for tile in (136, 448):
        tiled = crscale.detect(img, model=model, precision="float32", tile=tile, inpaint=False)
        np.testing.assert_allclose(tiled.prob, whole.prob, atol=1e-5, rtol=0)
        # Same masks: no seam artefacts (pixels within 4 px of a tile seam behave like the rest).
        assert np.count_nonzero(tiled.mask != whole.mask) <= 2
    # Every pixel is predicted, edges included.
    assert whole.prob.shape == img.shape and np.isfinite(whole.prob).all()


def test_block_with_origin_and_detector_stats_equals_whole(banzai, random_bn_model):
    """The engine's contract: a block plus halo, the detector's stats and its origin."""
    whole = crscale.detect(banzai, model=random_bn_model, precision="float32", tile=4096, inpaint=False)
    halo = required_halo(get_predictor(random_bn_model, device="cpu", precision="float32").config)
    for y0, x0, y1, x1 in [(301, 517, 700, 1100), (0, 0, 257, 333), (777, 1200, 1020, 1523)]:
        ya, xa = max(y0 - halo, 0), max(x0 - halo, 0)
        yb, xb = min(y1 + halo, banzai.shape[0]), min(x1 + halo, banzai.shape[1])
        blk = crscale.detect(
            banzai[ya:yb, xa:xb],
            model=random_bn_model,
            precision="float32",
            tile=160,
            inpaint=False,
            stats=whole.stats,
            origin=(ya, xa),
        )
        np.testing.assert_allclose(
            blk.prob[y0 - ya : y1 - ya, x0 - xa : x1 - xa], whole.prob[y0:y1, x0:x1], atol=1e-5, rtol=0
        )


def test_default_model_finds_injected_real_crs(injected):
    res = crscale.detect(injected.image, inpaint=False)
    truth = injected.truth
    tpr = (res.mask & truth).sum() / truth.sum()
    fp = (res.mask & ~truth).sum() / (~truth).sum()
    assert tpr > 0.8, tpr
    assert fp < 2e-3, fp


def test_bf16_and_float32_masks_agree(injected):
    a = crscale.detect(injected.image, precision="float32", inpaint=False)
    b = crscale.detect(injected.image, precision="bfloat16", inpaint=False)
    agree = np.mean(a.mask == b.mask)
    assert agree >= 0.9999, agree


def test_bad_pixels_are_never_crs_and_do_not_spoil_neighbours(injected):
    img = injected.image.copy()
    ref = crscale.detect(img, inpaint=False)
    dq = np.zeros(img.shape, np.uint8)
    img[400:420, 300:340] = np.nan  # a NaN hole
    img[600, 50:90] = np.inf
    dq[100:160, 700:703] = 1  # a flagged bad column segment
    sat = float(np.nanpercentile(img, 99.99))
    res = crscale.detect(img, dq=dq, saturation=sat, inpaint=True)
    assert not res.mask[res.bad].any() and (res.prob[res.bad] == 0).all()
    assert res.bad[400:420, 300:340].all() and res.bad[100:160, 700:703].all()
    # Neighbours: within the fill radius + a margin around the bad regions, no new false CR pixels
    # appear (a true CR pixel beside a filled star core may cross the threshold either way).
    from scipy import ndimage

    ring = ndimage.binary_dilation(res.bad, iterations=FILL_RADIUS + 4) & ~res.bad
    new = res.mask & ring & ~ref.mask & ~injected.truth
    assert new.sum() <= 2, new.sum()
    # Far from bad pixels the result is unchanged (saturation changes nothing away from it).
    far = ~ndimage.binary_dilation(res.bad, iterations=64)
    assert np.mean(res.mask[far] == ref.mask[far]) > 0.9999
    # NaN pixels stay NaN in the clean image; CR pixels are replaced by finite values.
    assert np.isnan(res.clean[405, 310]) and np.isfinite(res.clean[res.mask]).all()


def test_ccddata_in_ccddata_out(banzai):
    ccd = CCDData(
        banzai,
        unit="electron",
        mask=np.zeros(banzai.shape, bool),
        uncertainty=StdDevUncertainty(np.full(banzai.shape, 20.0, np.float32)),
        meta={"EXPTIME": 45.0},
    )
    ccd.mask[10:20, 10:20] = True
    res = crscale.detect(ccd)
    clean = res.clean
    assert isinstance(clean, CCDData)
    assert clean.unit == ccd.unit
    np.testing.assert_array_equal(clean.uncertainty.array, ccd.uncertainty.array)
    # ccdproc's cosmicray_lacosmic convention: the returned mask is the input mask OR the CR mask.
    np.testing.assert_array_equal(clean.mask, ccd.mask | res.mask)
    assert res.mask.sum() > 0 and not res.mask[10:20, 10:20].any()
    assert "crscale.detect" in str(clean.meta.get("HISTORY", ""))
    # Inpainting covers the mask grown by inpaint_dilate=1 px; everything else is untouched.
    from scipy import ndimage

    filled = ndimage.binary_dilation(res.mask, np.ones((3, 3), bool))
    np.testing.assert_array_equal(clean.data[~filled], banzai[~filled])
    # An ADU image takes its gain from the header: results follow the electrons, not the units.
    adu = CCDData(banzai / 2.0, unit="adu", meta={"GAIN": 2.0})
    res_adu = crscale.detect(adu, inpaint=False)
    assert res_adu.stats.gain == 2.0
    assert np.mean(res_adu.mask == res.mask) > 0.9999


def test_stats_are_robust_and_in_electrons():
    img = fits.getdata(SAAO).astype(np.float32)
    st = compute_stats(img, gain=1.9)
    assert st.sky_e == pytest.approx(st.sky * 1.9) and st.noise_e == pytest.approx(st.noise * 1.9)
    assert 0 < st.noise < 50


def test_bad_input_errors(banzai):
    with pytest.raises(ValueError, match="2-D"):
        crscale.detect(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match="no finite"):
        crscale.detect(np.full((64, 64), np.nan, np.float32))
    with pytest.raises(ValueError, match="threshold"):
        crscale.detect(banzai[:64, :64], threshold=1.5)
    for gain in (0.0, -2.0, float("nan")):
        with pytest.raises(ValueError, match="gain"):
            crscale.detect(banzai[:64, :64], gain=gain)
    with pytest.raises(TypeError, match="numeric"):
        crscale.detect(np.array([["a", "b"], ["c", "d"]]))


def test_tiny_and_integer_images_work():
    img = fits.getdata(SAAO)  # uint16 raw
    res = crscale.detect(img[:37, :53], inpaint=True)
    assert res.prob.shape == (37, 53) and res.clean.dtype == np.float32
