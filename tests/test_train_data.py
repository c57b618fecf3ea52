"""Training data: real CR footprint libraries, injection into real images, sky augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from scipy import ndimage

import crscale
from crscale.detection.sky_noise import robust_sky_noise
from crscale.io.errors import InputError
from crscale.io.fits_reader import read_exposure
from crscale.train.footprints import (
    CRLibrary,
    footprints_from_dark,
    footprints_from_dark_file,
    load_itl_footprints,
)
from crscale.train.inject import ITL_RATE_1500S, inject_crs, orient, sky_augment

SAMPLE = crscale.sample_data_dir()
ITL = SAMPLE / "crs" / "cosmic_rays_itl_2017.fits.gz"
SAAO = SAMPLE / "images" / "a8280271.fits"  # raw SAAO frame, uint16, GAIN 1.9
DECAM = SAMPLE / "images" / "c4d_170316_062107_ooi_z_ls9.N2.fits"  # DECam InstCal, sky ~3,170 ADU
GMOS = SAMPLE / "images" / "gmos.fits"
SUSI_BIAS = SAMPLE / "darks" / "ntt_susi_bias_nttexample.fits.gz"  # the bundled real ESO NTT bias


@pytest.fixture(scope="module")
def itl() -> CRLibrary:
    return load_itl_footprints()


@pytest.fixture(scope="module")
def table():
    """The ITL table as astropy reads it: one row per horizontal run."""
    data = fits.getdata(ITL, 1)
    runs = [np.asarray(r, dtype=np.int64) for r in data["pixel_values"]]
    return (
        np.asarray(data["fp_id"], dtype=np.int64),
        np.asarray(data["x0"], dtype=np.int64),
        np.asarray(data["y0"], dtype=np.int64),
        runs,
    )


def _image_e(path: Path) -> np.ndarray:
    det = read_exposure(path).detectors[0]
    return det.image.astype(np.float64) * det.meta.gain


@pytest.fixture(scope="module")
def saao_e() -> np.ndarray:
    return _image_e(SAAO)


# --------------------------------------------------------------------- ITL library


def test_itl_count_and_charge(itl, table):
    fp_id, _, _, runs = table
    assert len(itl) == 1764 == np.unique(fp_id).size
    total = sum(int(r.sum()) for r in runs)
    assert total == 21_217_343
    assert itl.charges().sum() == total  # float32 holds every value (< 2**24) exactly
    assert itl.exptime == 1500.0 and itl.area_pix == 16_288_000 and itl.noise_e is None
    assert itl.rate * itl.exptime == pytest.approx(ITL_RATE_1500S)
    assert all(fp.values.dtype == np.float32 and fp.mask.dtype == bool for fp in itl)


def test_itl_footprints_match_table_spans(itl, table):
    fp_id, x0, y0, runs = table
    lengths = np.array([r.size for r in runs])
    n_pix = np.bincount(fp_id, weights=lengths).astype(int)
    sizes = itl.sizes()
    assert np.array_equal(sizes, n_pix)
    assert (np.median(sizes), round(sizes.mean(), 2), sizes.max(), sizes.min()) == (7, 16.33, 299, 1)
    x1 = x0 + lengths - 1
    ny = np.array([y0[fp_id == i].max() - y0[fp_id == i].min() + 1 for i in range(len(itl))])
    nx = np.array([x1[fp_id == i].max() - x0[fp_id == i].min() + 1 for i in range(len(itl))])
    assert np.array_equal(np.array([fp.shape for fp in itl]), np.stack([ny, nx], axis=1))
    assert tuple(np.array([fp.shape for fp in itl]).max(axis=0)) == (182, 79)
    # Every run lies where the table puts it, relative to the CR's bounding box.
    ymin = {i: y0[fp_id == i].min() for i in range(len(itl))}
    xmin = {i: x0[fp_id == i].min() for i in range(len(itl))}
    for f, x, y, r in zip(fp_id, x0, y0, runs, strict=True):
        stamp = itl[int(f)].values
        np.testing.assert_array_equal(stamp[y - ymin[f], x - xmin[f]:x - xmin[f] + r.size], r)
    # All table values are positive (49 to 27,790 e-), so the mask is where the charge is.
    for fp in itl:
        assert np.array_equal(fp.mask, fp.values > 0)
    allv = np.concatenate(runs)
    assert (allv.min(), np.median(allv), allv.max()) == (49, 431, 27_790)


def test_itl_bad_files(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_itl_footprints(tmp_path / "nope.fits.gz")
    with pytest.raises(InputError, match="no binary table"):
        load_itl_footprints(GMOS)
    junk = tmp_path / "junk.fits"
    junk.write_bytes(b"not FITS at all\n" * 100)
    with pytest.raises(InputError) as err:
        load_itl_footprints(junk)
    assert err.value.path == str(junk)


def test_library_sample(itl):
    a = itl.sample(np.random.default_rng(3), 50)
    b = itl.sample(np.random.default_rng(3), 50)
    assert len(a) == 50 and [fp.source for fp in a] == [fp.source for fp in b]
    assert itl[5].source == "itl_2017#fp5"


# --------------------------------------------------------------------- injection


def _orient_reference(stamp, k, flip_rows, flip_cols):
    """The documented orientation, written with np.flip."""
    if flip_rows:
        stamp = np.flip(stamp, 0)
    if flip_cols:
        stamp = np.flip(stamp, 1)
    return np.rot90(stamp, k)


def _paint_reference(shape, library, res):
    """Rebuild the added charge on a padded canvas, then crop: what fell off is outside."""
    pad = max(max(fp.shape) for fp in library)
    canvas = np.zeros((shape[0] + 2 * pad, shape[1] + 2 * pad), np.float64)
    for idx, (y, x), k, (fr, fc) in zip(res.indices, res.origins, res.rotations, res.flips, strict=True):
        stamp = _orient_reference(library[int(idx)].values, k, fr, fc) * res.scale
        canvas[y + pad:y + pad + stamp.shape[0], x + pad:x + pad + stamp.shape[1]] += stamp
    return canvas, canvas[pad:pad + shape[0], pad:pad + shape[1]]


def test_orient_preserves_charge_and_pixels(itl):
    fp = itl[int(np.argmax(itl.sizes()))]  # the 299-px track, asymmetric
    seen = set()
    for k in range(4):
        for fr in (False, True):
            for fc in (False, True):
                v = orient(fp.values, k, fr, fc)
                m = orient(fp.mask, k, fr, fc)
                assert v.sum(dtype=np.float64) == fp.charge
                assert m.sum() == fp.n_pixels
                assert v.shape == (fp.shape[::-1] if k % 2 else fp.shape)
                seen.add(v.tobytes() + bytes(v.shape))
    assert len(seen) == 8  # the 8 symmetries of the square give 8 distinct stamps


def test_inject_truth_and_added(itl, saao_e):
    res = inject_crs(saao_e, itl, np.random.default_rng(0), n=60)
    assert res.n_injected == 60
    assert res.image.dtype == np.float32 and res.added.dtype == np.float32 and res.truth.dtype == bool
    assert np.array_equal(res.truth, res.added > 0)
    np.testing.assert_array_equal(res.image, saao_e.astype(np.float32) + res.added)
    _, inside = _paint_reference(saao_e.shape, itl, res)
    np.testing.assert_allclose(res.added, inside, rtol=1e-6)


def test_inject_charge_fully_inside(itl, saao_e):
    res = inject_crs(saao_e, itl, np.random.default_rng(1), n=80, inside=True)
    h, w = saao_e.shape
    shapes = np.array([orient(itl[int(i)].values, k, 0, 0).shape for i, k in zip(res.indices, res.rotations,
                                                                                  strict=True)])
    assert (res.origins >= 0).all() and (res.origins + shapes <= [h, w]).all()
    expected = sum(itl[int(i)].charge for i in res.indices)
    assert res.added.sum(dtype=np.float64) == pytest.approx(expected, rel=1e-6)


def test_inject_charge_cut_at_edges(itl, saao_e):
    patch = saao_e[100:164, 200:264]  # a 64 x 64 training patch: many CRs cross its edges
    res = inject_crs(patch, itl, np.random.default_rng(2), n=150)
    canvas, inside = _paint_reference(patch.shape, itl, res)
    total = sum(itl[int(i)].charge for i in res.indices)
    assert canvas.sum() == pytest.approx(total, rel=1e-9)
    lost = total - inside.sum()
    assert lost > 0.05 * total
    assert res.added.sum(dtype=np.float64) == pytest.approx(total - lost, rel=1e-5)


def test_inject_avoid(itl, saao_e):
    avoid = np.zeros(saao_e.shape, bool)
    avoid[:, 100:110] = True  # a bad-column band
    avoid |= saao_e > np.percentile(saao_e, 99)  # the brightest pixels, as if saturated
    free = inject_crs(saao_e, itl, np.random.default_rng(4), n=300)
    res = inject_crs(saao_e, itl, np.random.default_rng(4), n=300, avoid=avoid)
    assert not res.truth[avoid].any()
    assert np.array_equal(res.truth, (res.added > 0) & ~avoid)
    np.testing.assert_array_equal(res.added, free.added)  # the charge is still there
    assert (res.added[avoid] > 0).any()


def test_inject_deterministic_and_rate(itl, saao_e):
    a = inject_crs(saao_e, itl, np.random.default_rng(7))
    b = inject_crs(saao_e, itl, np.random.default_rng(7))
    c = inject_crs(saao_e, itl, np.random.default_rng(8))
    for field in ("image", "truth", "added", "indices", "origins", "rotations", "flips"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.added, c.added)
    expected = 3.0e-4 * saao_e.size  # the default training rate
    assert abs(a.n_injected - expected) < 5 * np.sqrt(expected)
    itl_rate = inject_crs(saao_e, itl, np.random.default_rng(7), rate=ITL_RATE_1500S)
    expected = ITL_RATE_1500S * saao_e.size
    assert abs(itl_rate.n_injected - expected) < 5 * np.sqrt(expected)
    with pytest.raises(ValueError, match="not both"):
        inject_crs(saao_e, itl, np.random.default_rng(7), n=3, rate=1e-4)
    with pytest.raises(ValueError, match="no noise level"):
        inject_crs(saao_e, itl, np.random.default_rng(7), n=3, rescale_noise=True)


# --------------------------------------------------------------------- dark-frame recipe


def _check_dilated(lib: CRLibrary, nsigma: float) -> None:
    """Each mask is its seeds dilated by a 3 x 3 square; values are >= 0 and only in the mask."""
    thr = nsigma * lib.noise_e
    for fp in lib:
        assert fp.values.min() >= 0 and not fp.values[~fp.mask].any()
        seeds = fp.values > thr * (1 + 1e-6)
        assert seeds.any()
        dil = ndimage.binary_dilation(np.pad(seeds, 1), structure=np.ones((3, 3), bool))[1:-1, 1:-1]
        assert not (dil & ~fp.mask).any()  # every seed's full 3 x 3 neighbourhood is in the mask
        near = ndimage.binary_dilation(np.pad(fp.values > thr * (1 - 1e-6), 1),
                                       structure=np.ones((3, 3), bool))[1:-1, 1:-1]
        assert not (fp.mask & ~near).any()  # and nothing else is
        labels, n = ndimage.label(fp.mask, structure=np.ones((3, 3), bool))
        assert n == 1


@pytest.fixture(scope="module")
def saao_residual(saao_e) -> np.ndarray:
    """The SAAO frame made dark-like: sky and extended light removed by a median filter."""
    return saao_e - ndimage.median_filter(saao_e, size=9)


def test_dark_recipe_on_sky_removed_image(saao_residual):
    lib = footprints_from_dark(saao_residual, nsigma=3.0)
    sky, sigma = robust_sky_noise(saao_residual)
    assert lib.noise_e == pytest.approx(sigma)
    assert 10 < lib.noise_e < 20  # raw SAAO frame, gain 1.9: the sky noise is ~14 e-
    assert lib.area_pix == saao_residual.size and lib.meta["median_e"] == pytest.approx(sky)
    _check_dilated(lib, 3.0)
    # Every seed pixel of the frame is in exactly one footprint.
    n_seeds = int((saao_residual - sky > 3.0 * sigma).sum())
    assert sum(int((fp.values > 3.0 * sigma).sum()) for fp in lib) == n_seeds
    sizes = lib.sizes()
    assert sizes.min() >= 4  # a 3 x 3 square, cut at most to 2 x 2 in a corner
    assert np.median(sizes) == 9  # most 3-sigma seeds are single noise pixels
    # The bright, multi-pixel ones are the real events (CRs, star residuals).
    strict = footprints_from_dark(saao_residual, nsigma=3.0, min_pixels=3, peak_nsigma=10)
    assert 0 < len(strict) < len(lib) // 10
    assert (strict.sizes() > 9).all()
    # No dilation: the masks are the seeds themselves.
    bare = footprints_from_dark(saao_residual, nsigma=3.0, dilate=0)
    for fp in bare:
        assert np.array_equal(fp.mask, fp.values > 0)


def test_dark_recipe_bad_input(tmp_path, saao_residual):
    with pytest.raises(ValueError, match="2-D"):
        footprints_from_dark(saao_residual[None])
    with pytest.raises(InputError) as err:
        footprints_from_dark(np.full((8, 8), np.nan), path=tmp_path / "dark.fits")
    assert err.value.kind == "no-finite-pixels"
    bad = np.zeros(saao_residual.shape, bool)
    bad[:, :268] = True
    half = footprints_from_dark(saao_residual, bad=bad)
    assert half.area_pix == bad.size - bad.sum()
    with pytest.raises(InputError, match="no 2-D image"):
        footprints_from_dark_file(ITL)


def test_dark_recipe_on_real_bias():
    lib = footprints_from_dark_file(SUSI_BIAS)
    raw = fits.getdata(SUSI_BIAS)
    _, sigma_adu = robust_sky_noise(raw)
    assert sigma_adu == pytest.approx(2.26, abs=0.01)  # integer data: the clipped std, not the MAD
    assert lib.noise_e == pytest.approx(4.0 * sigma_adu)  # GAIN from ESO DET OUT1 GAIN
    _check_dilated(lib, 3.0)
    bright = footprints_from_dark_file(SUSI_BIAS, peak_nsigma=8.0)
    # The compact readout hits: 6 components stand above 8 sigma (peaks 604 to 3,092 e-).
    assert len(bright) == 6
    assert sorted(bright.sizes().tolist()) == [12, 12, 15, 19, 19, 45]
    _check_dilated(bright, 3.0)
    # Noise rescaling: the bias CRs moved to an image with another noise keep their contrast.
    img = _image_e(SAAO)
    res = inject_crs(img, bright, np.random.default_rng(0), n=10, rescale_noise=True, inside=True)
    img_sigma = robust_sky_noise(img)[1]
    assert res.scale == pytest.approx(img_sigma / lib.noise_e)
    expected = res.scale * sum(bright[int(i)].charge for i in res.indices)
    assert res.added.sum(dtype=np.float64) == pytest.approx(expected, rel=1e-5)


# --------------------------------------------------------------------- sky augmentation


@pytest.fixture(scope="module")
def decam():
    """DECam InstCal cutout in e-: a real sky of ~12,300 e- whose noise is Poisson (~111 e-)."""
    img = _image_e(DECAM)
    sky, sigma = robust_sky_noise(img)
    return img, sky, sigma


@pytest.mark.parametrize("added", [400.0, 1.0e4])
def test_sky_augment_added_sky_noise(saao_e, added):
    sky, sigma = robust_sky_noise(saao_e)
    out = sky_augment(saao_e, np.random.default_rng(5), sky_e=sky, scale_range=(1, 1),
                      add_sky_range=(added, added), p_add=1.0)
    out_sky, out_sigma = robust_sky_noise(out)
    assert out.dtype == np.float32
    expected_sigma = np.hypot(sigma, np.sqrt(added))
    assert out_sky == pytest.approx(sky + added, abs=0.1 * expected_sigma)
    assert out_sigma == pytest.approx(expected_sigma, rel=0.10)
    assert out_sigma > 1.5 * sigma


def test_sky_augment_shorter_exposure_keeps_poisson_noise(decam):
    img, sky, sigma = decam
    assert sigma == pytest.approx(np.sqrt(sky), rel=0.1)  # the premise: sky-limited noise
    s = 0.25
    out = sky_augment(img, np.random.default_rng(6), sky_e=sky, scale_range=(s, s), p_add=0.0)
    out_sky, out_sigma = robust_sky_noise(out)
    assert out_sky == pytest.approx(s * sky, rel=0.01)
    assert out_sigma == pytest.approx(np.sqrt(s * s * sigma**2 + s * (1 - s) * sky), rel=0.10)
    assert out_sigma == pytest.approx(np.sqrt(s * sky), rel=0.10)  # a real 0.25x exposure


def test_sky_augment_identity_and_determinism(saao_e):
    same = sky_augment(saao_e, np.random.default_rng(0), sky_e=300.0, scale_range=(1, 1), p_add=0.0)
    np.testing.assert_array_equal(same, saao_e.astype(np.float32))
    a = sky_augment(saao_e, np.random.default_rng(11), sky_e=300.0, p_add=0.5)
    b = sky_augment(saao_e, np.random.default_rng(11), sky_e=300.0, p_add=0.5)
    c = sky_augment(saao_e, np.random.default_rng(12), sky_e=300.0, p_add=0.5)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # Over many draws the exposure factor is log-uniform in [0.3, 3]: its median is ~0.95.
    rng = np.random.default_rng(13)
    patch = saao_e[:32, :32]
    ratios = np.array([np.median(sky_augment(patch, rng, sky_e=300.0, p_add=0.0)) for _ in range(300)])
    ratios /= np.median(patch)
    assert ratios.min() > 0.28 and ratios.max() < 3.05
    assert 0.8 < np.median(ratios) < 1.15
