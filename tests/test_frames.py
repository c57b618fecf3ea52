"""Derived real frames (crops, binning) and the split of docs/training/archive-frames.yaml."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits

from conftest import GMOS, SAAO, SHARED_REAL
from crscale.evaluate.metrics import score_summary, sweep_summary
from crscale.evaluate.runner import frame_targets
from crscale.io.errors import InputError
from crscale.io.fits_reader import read_exposure
from crscale.train.frames import FrameSpec, bin_sum, overlaps, read_specs, write_frames

SPEC = Path(__file__).resolve().parents[1] / "docs" / "training" / "archive-frames.yaml"


def _spec(tmp_path, frames):
    path = tmp_path / "frames.yaml"
    path.write_text(yaml.safe_dump({"frames": frames}))
    return path


def test_crop_and_bin_of_a_real_frame_keep_charge_and_noise_in_electrons(tmp_path):
    spec = _spec(
        tmp_path,
        [
            {
                "name": "crop",
                "source": str(SAAO),
                "role": "train",
                "kind": "star field",
                "crop": [10, 110, 20, 220],
            },
            {
                "name": "bin2",
                "source": str(SAAO),
                "role": "heldout",
                "kind": "binned",
                "bin": 2,
                "crop": [200, 400, 0, 301],
            },
        ],
    )
    paths = write_frames(spec, tmp_path / "out")
    src = read_exposure(SAAO).detectors[0]
    gain, rn = float(src.meta.gain), float(src.meta.readnoise)
    e = src.image.astype(np.float64) * gain
    crop = fits.getdata(paths["train"][0])
    np.testing.assert_allclose(crop, e[10:110, 20:220], rtol=1e-6)
    with fits.open(paths["heldout"][0]) as h:
        binned, hdr = h[0].data, h[0].header
    # 301 columns: the last one does not fill a 2x2 block and is cut
    assert binned.shape == (100, 150)
    np.testing.assert_allclose(binned, e[200:400, 0:300].reshape(100, 2, 150, 2).sum(axis=(1, 3)), rtol=1e-6)
    assert hdr["GAIN"] == 1.0 and hdr["RDNOISE"] == pytest.approx(2 * rn) and hdr["CRSBIN"] == 2
    assert hdr["CRSCROP"] == "[200:400,0:301]" and hdr["CRSROLE"] == "heldout"
    # what crscale reads back: electrons, with the binned read noise
    det = read_exposure(paths["heldout"][0]).detectors[0]
    assert det.meta.gain == 1.0 and det.meta.readnoise == pytest.approx(2 * rn)


def test_bad_pixels_survive_binning_as_nan():
    img = np.arange(36, dtype=float).reshape(6, 6)
    bad = np.zeros((6, 6), bool)
    bad[1, 4] = True
    out, b = bin_sum(img, bad, 3)
    assert out.shape == (2, 2) and out[0, 0] == img[:3, :3].sum()
    assert b.tolist() == [[False, True], [False, False]]


def test_overlapping_crops_of_different_roles_are_found():
    a = FrameSpec("a", "x.fits", "train", "arc", crop=(0, 100, 0, 100))
    b = FrameSpec("b", "x.fits", "heldout", "arc", crop=(0, 100, 100, 200))
    c = FrameSpec("c", "x.fits", "val", "arc", crop=(50, 60, 90, 110))
    d = FrameSpec("d", "x.fits", "val", "arc")
    assert overlaps([a, b]) == []
    assert overlaps([a, b, c]) == [("a", "c"), ("b", "c")]
    assert ("a", "d") in overlaps([a, d])


def test_bad_specs_are_refused_naming_the_file(tmp_path):
    with pytest.raises(InputError, match="frames.yaml.*role"):
        read_specs(_spec(tmp_path, [{"name": "a", "source": "x", "role": "test", "kind": "k"}]))
    with pytest.raises(InputError, match="unique"):
        read_specs(_spec(tmp_path, [{"name": "a", "source": "x", "role": "train", "kind": "k"}] * 2))
    spec = _spec(
        tmp_path, [{"name": "a", "source": str(SAAO), "role": "train", "kind": "k", "crop": [0, 9999, 0, 5]}]
    )
    with pytest.raises(InputError, match="outside the image"):
        write_frames(spec, tmp_path / "out")
    # a trail that is not [length, angle], not finite, or longer than the frame allows
    base = {"name": "t", "source": str(SAAO), "role": "train", "kind": "k"}
    for bad in ("35", [12], [12, float("nan")], [0.5, 30]):
        with pytest.raises(InputError, match="frames.yaml.*trail"):
            read_specs(_spec(tmp_path, [{**base, "trail": bad}]))
    spec = _spec(tmp_path, [{**base, "trail": [60, 0], "crop": [0, 100, 0, 300]}])
    with pytest.raises(InputError, match="a8280271.fits.*too long"):
        write_frames(spec, tmp_path / "out")
    assert not (tmp_path / "out" / "train" / "t.fits").exists()


def test_the_shipped_split_keeps_held_out_pixels_out_of_training():
    specs, base = read_specs(SPEC)
    assert overlaps(specs) == []
    held = [s for s in specs if s.role == "heldout"]
    assert len(held) >= 8
    kinds = {s.kind.split(" (")[0].split(",")[0] for s in held}
    assert len(kinds) >= 5, kinds
    # a held-out source is either split by position or used in no other role
    for h in held:
        others = [s for s in specs if s.source == h.source and s.role != "heldout"]
        assert all(h.crop and s.crop for s in others), (h.name, [s.name for s in others])
    if SHARED_REAL.is_dir():
        assert all((base / s.source).exists() for s in specs)


def test_the_external_frames_are_held_out_and_no_training_spec_reads_them():
    external, ext_base = read_specs(SPEC.parents[1] / "evaluation" / "external-frames.yaml")
    assert external and all(s.role == "heldout" for s in external)
    sources = {(ext_base / s.source).resolve() for s in external}
    assert all(p.exists() for p in sources)  # shipped in the repository
    for spec_file in SPEC.parent.glob("archive-frames*.yaml"):
        specs, base = read_specs(spec_file)
        assert sources.isdisjoint((base / s.source).resolve() for s in specs), spec_file.name
    # nor does any training config name them
    for cfg in SPEC.parent.glob("crscale-*.yaml"):
        assert "sprat" not in cfg.read_text().lower(), cfg.name


@pytest.mark.parametrize("name, changed", [("archive-frames-dim.yaml", lambda s: s.dim < 1),
                                           ("archive-frames-sky.yaml", lambda s: s.sky > 0)])
def test_the_dimmed_and_brightened_training_frames_reach_no_val_or_held_out_pixel(name, changed):
    extra, base = read_specs(SPEC.with_name(name))
    specs, base2 = read_specs(SPEC)
    assert base == base2 and extra and all(s.role == "train" and changed(s) for s in extra)
    assert overlaps(specs + extra) == []
    assert {s.name for s in extra}.isdisjoint(s.name for s in specs)
    # every one is a training frame of the main split, the same pixels
    train = {(s.source, s.detector, s.crop, s.bin) for s in specs if s.role == "train"}
    assert all((s.source, s.detector, s.crop, s.bin) in train for s in extra)


def test_false_positives_per_mpix_at_the_operating_point():
    truth = np.zeros(1000, bool)
    truth[:10] = True
    score = np.zeros(1000, np.float32)
    score[:9] = 0.9  # 9 of 10 CR pixels found
    score[500:503] = 0.7  # 3 false pixels above 0.6, one below
    score[600] = 0.5
    s = score_summary(score, truth, 0.6)
    assert s["tpr"] == pytest.approx(0.9) and s["fp_per_mpix"] == pytest.approx(3e6 / 1000)
    sw = sweep_summary({4.5: (9, 3, 1, 987)}, 4.5)
    assert sw["fp_per_mpix"] == pytest.approx(3000.0)
    metrics = {
        "m": {
            "per_image": {"a": {"tpr": 0.96, "fp_per_mpix": 80.0}, "b": {"tpr": 0.99, "fp_per_mpix": 300.0}}
        }
    }
    t = frame_targets(metrics, "m")
    assert [x["met"] for x in t] == [True, False] and "300 FP px/Mpix" in t[1]["text"]


def test_a_short_exposure_keeps_its_real_structure_in_the_loss(tmp_path):
    from crscale.train.dataset import load_source_images

    frames = [
        {"name": "looked", "source": str(SAAO), "role": "train", "kind": "k"},
        {"name": "short", "source": str(SAAO), "role": "val", "kind": "k", "own_crs": "none"},
    ]
    paths = write_frames(_spec(tmp_path, frames), tmp_path / "out")
    looked, short = load_source_images([paths["train"][0], paths["val"][0]])
    # astroscrappy finds the SAAO frame's own CRs; the frame marked as short is used as it is
    assert looked.own_cr.sum() > 0 and short.own_cr.sum() == 0
    np.testing.assert_array_equal(short.image_e, np.nan_to_num(fits.getdata(paths["val"][0])))
    with pytest.raises(InputError, match="own_crs"):
        read_specs(_spec(tmp_path, [{**frames[0], "own_crs": "maybe"}]))


def test_a_trailed_real_frame_keeps_its_flux_and_noise_and_streaks_its_stars(tmp_path):
    from scipy import ndimage

    from crscale.train.frames import trail_frame, trail_kernel

    k = trail_kernel(12, 80)
    assert k.sum() == pytest.approx(1.0)
    # the kernel's second moments: a line 12 px long at 80 degrees (variance of a uniform line L²/12)
    yy, xx = np.indices(k.shape) - k.shape[0] // 2
    cov = np.cov(np.stack([xx.ravel(), yy.ravel()]), aweights=k.ravel())
    evals, evecs = np.linalg.eigh(cov)
    assert np.sqrt(12 * evals[-1]) == pytest.approx(12, rel=0.05)
    assert abs(np.degrees(np.arctan2(evecs[1, -1], evecs[0, -1])) % 180 - 80) < 2
    src = read_exposure(SAAO).detectors[0]
    e = src.image.astype(np.float64)[200:712, 100:612] * float(src.meta.gain)
    bad = np.zeros(e.shape, bool)
    bad[300, 300] = True
    t, reach = trail_frame(e, bad, 12, 80, seed=1)
    inner = (slice(40, -40), slice(40, -40))
    sky = np.median(e)
    assert t[inner].sum() == pytest.approx(np.where(bad, sky, e)[inner].sum(), rel=0.01)

    def noise(img):  # the spread of neighbouring pixels' differences: the sky's noise, not its stars
        d = np.diff(img[inner], axis=1).ravel()
        return 1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2)

    # the trail averages the noise down to sum(k²) of its variance, and the added noise restores it
    k2 = float((k**2).sum())
    assert noise(e) * np.sqrt(k2) < 0.5 * noise(e) and noise(t) == pytest.approx(noise(e), rel=0.1)
    # a bad pixel spoils the pixels the kernel carries it to
    assert reach[300, 300] and reach.sum() == int((k > 0).sum())
    # the brightest star becomes a streak along 80 degrees: a line of 12 px adds 12²/12 px² to
    # the variance of its light along the trail, and nothing across it
    sm = ndimage.uniform_filter(e, 5)[inner]
    y, x = (int(v) + 40 for v in np.unravel_index(np.argmax(sm), sm.shape))
    cut = t[y - 15 : y + 16, x - 15 : x + 16] - sky
    w = np.where(cut > 10 * noise(t), cut, 0.0)
    yy, xx = np.indices(cut.shape)
    evals, evecs = np.linalg.eigh(np.cov(np.stack([xx.ravel(), yy.ravel()]), aweights=w.ravel()))
    assert evals[-1] - evals[0] == pytest.approx(12**2 / 12, rel=0.35)
    assert abs(np.degrees(np.arctan2(evecs[1, -1], evecs[0, -1])) % 180 - 80) < 5


def test_a_trail_spec_is_written_with_its_header(tmp_path):
    spec = _spec(
        tmp_path,
        [{"name": "trailed", "source": str(SAAO), "role": "train", "kind": "trailed", "trail": [8, 30],
          "crop": [0, 256, 0, 256]}],
    )
    (path,) = write_frames(spec, tmp_path / "out")["train"]
    assert fits.getheader(path)["CRSTRAIL"] == "8 px at 30 deg"
    # the same spec gives the same frame
    again = write_frames(spec, tmp_path / "again")["train"][0]
    np.testing.assert_array_equal(fits.getdata(path), fits.getdata(again))
    with pytest.raises(Exception, match="trail"):
        FrameSpec(name="x", source="s", role="train", kind="k", trail=(1.0, 0.0))


ARC = SHARED_REAL / "eso_midas_testdata" / "HeAr_gr2_extr.fits"


# The bundled GMOS spectrum is a resampled frame: its noise is correlated from row to row, while
# dim adds white noise, so its noise from pixel to pixel is not kept (the arc's is).
@pytest.mark.parametrize(
    "source, crop, white", [(ARC, [0, 286, 0, 640], True), (GMOS, None, False)], ids=["arc", "gmos"]
)
def test_a_dimmed_real_frame_has_fainter_lines_and_keeps_its_background(tmp_path, source, crop, white):
    """dim on a real frame with lines (the EMMI He-Ar arc; the bundled GMOS spectrum's sky
    lines): the light above the background scaled, the background's level (and, where the
    frame's noise is white, its noise) kept."""
    from crscale.detection.sky_noise import robust_sky_noise

    if not source.exists():
        pytest.skip(f"{source} is not here")
    base = {"source": str(source), "role": "train", "kind": "lines", **({"crop": crop} if crop else {})}
    spec = _spec(tmp_path, [{"name": "full", **base}, {"name": "dim", **base, "dim": 0.2}])
    paths = write_frames(spec, tmp_path / "out")
    full, dimmed = (fits.getdata(p) for p in paths["train"])
    assert fits.getheader(paths["train"][1])["CRSDIM"] == 0.2
    assert "CRSDIM" not in fits.getheader(paths["train"][0])
    sky, sigma = robust_sky_noise(full)
    lines = (full - sky) > 50 * sigma  # the bright lines
    assert lines.sum() > 50
    assert (dimmed - sky)[lines].sum() == pytest.approx(0.2 * (full - sky)[lines].sum(), rel=0.01)
    # the background (the columns between the lines) keeps its level and its noise
    between = np.abs(np.median(full, axis=0) - sky) < 0.5 * sigma
    assert between.sum() > 50
    assert dimmed[:, between].mean() == pytest.approx(full[:, between].mean(), abs=0.25 * sigma)

    def noise(img):  # from pixel to pixel along the columns: the noise, not the frame's gradients
        d = np.diff(img[:, between], axis=0).ravel()
        return 1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2)

    if white:
        assert noise(dimmed) == pytest.approx(noise(full), rel=0.1)
    with pytest.raises(InputError, match="frames.yaml.*dim"):
        read_specs(_spec(tmp_path, [{"name": "a", **base, "dim": 0}]))


