"""Known CRs in real images: real CR footprints, injecting them, and scoring masks against them.

Shared by training (:mod:`crscale.train`) and evaluation (:mod:`crscale.evaluate`), below both
(neither imports the other):

- :mod:`~crscale.injection.footprints`: libraries of real CR footprints (the bundled LSST ITL
  dark-frame table); :mod:`~crscale.injection.darks`: footprints cut out of a user's darks;
- :mod:`~crscale.injection.sources`: real images in electrons, with their own CRs found;
- :mod:`~crscale.injection.inject`: painting footprints into an image, sky augmentation;
- :mod:`~crscale.injection.metrics`: pixel metrics (ROC, TPR at fixed FPR, precision at fixed
  TPR, F1, IoU) of a score or mask against the truth.
"""

from crscale.injection.darks import footprints_from_dark, footprints_from_dark_file
from crscale.injection.footprints import CRFootprint, CRLibrary, load_itl_footprints
from crscale.injection.inject import ITL_RATE_1500S, InjectionResult, inject_crs, orient, sky_augment
from crscale.injection.metrics import PixelMetrics, pixel_metrics, precision_at_tpr, roc_curve, tpr_at_fpr
from crscale.injection.sources import SourceImage, load_source_images

__all__ = [
    "CRFootprint",
    "CRLibrary",
    "ITL_RATE_1500S",
    "InjectionResult",
    "PixelMetrics",
    "SourceImage",
    "footprints_from_dark",
    "footprints_from_dark_file",
    "inject_crs",
    "load_itl_footprints",
    "load_source_images",
    "orient",
    "pixel_metrics",
    "precision_at_tpr",
    "roc_curve",
    "sky_augment",
    "tpr_at_fpr",
]
