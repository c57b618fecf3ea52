"""Morphology classes of CRs: dot, spot, track, worm.

The rules, applied in this order to each CR's pixels (8-connected):

1. **dot**: at most ``dot_max_pixels`` (2) pixels.
2. **spot** (compact): ``length < spot_max_length`` (5 px), or
   ``length / width < spot_max_elongation`` (3), where ``length`` is the geodesic diameter (the
   longest of the shortest paths between two pixels, walking through the CR with steps of 1
   or √2, plus 1) and ``width = n_pixels / length``.
3. **track** (long and straight): ``straightness >= track_min_straightness`` (0.9), where
   ``straightness`` is the shortest 8-connected path length between the geodesic end points
   in free space (``max(|dx|, |dy|) + (√2 - 1) min(|dx|, |dy|)`` + 1) over ``length``. It is 1
   for a straight line of any angle and thickness (both measure the same 8-connected metric,
   so pixelation costs nothing), 0.90 for a quarter circle and about 0.64 for a half circle.
4. **worm** (long and curved): the rest.

Physically: dots are low-energy hits or muons at normal incidence on a thin sensor; spots
are blobs of diffused charge (steep muons in thick sensors, low-energy electrons, alphas);
tracks are muons and energetic protons at grazing incidence; worms are multiply scattered
electrons. The thresholds are settable under ``crscale.catalogue.morphology`` in dask's config.
They are validated in ``tests/test_catalog_morphology.py`` on hand-built shapes and on the
real LSST ITL CR footprints.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from crscale import config
from crscale.errors import SettingsError
from crscale.io.catalogue_schema import CLASSES


@dataclass(frozen=True)
class MorphologyRules:
    """Thresholds of the morphology rules (see the module documentation)."""

    # Defaults: crscale.yaml's catalogue.morphology, the one place they are written.
    dot_max_pixels: int = config.shipped("catalogue.morphology.dot_max_pixels")
    spot_max_length: float = config.shipped("catalogue.morphology.spot_max_length")
    spot_max_elongation: float = config.shipped("catalogue.morphology.spot_max_elongation")
    track_min_straightness: float = config.shipped("catalogue.morphology.track_min_straightness")

    @classmethod
    def from_config(cls, **overrides: Any) -> MorphologyRules:
        """The rules from ``crscale.catalogue.morphology`` in dask's config, then ``overrides``."""
        values = {**(config.get("catalogue.morphology") or {}), **overrides}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SettingsError(f"unknown morphology setting(s) {unknown}; known: {sorted(known)}")
        return cls(**{k: v for k, v in values.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        """Plain dict."""
        return asdict(self)


def classify(
    n_pixels: np.ndarray,
    length: np.ndarray,
    straightness: np.ndarray,
    *,
    rules: MorphologyRules | None = None,
) -> np.ndarray:
    """Morphology class of each CR.

    Parameters
    ----------
    n_pixels, length, straightness : numpy.ndarray
        Per-CR features (see :mod:`crscale.catalogue.features`).
    rules : MorphologyRules, optional
        Thresholds; default from the config.

    Returns
    -------
    numpy.ndarray
        Object array of class names from :data:`crscale.io.catalogue_schema.CLASSES`.
    """
    rules = rules or MorphologyRules.from_config()
    n = np.asarray(n_pixels, dtype=np.float64)
    length = np.asarray(length, dtype=np.float64)
    straight = np.asarray(straightness, dtype=np.float64)
    width = n / np.maximum(length, 1.0)
    elongation = length / np.maximum(width, 1e-9)
    dot = n <= rules.dot_max_pixels
    spot = ~dot & ((length < rules.spot_max_length) | (elongation < rules.spot_max_elongation))
    track = ~dot & ~spot & (straight >= rules.track_min_straightness)
    index = np.select([dot, spot, track], [0, 1, 2], default=3)
    return np.asarray(CLASSES, dtype=object)[index]
