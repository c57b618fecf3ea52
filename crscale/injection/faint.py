"""Which injected CR pixels stand out of the noise: the faint ones are out of any method's reach.

A real CR footprint deposits a few hundred electrons in most of its pixels and a few tens at its
edges. On a bright flat (~35,000 e⁻, noise ~190 e⁻ and more) most of those pixels are below
the noise. A CR pixel is *faint* when its injected charge is below ``nsigma`` times its pixel's
noise. Evaluation leaves faint pixels out of its figures on significant pixels
(:mod:`crscale.evaluate.significance`); training can leave them out of the loss
(``faint_ignore_nsigma`` of :class:`crscale.train.config.TrainConfig`).

The noise of a pixel is the larger of its own shot and read noise and the image's *local*
pixel-to-pixel noise: the robust scatter of the image less its 5×5 running median, in boxes of
32×32 pixels. That scatter holds what a single frame cannot tell from noise (the flat field's
pixel-response pattern, the sky's noise, faint unresolved sources) but not the smooth structure
(a flat's illumination, a spectrum's continuum, a galaxy's profile), which a detector sees as
smooth. A global robust noise holds that structure: on the held-out NOT ALFOSC flat of
docs/training/archive-frames.yaml it reads 557 e⁻, three times the pixel's shot noise, and calls
95 % of the injected CR pixels faint, against 83 % with the local estimate.
"""

from __future__ import annotations

import numpy as np

from crscale.detection.sky_noise import RESIDUAL_SIGMA_PER_MAD, median_residual

#: Injected charge, in units of the pixel's noise, below which a CR pixel is faint.
FAINT_NSIGMA = 5.0
#: Side of the boxes in which the residual's robust scatter is taken.
NOISE_BOX = 32


def local_noise(image_e: np.ndarray, *, box: int = NOISE_BOX) -> np.ndarray:
    """The pixel-to-pixel noise of an image around each pixel, in the image's units.

    Parameters
    ----------
    image_e : numpy.ndarray
        A 2-D image with no NaN (bad pixels filled).
    box : int
        Side of the boxes in which the scatter is taken.

    Returns
    -------
    numpy.ndarray
        float64, the shape of ``image_e``: the robust sigma of the image less its 5×5 running
        median, constant within each box.
    """
    x = np.asarray(image_e, np.float32)
    if x.ndim != 2:
        raise ValueError(f"local_noise needs a 2-D image, got shape {x.shape}")
    resid = np.abs(median_residual(x))
    ny, nx = -(-x.shape[0] // box), -(-x.shape[1] // box)
    # Boxes cut by the image's edge take the reflected pixels of the edge, so every box holds
    # box² pixels and the medians below work on one array.
    padded = np.pad(resid, ((0, ny * box - x.shape[0]), (0, nx * box - x.shape[1])), mode="reflect")
    blocks = padded.reshape(ny, box, nx, box).transpose(0, 2, 1, 3).reshape(ny, nx, box * box)
    # The residual has a median of ~0, so the median of its absolute value is its MAD.
    sigma = np.median(blocks, axis=2).astype(np.float64) * RESIDUAL_SIGMA_PER_MAD
    full = np.repeat(np.repeat(sigma, box, axis=0), box, axis=1)
    return full[: x.shape[0], : x.shape[1]]


def faint_pixels(
    added_e: np.ndarray,
    truth: np.ndarray,
    image_e: np.ndarray,
    *,
    readnoise_e: float,
    nsigma: float = FAINT_NSIGMA,
    box: int = NOISE_BOX,
) -> np.ndarray:
    """CR pixels whose injected charge is below ``nsigma`` times the noise there.

    The noise of a pixel is the larger of the image's local pixel-to-pixel noise
    (:func:`local_noise` of the image before injection) and its own shot and read noise,
    ``sqrt(max(x, 0) + readnoise²)``.

    Parameters
    ----------
    added_e : numpy.ndarray
        Charge added by the injection, electrons.
    truth : numpy.ndarray
        bool CR truth.
    image_e : numpy.ndarray
        The image before injection, electrons.
    readnoise_e : float
        The image's read noise, electrons.
    nsigma : float
        The significance below which a CR pixel is faint.
    box : int
        Side of the boxes of :func:`local_noise`.

    Returns
    -------
    numpy.ndarray
        bool, True on faint CR pixels (a subset of ``truth``).
    """
    shot = np.sqrt(np.clip(np.asarray(image_e, np.float64), 0.0, None) + float(readnoise_e) ** 2)
    sigma = np.maximum(shot, local_noise(image_e, box=box))
    return np.asarray(truth, bool) & (np.asarray(added_e, np.float64) < nsigma * sigma)
