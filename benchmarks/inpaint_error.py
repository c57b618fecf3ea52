"""Inpainting error of each method on real images with real CR footprints injected.

For each real image (the bundled samples and, when present, ``../shared/data/real``), real
LSST ITL dark-frame CR footprints (``crscale.train.footprints.load_itl_footprints``) are added
at random places (``crscale.train.inject.inject_crs``, electrons converted to ADU with the
image's gain), the injected pixels are inpainted by each method of
``crscale.detection.inpaint``, and the result is compared with the original image, which is the
truth at those pixels. Errors are in units of the image's robust sky noise sigma, split into
pixels on sky and on sources (original > sky + 5 sigma).

The original images carry their own real CRs, which the inpainting cannot know about (they
are not in the mask, so they act as donors). Injected pixels within 3 px of one are left out
of the statistics. They are found with astroscrappy (``detect_cosmics``, gain and read noise
from the header) where it is installed, else as pixels that exceed their 5x5 median by more than
8 sigma; either mask is then dilated by 3 px. Saturated / DQ-flagged pixels are passed to
``inpaint`` as ``bad`` and also left out of the statistics.

The CR amplitude does not enter the inpainting (masked pixels are never donors), so an unknown
gain (marked ``?``) changes only the "CR charge" column.

Usage: python benchmarks/inpaint_error.py [--repeats N] [--rate R] [--seed S]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

import crscale
from crscale.detection.inpaint import DEFAULT_INPAINT, INPAINT_METHODS, inpaint
from crscale.detection.sky_noise import robust_sky_noise
from crscale.io import read_exposure
from crscale.train.footprints import load_itl_footprints
from crscale.train.inject import inject_crs

IMAGES = crscale.sample_data_dir() / "images"
REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"


@dataclass
class Case:
    label: str
    path: Path
    hdu: str | int | None = None
    gain: float | None = None  # overrides the header (GMOS: the upstream astroscrappy test's value)


def cases() -> list[Case]:
    out = [
        Case("LCO SBIG (banzai)", IMAGES / "banzai_test_frame.fits.fz", "SCI"),
        Case("SAAO STE3 raw", IMAGES / "a8280271.fits", 0),
        Case("LCO Sinistro amp1", IMAGES / "mef_raw_test_frame.fits", "SCI,1"),
        Case("GMOS-S long-slit", IMAGES / "gmos.fits", "SCI", gain=1.933),
        Case("DECam N2 cutout", IMAGES / "c4d_170316_062107_ooi_z_ls9.N2.fits", "N2"),
        Case("EMMI sum of 3", IMAGES / "emmi_image_sum3.fits", 0),
    ]
    shared = [
        Case("KPNO dev$pix M51", REAL / "iraf_devpix" / "dev_pix_m51_B_600s.fits", 0),
        Case("MIDAS CCD M51", REAL / "eso_midas" / "midas_ccd_m51.fits", 0),
        Case("Orion SSDSI M13", REAL / "astropy_data_m13" / "M13_blue_0001.fits", 0),
        Case(
            "DECam N6 cutout",
            REAL / "legacypipe_noirlab_cp" / "testcase8" / "images" / "decam" / "CP" / "V4.8.2a"
            / "CP20171112" / "c4d_171113_060340_ooi_r_ls9.N6.fits",
            1,
        ),
    ]
    return out + [c for c in shared if c.path.exists()]


@dataclass
class Loaded:
    image: np.ndarray  # float64 ADU
    bad: np.ndarray
    gain: float
    gain_known: bool
    readnoise: float


def load(case: Case) -> Loaded:
    exp = read_exposure(case.path, hdus=[case.hdu] if case.hdu is not None else None)
    det = exp.detectors[0]
    image = det.image.astype(np.float64)
    bad = ~np.isfinite(image)
    if det.dq is not None:
        # DECam CP codes: 5 is a (pipeline-flagged) CR, a donor-worthy pixel only after cleaning;
        # every non-zero code is kept out of the donors and of the statistics.
        bad |= det.dq != 0
    if det.meta.saturation is not None:
        bad |= image >= det.meta.saturation
    gain = case.gain if case.gain is not None else det.meta.gain
    known = case.gain is not None or "gain" not in det.meta.guessed
    return Loaded(image, bad, float(gain), known, float(det.meta.readnoise))


def real_cr_zone(img: Loaded, sky: float, sigma: float) -> tuple[np.ndarray, str]:
    """Pixels within 3 px of the original image's own CRs."""
    try:
        import astroscrappy
    except ImportError:
        astroscrappy = None
    if astroscrappy is not None:
        crs, _ = astroscrappy.detect_cosmics(
            np.where(img.bad, sky, img.image).astype(np.float32),
            gain=img.gain, readnoise=img.readnoise, sigclip=4.5, objlim=5.0, satlevel=np.inf,
        )
        rule = "astroscrappy"
    else:
        med = ndimage.median_filter(np.where(img.bad, sky, img.image), size=5, mode="nearest")
        crs = (img.image - med > 8 * sigma) & ~img.bad
        rule = "5x5 median + 8 sigma"
    return ndimage.binary_dilation(crs, np.ones((7, 7), bool)), rule


