"""Inpainting of CR-masked pixels, on real images with real (LSST ITL) CR footprints injected."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from scipy import ndimage

from conftest import DECAM, EMMI, FZ, GMOS, MEF, SAAO
from crscale.detection.inpaint import DEFAULT_INPAINT, INPAINT_METHODS, INPAINT_RADIUS, inpaint
from crscale.detection.sky_noise import robust_sky_noise
from crscale.train.footprints import load_itl_footprints
from crscale.train.inject import inject_crs

# (file, HDU, gain e-/ADU): GMOS has no GAIN card, 1.933 is the upstream astroscrappy test's value;
# EMMI has none either and its gain is unknown (the inpainting does not depend on it).
REAL = {
    "banzai": (FZ, "SCI", 1.0),
    "saao": (SAAO, 0, 1.9),
    "sinistro": (MEF, ("SCI", 1), 6.42),
    "gmos": (GMOS, "SCI", 1.933),
    "decam": (DECAM, "N2", 3.877),
    "emmi": (EMMI, 0, 1.0),
}


def read(name: str) -> tuple[np.ndarray, float]:
    path, hdu, gain = REAL[name]
    with fits.open(path) as hdul:
        return hdul[hdu].data.astype(np.float64), gain


@pytest.fixture(scope="module")
def library():
    return load_itl_footprints()


def injected(name: str, library, seed: int, rate: float = 3e-4):
    """Real image, CR mask and the CR charge in ADU, for one random injection."""
    image, gain = read(name)
    inj = inject_crs(np.zeros(image.shape, np.float32), library, np.random.default_rng(seed), rate=rate)
    return image, inj.truth, inj.added.astype(np.float64) / gain


def paint_on(image: np.ndarray, gain: float, library, seed: int, candidates: np.ndarray, n: int):
    """Paint ``n`` footprints centred on pixels drawn from ``candidates`` (bool): mask, charge (ADU)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.nonzero(candidates)
    pick = rng.integers(0, ys.size, size=n)
    mask = np.zeros(image.shape, bool)
    charge = np.zeros(image.shape)
    for y, x, fp in zip(ys[pick], xs[pick], library.sample(rng, n), strict=True):
        h, w = fp.shape
        y0, x0 = y - h // 2, x - w // 2
        ya, xa = max(y0, 0), max(x0, 0)
        yb, xb = min(y0 + h, image.shape[0]), min(x0 + w, image.shape[1])
        sub = (slice(ya - y0, yb - y0), slice(xa - x0, xb - x0))
        mask[ya:yb, xa:xb] |= fp.mask[sub]
        charge[ya:yb, xa:xb] += fp.values[sub] / gain
    return mask, charge


def own_cr_zone(image: np.ndarray, sigma: float) -> np.ndarray:
    """Pixels near the original's own CRs (> 8 sigma above the 5x5 median), dilated 3 px."""
    med = ndimage.median_filter(image, size=5, mode="nearest")
    return ndimage.binary_dilation(image - med > 8 * sigma, np.ones((7, 7), bool))


def test_constants():
    assert DEFAULT_INPAINT in INPAINT_METHODS
    assert "median" in INPAINT_METHODS and len(INPAINT_METHODS) >= 3
    assert set(INPAINT_RADIUS) == set(INPAINT_METHODS)
    assert all(isinstance(r, int) and 0 < r <= 32 for r in INPAINT_RADIUS.values())


@pytest.mark.parametrize("method", INPAINT_METHODS)
def test_unmasked_pixels_unchanged(method, library):
    image, mask, charge = injected("banzai", library, seed=1)
    image = image[:400, :600].astype(np.float32)
    image[50:53, 70:90] = np.nan  # unmasked NaN pixels stay NaN, bit for bit
    image[200, 300] = np.inf
    mask = mask[:400, :600]
    dirty = image + charge[:400, :600].astype(np.float32)
    out = inpaint(dirty, mask, method=method)
    assert out.dtype == np.float32 and out.shape == image.shape
    assert np.array_equal(out[~mask].view(np.uint32), dirty[~mask].view(np.uint32))
    assert np.isfinite(out[mask]).all()
    # Masked pixel values are never used: the same result with the CRs not added at all.
    assert np.array_equal(out[mask], inpaint(image, mask, method=method)[mask])