def test_dimming_gives_the_noise_of_a_shorter_exposure():
    """A Poisson frame of a line spectrum at exposure 1, dimmed by 0.2, has the light and the
    noise of the same spectrum exposed 0.2 times as long."""
    from crscale.train.frames import dim_frame

    rng = np.random.default_rng(3)
    x = np.arange(400)
    light = np.zeros((300, 400))
    for c in (50, 150, 260, 330):  # four lines along the slit, 2 px sigma, 20,000 e- at peak
        light += 2e4 * np.exp(-0.5 * ((x - c) / 2.0) ** 2)[None, :]
    read = 5.0

    def expose(t):
        return rng.poisson(100 + t * light).astype(float) + rng.normal(0, read, light.shape)

    bright, faint = expose(1.0), expose(0.2)
    made = dim_frame(bright, np.zeros(light.shape, bool), 0.2, seed=4)
    on_line = light > 5e3
    # the light on the lines, and its scatter along each column (the slit direction)
    cols = on_line[0]
    assert np.mean(made[:, cols]) == pytest.approx(np.mean(faint[:, cols]), rel=0.01)
    assert np.std(made[:, on_line[0]], axis=0).mean() == pytest.approx(
        np.std(faint[:, on_line[0]], axis=0).mean(), rel=0.05)
    off = light < 1
    assert np.std(made[:, off[0]]) == pytest.approx(np.std(faint[:, off[0]]), rel=0.05)


