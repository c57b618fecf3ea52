"""Evaluation of CR detectors on labelled real images (``crscale evaluate``).

- :mod:`crscale.injection.metrics`: pixel metrics (ROC, precision-recall, TPR at fixed FPR,
  precision at fixed TPR, F1, IoU, FDR), exact at fixed FPR;
- :mod:`~crscale.evaluate.dataset`: image + mask pairs, or injection sets of real CR footprints;
- :mod:`~crscale.evaluate.methods`: crscale models and the baselines (astroscrappy, deepCR,
  Cosmic-CoNN);
- :mod:`~crscale.evaluate.runner`: per-image and pooled figures of every method on the same pixels;
- :mod:`~crscale.evaluate.report`: ``metrics.json``, plots and the Markdown report;
- :func:`evaluate`: all of it, as ``crscale evaluate`` runs it.
"""

from crscale.evaluate.api import EvaluationReport, evaluate
from crscale.injection.metrics import PixelMetrics, pixel_metrics, precision_at_tpr, roc_curve, tpr_at_fpr

__all__ = [
    "EvaluationReport",
    "PixelMetrics",
    "evaluate",
    "pixel_metrics",
    "precision_at_tpr",
    "roc_curve",
    "tpr_at_fpr",
]
