"""CR footprints cut out of a user's own dark frames, with the label-free recipe.

The recipe of the deepCR WFC3/UVIS and DECam attention-U-Net papers: pixels more than
``nsigma`` noise sigmas above the median are CR seeds, the seed mask is dilated with a 3 x 3
square, and each 8-connected component is one footprint
(:class:`~crscale.injection.footprints.CRFootprint`). All values are in electrons.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from crscale.detection.sky_noise import robust_sky_noise
from crscale.errors import InputError
from crscale.injection.footprints import CRFootprint, CRLibrary


def footprints_from_dark(
    dark: np.ndarray,
    *,
    gain: float = 1.0,
    nsigma: float = 3.0,
    dilate: int = 1,
    min_pixels: int = 1,
    path: str | os.PathLike | None = None,
    bad: np.ndarray | None = None,
    peak_nsigma: float | None = None,
    exptime: float | None = None,
    source: str | None = None,
) -> CRLibrary:
    """Cut CR footprints out of a dark (or bias) frame with the label-free recipe.

    1. Work in electrons: ``dark * gain``.
    2. Robust median and noise sigma of the unflagged pixels
       (:func:`crscale.detection.sky_noise.robust_sky_noise`: 5-sigma clipped MAD).
    3. Seeds: pixels above ``median + nsigma * sigma``.
    4. Dilate the seeds with a ``(2 * dilate + 1)`` square (3 x 3 by default), which takes in
       the faint edges of each CR.
    5. Each 8-connected component of the dilated mask is one footprint: its values are
       ``dark - median`` inside the mask, negatives clipped to 0, and its mask is the
       dilated mask.

    At ``nsigma = 3`` about 0.13 % of pure-noise pixels become seeds, which is what the
    recipe accepts; raise ``min_pixels`` or set ``peak_nsigma`` to keep only clear CRs.

    Parameters
    ----------
    dark : numpy.ndarray
        2-D dark frame in ADU (bias-subtracted or not: the median is removed); trim the
        overscan first or flag it in ``bad``.
    gain : float, optional
        e-/ADU.
    nsigma : float, optional
        Seed threshold in noise sigmas above the median.
    dilate : int, optional
        Dilation radius in pixels; 0 keeps the seed mask as it is.
    min_pixels : int, optional
        Smallest number of seed pixels (before dilation) a footprint must have.
    path : str or Path, optional
        The file the dark came from: names the footprints, and bad input raises
        :class:`~crscale.errors.InputError` naming it (ValueError without it).
    bad : numpy.ndarray of bool, optional
        Pixels to ignore (bad columns, hot pixels, saturation). They are left out of the
        statistics, the seeds and the masks. Non-finite pixels are always ignored.
    peak_nsigma : float, optional
        Keep only footprints whose brightest pixel stands this many sigmas above the
        median.
    exptime : float, optional
        Dark time in seconds, recorded in the library.
    source : str, optional
        Name of the library and prefix of the footprint names; default ``path`` or
        ``"dark"``.

    Returns
    -------
    CRLibrary
        The footprints, in the order of their first pixel (row-major), with
        ``noise_e = sigma`` in electrons and ``area_pix`` the number of usable pixels.
    """
    name = source or (str(path) if path is not None else "dark")

    def fail(problem: str, kind: str = "invalid") -> Exception:
        return InputError(path, problem, kind=kind) if path is not None else ValueError(problem)

    dark = np.asarray(dark)
    if dark.ndim != 2:
        raise fail(f"dark frame must be 2-D, got shape {dark.shape}", "no-image")
    if not (np.issubdtype(dark.dtype, np.number) and not np.iscomplexobj(dark)):
        raise fail(f"dark frame must be real numbers, got dtype {dark.dtype}")
    if not (np.isfinite(gain) and gain > 0):
        raise fail(f"gain must be a positive number of e-/ADU, got {gain}")
    if dilate < 0:
        raise ValueError(f"dilate must be >= 0, got {dilate}")
    dark_e = dark.astype(np.float64) * float(gain)
    good = np.isfinite(dark_e)
    if bad is not None:
        bad = np.asarray(bad, dtype=bool)
        if bad.shape != dark.shape:
            raise fail(
                f"bad-pixel mask shape {bad.shape} does not match the dark {dark.shape}", "dq-mismatch"
            )
        good &= ~bad
    if not good.any():
        raise fail("dark frame has no finite, unflagged pixel", "no-finite-pixels")

    median, sigma = robust_sky_noise(dark_e, bad=~good)
    excess = np.where(good, dark_e - median, 0.0)
    seeds = good & (excess > nsigma * sigma)
    if dilate > 0:
        mask = ndimage.binary_dilation(seeds, structure=np.ones((2 * dilate + 1,) * 2, bool)) & good
    else:
        mask = seeds
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))

    keep = np.ones(n + 1, bool)
    keep[0] = False
    if min_pixels > 1:
        keep &= np.bincount(labels[seeds], minlength=n + 1) >= min_pixels
    if peak_nsigma is not None and n:
        peaks = np.zeros(n + 1)
        peaks[1:] = ndimage.maximum(excess, labels, np.arange(1, n + 1))
        keep &= peaks > peak_nsigma * sigma

    footprints: list[CRFootprint] = []
    for lab, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None or not keep[lab]:
            continue
        m = labels[sl] == lab
        values = np.where(m, np.clip(excess[sl], 0.0, None), 0.0).astype(np.float32)
        footprints.append(CRFootprint(values, m, f"{name}#{len(footprints)}"))

    return CRLibrary(
        footprints,
        source=name,
        noise_e=float(sigma),
        exptime=exptime,
        area_pix=int(np.count_nonzero(good)),
        meta={
            "median_e": float(median),
            "gain": float(gain),
            "nsigma": float(nsigma),
            "dilate": int(dilate),
            "min_pixels": int(min_pixels),
            "peak_nsigma": peak_nsigma,
        },
    )


def footprints_from_dark_file(
    path: str | os.PathLike,
    *,
    hdu: str | int | None = None,
    gain: float | None = None,
    **kwargs: Any,
) -> CRLibrary:
    """Cut CR footprints out of a dark or bias FITS file.

    The file is read with :func:`crscale.io.fits_reader.read_exposure`; its data-quality
    plane, if any, flags bad pixels.

    Parameters
    ----------
    path : str or Path
        The FITS file.
    hdu : str or int, optional
        The science HDU to use (index, EXTNAME or ``"EXTNAME,EXTVER"``); default every
        science HDU, each with its own gain, median and noise.
    gain : float, optional
        e-/ADU; default from the header (``GAIN`` and its per-amplifier and instrument
        variants, 1.0 when none is found).
    **kwargs
        Passed to :func:`footprints_from_dark` (``nsigma``, ``dilate``, ``min_pixels``,
        ``peak_nsigma``).

    Returns
    -------
    CRLibrary
        The footprints of every HDU used. ``noise_e`` is the noise of the HDU, or the median
        over the HDUs when there are several (the per-HDU values are in
        ``meta["noise_e_per_hdu"]``); ``exptime`` is DARKTIME or EXPTIME.

    Raises
    ------
    InputError
        The file cannot be read or holds no usable 2-D image.
    """
    from crscale.io.fits_reader import read_exposure

    exposure = read_exposure(path, hdus=None if hdu is None else [hdu])
    footprints: list[CRFootprint] = []
    noise: dict[str, float] = {}
    area = 0
    exptime = None
    for det in exposure.detectors:
        bad = None if det.dq is None else det.dq != 0
        lib = footprints_from_dark(
            det.image,
            gain=det.meta.gain if gain is None else gain,
            path=exposure.path,
            bad=bad,
            source=f"{Path(exposure.path).name}[{det.name}]",
            **kwargs,
        )
        footprints.extend(lib.footprints)
        assert lib.noise_e is not None  # footprints_from_dark measures it
        noise[det.name] = float(lib.noise_e)
        area += lib.area_pix or 0
        exptime = exptime or det.meta.darktime or det.meta.exptime
    return CRLibrary(
        footprints,
        source=exposure.path,
        noise_e=float(np.median(list(noise.values()))),
        exptime=exptime,
        area_pix=area,
        meta={"noise_e_per_hdu": noise, "hdus": list(noise)},
    )