def test_a_real_frame_under_a_brighter_sky_gains_the_level_and_its_poisson_noise(tmp_path):
    """sky on the bundled real SAAO frame: every good pixel gains the level, with a noise of
    variance the level, independent of the frame; the bad pixels stay bad; bad values refused."""
    base = {"source": str(SAAO), "role": "train", "kind": "star field", "crop": [0, 400, 0, 500]}
    spec = _spec(tmp_path, [{"name": "as-is", **base}, {"name": "bright", **base, "sky": 20000}])
    paths = write_frames(spec, tmp_path / "out")
    full, bright = (fits.getdata(p).astype(np.float64) for p in paths["train"])
    assert fits.getheader(paths["train"][1])["CRSSKY"] == 20000
    assert "CRSSKY" not in fits.getheader(paths["train"][0])
    assert np.array_equal(np.isnan(full), np.isnan(bright))
    good = np.isfinite(full)
    added = (bright - full)[good]
    assert added.mean() == pytest.approx(20000, abs=3 * np.sqrt(20000 / added.size))
    assert added.std() == pytest.approx(np.sqrt(20000), rel=0.02)
    # white and independent of the frame: no correlation with the stars, none from pixel to pixel
    assert abs(np.corrcoef(added, full[good])[0, 1]) < 0.01
    d = bright - full
    assert abs(np.nanmean((d[:, 1:] - 20000) * (d[:, :-1] - 20000))) < 0.02 * 20000
    for value in (-1, float("nan"), "abc", True):
        with pytest.raises(InputError, match="frames.yaml.*sky must be"):
            read_specs(_spec(tmp_path, [{"name": "a", **base, "sky": value}]))


def test_a_crop_without_good_pixels_is_refused_naming_the_file(tmp_path):
    data = fits.getdata(SAAO).astype(np.float32)
    data[:40, :40] = np.nan  # a dead corner of a real frame
    src = tmp_path / "dead-corner.fits"
    fits.PrimaryHDU(data).writeto(src)
    spec = _spec(tmp_path, [{"name": "c", "source": str(src), "role": "train", "kind": "k",
                             "crop": [0, 40, 0, 40], "dim": 0.5}])
    with pytest.raises(InputError, match="dead-corner.fits.*no good pixel"):
        write_frames(spec, tmp_path / "out")
    assert not (tmp_path / "out" / "train" / "c.fits").exists()
