"""Per-image robust statistics used for input normalisation.

The network sees images scaled by their own sky level and noise, so both must be estimated
robustly: stars, galaxies, bad columns and the cosmic rays themselves occupy a small
fraction of the pixels and must not pull the estimates.
"""

from __future__ import annotations

import numpy as np

#: Scale factor from the median absolute deviation to the standard deviation of a Gaussian.
MAD_TO_SIGMA = 1.4826


def robust_sky_noise(
    image: np.ndarray,
    *,
    bad: np.ndarray | None = None,
    clip: float = 5.0,
    iterations: int = 5,
) -> tuple[float, float]:
    """Robust sky level and noise of an image.

    The median and ``1.4826 * MAD`` of the finite, unflagged pixels, refined by a few
    iterations of sigma clipping around the median.

    Parameters
    ----------
    image : numpy.ndarray
        The image, any real dtype and shape.
    bad : numpy.ndarray of bool, optional
        Pixels to ignore (bad, saturated, known CRs), same shape as ``image``.
    clip : float, optional
        Clipping threshold in units of the current sigma estimate.
    iterations : int, optional
        Largest number of clipping iterations; the loop stops earlier once no pixel
        is rejected.

    Returns
    -------
    sky : float
        Median of the clipped pixels.
    sigma : float
        ``1.4826 * MAD`` of the clipped pixels. For integer-valued pixels whose MAD is
        below 10 steps (the MAD then moves in whole steps) and wherever the MAD is 0, the
        sigma-clipped standard deviation is used instead; where that too is 0, 1.0, so
        that dividing by it is always safe.

    Raises
    ------
    ValueError
        No pixel is both finite and unflagged, or ``bad`` has the wrong shape.
    """
    data = np.asarray(image)
    if bad is not None:
        bad = np.asarray(bad, dtype=bool)
        if bad.shape != data.shape:
            raise ValueError(f"bad mask shape {bad.shape} does not match image shape {data.shape}")
    # float64: float32 sums of millions of pixels lose the digits the std fallback needs.
    good = np.isfinite(data) if np.issubdtype(data.dtype, np.floating) else np.ones(data.shape, bool)
    if bad is not None:
        good &= ~bad
    values = data[good].astype(np.float64, copy=False)
    if values.size == 0:
        raise ValueError("no finite, unflagged pixel to estimate the sky and noise from")

    sky = float(np.median(values))
    sigma = MAD_TO_SIGMA * float(np.median(np.abs(values - sky)))
    for _ in range(iterations):
        if sigma <= 0:
            break
        kept = values[np.abs(values - sky) < clip * sigma]
        if kept.size == values.size or kept.size == 0:
            break
        values = kept
        sky = float(np.median(values))
        sigma = MAD_TO_SIGMA * float(np.median(np.abs(values - sky)))
    if sigma <= 0 or (sigma < _QUANTISED_MAX_SIGMA and _integral(values)):
        sigma = _clipped_std(values, sky, sigma, clip, iterations)
    if not sigma > 0:
        sigma = 1.0
    return sky, sigma


#: Below this many integer steps, the MAD of integer-valued pixels is too coarse to use.
_QUANTISED_MAX_SIGMA = 10.0


def _integral(values: np.ndarray) -> bool:
    """Whether every value is a whole number (raw ADU, even when stored as float)."""
    return bool(np.all(values == np.round(values)))


def _clipped_std(values: np.ndarray, sky: float, sigma: float, clip: float, iterations: int) -> float:
    """Sigma-clipped standard deviation around ``sky``.

    The MAD of integer data moves in whole steps: a real bias with a noise of 2.26 ADU has
    a MAD of exactly 1, which reads as sigma = 1.48. The standard deviation is not
    quantised, and clipping keeps it robust.
    """
    std = float(np.std(values))
    for _ in range(iterations):
        if std <= 0:
            break
        kept = values[np.abs(values - sky) < clip * std]
        new = float(np.std(kept)) if kept.size else 0.0
        if new == std:
            break
        std = new
    return std
