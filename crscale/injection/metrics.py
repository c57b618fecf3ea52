"""Pixel-level detection metrics, as in the CR literature (deepCR, Cosmic-CoNN, the attention paper).

All functions take a score per pixel (a probability, or any number where larger means "more
CR-like"), the truth, and an optional ``valid`` mask of pixels that count (bad pixels and the
images' own unlabelled CRs are left out). Thresholds at a fixed false-positive rate are exact:
they come from the sorted scores of the negative pixels, not from a binned curve.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


def _flat(score: np.ndarray, truth: np.ndarray, valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    score = np.asarray(score, np.float64).ravel()
    truth = np.asarray(truth, bool).ravel()
    if score.shape != truth.shape:
        raise ValueError(f"score and truth differ in size: {score.size} vs {truth.size}")
    if valid is not None:
        keep = np.asarray(valid, bool).ravel()
        score, truth = score[keep], truth[keep]
    return score, truth


def threshold_at_fpr(
    score: np.ndarray, truth: np.ndarray, fpr: float, *, valid: np.ndarray | None = None
) -> float:
    """Smallest threshold t with FPR(score > t) ≤ ``fpr``."""
    s, t = _flat(score, truth, valid)
    neg = np.sort(s[~t])[::-1]
    if neg.size == 0:
        return float(np.min(s)) if s.size else 0.0
    k = int(np.floor(fpr * neg.size))
    return float(neg[min(k, neg.size - 1)])


def tpr_at_fpr(score: np.ndarray, truth: np.ndarray, fpr: float, *, valid: np.ndarray | None = None) -> float:
    """True-positive rate at the threshold that gives a false-positive rate of at most ``fpr``."""
    s, t = _flat(score, truth, valid)
    if not t.any():
        return float("nan")
    thr = threshold_at_fpr(s, t, fpr)
    return float(np.mean(s[t] > thr))


def precision_at_tpr(
    score: np.ndarray, truth: np.ndarray, tpr: float, *, valid: np.ndarray | None = None
) -> float:
    """Precision (purity) at the highest threshold that reaches a true-positive rate of ``tpr``."""
    s, t = _flat(score, truth, valid)
    pos = np.sort(s[t])[::-1]
    if pos.size == 0:
        return float("nan")
    k = max(int(np.ceil(tpr * pos.size)) - 1, 0)
    thr = pos[k]
    selected = s >= thr
    return float(np.sum(selected & t) / max(np.sum(selected), 1))


def roc_curve(
    score: np.ndarray, truth: np.ndarray, *, valid: np.ndarray | None = None, n_points: int = 400
) -> dict[str, np.ndarray]:
    """ROC and precision-recall points at log-spaced false-positive rates from 1e-6 to 1."""
    s, t = _flat(score, truth, valid)
    neg = np.sort(s[~t])[::-1]
    pos = s[t]
    fprs = np.unique(np.concatenate([np.logspace(-6, 0, n_points), [1e-4, 1e-3]]))
    thr = (
        np.array([neg[min(int(np.floor(f * neg.size)), neg.size - 1)] for f in fprs])
        if neg.size
        else fprs * 0
    )
    pos_sorted = np.sort(pos)
    tp = pos.size - np.searchsorted(pos_sorted, thr, side="right")
    fp = neg.size - np.searchsorted(np.sort(neg), thr, side="right")
    return {
        "threshold": thr,
        "fpr": fp / max(neg.size, 1),
        "tpr": tp / max(pos.size, 1),
        "precision": tp / np.maximum(tp + fp, 1),
    }


@dataclass
class PixelMetrics:
    """The standard figures of one method on one set of pixels."""

    tpr_at_fpr_1e4: float
    tpr_at_fpr_1e3: float
    precision_at_tpr_95: float
    threshold: float
    tpr: float
    fpr: float
    f1: float
    iou: float
    fdr: float
    n_positive: int
    n_negative: int

    def to_dict(self) -> dict:
        """Plain dict."""
        return asdict(self)


def pixel_metrics(
    score: np.ndarray, truth: np.ndarray, threshold: float, *, valid: np.ndarray | None = None
) -> PixelMetrics:
    """TPR at 1e-4 / 1e-3 FPR, precision at 95 % TPR, and TPR, FPR, F1, IoU, FDR at ``threshold``."""
    s, t = _flat(score, truth, valid)
    tp, fp, fn, tn = confusion(s >= threshold, t)
    c = _counts(tp, fp, fn)
    return PixelMetrics(
        tpr_at_fpr_1e4=tpr_at_fpr(s, t, 1e-4),
        tpr_at_fpr_1e3=tpr_at_fpr(s, t, 1e-3),
        precision_at_tpr_95=precision_at_tpr(s, t, 0.95),
        threshold=float(threshold),
        tpr=c["tpr"],
        fpr=fp / max(fp + tn, 1),
        f1=c["f1"],
        iou=c["iou"],
        fdr=c["fdr"],
        n_positive=tp + fn,
        n_negative=fp + tn,
    )


#: Keys of the pooled and per-image figures in ``metrics.json``.
FIGURE_KEYS = (
    "tpr@fpr=1e-4",
    "tpr@fpr=1e-3",
    "precision@tpr=0.95",
    "f1",
    "iou",
    "fdr",
    "tpr",
    "fpr",
    "precision",
    "fp_per_mpix",
)
#: Thresholds of the threshold tables (threshold guidance).
TABLE_THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 20))


def _counts(tp: float | np.integer, fp: float | np.integer, fn: float | np.integer) -> dict:
    return {
        "tpr": tp / max(tp + fn, 1),
        "precision": tp / max(tp + fp, 1),
        "f1": 2 * tp / max(2 * tp + fp + fn, 1),
        "iou": tp / max(tp + fp + fn, 1),
        "fdr": fp / max(tp + fp, 1),
    }


def score_summary(score: np.ndarray, truth: np.ndarray, threshold: float) -> dict:
    """The figures of ``metrics.json`` for a probability map (``score >= t`` is a CR).

    TPR at 1e-4 / 1e-3 FPR, precision at 95 % TPR (with the thresholds where they are
    reached, under ``operating_points``), TPR, FPR, precision, F1, IoU, FDR at ``threshold``,
    the best-F1 threshold on a 0.01 grid and the threshold table (0.05 to 0.95). NaN where a
    figure is undefined (no CR pixel).
    """
    s, t = _flat(score, truth, None)
    pos, neg = np.sort(s[t]), np.sort(s[~t])
    n_pos, n_neg = pos.size, neg.size

    def at(thr: float) -> dict:
        tp = n_pos - np.searchsorted(pos, thr, side="left")
        fp = n_neg - np.searchsorted(neg, thr, side="left")
        return {
            **_counts(tp, fp, n_pos - tp),
            "fpr": fp / max(n_neg, 1),
            "fp_per_mpix": 1e6 * fp / max(n_pos + n_neg, 1),
            "threshold": float(thr),
        }

    out: dict = {"threshold": float(threshold)}
    ops: dict = {}
    for key, fpr in (("tpr@fpr=1e-4", 1e-4), ("tpr@fpr=1e-3", 1e-3)):
        if n_pos == 0:
            out[key], ops[key] = float("nan"), None
            continue
        # threshold_at_fpr on the already sorted negatives: the k-th largest, k = floor(fpr n)
        thr = neg[n_neg - 1 - min(int(np.floor(fpr * n_neg)), n_neg - 1)] if n_neg else s.min()
        out[key] = float((n_pos - np.searchsorted(pos, thr, side="right")) / n_pos)
        ops[key] = float(thr)
    if n_pos:
        thr95 = float(pos[::-1][max(int(np.ceil(0.95 * n_pos)) - 1, 0)])
        out["precision@tpr=0.95"] = at(thr95)["precision"]
        ops["precision@tpr=0.95"] = thr95
    else:
        out["precision@tpr=0.95"], ops["precision@tpr=0.95"] = float("nan"), None
    here = at(threshold)
    out.update({k: here[k] for k in ("f1", "iou", "fdr", "tpr", "fpr", "precision", "fp_per_mpix")})
    if n_pos == 0:
        out["tpr"] = float("nan")
    grid = [at(x) for x in np.round(np.arange(0.01, 1.0, 0.01), 2)]
    best = max(grid, key=lambda r: r["f1"])
    out["operating_points"] = ops
    out["best_f1"] = {"threshold": best["threshold"], "f1": best["f1"]}
    out["threshold_table"] = [
        {k: r[k] for k in ("threshold", "tpr", "fpr", "precision", "f1", "fdr")}
        for r in map(at, TABLE_THRESHOLDS)
    ]
    out["n_pixels"], out["n_cr_pixels"] = int(s.size), int(n_pos)
    return out


def sweep_summary(points: dict[float, tuple[int, int, int, int]], chosen: float) -> dict:
    """The figures of ``metrics.json`` for a parameter sweep (astroscrappy's sigclip).

    ``points`` maps each parameter value to its pixel counts ``(tp, fp, fn, tn)``. A figure at
    a fixed FPR is the best TPR among the points within that FPR (the paper's ROC points);
    precision at 95 % TPR is the best precision among the points that reach it (NaN if none).
    F1, IoU and FDR are those of the ``chosen`` point.
    """
    rows = []
    for p in sorted(points):
        tp, fp, fn, tn = points[p]
        rows.append(
            {
                "threshold": float(p),
                **_counts(tp, fp, fn),
                "fpr": fp / max(fp + tn, 1),
                "fp_per_mpix": 1e6 * fp / max(tp + fp + fn + tn, 1),
            }
        )
    out: dict = {"threshold": float(chosen)}
    ops: dict = {}
    for key, budget in (("tpr@fpr=1e-4", 1e-4), ("tpr@fpr=1e-3", 1e-3)):
        ok = [r for r in rows if r["fpr"] <= budget]
        best = max(ok, key=lambda r: (r["tpr"], -r["fpr"])) if ok else None
        out[key] = best["tpr"] if best else 0.0
        ops[key] = best["threshold"] if best else None
    ok = [r for r in rows if r["tpr"] >= 0.95]
    best = max(ok, key=lambda r: r["precision"]) if ok else None
    out["precision@tpr=0.95"] = best["precision"] if best else float("nan")
    ops["precision@tpr=0.95"] = best["threshold"] if best else None
    here = next(r for r in rows if r["threshold"] == float(chosen))
    out.update({k: here[k] for k in ("f1", "iou", "fdr", "tpr", "fpr", "precision", "fp_per_mpix")})
    bestf = max(rows, key=lambda r: r["f1"])
    out["operating_points"] = ops
    out["best_f1"] = {"threshold": bestf["threshold"], "f1": bestf["f1"]}
    out["threshold_table"] = [
        {k: r[k] for k in ("threshold", "tpr", "fpr", "precision", "f1", "fdr")} for r in rows
    ]
    tp, fp, fn, tn = points[chosen]
    out["n_pixels"], out["n_cr_pixels"] = int(tp + fp + fn + tn), int(tp + fn)
    if tp + fn == 0:  # no CR pixel: completeness is undefined, as for a probability map
        for key in ("tpr@fpr=1e-4", "tpr@fpr=1e-3", "precision@tpr=0.95", "tpr"):
            out[key] = float("nan")
    return out


def confusion(mask: np.ndarray, truth: np.ndarray) -> tuple[int, int, int, int]:
    """``(tp, fp, fn, tn)`` pixel counts of a binary mask."""
    m, t = np.asarray(mask, bool), np.asarray(truth, bool)
    tp = int(np.count_nonzero(m & t))
    fp = int(np.count_nonzero(m & ~t))
    fn = int(np.count_nonzero(~m & t))
    return tp, fp, fn, int(m.size - tp - fp - fn)