@pytest.mark.parametrize("method", INPAINT_METHODS)
def test_no_nan_with_nan_pixels_and_large_masks(method, library):
    image, mask, _ = injected("saao", library, seed=2, rate=1e-3)
    image[100:140, 200:203] = np.nan  # a NaN streak, partly masked
    mask[120:160, 190:205] = True
    mask[300:380, 50:200] = True  # a block far larger than any method's radius
    mask[:, 500:503] = True  # whole columns, touching both edges
    mask[0:4, 0:4] = True
    image[np.random.default_rng(0).random(image.shape) < 0.01] = np.nan  # scattered NaN donors
    bad = np.zeros(image.shape, bool)
    bad[400:420, :] = True
    out = inpaint(image, mask, method=method, bad=bad)
    assert np.isfinite(out[mask]).all()
    unmasked_nan = ~np.isfinite(image) & ~mask
    assert np.isnan(out[unmasked_nan]).all()
    # The middle of the big block is further than any radius from a donor: the fallback value.
    good = np.isfinite(image) & ~mask & ~bad
    assert out[340, 125] == pytest.approx(np.median(image[good]), rel=1e-6)
    assert inpaint(image, mask, method=method, bad=bad, fallback=-7.0)[340, 125] == -7.0


@pytest.mark.parametrize("method", INPAINT_METHODS)
def test_everything_masked_gets_fallback(method):
    image, _ = read("gmos")
    mask = np.ones(image.shape, bool)
    assert np.all(inpaint(image, mask, method=method) == 0.0)
    assert np.all(inpaint(image, mask, method=method, fallback=12.5) == 12.5)


@pytest.mark.parametrize("method", INPAINT_METHODS)
def test_bad_pixels_are_not_donors(method, library):
    image, mask, _ = injected("decam", library, seed=3, rate=2e-3)
    bad = ndimage.binary_dilation(mask, iterations=2) & ~mask
    bad &= np.random.default_rng(1).random(image.shape) < 0.5
    a = image.copy()
    b = image.copy()
    b[bad] = 1e9  # a saturated value must not leak into the filled pixels
    out_a = inpaint(a, mask, method=method, bad=bad)
    out_b = inpaint(b, mask, method=method, bad=bad)
    assert np.array_equal(out_a[mask], out_b[mask])
    assert np.array_equal(out_b[bad], b[bad].astype(np.float32))  # flagged but not filled


def test_median_is_deepcr_medmask_where_the_5x5_box_has_donors(library):
    image, mask, _ = injected("emmi", library, seed=4)
    out = inpaint(image, mask, method="median")
    ys, xs = np.nonzero(mask)
    checked = 0
    for y, x in zip(ys, xs, strict=True):
        box = (slice(max(y - 2, 0), y + 3), slice(max(x - 2, 0), x + 3))
        donors = image[box][~mask[box]]
        if donors.size:
            assert out[y, x] == np.float32(np.median(donors))
            checked += 1
    assert checked > 0.9 * ys.size


def test_exact_on_smooth_fields():
    # The solvers reproduce what they should: a plane (harmonic) and a quadratic (biharmonic).
    yy, xx = np.mgrid[:120, :160].astype(np.float64)
    plane = 300.0 + 0.7 * yy - 0.4 * xx
    quad = plane + 0.02 * (yy - 60) ** 2 - 0.03 * (xx - 80) ** 2 + 0.01 * (xx - 80) * (yy - 60)
    mask = np.zeros(plane.shape, bool)
    mask[40:52, 60:67] = True
    mask[80, 30:50] = True
    assert np.abs(inpaint(plane, mask, method="harmonic") - plane)[mask].max() < 1e-3
    assert np.abs(inpaint(quad, mask, method="biharmonic") - quad)[mask].max() < 1e-3


@pytest.mark.parametrize("method", INPAINT_METHODS)
def test_blocks_with_halo_equal_whole_image(method, library):
    """The engine's contract: a block + INPAINT_RADIUS halo reproduces the whole image inside."""
    image, mask, charge = injected("banzai", library, seed=5, rate=8e-4)
    image = image[:600, :900] + charge[:600, :900]
    mask = mask[:600, :900].copy()
    mask[250:330, 400:470] = True  # far beyond every bound: passes, sigmas, region extents
    mask[100:103, 100:160] = True  # a long thin track (too big for the Laplace solvers)
    image[200:210, 600] = np.nan
    bad = np.zeros(image.shape, bool)
    bad[400:402, :] = True
    fallback = 123.0  # the per-exposure value the engine passes
    whole = inpaint(image, mask, method=method, bad=bad, fallback=fallback)
    halo = INPAINT_RADIUS[method]
    ny, nx = image.shape
    # Blocks at the image corner, in the middle, over the big mask, and at the far edges.
    for y0, y1, x0, x1 in [(0, 128, 0, 192), (160, 352, 320, 512), (256, 600, 448, 900), (77, 301, 611, 829)]:
        ya, yb, xa, xb = max(y0 - halo, 0), min(y1 + halo, ny), max(x0 - halo, 0), min(x1 + halo, nx)
        block = inpaint(image[ya:yb, xa:xb], mask[ya:yb, xa:xb], method=method, bad=bad[ya:yb, xa:xb],
                        fallback=fallback)
        inner = block[y0 - ya : y1 - ya, x0 - xa : x1 - xa]
        scale = np.nanmax(np.abs(image))
        np.testing.assert_allclose(inner, whole[y0:y1, x0:x1], rtol=1e-6, atol=1e-6 * scale)
    # And the halo is needed: without one, pixels near the block edges come out differently.
    block = inpaint(image[160:352, 320:512], mask[160:352, 320:512], method=method,
                    bad=bad[160:352, 320:512], fallback=fallback)
    assert not np.allclose(block, whole[160:352, 320:512], rtol=1e-6, equal_nan=True)


