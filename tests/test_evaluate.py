"""crscale evaluate: evaluation sets, metrics of scores and sweeps, the runner, the CLI."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass

import numpy as np
import pytest
from scipy import ndimage

from conftest import DECAM, DECAM_DQ, EMMI, GMOS, SAMPLE, copy_to
from crscale.cli import main
from crscale.evaluate.dataset import EvalImage, injected_set, load_labelled, pair_files
from crscale.evaluate.methods import Method, astroscrappy_method, baseline_methods, crscale_method
from crscale.evaluate.metrics import (
    confusion,
    pixel_metrics,
    precision_at_tpr,
    score_summary,
    sweep_summary,
    tpr_at_fpr,
)
from crscale.evaluate.runner import evaluate_methods, targets
from crscale.io.errors import InputError

GMOS_MASK = SAMPLE / "masks" / "gmos_crmask_reference.fits"
POOLED_KEYS = {"tpr@fpr=1e-4", "tpr@fpr=1e-3", "precision@tpr=0.95", "f1", "iou", "fdr", "threshold"}


# --- pairing -----------------------------------------------------------------------------------


def test_pairs_match_by_name_exact_name_first(tmp_path):
    imgs, masks = tmp_path / "img", tmp_path / "mask"
    copy_to(GMOS, imgs)
    copy_to(EMMI, imgs)
    copy_to(GMOS_MASK, masks)  # gmos_crmask_reference: a prefix match of gmos
    copy_to(GMOS_MASK, masks, "emmi_image_sum3.fits")  # exact name of the emmi image
    copy_to(GMOS_MASK, masks, "emmi_image_sum3_other.fits")  # a prefix match, lost to the exact one
    pairs = dict((i.name, m.name) for i, m in pair_files([imgs], [masks]))
    assert pairs == {
        "gmos.fits": "gmos_crmask_reference.fits",
        "emmi_image_sum3.fits": "emmi_image_sum3.fits",
    }


def test_pairing_errors_name_the_image(tmp_path):
    imgs, masks = tmp_path / "img", tmp_path / "mask"
    copy_to(EMMI, imgs)
    copy_to(GMOS_MASK, masks)
    with pytest.raises(InputError, match="emmi_image_sum3.fits.*no CR mask matches"):
        pair_files([imgs], [masks])
    copy_to(GMOS_MASK, masks, "emmi_image_sum3_a.fits")
    copy_to(GMOS_MASK, masks, "emmi_image_sum3_b.fits")
    with pytest.raises(InputError, match="several masks match"):
        pair_files([imgs], [masks])


def test_mask_of_the_wrong_shape_is_reported_and_skipped(tmp_path):
    imgs, masks = tmp_path / "img", tmp_path / "mask"
    copy_to(GMOS, imgs)
    copy_to(EMMI, imgs)
    copy_to(GMOS_MASK, masks)
    copy_to(GMOS_MASK, masks, "emmi_image_sum3.fits")  # 150x200 mask for a 256x256 image
    skipped: list[dict] = []
    data = load_labelled(pair_files([imgs], [masks]), skipped=skipped)
    assert [d.name for d in data] == ["gmos"]
    assert data[0].n_cr_pixels == 163  # the reference mask's CR pixels (MANIFEST)
    assert len(skipped) == 1 and "emmi_image_sum3.fits" in skipped[0]["path"]
    assert "differs from image shape" in skipped[0]["problem"]


# --- injection sets ----------------------------------------------------------------------------


def test_injected_set_is_reproducible_excludes_own_crs_and_uses_dq(tmp_path):
    folder = tmp_path / "decam"
    copy_to(DECAM, folder)
    copy_to(DECAM_DQ, folder)  # the DQ companion must be taken as DQ, not as a second image
    a = injected_set([folder, GMOS], rate=1e-3, repeats=2, seed=5)
    b = injected_set([folder, GMOS], rate=1e-3, repeats=2, seed=5)
    c = injected_set([folder, GMOS], rate=1e-3, repeats=2, seed=6)
    assert [im.name for im in a] == [
        "c4d_170316_062107_ooi_z_ls9.N2#1",
        "c4d_170316_062107_ooi_z_ls9.N2#2",
        "gmos#1",
        "gmos#2",
    ]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.image_e, y.image_e)
        np.testing.assert_array_equal(x.truth, y.truth)
    assert any(not np.array_equal(x.truth, z.truth) for x, z in zip(a, c, strict=True))
    assert not np.array_equal(a[0].truth, a[1].truth)  # repeats are independent draws
    dec = a[0]
    assert dec.bad.sum() > 0  # the CP's DQ flags came from the ood companion
    assert not dec.valid[dec.bad].any()
    assert dec.n_cr_pixels > 50
    # the images' own CRs (astroscrappy) are excluded, so fewer pixels count than are good
    assert (~dec.bad).sum() > dec.n_pixels


# --- metrics -----------------------------------------------------------------------------------


def test_score_summary_agrees_with_the_reference_functions():
    rng = np.random.default_rng(1)
    truth = rng.random(200_000) < 0.01
    score = np.clip(rng.normal(0.15, 0.1, truth.size) + truth * rng.normal(0.6, 0.25, truth.size), 0, 1)
    s = score_summary(score, truth, 0.5)
    assert POOLED_KEYS <= set(s)
    assert s["tpr@fpr=1e-4"] == pytest.approx(tpr_at_fpr(score, truth, 1e-4))
    assert s["tpr@fpr=1e-3"] == pytest.approx(tpr_at_fpr(score, truth, 1e-3))
    assert s["precision@tpr=0.95"] == pytest.approx(precision_at_tpr(score, truth, 0.95))
    ref = pixel_metrics(score, truth, 0.5)
    for k in ("f1", "iou", "fdr", "tpr", "fpr"):
        assert s[k] == pytest.approx(getattr(ref, k))
    row = next(r for r in s["threshold_table"] if r["threshold"] == 0.25)
    assert row["tpr"] == pytest.approx(pixel_metrics(score, truth, 0.25).tpr)
    assert s["best_f1"]["f1"] >= max(r["f1"] for r in s["threshold_table"]) - 1e-12


def test_sweep_summary_takes_the_best_point_within_each_budget():
    n_pos, n_neg = 1000, 1_000_000
    points = {}  # sigclip -> (tp, fp, fn, tn): lower sigclip finds more and errs more
    for sig, tp, fp in ((2.0, 990, 5000), (3.0, 960, 900), (4.0, 900, 80), (5.0, 850, 20), (8.0, 600, 1)):
        points[sig] = (tp, fp, n_pos - tp, n_neg - fp)
    s = sweep_summary(points, 5.0)
    assert s["tpr@fpr=1e-3"] == pytest.approx(0.96) and s["operating_points"]["tpr@fpr=1e-3"] == 3.0
    assert s["tpr@fpr=1e-4"] == pytest.approx(0.90) and s["operating_points"]["tpr@fpr=1e-4"] == 4.0
    assert s["precision@tpr=0.95"] == pytest.approx(960 / 1860)  # best precision among tpr >= 0.95
    assert s["f1"] == pytest.approx(2 * 850 / (2 * 850 + 20 + 150))
    assert s["threshold"] == 5.0 and s["n_cr_pixels"] == n_pos


def test_confusion_counts():
    m = np.array([1, 1, 0, 0, 1], bool)
    t = np.array([1, 0, 1, 0, 1], bool)
    assert confusion(m, t) == (2, 1, 1, 1)


# --- the runner --------------------------------------------------------------------------------


@dataclass
class _Truth(Method):
    """Returns the (undilated) truth as its score: a perfect detector on undilated masks."""

    def run(self, image: EvalImage) -> np.ndarray:
        return image.truth.astype(np.float32)


@dataclass
class _FailsOn(Method):
    bad_name: str = ""

    def run(self, image: EvalImage) -> np.ndarray:
        if image.name == self.bad_name:
            raise RuntimeError("out of memory")
        return image.truth.astype(np.float32)


def _small_set():
    return injected_set([GMOS, EMMI], rate=1e-3, seed=3)


def test_dilation_convention():
    data = _small_set()
    exact = _Truth(name="truth", label="truth", kind="score", threshold=0.5)
    r = evaluate_methods(data, [exact], progress=False)
    assert r.metrics["truth"]["tpr@fpr=1e-4"] == 1.0 and r.metrics["truth"]["fdr"] == 0.0
    # dilated truth, output dilated too (not trained on dilated masks): still perfect
    r = evaluate_methods(data, [exact], dilate=True, progress=False)
    assert r.metrics["truth"]["f1"] == 1.0
    # marked as trained on dilated masks, its undilated output now misses the dilated rim
    exact.trained_dilated = True
    r = evaluate_methods(data, [exact], dilate=True, progress=False)
    m = r.metrics["truth"]
    n_rim = sum(
        int((ndimage.binary_dilation(im.truth, np.ones((3, 3), bool)) & ~im.truth & im.valid).sum())
        for im in data
    )
    assert m["fdr"] == 0.0 and m["tpr"] < 1.0
    assert m["n_cr_pixels"] - round(m["tpr"] * m["n_cr_pixels"]) == n_rim


def test_a_method_that_fails_on_one_image_is_dropped_and_reported():
    data = _small_set()
    ok = _Truth(name="ok", label="ok", kind="score", threshold=0.5)
    bad = _FailsOn(name="flaky", label="flaky", kind="score", threshold=0.5, bad_name=data[1].name)
    msgs: list[str] = []
    r = evaluate_methods(data, [bad, ok], progress=False, log=msgs.append)
    assert list(r.metrics) == ["ok"]
    assert r.skipped[0]["method"] == "flaky"
    assert data[1].name in r.skipped[0]["problem"] and "out of memory" in r.skipped[0]["problem"]
    assert any("flaky" in m for m in msgs)


def _default_card():
    from crscale.detection import get_predictor

    return get_predictor("default").card


def test_default_model_and_astroscrappy_on_real_images_with_injected_crs():
    data = _small_set()
    methods = [crscale_method("default"), astroscrappy_method(sigclips=(3.0, 4.5, 8.0))]
    r = evaluate_methods(data, methods, progress=False)
    d, a = r.metrics["crscale:crscale-default"], r.metrics["astroscrappy"]
    assert d["threshold"] == methods[0].threshold == _default_card().recommended_threshold
    assert a["threshold"] == 4.5
    for m in (d, a):
        assert POOLED_KEYS <= set(m)
        assert set(m["per_image"]) == {im.name for im in data}
        assert m["n_cr_pixels"] == sum(im.n_cr_pixels for im in data)
    # the sweep's points are nested in sigclip: a lower sigclip flags at least as many pixels
    fprs = [r_["fpr"] for r_ in a["threshold_table"]]
    assert fprs == sorted(fprs, reverse=True)
    # sanity of the model on real pixels: 0.79 here (GMOS 0.92; the EMMI sum of 3 frames, with no
    # gain in its header, 0.76), against 0.956 on the 4.3 Mpix held-out set of docs/model-study.md
    assert d["tpr@fpr=1e-3"] > 0.7
    t = targets(r.metrics, "crscale:crscale-default")
    assert t[0]["goal"] == 0.95 and len(t) == 3
    assert t[1]["value"] == pytest.approx(d["tpr@fpr=1e-4"] - a["tpr@fpr=1e-4"]) and t[1]["goal"] is None


def test_baselines_that_are_not_installed_are_skipped_with_a_message():
    methods, skipped = baseline_methods(("astroscrappy", "deepcr", "cosmic-conn"))
    names = [m.name for m in methods] + [s["method"] for s in skipped]
    assert "astroscrappy" in names
    has_deepcr = importlib.util.find_spec("deepCR") is not None or any(n.startswith("deepCR:") for n in names)
    if importlib.util.find_spec("cosmic_conn") is None:
        assert any(s["method"] == "Cosmic-CoNN" and "not installed" in s["problem"] for s in skipped)
    else:
        assert "Cosmic-CoNN:ground_imaging" in names
    if not has_deepcr:
        assert any(s["method"] == "deepCR" and "pip install" in s["problem"] for s in skipped)
    with pytest.raises(ValueError, match="unknown baseline"):
        baseline_methods(("maximask",))


# --- the command -------------------------------------------------------------------------------


def test_cli_evaluate_with_masks_writes_the_report(tmp_path, capsys):
    out = tmp_path / "report"
    rc = main(
        [
            "evaluate",
            str(GMOS),
            "--masks",
            str(GMOS_MASK),
            "--out",
            str(out),
            "--baselines",
            "astroscrappy",
            "--sigclips",
            "3,4.5,6",
            "--no-progress",
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0
    assert "crscale:crscale-default" in text and "astroscrappy" in text
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["crscale:crscale-default", "astroscrappy"]
    for m in metrics.values():
        assert POOLED_KEYS <= set(m)
        assert m["n_cr_pixels"] == 163
    run = json.loads((out / "run.json").read_text())
    assert run["data"]["mode"] == "masks" and run["images"][0]["mask"].endswith("gmos_crmask_reference.fits")
    for f in ("roc.png", "precision_recall.png", "tpr_per_image.png", "threshold_scan.png", "report.md"):
        assert (out / f).stat().st_size > 0


def test_cli_evaluate_injection_and_usage_errors(tmp_path, capsys):
    out = tmp_path / "r"
    rc = main(
        [
            "evaluate",
            str(EMMI),
            "--out",
            str(out),
            "--baselines",
            "none",
            "--cr-rate",
            "1e-3",
            "--no-progress",
        ]
    )
    assert rc == 0
    assert "target" in capsys.readouterr().out
    run = json.loads((out / "run.json").read_text())
    assert run["data"]["mode"] == "injected" and run["data"]["n_cr_pixels"] > 0
    assert run["targets"][0]["text"].startswith("crscale:crscale-default TPR at 0.1 % FPR")
    rc = main(["evaluate", str(tmp_path / "nope.fits"), "--out", str(out), "--no-progress"])
    assert rc == 2 and "nope.fits" in capsys.readouterr().err
    rc = main(["evaluate", str(EMMI), "--out", str(out), "--baselines", "maximask", "--no-progress"])
    assert rc == 2 and "unknown baseline" in capsys.readouterr().err
    rc = main(["evaluate", str(EMMI), "--out", str(out), "--threshold", "2", "--no-progress"])
    assert rc == 2 and "--threshold must be between 0 and 1" in capsys.readouterr().err


def test_update_card_writes_the_evaluation_into_a_model_card(tmp_path, capsys):
    from crscale.models.store import available_models

    shipped = available_models()["crscale-default"]
    model = copy_to(shipped, tmp_path / "m", "mine.safetensors")
    copy_to(shipped.with_suffix(".json"), tmp_path / "m", "mine.json")
    out = tmp_path / "r"
    rc = main(
        [
            "evaluate",
            str(GMOS),
            "--out",
            str(out),
            "--model",
            str(model),
            "--baselines",
            "astroscrappy",
            "--sigclips",
            "4.5,8",
            "--cr-rate",
            "2e-3",
            "--update-card",
            "--no-progress",
        ]
    )
    assert rc == 0 and "model card updated" in capsys.readouterr().out
    card = json.loads((tmp_path / "m" / "mine.json").read_text())  # strict JSON: no NaN
    metrics = json.loads((out / "metrics.json").read_text())
    ev = card["evaluation"]
    assert ev["tpr@fpr=1e-3"] == metrics["crscale:crscale-default"]["tpr@fpr=1e-3"]
    assert ev["others"]["astroscrappy"]["tpr@fpr=1e-3"] == metrics["astroscrappy"]["tpr@fpr=1e-3"]
    assert ev["command"].startswith("crscale evaluate") and ev["images"] == ["gmos"]
    mine = metrics["crscale:crscale-default"]
    assert ev["significant"]["tpr@fpr=1e-3"] == mine["significant"]["tpr@fpr=1e-3"]
    assert ev["per_image"]["gmos"]["significant"] == mine["per_image"]["gmos"]["significant"]
    # only the evaluated copy's card changed
    assert (
        json.loads(shipped.with_suffix(".json").read_text()).get("evaluation", {}).get("created")
        != ev["created"]
    )


def test_figures_are_undefined_on_an_image_without_cr_pixels():
    truth = np.zeros(1000, bool)
    score = np.linspace(0, 1, 1000)
    s = score_summary(score, truth, 0.5)
    w = sweep_summary({4.5: confusion(score > 0.9, truth)}, 4.5)
    for key in ("tpr@fpr=1e-4", "tpr@fpr=1e-3", "precision@tpr=0.95", "tpr"):
        assert np.isnan(s[key]) and np.isnan(w[key])
    assert w["fdr"] == 1.0 and w["n_cr_pixels"] == 0


def test_bad_files_are_reported_and_the_rest_evaluated(tmp_path, capsys):
    from astropy.io import fits

    imgs = tmp_path / "img"
    copy_to(GMOS, imgs)
    (imgs / "empty.fits").write_bytes(b"")
    (imgs / "junk.fits").write_bytes(b"not a FITS file\n" * 100)
    fits.writeto(imgs / "allnan.fits", np.full((64, 64), np.nan, np.float32))
    out = tmp_path / "r"
    rc = main(["evaluate", str(imgs), "--out", str(out), "--baselines", "none", "--no-progress"])
    assert rc == 0
    run = json.loads((out / "run.json").read_text())
    assert [im["name"] for im in run["images"]] == ["gmos"]
    problems = {s["path"].rsplit("/", 1)[-1]: s["problem"] for s in run["skipped"]}
    assert set(problems) == {"empty.fits", "junk.fits", "allnan.fits"}
    assert "no finite pixel" in problems["allnan.fits"]
    # a mask with NaN in it is refused by name; with nothing left, a usage error
    masks = tmp_path / "masks"
    m = fits.getdata(GMOS_MASK).astype(np.float32)
    m[0, 0] = np.nan
    masks.mkdir()
    fits.writeto(masks / "gmos_mask.fits", m)
    rc = main(["evaluate", str(GMOS), "--masks", str(masks), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "no usable image" in err
    # a report folder that cannot be made fails before any work
    (tmp_path / "afile").write_text("x")
    rc = main(["evaluate", str(GMOS), "--out", str(tmp_path / "afile"), "--no-progress"])
    assert rc == 2 and "cannot write the report" in capsys.readouterr().err


# --- figures on significant CR pixels -----------------------------------------------------------


def test_faint_pixels_are_the_cr_pixels_below_the_noise():
    from crscale.injection.faint import faint_pixels

    rng = np.random.default_rng(0)
    # left half: a bright pixel level (1000 e-, shot noise 32 e-) with no scatter; right half:
    # an empty level with 20 e- of pixel-to-pixel noise
    image = np.zeros((64, 128))
    image[:, :64] = 1000.0
    image[:, 64:] = rng.normal(0.0, 20.0, (64, 64))
    added = np.zeros_like(image)
    truth = np.zeros(image.shape, bool)
    for (y, x), a in {(10, 10): 100.0, (20, 20): 200.0, (10, 90): 90.0, (20, 100): 110.0}.items():
        added[y, x], truth[y, x] = a, True
    added[30, 30] = 10.0  # charge on a pixel that is not a CR pixel is never faint
    faint = faint_pixels(added, truth, image, readnoise_e=5.0)
    # 5 sigma: 5 x sqrt(1000 + 25) = 160 on the bright half, 5 x ~20 = ~100 on the noisy one
    assert np.argwhere(faint).tolist() == [[10, 10], [10, 90]]


def test_local_noise_is_the_pixel_scatter_not_the_smooth_structure():
    from crscale.injection.faint import local_noise

    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:300, :200]
    # a flat's illumination: 30,000 e- falling by half across the frame, a vignetted corner,
    # and 150 e- of pixel-to-pixel noise
    smooth = 30_000.0 * (1 - 0.5 * xx / 200) * np.where(np.hypot(yy, xx) < 60, 0.3, 1.0)
    noisy = rng.normal(0.0, 150.0, smooth.shape)
    sigma = local_noise(smooth + noisy)
    assert sigma.shape == smooth.shape
    away = np.hypot(yy, xx) > 80  # boxes clear of the vignetting's sharp edge
    assert np.allclose(np.median(sigma[away]), 150.0, rtol=0.05)
    assert np.percentile(sigma[away], 99) < 1.2 * 150.0
    # a global robust scatter holds the illumination and is tens of times too large
    glob = 1.4826 * np.median(np.abs(smooth + noisy - np.median(smooth + noisy)))
    assert glob > 20 * 150.0
    with pytest.raises(ValueError, match="2-D"):
        local_noise(np.zeros(5))


def test_a_bright_sky_makes_most_injected_cr_pixels_faint(tmp_path):
    from astropy.io import fits

    with fits.open(GMOS) as hdul:
        hdu = next(h for h in hdul if h.data is not None and h.data.ndim == 2)
        data, header = hdu.data.astype(np.float32), hdu.header
    bright = tmp_path / "gmos_bright.fits"
    fits.PrimaryHDU(data + 40_000.0, header).writeto(bright)
    (plain,) = injected_set([GMOS], rate=1e-3, seed=3)
    (lit,) = injected_set([bright], rate=1e-3, seed=3)
    for im in (plain, lit):
        assert im.faint is not None and not (im.faint & ~im.truth).any()
    share = {im.name: 1 - im.n_significant_cr_pixels / im.n_cr_pixels for im in (plain, lit)}
    # GMOS's sky is ~20 e- of noise: almost every CR pixel stands out; under 40,000 e- of sky
    # (200 e- of shot noise) most do not
    assert share[plain.name] < 0.1 < 0.5 < share[lit.name]


@dataclass
class _Blurred(Method):
    """A probability map that is not the truth: CR pixels score by their brightness."""

    def run(self, image: EvalImage) -> np.ndarray:
        x = ndimage.uniform_filter(image.image_e.astype(np.float64), 3)
        return (np.tanh((image.image_e - x) / 300.0) * 0.5 + 0.5).astype(np.float32)


def test_figures_on_significant_pixels_leave_the_faint_ones_out():
    data = _small_set()
    method = _Blurred(name="blur", label="blur", kind="score", threshold=0.6)
    r = evaluate_methods(data, [method], progress=False)
    m = r.metrics["blur"]
    keep = [im.valid & ~im.faint for im in data]
    scores = [method.run(im) for im in data]
    s = np.concatenate([sc[k] for sc, k in zip(scores, keep, strict=True)])
    t = np.concatenate([im.truth[k] for im, k in zip(data, keep, strict=True)])
    ref = score_summary(s, t, 0.6)
    sig = m["significant"]
    assert sig["n_cr_pixels"] == ref["n_cr_pixels"] == sum(im.n_significant_cr_pixels for im in data)
    assert sig["n_cr_pixels"] < m["n_cr_pixels"]
    for key in ("tpr@fpr=1e-4", "tpr@fpr=1e-3", "precision@tpr=0.95", "tpr", "fp_per_mpix"):
        assert sig[key] == pytest.approx(ref[key])
    for im, sc, k in zip(data, scores, keep, strict=True):
        row = m["per_image"][im.name]["significant"]
        assert row["tpr"] == pytest.approx(score_summary(sc[k], im.truth[k], 0.6)["tpr"])
    # a mask method (astroscrappy's sweep) gets the same view
    scrappy = astroscrappy_method(sigclips=(4.5,))
    a = evaluate_methods(data, [scrappy], progress=False).metrics["astroscrappy"]["significant"]
    tp = n_cr = 0
    for im, k in zip(data, keep, strict=True):
        mask = scrappy.run(im)[4.5]
        tp += int((mask & im.truth & k).sum())
        n_cr += int((im.truth & k).sum())
    assert a["n_cr_pixels"] == n_cr == sig["n_cr_pixels"]
    assert a["tpr"] == pytest.approx(tp / n_cr)