def paint_on(shape, gain: float, library, rng: np.random.Generator, candidates: np.ndarray, n: int):
    """Footprints centred on random ``candidates`` pixels: truth mask and charge (ADU).

    Uniform placement puts only ~1-2 % of the CR pixels on sources, too few to compare the
    methods there, so a second injection aims at source pixels.
    """
    ys, xs = np.nonzero(candidates)
    mask = np.zeros(shape, bool)
    charge = np.zeros(shape)
    if not ys.size:
        return mask, charge
    pick = rng.integers(0, ys.size, size=n)
    for y, x, fp in zip(ys[pick], xs[pick], library.sample(rng, n), strict=True):
        h, w = fp.shape
        y0, x0 = y - h // 2, x - w // 2
        ya, xa, yb, xb = max(y0, 0), max(x0, 0), min(y0 + h, shape[0]), min(x0 + w, shape[1])
        sub = (slice(ya - y0, yb - y0), slice(xa - x0, xb - x0))
        mask[ya:yb, xa:xb] |= fp.mask[sub]
        charge[ya:yb, xa:xb] += fp.values[sub] / gain
    return mask, charge


VARIANTS = ("exact", "dilated", "wings missed")


def evaluate(case: Case, library, args) -> dict:
    img = load(case)
    sky, sigma = robust_sky_noise(img.image, bad=img.bad)
    zone, rule = real_cr_zone(img, sky, sigma)
    source = img.image > sky + 5 * sigma
    npix = img.image.size
    repeats = args.repeats or int(np.clip(np.ceil(400_000 / npix), 1, 12))
    rng = np.random.default_rng(args.seed)
    errs = {m: {"sky": [], "src": []} for m in INPAINT_METHODS}
    variants = {m: {v: [] for v in VARIANTS} for m in INPAINT_METHODS}
    times = {m: 0.0 for m in INPAINT_METHODS}
    charge = []
    n_excluded = n_injected = 0
    for _ in range(repeats):
        inj = inject_crs(np.zeros(img.image.shape, np.float32), library, rng, rate=args.rate)
        mask, added = inj.truth, inj.added / img.gain
        aimed = paint_on(img.image.shape, img.gain, library, rng, source & ~zone & ~img.bad, n=40)
        # Imperfect masks, as a detector makes them: grown by one pixel all round, or missing
        # the CR pixels fainter than 5 sigma.
        masks = {"exact": mask, "dilated": ndimage.binary_dilation(mask, np.ones((3, 3), bool)),
                 "wings missed": mask & (added > 5 * sigma)}
        scored = mask & ~zone & ~img.bad
        n_injected += int(mask.sum())
        n_excluded += int((mask & ~scored).sum())
        charge.append(added[scored] / sigma)
        for m in INPAINT_METHODS:
            t0 = time.perf_counter()
            clean = inpaint(img.image + added, mask, method=m, bad=img.bad)
            times[m] += time.perf_counter() - t0
            err = (clean.astype(np.float64) - img.image) / sigma
            errs[m]["sky"].append(err[scored & ~source])
            errs[m]["src"].append(err[scored & source])
            variants[m]["exact"].append(err[scored & ~source])
            for v in VARIANTS[1:]:
                clean = inpaint(img.image + added, masks[v], method=m, bad=img.bad)
                # Scored where the variant's mask replaced a pixel; missed wings are a detection
                # error, not an inpainting one.
                keep = masks[v] & ~zone & ~img.bad & ~source
                variants[m][v].append((clean[keep].astype(np.float64) - img.image[keep]) / sigma)
            a_mask, a_added = aimed
            clean = inpaint(img.image + a_added, a_mask, method=m, bad=img.bad)
            keep = a_mask & ~zone & ~img.bad & source
            errs[m]["src"].append((clean[keep].astype(np.float64) - img.image[keep]) / sigma)
    return {
        "case": case, "img": img, "sigma": sigma, "rule": rule, "repeats": repeats,
        "n_injected": n_injected, "n_excluded": n_excluded,
        "charge": float(np.median(np.concatenate(charge))) if charge else float("nan"),
        "errs": {m: {k: np.concatenate(v) for k, v in e.items()} for m, e in errs.items()},
        "variants": {m: {k: np.concatenate(v) for k, v in e.items()} for m, e in variants.items()},
        "s_per_mpix": {m: times[m] / repeats / (npix / 1e6) for m in INPAINT_METHODS},
    }


def rms(a: np.ndarray) -> float:
    return float(np.sqrt(np.mean(a**2))) if a.size else float("nan")