def errors_at_crs(library) -> dict[str, dict[str, list[np.ndarray]]]:
    """Error / sky sigma at injected CR pixels, per method, split sky vs source, all real images.

    One injection at random places, and one with the CRs centred on source pixels: random
    places put only ~1 % of the CR pixels on sources.
    """
    out = {m: {"sky": [], "src": [], "charge": []} for m in INPAINT_METHODS}
    for i, name in enumerate(REAL):
        image, gain = read(name)
        sky, sigma = robust_sky_noise(image)
        zone = own_cr_zone(image, sigma)
        source = image > sky + 5 * sigma
        uniform = injected(name, library, seed=10 + i)[1:]
        on_sources = paint_on(image, gain, library, 20 + i, source & ~zone, n=30)
        for mask, charge in (uniform, on_sources):
            scored = mask & ~zone
            for m in INPAINT_METHODS:
                err = (inpaint(image + charge, mask, method=m).astype(np.float64) - image) / sigma
                out[m]["sky"].append(err[scored & ~source])
                out[m]["src"].append(err[scored & source])
                out[m]["charge"].append(charge[scored] / sigma)
    return out


@pytest.fixture(scope="module")
def cr_errors(library):
    return errors_at_crs(library)


def rms(parts: list[np.ndarray]) -> float:
    a = np.concatenate(parts)
    return float(np.sqrt(np.mean(a**2)))


def test_errors_far_below_cr_charge(cr_errors):
    for m in INPAINT_METHODS:
        err = rms(cr_errors[m]["sky"] + cr_errors[m]["src"])
        charge = rms(cr_errors[m]["charge"])
        # Measured: errors of 1-4 sigma rms against CR pixels of ~44 sigma rms.
        assert err < 0.1 * charge, (m, err, charge)
        # On sky the error is about the pixel noise itself (the truth is a noisy pixel).
        assert 0.5 < rms(cr_errors[m]["sky"]) < 1.5, m


def test_better_methods_beat_the_median_on_sources(cr_errors):
    med_sky = rms(cr_errors["median"]["sky"])
    med_src = rms(cr_errors["median"]["src"])
    assert sum(a.size for a in cr_errors["median"]["src"]) > 100
    # Measured (rms / the median method's): harmonic sky 1.02, sources 0.79; biharmonic sky 1.13,
    # sources 0.71; gaussian sky 1.04, sources 0.95; all pixels: harmonic 0.95. With margin:
    assert rms(cr_errors["harmonic"]["src"]) < 0.9 * med_src
    assert rms(cr_errors["biharmonic"]["src"]) < 0.85 * med_src
    assert rms(cr_errors["harmonic"]["sky"]) < 1.05 * med_sky
    assert rms(cr_errors["gaussian"]["sky"]) < 1.1 * med_sky
    assert rms(cr_errors["biharmonic"]["sky"]) < 1.25 * med_sky
    both = rms(cr_errors[DEFAULT_INPAINT]["sky"] + cr_errors[DEFAULT_INPAINT]["src"])
    assert both < 0.98 * rms(cr_errors["median"]["sky"] + cr_errors["median"]["src"])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "nearest"}, "unknown inpainting method"),
        ({"bad": np.zeros((3, 3), bool)}, "bad has shape"),
    ],
)
def test_bad_arguments(kwargs, match):
    image, _ = read("gmos")
    with pytest.raises(ValueError, match=match):
        inpaint(image, np.zeros(image.shape, bool), **kwargs)
    with pytest.raises(ValueError, match="2-D"):
        inpaint(image[None], np.zeros((1, *image.shape), bool))
    with pytest.raises(ValueError, match="mask has shape"):
        inpaint(image, np.zeros((5, 5), bool))
