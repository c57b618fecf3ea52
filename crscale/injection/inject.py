"""Inject real CR footprints into real images, and vary their sky level, for label-free training.

A training pair is made from a science image that needs no labels of its own: real CR
footprints (from dark frames) are added at random places, and their masks are the truth.
:func:`sky_augment` first moves the image to another exposure time and sky level, so that the
network also sees CRs that stand only a few sigma above a bright sky.

Everything is in electrons. Apply :func:`sky_augment` before :func:`inject_crs`: the charge a
CR deposits does not depend on the exposure time, so it must not be scaled with the sky.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from crscale.detection.sky_noise import robust_sky_noise
from crscale.injection.footprints import CRFootprint, CRLibrary

#: CRs per pixel in 1,500 s of dark on an LSST ITL CCD (1,764 CRs on 16.288 Mpix).
ITL_RATE_1500S = 1764 / 16.288e6

#: Default injection rate, CRs per pixel: about 5 CRs in a 128 x 128 training patch and 20 in
#: 256 x 256, roughly three times the ITL 1,500 s rate, so that most patches hold a few CRs
#: without CRs covering a large part of the patch (about 0.5 % of the pixels).
TRAINING_RATE = 3.0e-4

#: Smallest sky level (e-) that :func:`sky_augment` adds, the lower end of its log-uniform draw.
MIN_ADDED_SKY_E = 10.0


@dataclass
class InjectionResult:
    """An image with injected CRs and its truth.

    Attributes
    ----------
    image : numpy.ndarray
        float32 (ny, nx): the input image plus the CRs, electrons.
    truth : numpy.ndarray
        bool (ny, nx): pixels covered by an injected CR's mask (False where ``avoid``).
    added : numpy.ndarray
        float32 (ny, nx): the charge added, electrons.
    indices : numpy.ndarray
        int (n,): library index of each injected footprint, in the order they were added.
    origins : numpy.ndarray
        int (n, 2): (row, column) of the top-left corner of each oriented stamp in the image;
        negative or beyond the image where the stamp was cut at the edge.
    rotations : numpy.ndarray
        int (n,): number of 90-degree counter-clockwise rotations (:func:`numpy.rot90`).
    flips : numpy.ndarray
        bool (n, 2): flipped along rows (axis 0), along columns (axis 1).
    scale : float
        Factor the footprint values were multiplied by (1.0 without noise rescaling).
    """

    image: np.ndarray
    truth: np.ndarray
    added: np.ndarray
    indices: np.ndarray
    origins: np.ndarray
    rotations: np.ndarray
    flips: np.ndarray
    scale: float = 1.0

    @property
    def n_injected(self) -> int:
        """Number of footprints injected (some may lie partly outside the image)."""
        return int(self.indices.size)


def orient(stamp: np.ndarray, k: int, flip_rows: bool, flip_cols: bool) -> np.ndarray:
    """Flip a stamp, then rotate it by ``k`` quarter turns.

    Parameters
    ----------
    stamp : numpy.ndarray
        2-D stamp.
    k : int
        Quarter turns, counter-clockwise (as :func:`numpy.rot90`).
    flip_rows, flip_cols : bool
        Reverse the stamp along axis 0, along axis 1.

    Returns
    -------
    numpy.ndarray
        A view of ``stamp``.
    """
    if flip_rows:
        stamp = stamp[::-1, :]
    if flip_cols:
        stamp = stamp[:, ::-1]
    return np.rot90(stamp, k)


def inject_crs(
    image_e: np.ndarray,
    library: CRLibrary,
    rng: np.random.Generator,
    *,
    n: int | None = None,
    rate: float | None = None,
    noise_e: float | None = None,
    rescale_noise: bool = False,
    avoid: np.ndarray | None = None,
    inside: bool = False,
) -> InjectionResult:
    """Add real CR footprints to an image at random places.

    Each CR is a footprint drawn uniformly (with replacement) from ``library``, flipped at
    random along each axis and turned by a random multiple of 90 degrees, and placed with
    the centre of its stamp on a uniformly random pixel, so CRs near an edge are cut
    (unless ``inside``). Overlapping CRs add up. The result depends only on the inputs and
    the state of ``rng``.

    Parameters
    ----------
    image_e : numpy.ndarray
        2-D image in electrons; it is not modified.
    library : CRLibrary
        The footprints.
    rng : numpy.random.Generator
        Source of randomness.
    n : int, optional
        Number of CRs.
    rate : float, optional
        Mean number of CRs per pixel; the number is then Poisson distributed. Give ``n``
        or ``rate``, not both; with neither, ``rate`` is :data:`TRAINING_RATE`
        (:data:`ITL_RATE_1500S` is the rate of 1,500 s of dark on an ITL CCD).
    noise_e : float, optional
        Noise sigma of the image in electrons, used with ``rescale_noise``; estimated with
        :func:`crscale.detection.sky_noise.robust_sky_noise` when not given.
    rescale_noise : bool, optional
        Multiply the footprint values by ``noise_e / library.noise_e``: the dark-frame
        recipe, which keeps the contrast of the CRs against the noise the same as in the
        dark frame.
    avoid : numpy.ndarray of bool, optional
        Pixels (saturated, bad) where the truth must stay False. The CR charge is still
        added there, as a real CR would deposit it, but those pixels are not labelled.
    inside : bool, optional
        Place every stamp fully inside the image (where it fits), so no charge is lost.

    Returns
    -------
    InjectionResult
        The image with CRs, the truth mask, the added charge and what was placed where.
        ``truth`` is the union of the placed footprints' masks (minus ``avoid``); for
        dark-frame footprints it can include mask pixels with no charge (the dilated rim).

    Raises
    ------
    ValueError
        The image is not 2-D, ``avoid`` has another shape, both ``n`` and ``rate`` are
        given, or ``rescale_noise`` is set and the library has no ``noise_e``.
    """
    image = np.asarray(image_e)
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {image.shape}")
    ny, nx = image.shape
    if avoid is not None:
        avoid = np.asarray(avoid, dtype=bool)
        if avoid.shape != image.shape:
            raise ValueError(f"avoid mask shape {avoid.shape} does not match image shape {image.shape}")
    if n is not None and rate is not None:
        raise ValueError("give the number of CRs (n) or the rate, not both")
    if len(library) == 0:
        raise ValueError(f"CR library {library.source!r} is empty")

    scale = 1.0
    if rescale_noise:
        if not library.noise_e:
            raise ValueError(f"CR library {library.source!r} records no noise level; cannot rescale")
        if noise_e is None:
            flagged = ~np.isfinite(image) if np.issubdtype(image.dtype, np.floating) else None
            if avoid is not None:
                flagged = avoid if flagged is None else flagged | avoid
            noise_e = robust_sky_noise(image, bad=flagged)[1]
        scale = float(noise_e) / float(library.noise_e)

    if n is None:
        n = int(rng.poisson((TRAINING_RATE if rate is None else rate) * ny * nx))
    if n < 0:
        raise ValueError(f"number of CRs must be >= 0, got {n}")

    indices = rng.integers(0, len(library), size=n)
    rotations = rng.integers(0, 4, size=n)
    flips = rng.integers(0, 2, size=(n, 2)).astype(bool)
    shapes = np.array([library[i].shape for i in indices], dtype=np.int64).reshape(n, 2)
    # An odd number of quarter turns swaps the stamp's height and width.
    shapes = np.where((rotations % 2 == 1)[:, None], shapes[:, ::-1], shapes)
    centre = np.stack([rng.integers(0, ny, size=n), rng.integers(0, nx, size=n)], axis=1)
    origins = centre - shapes // 2
    if inside:
        room = np.array([ny, nx]) - shapes + 1
        inner = rng.integers(0, np.maximum(room, 1))
        origins = np.where(room > 0, inner, origins)

    added = np.zeros((ny, nx), np.float32)
    truth = np.zeros((ny, nx), bool)
    for j in range(n):
        fp: CRFootprint = library[int(indices[j])]
        values = orient(fp.values, int(rotations[j]), bool(flips[j, 0]), bool(flips[j, 1]))
        mask = orient(fp.mask, int(rotations[j]), bool(flips[j, 0]), bool(flips[j, 1]))
        y0, x0 = int(origins[j, 0]), int(origins[j, 1])
        h, w = values.shape
        # Clip the stamp to the image: [ys, ye) x [xs, xe) in the image, offset in the stamp.
        ys, xs = max(y0, 0), max(x0, 0)
        ye, xe = min(y0 + h, ny), min(x0 + w, nx)
        if ys >= ye or xs >= xe:
            continue
        sub = (slice(ys - y0, ye - y0), slice(xs - x0, xe - x0))
        added[ys:ye, xs:xe] += values[sub] * np.float32(scale)
        truth[ys:ye, xs:xe] |= mask[sub]

    if avoid is not None:
        truth &= ~avoid
    out = image.astype(np.float32) + added
    return InjectionResult(out, truth, added, indices, origins, rotations, flips, scale)


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    """One draw, uniform in log between two positive bounds."""
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def sky_augment(
    image_e: np.ndarray,
    rng: np.random.Generator,
    *,
    sky_e: float | np.ndarray,
    scale_range: tuple[float, float] = (0.3, 3.0),
    add_sky_range: tuple[float, float] = (0.0, 3.0e4),
    p_add: float = 0.5,
    readnoise_e: float = 0.0,
    return_params: bool = False,
) -> np.ndarray | tuple[np.ndarray, dict]:
    """Move an image to another exposure time and sky level (deepCR-style augmentation).

    Two steps, in electrons:

    1. **Exposure time.** The image (sources and sky) is multiplied by a factor ``s`` drawn
       log-uniformly from ``scale_range``, as if exposed ``s`` times as long. Scaling also
       multiplies the noise by ``s``, where Poisson noise of a longer exposure grows as
       ``sqrt(s)``. For ``s < 1`` the missing variance of the shorter exposure,
       ``s * (1 - s) * sky_e + (1 - s**2) * readnoise_e**2``, is added as Gaussian noise, so
       the sky noise is that of a real ``s``-times exposure. For ``s > 1`` the excess
       (``s**2`` instead of ``s``) cannot be taken away: the image is noisier than a real
       long exposure, which only makes CRs harder to see.
    2. **Bright sky.** With probability ``p_add``, a uniform sky ``A`` drawn log-uniformly
       from ``add_sky_range`` (the lower end raised to :data:`MIN_ADDED_SKY_E`, 10 e-) is
       added with its Poisson noise, approximated by Gaussian noise of variance ``A``
       (exact enough above 10 e-). With ``A`` of 10^4 e- the noise is 100 e-, and a CR of a
       few hundred electrons (the median ITL pixel holds 431 e-) stands only 3 to 5 sigma
       above it: the regime where a network trained on dark skies fails.

    The noise of sources is treated like that of the sky in step 1 (only the sky term is
    topped up); the image's own real CRs are scaled with it.

    Parameters
    ----------
    image_e : numpy.ndarray
        Image in electrons, sky included.
    rng : numpy.random.Generator
        Source of randomness; the output depends only on it and the inputs.
    sky_e : float or numpy.ndarray
        Sky level of ``image_e`` in electrons (a scalar or a map of its shape); used for
        the noise of shorter exposures.
    scale_range : tuple of float, optional
        Bounds of the exposure-time factor ``s``; equal bounds fix it.
    add_sky_range : tuple of float, optional
        Bounds of the added sky in electrons.
    p_add : float, optional
        Probability of adding sky.
    readnoise_e : float, optional
        Read noise in electrons, kept the same in a shorter exposure.
    return_params : bool, optional
        Also return ``{"scale": s, "added_sky": A, "added_variance": v}`` (``v`` the mean
        added noise variance), from which the augmented image's sky and noise follow:
        ``sky' = s * sky + A`` and ``noise'**2 = (s * noise)**2 + v``.

    Returns
    -------
    numpy.ndarray
        float32 image in electrons, same shape (and the parameters with ``return_params``).
    """
    image = np.asarray(image_e, dtype=np.float64)
    lo, hi = scale_range
    if not 0 < lo <= hi:
        raise ValueError(f"scale_range must be positive and increasing, got {scale_range}")
    sky_lo, sky_hi = max(add_sky_range[0], MIN_ADDED_SKY_E), add_sky_range[1]
    # Every draw happens whatever the outcome, so one setting does not shift the others' streams.
    s = _log_uniform(rng, lo, hi)
    do_add = rng.random() < p_add
    added_sky = _log_uniform(rng, min(sky_lo, sky_hi), sky_hi) if sky_hi > 0 else 0.0

    out = image * s
    variance = np.zeros(()) if s >= 1 else (
        s * (1.0 - s) * np.clip(np.asarray(sky_e, dtype=np.float64), 0.0, None)
        + (1.0 - s * s) * float(readnoise_e) ** 2
    )
    if do_add and added_sky > 0:
        out = out + added_sky
        variance = variance + added_sky
    variance = np.broadcast_to(variance, image.shape)
    if np.any(variance > 0):
        out = out + rng.standard_normal(image.shape) * np.sqrt(variance)
    if return_params:
        params = {
            "scale": s, "added_sky": added_sky if do_add else 0.0, "added_variance": float(np.mean(variance)),
        }
        return out.astype(np.float32), params
    return out.astype(np.float32)
