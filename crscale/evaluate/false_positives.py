"""What a method's false-positive pixels sit on: the frame's own spikes and CR tails, or the rest.

An injected evaluation set knows only the CRs it put in. A real frame also holds its own sharp
pixels, whose truth nobody labelled:

- **lone spikes**: a pixel far above all 8 of its neighbours before injection, which hold less
  than a fifth of its excess over the local background. A star's core does not do that unless
  the star is undersampled to a FWHM of about 1.3 px; a hot pixel or a one-pixel CR of the
  frame's own does. One exposure cannot say which of the two (the defects stage, which sees
  many, can), and a cleaning pipeline masks both.
- **own-CR tails**: the frame's own CRs are found with astroscrappy and left out of the figures,
  but a track that runs off the frame's edge, or a faint halo, can keep pixels outside that mask.

Both count as false positives in the figures, as they must: truth is what was injected. This
module says how many of a method's false pixels lie on them, so that a reader can tell a
detector that flags hot pixels from one that flags stars, lines and flat-field grain (``other``).
It changes no figure.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["FP_KINDS", "SPIKE_CONTRAST", "SPIKE_NSIGMA", "false_positive_kinds", "own_spikes"]

#: A lone spike stands this many pixel-to-pixel noise σ above the brightest of its 8 neighbours;
#: the same level as the training option ``ignore_spikes_nsigma`` (docs/training.md).
SPIKE_NSIGMA = 10.0

#: A lone spike's brightest neighbour holds less than this fraction of its excess over the local
#: background (a Gaussian PSF of FWHM 1.3 px puts 0.2 of the peak in its 4 nearest neighbours).
SPIKE_CONTRAST = 0.2

#: The kinds, in the order they are tested: a component that holds a spike is a spike.
FP_KINDS = ("lone_spike", "own_cr_tail", "other")

_EIGHT = np.ones((3, 3), bool)


def own_spikes(
    image_e: np.ndarray,
    bad: np.ndarray,
    own_cr: np.ndarray,
    noise_e: float,
    *,
    nsigma: float = SPIKE_NSIGMA,
    contrast: float = SPIKE_CONTRAST,
) -> np.ndarray:
    """The frame's own lone spikes, before any CR is injected, outside its own-CR mask.

    Parameters
    ----------
    image_e : numpy.ndarray
        The frame in electrons, before injection.
    bad : numpy.ndarray
        bool, its bad pixels (never a spike, and never a spike's neighbour).
    own_cr : numpy.ndarray
        bool, its own CRs already left out of the figures.
    noise_e : float
        Its pixel-to-pixel noise in electrons.
    nsigma : float
        How far above all 8 neighbours, in units of ``noise_e``.
    contrast : float
        The largest excess of the brightest neighbour, as a fraction of the pixel's own (both
        over the 5×5 median).

    Returns
    -------
    numpy.ndarray
        bool, the spikes.
    """
    from crscale.injection.sources import lone_spikes

    above = lone_spikes(image_e, bad, noise_e, nsigma) & ~own_cr
    if not above.any():
        return above
    # Bad pixels hold their neighbours' values in an evaluation image (EvalImage.image_e).
    background = ndimage.median_filter(image_e, size=5, mode="nearest")
    excess = np.where(bad, -np.inf, image_e - background)
    ring = np.ones((3, 3), bool)
    ring[1, 1] = False
    neighbour = ndimage.maximum_filter(excess, footprint=ring, mode="nearest")
    return above & (neighbour < contrast * excess)


def false_positive_kinds(
    mask: np.ndarray,
    truth: np.ndarray,
    valid: np.ndarray,
    *,
    spikes: np.ndarray | None,
    own_cr: np.ndarray | None,
) -> dict[str, int]:
    """Count a mask's false-positive pixels by what they sit on.

    The false pixels (``mask & valid & ~truth``) are grouped into 8-connected components. A
    component that holds one of the frame's lone spikes is ``lone_spike``; else one that touches
    the frame's own-CR mask (8-adjacent) is ``own_cr_tail``; else ``other``.

    Parameters
    ----------
    mask : numpy.ndarray
        bool, the method's mask at its operating point.
    truth, valid : numpy.ndarray
        bool, the injected CR pixels and the pixels that count.
    spikes, own_cr : numpy.ndarray or None
        bool, the frame's own lone spikes (:func:`own_spikes`) and own CRs; None: none known.

    Returns
    -------
    dict
        Pixels of each kind in :data:`FP_KINDS`; they add up to the false-positive pixels.
    """
    fp = mask & valid & ~truth
    labels, n = ndimage.label(fp, structure=_EIGHT)
    kind = np.full(n + 1, 2, np.int8)  # "other"
    if n and own_cr is not None and own_cr.any():
        near = ndimage.binary_dilation(own_cr, structure=_EIGHT)
        kind[np.unique(labels[near & fp])] = 1
    if n and spikes is not None and spikes.any():
        kind[np.unique(labels[spikes & fp])] = 0
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    return {k: int(sizes[kind == i].sum()) for i, k in enumerate(FP_KINDS)}
