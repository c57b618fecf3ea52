"""Evaluation: pixel metrics of CR masks (ROC, precision-recall, TPR at fixed FPR, F1, IoU, FDR)."""

from crscale.evaluate.metrics import PixelMetrics, pixel_metrics, precision_at_tpr, roc_curve, tpr_at_fpr

__all__ = ["PixelMetrics", "pixel_metrics", "precision_at_tpr", "roc_curve", "tpr_at_fpr"]
