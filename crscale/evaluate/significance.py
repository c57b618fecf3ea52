"""Which injected CR pixels stand out of the noise, and the figures on those pixels alone.

A real CR footprint deposits a few hundred electrons in most of its pixels and a few tens at its
edges. On a bright flat (~35,000 e⁻, noise ~190 e⁻ and more) most of those pixels are below
the noise: no pixel-wise method can find them at a low false-positive rate, so figures on all
CR pixels measure the frame's noise as much as the method. The figures here leave out the
*faint* CR pixels, those whose injected charge is below ``nsigma`` times the pixel's noise:
they count neither as found nor as missed, and are not false positives either. Every other
pixel counts as in the main figures. The faint pixels, and the noise they are measured against
(the pixel's shot and read noise, or the image's local pixel-to-pixel noise where that is
larger), are defined in :mod:`crscale.injection.faint`, which training uses too.
"""

from __future__ import annotations

import numpy as np

from crscale.injection.faint import FAINT_NSIGMA

__all__ = ["FAINT_NSIGMA", "significant_valid"]


def significant_valid(valid: np.ndarray, faint: np.ndarray | None) -> np.ndarray:
    """The pixels that count on significant CR pixels: ``valid`` less the faint CR pixels."""
    return valid if faint is None else valid & ~faint
