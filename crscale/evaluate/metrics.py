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
    score: np.ndarray, truth: np.ndarray, fpr: float, valid: np.ndarray | None = None
) -> float:
    """Smallest threshold t with FPR(score > t) ≤ ``fpr``."""
    s, t = _flat(score, truth, valid)
    neg = np.sort(s[~t])[::-1]
    if neg.size == 0:
        return float(np.min(s)) if s.size else 0.0
    k = int(np.floor(fpr * neg.size))
    return float(neg[min(k, neg.size - 1)])


def tpr_at_fpr(score: np.ndarray, truth: np.ndarray, fpr: float, valid: np.ndarray | None = None) -> float:
    """True-positive rate at the threshold that gives a false-positive rate of at most ``fpr``."""
    s, t = _flat(score, truth, valid)
    if not t.any():
        return float("nan")
    thr = threshold_at_fpr(s, t, fpr)
    return float(np.mean(s[t] > thr))


def precision_at_tpr(
    score: np.ndarray, truth: np.ndarray, tpr: float, valid: np.ndarray | None = None
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
    score: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None, n_points: int = 400
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
    score: np.ndarray, truth: np.ndarray, threshold: float, valid: np.ndarray | None = None
) -> PixelMetrics:
    """TPR at 1e-4 / 1e-3 FPR, precision at 95 % TPR, and TPR, FPR, F1, IoU, FDR at ``threshold``."""
    s, t = _flat(score, truth, valid)
    pred = s >= threshold
    tp = int(np.sum(pred & t))
    fp = int(np.sum(pred & ~t))
    fn = int(np.sum(~pred & t))
    n_pos, n_neg = int(t.sum()), int((~t).sum())
    return PixelMetrics(
        tpr_at_fpr_1e4=tpr_at_fpr(s, t, 1e-4),
        tpr_at_fpr_1e3=tpr_at_fpr(s, t, 1e-3),
        precision_at_tpr_95=precision_at_tpr(s, t, 0.95),
        threshold=float(threshold),
        tpr=tp / max(n_pos, 1),
        fpr=fp / max(n_neg, 1),
        f1=2 * tp / max(2 * tp + fp + fn, 1),
        iou=tp / max(tp + fp + fn, 1),
        fdr=fp / max(tp + fp, 1),
        n_positive=n_pos,
        n_negative=n_neg,
    )
