"""Per-image robust statistics used for input normalisation.

The network sees images scaled by their own sky level and noise, so both must be estimated
robustly: stars, galaxies, bad columns and the cosmic rays themselves occupy a small
fraction of the pixels and must not pull the estimates.
"""

from __future__ import annotations

from collections.abc import Sequence

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


#: Side of the square boxes in which :func:`pixel_noise` measures the pixel-to-pixel scatter.
PIXEL_NOISE_BOX = 64
#: Boxes per axis at most (a regular grid of up to 8 × 8 boxes, 262,144 pixels).
PIXEL_NOISE_GRID = 8
_MEDIAN_SIDE = 5
# For white Gaussian noise, 1.4826 MAD of (x - 5×5 running median of x) is 0.950 σ and its
# standard deviation 0.989 σ (measured on 1024² draws): x takes part in its own median.
_RESIDUAL_MAD = 0.950
_RESIDUAL_STD = 0.989
#: σ of white noise per MAD of its :func:`median_residual`.
RESIDUAL_SIGMA_PER_MAD = MAD_TO_SIGMA / _RESIDUAL_MAD


#: Up to this many pixels, :func:`median_residual` sorts each pixel's 25 neighbours in one
#: numpy call (3× scipy's filter on a 64² box; the same values, since the median of 25 values is
#: one of them). Above it, the 25 copies would cost more memory than they save time.
_PARTITION_MAX_PIXELS = 1 << 16


def median_residual(image: np.ndarray) -> np.ndarray:
    """The image less its 5×5 running median (edges reflected): the pixel-to-pixel noise."""
    if image.ndim == 2 and image.size <= _PARTITION_MAX_PIXELS:
        half = _MEDIAN_SIDE // 2
        padded = np.pad(image, half, mode="symmetric")  # scipy's "reflect"
        windows = np.lib.stride_tricks.sliding_window_view(padded, (_MEDIAN_SIDE, _MEDIAN_SIDE))
        flat = windows.reshape(*image.shape, _MEDIAN_SIDE * _MEDIAN_SIDE)
        middle = flat.shape[-1] // 2
        return image - np.partition(flat, middle, axis=-1)[..., middle]
    from scipy import ndimage

    return image - ndimage.median_filter(image, _MEDIAN_SIDE, mode="reflect")


def pixel_noise_boxes(shape: tuple[int, ...]) -> list[tuple[slice, slice]]:
    """The boxes of an image of ``shape`` in which :func:`pixel_noise` measures the noise.

    A regular grid of at most :data:`PIXEL_NOISE_GRID` × :data:`PIXEL_NOISE_GRID` boxes of
    :data:`PIXEL_NOISE_BOX` pixels (fewer and smaller on a small image), spread from edge to
    edge. It depends on the shape only, so that the engine can read exactly these pixels of an
    archived detector and get the value :func:`pixel_noise` gives on the whole image.
    """
    ny, nx = int(shape[0]), int(shape[1])
    by, bx = min(PIXEL_NOISE_BOX, ny), min(PIXEL_NOISE_BOX, nx)
    starts_y = np.unique(np.linspace(0, ny - by, max(1, min(PIXEL_NOISE_GRID, ny // by))).round().astype(int))
    starts_x = np.unique(np.linspace(0, nx - bx, max(1, min(PIXEL_NOISE_GRID, nx // bx))).round().astype(int))
    return [(slice(int(y), int(y) + by), slice(int(x), int(x) + bx)) for y in starts_y for x in starts_x]


def pixel_noise_from_boxes(boxes: Sequence[tuple[np.ndarray, np.ndarray | None]]) -> float | None:
    """:func:`pixel_noise` from the pixels (and bad-pixel masks) of its boxes.

    None when no box has at least half its pixels finite and unflagged, or the scatter is 0.
    """
    resid: list[np.ndarray] = []
    integral = True
    for data, bad in boxes:
        x = np.asarray(data, np.float64)
        good = np.isfinite(x)
        if bad is not None:
            good &= ~np.asarray(bad, bool)
        if good.sum() < 0.5 * x.size:
            continue
        filled = np.where(good, x, np.median(x[good]))
        r = median_residual(filled)[good]  # filled equals x on the good pixels
        integral = integral and bool(np.all(x[good] == np.round(x[good])))
        resid.append(r)
    if not resid:
        return None
    r = np.concatenate(resid)
    sigma = RESIDUAL_SIGMA_PER_MAD * float(np.median(np.abs(r)))
    if sigma <= 0 or (sigma < _QUANTISED_MAX_SIGMA and integral):
        # The residual of integer pixels is an integer: its MAD moves in whole steps.
        sigma = _clipped_std(r, 0.0, sigma, 5.0, 5) / _RESIDUAL_STD
    return sigma if sigma > 0 else None


def pixel_noise(image: np.ndarray, *, bad: np.ndarray | None = None) -> float | None:
    """The pixel-to-pixel noise of an image: robust σ of the image less its 5×5 running median.

    Unlike the robust noise of :func:`robust_sky_noise` (the spread of all pixel values), it
    holds no smooth structure: the vignetting of a flat, the lines of an arc, a galaxy or
    nebula that fills the frame each inflate that spread many times over, while a CR is
    sharp against the noise from pixel to pixel. Measured in the boxes of
    :func:`pixel_noise_boxes` (at most 262,144 pixels, whatever the image size).

    Parameters
    ----------
    image : numpy.ndarray
        A 2-D image.
    bad : numpy.ndarray of bool, optional
        Pixels to leave out (non-finite pixels always are).

    Returns
    -------
    float or None
        σ in the image's units; None when no box has enough good pixels.
    """
    data = np.asarray(image)
    if data.ndim != 2:
        raise ValueError(f"pixel_noise needs a 2-D image, got shape {data.shape}")
    if bad is not None and np.shape(bad) != data.shape:
        raise ValueError(f"bad mask shape {np.shape(bad)} does not match image shape {data.shape}")
    return pixel_noise_from_boxes(
        [(data[b], None if bad is None else np.asarray(bad)[b]) for b in pixel_noise_boxes(data.shape)]
    )
