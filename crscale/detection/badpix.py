"""Bad pixels: which ones (NaN/inf, saturated, DQ-flagged) and how the network is kept from them."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: Fill passes: a bad pixel further than this from any good pixel gets the sky (0 in input units).
FILL_RADIUS = 4


def bad_pixel_mask(
    image: np.ndarray, *, dq: np.ndarray | None = None, saturation: float | None = None
) -> np.ndarray:
    """Pixels that must never be called CRs: non-finite, at or above ``saturation``, or ``dq != 0``."""
    img = np.asarray(image)
    bad = ~np.isfinite(img) if np.issubdtype(img.dtype, np.floating) else np.zeros(img.shape, bool)
    if saturation is not None and np.isfinite(saturation):
        with np.errstate(invalid="ignore"):
            bad |= img >= saturation
    if dq is not None:
        dq = np.asarray(dq)
        if dq.shape != img.shape:
            raise ValueError(f"dq shape {dq.shape} does not match image shape {img.shape}")
        bad |= dq != 0
    return bad


def fill_bad(x: np.ndarray, bad: np.ndarray, *, radius: int = FILL_RADIUS) -> np.ndarray:
    """Replace bad pixels of a network input by the mean of their good 3×3 neighbours.

    Each pass fills the bad pixels that touch a good (or already filled) pixel, so a bad region
    is filled from its rim inwards, as a smooth continuation of its surroundings: a NaN, a
    saturated star core or a bad column then looks like neither a sharp CR nor a hole to the
    network, and its neighbours are predicted as if it were ordinary sky or source. Pixels
    still unfilled after ``radius`` passes get 0, the sky level in normalised units. A filled
    value depends only on pixels within ``radius``, which keeps tiled inference exact with a
    halo of ``receptive radius + radius``.
    """
    if not bad.any():
        return x
    out = np.where(bad, np.float32(0), x).astype(np.float32, copy=False)
    good = (~bad).astype(np.float32)
    todo = bad.copy()
    for _ in range(radius):
        # 3×3 sums of values and weights; mode="constant" so the edge of a block behaves like
        # the edge of the image (the halo absorbs the difference).
        s = ndimage.uniform_filter(out * good, size=3, mode="constant")
        w = ndimage.uniform_filter(good, size=3, mode="constant")
        ready = todo & (w > 1e-6)
        if not ready.any():
            break
        out[ready] = s[ready] / w[ready]
        good[ready] = 1.0
        todo &= ~ready
        if not todo.any():
            break
    return out
