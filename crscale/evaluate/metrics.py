"""Deprecated location of :mod:`crscale.injection.metrics`, kept importable for a while.

The pixel metrics moved below training and evaluation, which both use them.
"""

from crscale.injection.metrics import (
    FIGURE_KEYS,
    TABLE_THRESHOLDS,
    PixelMetrics,
    confusion,
    pixel_metrics,
    precision_at_tpr,
    roc_curve,
    score_summary,
    sweep_summary,
    threshold_at_fpr,
    tpr_at_fpr,
)

__all__ = [
    "FIGURE_KEYS",
    "TABLE_THRESHOLDS",
    "PixelMetrics",
    "confusion",
    "pixel_metrics",
    "precision_at_tpr",
    "roc_curve",
    "score_summary",
    "sweep_summary",
    "threshold_at_fpr",
    "tpr_at_fpr",
]
