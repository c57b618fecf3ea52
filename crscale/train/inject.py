"""Deprecated location of :mod:`crscale.injection.inject`, kept importable for a while.

CR injection moved below training and evaluation, which both use it.
"""

from crscale.injection.inject import (
    ITL_RATE_1500S,
    MIN_ADDED_SKY_E,
    TRAINING_RATE,
    InjectionResult,
    inject_crs,
    orient,
    sky_augment,
)

__all__ = [
    "ITL_RATE_1500S",
    "MIN_ADDED_SKY_E",
    "TRAINING_RATE",
    "InjectionResult",
    "inject_crs",
    "orient",
    "sky_augment",
]
