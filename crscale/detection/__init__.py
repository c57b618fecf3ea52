"""Single-image CR detection: normalise, tile, predict, threshold, inpaint (pure numpy/torch, no dask).

This is what a user calls on one image (:func:`detect`) and what every engine worker calls on
one block (with the detector's :class:`ImageStats` and the block's ``origin``).
"""

from crscale.detection.api import DetectResult, detect
from crscale.detection.inpaint import DEFAULT_INPAINT, INPAINT_METHODS
from crscale.detection.normalise import ImageStats, compute_stats, normalise
from crscale.detection.predictor import Predictor, get_predictor
from crscale.detection.tiling import required_halo

__all__ = [
    "DEFAULT_INPAINT",
    "INPAINT_METHODS",
    "DetectResult",
    "ImageStats",
    "Predictor",
    "compute_stats",
    "detect",
    "get_predictor",
    "normalise",
    "required_halo",
]