def mae(a: np.ndarray) -> float:
    return float(np.median(np.abs(a))) if a.size else float("nan")


def ratio_to_median(results: list[dict], table: str, method: str, key: str) -> float:
    """Median over images of a method's rms over the median method's rms (images with data)."""
    pairs = [(r[table][method][key], r[table]["median"][key]) for r in results]
    return float(np.median([rms(a) / rms(b) for a, b in pairs if a.size]))


def timing_2048(library, seed: int) -> dict[str, tuple[float, float]]:
    """Seconds per call on a 2048 x 2048 mosaic of the real banzai frame with ~1 % masked."""
    img = load(cases()[0])
    ny, nx = img.image.shape
    big = np.pad(img.image, ((0, 2048 - ny), (0, 2048 - nx)), mode="symmetric")
    rng = np.random.default_rng(seed)
    inj = inject_crs(np.zeros(big.shape, np.float32), library, rng, rate=6.5e-4)
    out = {}
    for m in INPAINT_METHODS:
        inpaint(big, inj.truth, method=m)  # warm-up
        best = min(_timed(big, inj.truth, m) for _ in range(3))
        out[m] = (best, float(inj.truth.mean()))
    return out


def _timed(image: np.ndarray, mask: np.ndarray, method: str) -> float:
    t0 = time.perf_counter()
    inpaint(image, mask, method=method)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=0, help="injections per image (0: enough for ~400k px)")
    ap.add_argument("--rate", type=float, default=3.0e-4, help="injected CRs per pixel")
    ap.add_argument("--seed", type=int, default=2024)
    args = ap.parse_args()
    library = load_itl_footprints()

    results = [evaluate(c, library, args) for c in cases()]
    head = (
        f"{'image':<18} {'shape':>9} {'gain':>5} {'CR px':>6} {'excl':>5} {'CR/sig':>6} {'method':<10} "
        f"{'sky n':>6} {'sky rms':>7} {'sky mae':>7} {'src n':>6} {'src rms':>7} {'src mae':>7} {'s/Mpix':>6}"
    )
    print("Errors at injected CR pixels, in units of each image's robust sky sigma (mae: median |err|).")
    print("sky: uniform injection; src: pixels > sky + 5 sigma, from the uniform and an aimed injection.")
    print(f"Own CRs of the originals: {results[0]['rule']}, dilated 3 px; injected pixels there excluded.")
    print(head)
    print("-" * len(head))
    for r in results:
        c, img = r["case"], r["img"]
        shape = f"{img.image.shape[0]}x{img.image.shape[1]}"
        gain = f"{img.gain:.2f}" + ("" if img.gain_known else "?")
        for i, m in enumerate(INPAINT_METHODS):
            e = r["errs"][m]
            left = (
                f"{c.label[:18]:<18} {shape:>9} {gain:>5} {r['n_injected']:>6} {r['n_excluded']:>5} "
                f"{r['charge']:>6.0f}" if i == 0 else " " * 55
            )
            print(
                f"{left} {m:<10} {e['sky'].size:>6} {rms(e['sky']):>7.3f} {mae(e['sky']):>7.3f} "
                f"{e['src'].size:>6} {rms(e['src']):>7.3f} {mae(e['src']):>7.3f} {r['s_per_mpix'][m]:>6.3f}"
            )
    print("-" * len(head))
    print("Per method, the median over images of (rms / the median method's rms), and all pixels pooled:")
    for m in INPAINT_METHODS:
        ratio = {k: ratio_to_median(results, "errs", m, k) for k in ("sky", "src")}
        sky = np.concatenate([r["errs"][m]["sky"] for r in results])
        src = np.concatenate([r["errs"][m]["src"] for r in results])
        print(
            f"  {m:<10} ratio sky {ratio['sky']:.3f} src {ratio['src']:.3f}   pooled sky n={sky.size} "
            f"rms={rms(sky):.3f} mae={mae(sky):.3f}   src n={src.size} rms={rms(src):.3f} mae={mae(src):.3f}"
            + ("   <- default" if m == DEFAULT_INPAINT else "")
        )
    print("Imperfect masks, sky pixels: median over images of (rms / the median method's rms in the same")
    print("variant), and the mean error (bias, sigma) of all images pooled:")
    for m in INPAINT_METHODS:
        cells = []
        for v in VARIANTS:
            ratio = ratio_to_median(results, "variants", m, v)
            bias = np.mean(np.concatenate([r["variants"][m][v] for r in results]))
            cells.append(f"{v}: {ratio:.3f} / {bias:+.3f}")
        print(f"  {m:<10} " + "   ".join(cells))
    print("2048x2048 (real banzai frame, mirrored), best of 3:")
    for m, (secs, frac) in timing_2048(library, args.seed).items():
        print(f"  {m:<10} {secs:.3f} s for {frac:.2%} masked ({secs / 4.194304:.3f} s/Mpix)")


if __name__ == "__main__":
    main()
