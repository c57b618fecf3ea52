"""Which injected CR pixels stand out of the noise, and the figures on those pixels alone.

A real CR footprint deposits a few hundred electrons in most of its pixels and a few tens at its
edges. On a bright flat (~35,000 e⁻, noise ~190 e⁻ and more) most of those pixels are below
the noise: no pixel-wise method can find them at a low false-positive rate, so figures on all
CR pixels measure the frame's noise as much as the method. The figures here leave out the
*faint* CR pixels, those whose injected charge is below ``nsigma`` times the pixel's noise:
they count neither as found nor as missed, and are not false positives either. Every other
pixel counts as in the main figures.
"""

from __future__ import annotations

import numpy as np

#: Injected charge, in units of the pixel's noise, below which a CR pixel is faint.
FAINT_NSIGMA = 5.0


def faint_pixels(
    added_e: np.ndarray,
    truth: np.ndarray,
    image_e: np.ndarray,
    *,
    noise_e: float,
    readnoise_e: float,
    nsigma: float = FAINT_NSIGMA,
) -> np.ndarray:
    """CR pixels whose injected charge is below ``nsigma`` times the noise there.

    The noise of a pixel is the larger of the image's robust noise (which holds the flat-field
    structure and the sky's) and its own shot and read noise, ``sqrt(max(x, 0) + readnoise²)``
    of the image before injection.

    Parameters
    ----------
    added_e : numpy.ndarray
        Charge added by the injection, electrons.
    truth : numpy.ndarray
        bool CR truth.
    image_e : numpy.ndarray
        The image before injection, electrons.
    noise_e, readnoise_e : float
        The image's robust noise and its read noise, electrons.
    nsigma : float
        The significance below which a CR pixel is faint.

    Returns
    -------
    numpy.ndarray
        bool, True on faint CR pixels (a subset of ``truth``).
    """
    shot = np.sqrt(np.clip(np.asarray(image_e, np.float64), 0.0, None) + float(readnoise_e) ** 2)
    sigma = np.maximum(shot, float(noise_e))
    return np.asarray(truth, bool) & (np.asarray(added_e, np.float64) < nsigma * sigma)


def significant_valid(valid: np.ndarray, faint: np.ndarray | None) -> np.ndarray:
    """The pixels that count on significant CR pixels: ``valid`` less the faint CR pixels."""
    return valid if faint is None else valid & ~faint
