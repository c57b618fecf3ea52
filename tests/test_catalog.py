"""The CR catalogue on arrays: labelling across bands, features, morphology, charges and rates."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import zarr
from astropy.io import fits
from scipy import ndimage

from crscale import sample_data_dir
from crscale.catalogue.detector import catalogue_detector
from crscale.catalogue.features import cr_features
from crscale.catalogue.labels import Band, label_bands, label_whole
from crscale.catalogue.morphology import MorphologyRules, classify
from crscale.catalogue.profiles import detector_physics
from crscale.catalogue.rates import effective_exptime, exposure_row
from crscale.detection.inpaint import inpaint
from crscale.train.footprints import load_itl_footprints

BIAS = sample_data_dir() / "darks" / "ntt_susi_bias_nttexample.fits.gz"
ITL_SHAPE = (4000, 4072)  # the ITL sensor's imaging area: 16,288,000 pixels, as NUM_PIX in the table
SUSI_GAIN = 4.0  # e-/ADU, ESO DET OUT1 GAIN of the bias frame


def _painted_itl(seed: int = 0):
    """The real SUSI bias (a dark-like real frame) mirror-tiled to one ITL sensor, with all 1,764 real
    ITL CR footprints added at known random places. Returns image (ADU), truth mask, total charge (e-)."""
    raw = fits.getdata(BIAS).astype(np.float32)[:, 50:1074]  # without pre- and overscan
    h, w = ITL_SHAPE
    image = np.pad(raw, ((0, h - raw.shape[0]), (0, w - raw.shape[1])), mode="symmetric")
    truth = np.zeros(ITL_SHAPE, bool)
    rng = np.random.default_rng(seed)
    library = load_itl_footprints()
    for fp in library:
        fh, fw = fp.shape
        y, x = rng.integers(0, h - fh + 1), rng.integers(0, w - fw + 1)
        image[y : y + fh, x : x + fw] += fp.values / SUSI_GAIN
        truth[y : y + fh, x : x + fw] |= fp.mask
    return image, truth, float(library.charges().sum())


@pytest.fixture(scope="module")
def painted():
    return _painted_itl()


# ---------------------------------------------------------------------------------------------
# Labelling


@pytest.mark.parametrize("seed", range(6))
def test_band_labelling_equals_whole_image_labelling(seed):
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(30, 200)), int(rng.integers(30, 200))
    mask = rng.random((h, w)) < rng.uniform(0.05, 0.45)  # dense: components cross many bands
    values = rng.normal(size=(h, w))
    whole, n = label_whole(mask)
    rows = int(rng.integers(1, 25))
    batches = list(
        label_bands((Band(y, mask[y : y + rows], {"v": values[y : y + rows]}) for y in range(0, h, rows)), w)
    )
    comps = [
        (
            c.first[i],
            c.y[c.offsets[i] : c.offsets[i + 1]],
            c.x[c.offsets[i] : c.offsets[i + 1]],
            c.values["v"][c.offsets[i] : c.offsets[i + 1]],
        )
        for c in batches
        for i in range(len(c))
    ]
    assert len(comps) == n
    rebuilt = np.zeros_like(whole)
    for new_id, (_first, y, x, v) in enumerate(sorted(comps, key=lambda t: t[0]), start=1):
        assert not rebuilt[y, x].any()
        rebuilt[y, x] = new_id
        np.testing.assert_array_equal(v, values[y, x])
    np.testing.assert_array_equal(rebuilt, whole)  # same regions, same ids (raster order)


def test_catalogue_across_chunk_boundaries_equals_whole_image(painted, tmp_path):
    """Zarr arrays with odd chunks read in bands of 29 rows == the whole image labelled at once."""
    image, truth, _ = painted
    image, truth = image[:1500, :2000], truth[:1500, :2000]
    clean = inpaint(image, ndimage.binary_dilation(truth, np.ones((3, 3), bool)), method="harmonic")
    root = zarr.open_group(tmp_path / "a.zarr", mode="w")
    arrays = {}
    for name, data in (("image", image), ("mask", truth.astype(np.uint8)), ("clean", clean)):
        arrays[name] = root.create_array(name, shape=data.shape, dtype=data.dtype, chunks=(29, 61))
        arrays[name][:] = data
    # CRs cut by the 29-row bands and 61-column chunks: the property is only tested if there are many.
    lab, n = label_whole(truth)
    objects = ndimage.find_objects(lab)
    crossing = sum(1 for sl in objects if sl[0].start // 29 != (sl[0].stop - 1) // 29)
    assert crossing >= 30, crossing
    for background in (arrays["clean"], None):
        banded = catalogue_detector(
            arrays["image"],
            arrays["mask"],
            background=background,
            gain=SUSI_GAIN,
            band_rows=29,
            fallback=498.0,
        )
        whole = catalogue_detector(
            image,
            truth,
            background=None if background is None else clean,
            gain=SUSI_GAIN,
            band_rows=image.shape[0],
            fallback=498.0,
        )
        assert banded.n_cr == whole.n_cr == n
        for key, col in whole.columns.items():
            if col.dtype.kind == "f":
                np.testing.assert_allclose(banded.columns[key], col, rtol=1e-9, atol=1e-6, err_msg=key)
            else:
                np.testing.assert_array_equal(banded.columns[key], col, err_msg=key)
        # ids are scipy's whole-image labels: the first pixel of CR i carries label i
        first_y = banded.columns["y_min"]
        assert (lab[first_y, :] == banded.columns["id"][:, None]).any(axis=1).all()


# ---------------------------------------------------------------------------------------------
# Features and morphology on hand-built shapes


def _one(mask: np.ndarray, values: np.ndarray | None = None, shape=None):
    mask = np.asarray(mask, bool)
    values = mask.astype(np.float64) if values is None else values
    comps = list(
        label_bands([Band(0, mask, {"image": values, "background": np.zeros_like(values)})], mask.shape[1])
    )
    assert len(comps) == 1 and len(comps[0]) == 1
    return {k: v[0] for k, v in cr_features(comps[0], shape or mask.shape, gain=1.0).items()}


def _canvas(n: int = 64) -> np.ndarray:
    return np.zeros((n, n), bool)


def _line(y0, x0, y1, x1, thick=1, n=64):
    m = _canvas(n)
    steps = int(max(abs(y1 - y0), abs(x1 - x0))) * 4 + 1
    for t in np.linspace(0, 1, steps):
        y, x = int(round(y0 + t * (y1 - y0))), int(round(x0 + t * (x1 - x0)))
        m[y : y + thick, x : x + thick] = True
    return m


def _arc(cy, cx, r, a0, a1, thick=1, n=64):
    m = _canvas(n)
    for a in np.linspace(np.radians(a0), np.radians(a1), 400):
        y, x = int(round(cy + r * np.sin(a))), int(round(cx + r * np.cos(a)))
        m[y : y + thick, x : x + thick] = True
    return m


def _disc(r, n=64):
    yy, xx = np.mgrid[:n, :n]
    return (yy - n // 2) ** 2 + (xx - n // 2) ** 2 <= r * r


SHAPES = {
    "single pixel": (np.pad([[1]], 5), "dot"),
    "two pixels side by side": (np.pad([[1, 1]], 5), "dot"),
    "two pixels diagonal": (np.pad([[1, 0], [0, 1]], 5), "dot"),
    "3x3 square": (np.pad(np.ones((3, 3)), 5), "spot"),
    "plus sign": (np.pad([[0, 1, 0], [1, 1, 1], [0, 1, 0]], 5), "spot"),
    "disc r=5": (_disc(5), "spot"),
    "2x4 bar": (np.pad(np.ones((2, 4)), 5), "spot"),
    "horizontal line 20 px": (_line(10, 5, 10, 24), "track"),
    "diagonal line 15 px": (_line(5, 5, 19, 19), "track"),
    "line at 30 deg, 2 px thick": (_line(5, 5, 20, 31, thick=2), "track"),
    "vertical line 3 px thick": (_line(5, 20, 40, 20, thick=3), "track"),
    "quarter circle r=15": (_arc(5, 5, 15, 0, 90), "worm"),
    "half circle r=12": (_arc(30, 30, 12, 0, 180, thick=2), "worm"),
    "S curve": (_arc(20, 20, 8, 180, 360) | _arc(20, 36, 8, 0, 180), "worm"),
}


@pytest.mark.parametrize("name", list(SHAPES))
def test_morphology_of_hand_built_shapes(name):
    mask, expected = SHAPES[name]
    f = _one(mask)
    assert f["morphology"] == expected, (
        name,
        {k: f[k] for k in ("n_pixels", "length", "width", "straightness")},
    )


def test_shape_measures_of_simple_shapes():
    line = _one(_line(10, 5, 10, 24))
    assert (
        line["n_pixels"] == 20
        and line["length"] == pytest.approx(20.0)
        and line["width"] == pytest.approx(1.0)
    )
    assert line["orientation"] == pytest.approx(0.0) and line["straightness"] == pytest.approx(1.0)
    diag = _one(_line(5, 5, 19, 19))
    assert diag["length"] == pytest.approx(14 * np.sqrt(2) + 1) and diag["orientation"] == pytest.approx(45.0)
    vert = _one(_line(5, 20, 40, 20))
    assert vert["orientation"] == pytest.approx(90.0)
    assert _one(_line(40, 5, 5, 40))["orientation"] == pytest.approx(
        -45.0, abs=0.1
    )  # rounding of the drawing
    quarter = _one(_arc(5, 5, 15, 0, 90))
    assert 0.8 < quarter["straightness"] < 0.93
    # charge-weighted centroid, peak, edge distance
    vals = np.zeros((20, 30))
    m = np.zeros((20, 30), bool)
    m[4, 10:13] = True
    vals[4, 10:13] = [1.0, 2.0, 5.0]
    f = _one(m, vals)
    assert f["x"] == pytest.approx((10 + 2 * 11 + 5 * 12) / 8.0) and f["y"] == pytest.approx(4.0)
    assert f["peak_e"] == 5.0 and f["charge_e"] == 8.0 and f["energy_ev"] == pytest.approx(8 * 3.65)
    assert f["edge_distance"] == 4 and (f["x_min"], f["x_max"], f["y_min"], f["y_max"]) == (10, 12, 4, 4)


def test_morphology_rules_come_from_the_config():
    import dask

    n, length, straight = np.array([3, 30]), np.array([3.0, 30.0]), np.array([1.0, 0.95])
    assert list(classify(n, length, straight)) == ["spot", "track"]
    with dask.config.set({"crscale.catalogue.morphology": {"track_min_straightness": 0.99}}):
        assert list(classify(n, length, straight, rules=MorphologyRules.from_config())) == ["spot", "worm"]
    with pytest.raises(ValueError, match="unknown morphology setting"):
        MorphologyRules.from_config(bogus=1)


def test_morphology_on_the_real_itl_footprints():
    """Each of the 1,764 real ITL CRs classified alone: the documented class counts, and each class
    holding what its rule says."""
    library = load_itl_footprints()
    cols = {}
    for fp in library:
        f = _one(np.pad(fp.mask, 1), np.pad(fp.values.astype(np.float64), 1))
        for k, v in f.items():
            cols.setdefault(k, []).append(v)
    cols = {k: np.asarray(v) for k, v in cols.items()}
    counts = Counter(cols["morphology"].tolist())
    # docs/catalogue.md quotes these counts
    assert counts == {"dot": 637, "spot": 463, "track": 610, "worm": 54}, counts
    assert (cols["n_pixels"][cols["morphology"] == "dot"] <= 2).all()
    assert (cols["morphology"][cols["n_pixels"] <= 2] == "dot").all()
    long = np.isin(cols["morphology"], ["track", "worm"])
    assert (cols["length"][long] >= 5).all() and (cols["length"][long] / cols["width"][long] >= 3).all()
    assert (cols["straightness"][cols["morphology"] == "track"] >= 0.9).all()
    assert (cols["straightness"][cols["morphology"] == "worm"] < 0.9).all()
    # the longest CR of the table (299 px) is long, and charges are the footprints' own
    assert cols["morphology"][np.argmax(cols["n_pixels"])] in ("track", "worm")
    np.testing.assert_allclose(cols["charge_e"], library.charges(), rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# The validation of the issue: real ITL footprints painted into a real dark-like frame


def test_painted_itl_footprints_counts_charge_and_rate(painted):
    image, truth, charge = painted
    _, n_truth = label_whole(truth)  # overlapping footprints count once, as the labelling does
    assert abs(n_truth - 1764) <= 0.01 * 1764
    result = catalogue_detector(image, truth, gain=SUSI_GAIN, saturation=65535.0)
    assert result.n_cr == n_truth
    assert abs(result.n_cr - 1764) / 1764 <= 0.01
    total = result.columns["charge_e"].sum()
    assert abs(total - charge) / charge <= 0.02, (total, charge)
    assert result.n_pixels_usable == 16_288_000 and result.background == "inpaint"

    physics = detector_physics(
        {"instrument": "LSSTCam"}, {"instrument": "LSSTCam", "detector": "ITL-3800C-145", "gain": SUSI_GAIN}
    )
    assert physics.profile == "lsst-itl" and physics.pixel_size_um == 10.0 and not physics.guessed
    row = exposure_row(
        "itl", "S00", result, physics, exposure_attrs={"exptime": 1500.0}, detector_attrs={"exptime": 1500.0}
    )
    area = 16_288_000 * (10e-4) ** 2  # cm2
    assert row["area_cm2"] == pytest.approx(area)
    assert row["effective_exptime"] == pytest.approx(1500.0 + 0.5 * 2.0)
    assert row["rate"] == pytest.approx(result.n_cr / (row["effective_exptime"] * area))
    assert row["rate_err"] == pytest.approx(np.sqrt(result.n_cr) / (row["effective_exptime"] * area))
    expected = 1764 / (1500.0 * area)
    assert abs(row["rate"] - expected) / expected <= 0.01, (row["rate"], expected)
    assert row["guessed"] == "" and row["n_cr"] == sum(
        row[f"n_{c}"] for c in ("dot", "spot", "track", "worm")
    )


def test_charge_with_the_inpainted_clean_as_background_and_saturation(painted):
    image, truth, charge = painted
    image, truth = image[:1500], truth[:1500]
    clean = inpaint(image, ndimage.binary_dilation(truth, np.ones((3, 3), bool)), method="harmonic")
    res = catalogue_detector(image, truth, background=clean, gain=SUSI_GAIN)
    lab, n = label_whole(truth)
    sums = ndimage.sum((image - clean) * SUSI_GAIN, lab, index=np.arange(1, n + 1))
    np.testing.assert_allclose(res.columns["charge_e"], sums, rtol=1e-5, atol=1e-3)
    assert res.background == "clean"
    sat = catalogue_detector(image, truth, background=clean, gain=SUSI_GAIN, saturation=float(np.max(image)))
    assert sat.columns["saturated"].sum() >= 1
    assert sat.n_pixels_usable < res.n_pixels_usable


def test_effective_exptime_and_bad_arguments():
    assert effective_exptime(100.0, None, 20.0, fraction=0.5) == 110.0
    assert effective_exptime(100.0, 101.5, 20.0, fraction=0.5) == 111.5  # DARKTIME when given
    assert effective_exptime(None, None, 20.0) is None
    with pytest.raises(ValueError, match="gain"):
        catalogue_detector(np.zeros((5, 5)), np.zeros((5, 5)), gain=0.0)
    with pytest.raises(ValueError, match="shape"):
        catalogue_detector(np.zeros((5, 5)), np.zeros((5, 6)))
    empty = catalogue_detector(np.zeros((5, 5)), np.zeros((5, 5)))
    assert empty.n_cr == 0 and empty.n_pixels_usable == 25 and empty.columns["id"].dtype == np.int32
