"""CRs found per model, by size: one-pixel-ish hits (<= 2 px) and larger ones (docs/model-study.md).

Pixel figures (``benchmarks/model_study.py``) count pixels: a model that masks more of each
track's faint edge scores higher there while finding fewer CRs. A catalogue counts CRs. Here a
CR (a connected injected footprint whose brightest pixel is significant, >= 5 sigma of its
pixel's noise) counts as found when the model masks any of its pixels at the model's threshold.

Frames: the held-out archive frames and the SPRAT frames (as ``model_study.py --set archive`` and
``--set external``, injected the same way), and the NTT SUSI bias of the sample with 400 real
ITL CRs (as ``tests/test_catalogue_stage.py``: a CR-flux frame, where one-pixel CRs are common).
The bias is a training frame of the v2 models (without injected CRs there), so its row is not
held out; the pooled figures printed last are over the held-out frames only.

    python benchmarks/cr_completeness.py [--model NAME ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
EIGHT = np.ones((3, 3), bool)


def found_by_size(truth: np.ndarray, significant: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``[dots found, dots, larger found, larger]`` for one image."""
    lab, n = ndimage.label(truth, EIGHT)
    index = np.arange(1, n + 1)
    size = ndimage.sum(np.ones(lab.shape), lab, index)
    counts = ndimage.maximum((truth & significant).astype(np.int8), lab, index) > 0
    found = np.isin(index, np.unique(lab[(lab > 0) & mask]))
    dots, large = counts & (size <= 2), counts & (size > 2)
    return np.array([(found & dots).sum(), dots.sum(), (found & large).sum(), large.sum()])


def _bias_frame() -> tuple[np.ndarray, np.ndarray, float]:
    from astropy.io import fits

    import crscale
    from crscale.train.footprints import load_itl_footprints
    from crscale.train.inject import inject_crs

    path = crscale.sample_data_dir() / "darks" / "ntt_susi_bias_nttexample.fits.gz"
    data = fits.getdata(path).astype(np.float32)[:, 50:1074]
    res = inject_crs(data * 4.0, load_itl_footprints(), np.random.default_rng(1), n=400)
    return (res.image / 4.0).astype(np.float32), res.truth, 4.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", help="models (default: crscale-default)")
    args = ap.parse_args()
    models = args.model or ["default"]

    import crscale
    from crscale.detection import get_predictor
    from crscale.evaluate.dataset import injected_set
    from crscale.train.frames import write_frames

    frames = []
    sets = (("training/archive-frames.yaml", "archive"), ("evaluation/external-frames.yaml", "external"))
    for spec, folder in sets:
        written = write_frames(ROOT / "docs" / spec, ROOT / "runs" / f"{folder}-frames")
        frames += [str(p) for p in written["heldout"]]
    images = injected_set(frames, seed=2026)
    preds = {m: get_predictor(m, device="cpu") for m in models}
    names = [p.name for p in preds.values()]
    totals = {n: np.zeros(4, int) for n in names}
    print("CRs found at each model's threshold: dots (<= 2 px) found/all, larger found/all")
    print(f"{'frame':<18} " + " ".join(f"{n[-26:]:>30}" for n in names))
    rows = [(im.name, im.image_e, im.truth, ~im.faint if im.faint is not None else np.ones_like(im.truth),
             im.bad, 1.0, True) for im in images]
    bias, bias_truth, gain = _bias_frame()
    # the bias's CRs count when their peak is >= 15 sigma of its noise (the catalogue test's limit)
    rows.append(("susi-bias+itl", bias, bias_truth, None, None, gain, False))
    for name, image, truth, significant, bad, g, held_out in rows:
        cells = []
        for n, pred in zip(names, preds.values(), strict=True):
            res = crscale.detect(image, model=pred, dq=bad, gain=g, inpaint=False)
            sig = significant
            if sig is None:
                sig = (image - np.median(image)) * g >= 15 * res.stats.noise_e
            c = found_by_size(truth, sig, res.mask)
            if held_out:
                totals[n] += c
            cells.append(f"{c[0]:>5}/{c[1]:<4} {c[2]:>6}/{c[3]:<5}")
        print(f"{name:<18} " + " ".join(f"{c:>30}" for c in cells), flush=True)
    print("\nheld-out frames only (the bias row is a training frame):")
    for n in names:
        t = totals[n]
        print(f"{n:<28} dots {t[0] / max(t[1], 1):.3f} ({t[0]}/{t[1]})   larger {t[2] / max(t[3], 1):.3f} "
              f"({t[2]}/{t[3]})")


if __name__ == "__main__":
    main()
