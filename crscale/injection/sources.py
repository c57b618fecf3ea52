"""Real images read for injection: per-detector images in electrons, with bad pixels and own CRs.

Training (:mod:`crscale.train.dataset`) and evaluation (:func:`crscale.evaluate.dataset.injected_set`)
both paint real CR footprints into these; the images' own CRs, found here, are left out of the
truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from crscale.detection.badpix import bad_pixel_mask
from crscale.detection.sky_noise import pixel_noise, robust_sky_noise
from crscale.errors import InputError
from crscale.io.fits_reader import read_exposure, sha256_file


@dataclass
class SourceImage:
    """One detector image of a training or validation file, in electrons."""

    name: str
    path: str
    sha256: str
    image_e: np.ndarray
    bad: np.ndarray
    own_cr: np.ndarray
    sky_e: float
    noise_e: float
    readnoise_e: float
    gain: float
    #: The pixel-to-pixel noise (:func:`crscale.detection.sky_noise.pixel_noise`), electrons.
    pixel_noise_e: float | None = None


def _own_crs(image_e: np.ndarray, bad: np.ndarray, readnoise_e: float) -> tuple[np.ndarray, np.ndarray]:
    """The image's own CRs (astroscrappy, conservative) dilated 1 px, and the image with them cleaned."""
    import astroscrappy

    # Bad pixels become the median so astroscrappy's Laplacian does not ring around them.
    work = np.where(bad, np.nanmedian(image_e[~bad]) if (~bad).any() else 0.0, image_e).astype(np.float32)
    crmask, clean = astroscrappy.detect_cosmics(
        work,
        inmask=bad,
        gain=1.0,
        readnoise=max(readnoise_e, 1.0),
        sigclip=4.5,
        sigfrac=0.3,
        objlim=5.0,
        satlevel=np.inf,
        niter=4,
        cleantype="medmask",
    )
    crmask = ndimage.binary_dilation(crmask, np.ones((3, 3), bool)) & ~bad
    return crmask, np.where(crmask, clean, image_e).astype(np.float32)


def lone_spikes(image_e: np.ndarray, bad: np.ndarray, noise_e: float, nsigma: float) -> np.ndarray:
    """Pixels more than ``nsigma × noise_e`` above the brightest of their 8 neighbours.

    A lone bright pixel is a hot pixel as often as a one-pixel CR: which it is, only other
    exposures of the detector say (the defects stage). Training leaves them out of the loss on
    frames whose own CRs are not looked for, so that neither answer is taught.
    """
    footprint = np.ones((3, 3), bool)
    footprint[1, 1] = False
    work = np.where(bad, -np.inf, image_e)
    neighbours = ndimage.maximum_filter(work, footprint=footprint, mode="nearest")
    with np.errstate(invalid="ignore"):  # a bad pixel among bad ones: -inf - -inf, masked below
        return (work - neighbours > nsigma * noise_e) & ~bad


def load_source_images(
    paths: list[Path],
    *,
    own_crs: str = "astroscrappy",
    min_size: int = 0,
    skipped: list[dict] | None = None,
    dq_paths: dict[str, str] | None = None,
    spike_nsigma: float | None = None,
) -> list[SourceImage]:
    """Read FITS files into per-detector images in electrons, with bad pixels and own CRs found.

    A file that cannot be read (corrupt, truncated, no 2-D image, ...) is left out and
    appended to ``skipped`` as ``{"path", "problem"}``; the others are still used.
    ``dq_paths`` maps an image path to its data-quality companion file. With ``spike_nsigma``,
    the :func:`lone_spikes` of the frames whose own CRs are not looked for (header
    ``CRSOWNCR = 'none'``) are their ``own_cr`` pixels: left out of the training loss.
    """
    out: list[SourceImage] = []
    for path in paths:
        try:
            exp = read_exposure(path, dq_path=(dq_paths or {}).get(str(path)))
        except InputError as exc:
            if skipped is None:
                raise
            skipped.append({"path": str(path), "problem": exc.problem})
            continue
        digest = sha256_file(path)
        for det in exp.detectors:
            if min(det.image.shape) < min_size:
                continue
            gain = float(det.meta.gain or 1.0)
            rn = float(det.meta.readnoise or 5.0)
            bad = bad_pixel_mask(det.image, dq=det.dq, saturation=det.meta.saturation)
            img = np.where(bad, 0.0, det.image.astype(np.float64) * gain).astype(np.float32)
            # A derived frame can say that it is too short to hold CRs of its own
            # (crscale.train.frames): then its real structure stays in the loss and the figures.
            if own_crs == "astroscrappy" and str(det.header.get("CRSOWNCR", "")).lower() != "none":
                own, img = _own_crs(img, bad, rn)
            else:
                own = np.zeros_like(bad)
            sky, noise = robust_sky_noise(img, bad=bad | own)
            pixel = pixel_noise(img, bad=bad | own) or noise
            if spike_nsigma is not None and str(det.header.get("CRSOWNCR", "")).lower() == "none":
                own = lone_spikes(img, bad, pixel, spike_nsigma)
            name = exp.exposure_id if len(exp.detectors) == 1 else f"{exp.exposure_id}/{det.name}"
            out.append(SourceImage(name, str(path), digest, img, bad, own, sky, noise, rn, gain, pixel))
    return out
