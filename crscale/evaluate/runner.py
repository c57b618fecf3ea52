"""Run methods over an evaluation set and gather their figures, per image and pooled.

Every method sees the same images and is scored on the same pixels (each image's ``valid``
pixels). Pooled figures come from all valid pixels of all images together, not from averaging
the images. With ``dilate`` the paper's convention is applied: the truth is dilated 3×3, and so
is every method's output (a 3×3 maximum of the probability map, which dilates the mask at every
threshold) unless the method was trained on dilated masks.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import cast

import numpy as np
from scipy import ndimage

from crscale._logging import Reporter, reporter
from crscale.evaluate.dataset import EvalImage
from crscale.evaluate.false_positives import false_positive_kinds
from crscale.evaluate.methods import Method
from crscale.evaluate.significance import FAINT_NSIGMA, significant_valid
from crscale.injection.metrics import FIGURE_KEYS, confusion, roc_curve, score_summary, sweep_summary

logger = logging.getLogger(__name__)

_KERNEL = np.ones((3, 3), bool)


@dataclass
class EvaluationResult:
    """Figures of every method that ran, their curves, and what was skipped.

    Attributes
    ----------
    metrics : dict
        ``metrics.json``: method name → pooled figures, ``per_image``, ``threshold_table``, ...
    curves : dict
        Method name → ``fpr``, ``tpr``, ``precision``, ``threshold`` lists.
    skipped : list of dict
        ``{"method" or "path", "problem"}``.
    """

    metrics: dict = field(default_factory=dict)
    curves: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)


def _dilate_score(score: np.ndarray) -> np.ndarray:
    return ndimage.maximum_filter(score, size=3, mode="nearest")


def _per_image(entry: dict) -> dict:
    return {k: entry[k] for k in (*FIGURE_KEYS, "n_cr_pixels")}


def _fp_kinds(im: EvalImage, mask: np.ndarray, truth: np.ndarray) -> dict | None:
    """False pixels per Mpix by what they sit on (crscale.evaluate.false_positives); None: unknown."""
    if im.spikes is None and im.own_cr is None:
        return None
    n = false_positive_kinds(mask, truth, im.valid, spikes=im.spikes, own_cr=im.own_cr)
    per = 1e6 / max(im.n_pixels, 1)
    return {k: v * per for k, v in n.items()}


def _as_counts(pooled: dict[float, np.ndarray]) -> dict[float, tuple[int, int, int, int]]:
    """Pooled ``np.zeros(4)`` sums as the ``(tp, fp, fn, tn)`` tuples of :func:`sweep_summary`."""
    return {p: cast(tuple[int, int, int, int], tuple(int(x) for x in c)) for p, c in pooled.items()}


def _significant(entry: dict) -> dict:
    return {k: entry[k] for k in ("tpr", "fp_per_mpix", "n_cr_pixels")}


def _pooled_significant(entry: dict) -> dict:
    return {
        "nsigma": FAINT_NSIGMA,
        **{k: entry[k] for k in (*FIGURE_KEYS, "n_pixels", "n_cr_pixels")},
        "operating_points": entry["operating_points"],
    }


def evaluate_methods(
    images: list[EvalImage],
    methods: list[Method],
    *,
    dilate: bool = False,
    progress: bool = True,
    log: Reporter | None = None,
) -> EvaluationResult:
    """Run each method on each image and compute its figures.

    A method that fails on any image is dropped from the comparison (its figures would not be
    on the same pixels) and reported in ``skipped`` with the image and the error.

    Parameters
    ----------
    images : list of EvalImage
        The evaluation set.
    methods : list of Method
        crscale models and baselines.
    dilate : bool
        The 3×3 dilation convention (see the module docstring).
    progress : bool
        A progress bar per method.
    log : callable, optional
        Receives a message for each method dropped; by default it is logged at INFO.
    """
    log = reporter(logger, log)
    from tqdm.auto import tqdm

    from crscale.errors import error_text

    result = EvaluationResult()
    truths = [ndimage.binary_dilation(im.truth, _KERNEL) if dilate else im.truth for im in images]
    # The figures on significant CR pixels (crscale.evaluate.significance), where the set says
    # which injected pixels are faint.
    with_faint = any(im.faint is not None for im in images)
    sig_valid = [significant_valid(im.valid, im.faint) for im in images]
    for method in methods:
        t0 = time.perf_counter()
        per_image: dict[str, dict] = {}
        pooled_scores, pooled_truth = [], []
        pooled_counts: dict[float, np.ndarray] = {}
        sig_scores: list[np.ndarray] = []
        sig_truth: list[np.ndarray] = []
        sig_counts: dict[float, np.ndarray] = {}
        failed = None
        bar = tqdm(images, desc=method.name, unit="image", disable=not progress, leave=False)
        for im, truth, valid_s in zip(bar, truths, sig_valid, strict=True):
            try:
                out = method.run(im)
            except Exception as exc:  # any failure of a third-party method is reported
                failed = f"failed on {im.name} ({im.path}): {error_text(exc)}"
                break
            t = truth[im.valid]
            if method.kind == "score":
                score = np.asarray(out, np.float32)
                if dilate and not method.trained_dilated:
                    score = _dilate_score(score)
                s = score[im.valid]
                pooled_scores.append(s)
                pooled_truth.append(t)
                per_image[im.name] = _per_image(score_summary(s, t, method.threshold))
                kinds = _fp_kinds(im, score >= method.threshold, truth)
                if with_faint:
                    s2, t2 = score[valid_s], truth[valid_s]
                    sig_scores.append(s2)
                    sig_truth.append(t2)
                    per_image[im.name]["significant"] = _significant(score_summary(s2, t2, method.threshold))
            else:
                counts: dict[float, tuple[int, int, int, int]] = {}
                counts_s: dict[float, tuple[int, int, int, int]] = {}
                operating = None
                # a mask method returns {parameter: mask}
                for p, mask in cast(dict[float, np.ndarray], out).items():
                    if dilate and not method.trained_dilated:
                        mask = ndimage.binary_dilation(mask, _KERNEL)
                    if p == method.threshold:
                        operating = mask
                    counts[p] = confusion(mask[im.valid], t)
                    pooled_counts[p] = pooled_counts.get(p, np.zeros(4, np.int64)) + counts[p]
                    if with_faint:
                        counts_s[p] = confusion(mask[valid_s], truth[valid_s])
                        sig_counts[p] = sig_counts.get(p, np.zeros(4, np.int64)) + counts_s[p]
                per_image[im.name] = _per_image(sweep_summary(counts, method.threshold))
                kinds = _fp_kinds(im, operating, truth) if operating is not None else None
                if with_faint:
                    sig_entry = sweep_summary(counts_s, method.threshold)
                    per_image[im.name]["significant"] = _significant(sig_entry)
            if kinds is not None:
                # The same false pixels on either view: faint pixels are CR pixels, never false.
                per_image[im.name]["fp_kinds"] = kinds
                if "significant" in per_image[im.name]:
                    per_image[im.name]["significant"]["fp_kinds"] = kinds
        bar.close()
        if failed:
            result.skipped.append({"method": method.name, "problem": failed})
            log(f"skipping {method.name}: {failed}")
            continue
        if method.kind == "score":
            s, t = np.concatenate(pooled_scores), np.concatenate(pooled_truth)
            entry = score_summary(s, t, method.threshold)
            curve = roc_curve(s, t)
            result.curves[method.name] = {k: np.asarray(v, float).tolist() for k, v in curve.items()}
        else:
            entry = sweep_summary(_as_counts(pooled_counts), method.threshold)
            rows = entry["threshold_table"]
            result.curves[method.name] = {
                "fpr": [r["fpr"] for r in rows],
                "tpr": [r["tpr"] for r in rows],
                "precision": [r["precision"] for r in rows],
                "threshold": [r["threshold"] for r in rows],
            }
        result.metrics[method.name] = {
            "label": method.label,
            "kind": method.kind,
            "parameter": method.parameter,
            **{k: entry[k] for k in ("threshold", *FIGURE_KEYS)},
            "operating_points": entry["operating_points"],
            "best_f1": entry["best_f1"],
            "n_pixels": entry["n_pixels"],
            "n_cr_pixels": entry["n_cr_pixels"],
            "seconds": round(time.perf_counter() - t0, 2),
            "settings": method.settings,
            "per_image": per_image,
            "threshold_table": entry["threshold_table"],
        }
        if with_faint:
            if method.kind == "score":
                sig = score_summary(np.concatenate(sig_scores), np.concatenate(sig_truth), method.threshold)
            else:
                sig = sweep_summary(_as_counts(sig_counts), method.threshold)
            result.metrics[method.name]["significant"] = _pooled_significant(sig)
    return result


#: Per-frame goals at the operating threshold (issue 15): completeness and false pixels per Mpix.
FRAME_GOAL_TPR = 0.95
FRAME_GOAL_FP_PER_MPIX = 100.0


def frame_targets(
    metrics: dict, name: str, *, goal_tpr: float = FRAME_GOAL_TPR, goal_fp: float = FRAME_GOAL_FP_PER_MPIX
) -> list[dict]:
    """Per image, at the method's operating point: TPR >= ``goal_tpr`` and FP px/Mpix <= ``goal_fp``.

    The verdict counts every false pixel. Where the set knows what they sit on
    (:mod:`crscale.evaluate.false_positives`), the text also gives those that are on neither
    the frame's own lone spikes nor its own CRs' tails, and ``met_other`` the verdict on them.

    Returns
    -------
    list of dict
        ``{"text", "value", "goal", "met", "image"}``, one per image; ``value`` is the FP rate;
        with ``fp_other`` and ``met_other`` where the false pixels' kinds are known.
    """
    out = []
    for image, row in (metrics.get(name, {}).get("per_image") or {}).items():
        tpr, fp = row.get("tpr"), row.get("fp_per_mpix")
        ok_tpr = tpr is not None and tpr >= goal_tpr
        ok = ok_tpr and fp is not None and fp <= goal_fp
        entry = {
            "text": f"{name} on {image}: TPR {tpr:.3f} (goal >= {goal_tpr:g}), "
            f"{fp:,.0f} FP px/Mpix (goal <= {goal_fp:g})",
            "value": fp,
            "goal": None,
            "met": bool(ok),
            "image": image,
        }
        kinds = row.get("fp_kinds")
        if kinds:
            other = kinds["other"]
            entry["text"] += f", {other:,.0f} of them not on the frame's own lone spikes or CR tails"
            entry["fp_other"] = other
            entry["met_other"] = bool(ok_tpr and other <= goal_fp)
        out.append(entry)
    return out


def targets(metrics: dict, default: str | None, *, goal_tpr: float = 0.95) -> list[dict]:
    """The issue's targets: the default model's TPR at 0.1 % FPR, and that it beats every baseline.

    Returns
    -------
    list of dict
        ``{"text", "value", "goal", "met"}``; for the comparisons ``value`` is the margin
        (default minus baseline, in TPR) and ``goal`` None.
    """
    if not default or default not in metrics:
        return []
    d = metrics[default]
    out = [
        {
            "text": f"{default} TPR at 0.1 % FPR >= {goal_tpr:g}",
            "value": d["tpr@fpr=1e-3"],
            "goal": goal_tpr,
            "met": bool(d["tpr@fpr=1e-3"] >= goal_tpr),
        }
    ]
    for name, m in metrics.items():
        if name.startswith("crscale:"):
            continue
        for key, words in (("tpr@fpr=1e-4", "0.01 %"), ("tpr@fpr=1e-3", "0.1 %")):
            margin = d[key] - m[key]
            out.append(
                {
                    "text": f"{default} beats {name} in TPR at {words} FPR: "
                    f"{d[key]:.3f} vs {m[key]:.3f} ({margin:+.3f})",
                    "value": margin,
                    "goal": None,
                    "met": bool(margin > 0),
                }
            )
    return out
