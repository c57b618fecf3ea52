"""Input normalisation: per-image statistics computed once, applied identically to every tile."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from crscale.detection.sky_noise import robust_sky_noise

#: Statistics are estimated on a regular sub-grid of at most this many pixels: the median of
#: 2 Mpix is as good a sky estimate as that of 16 Mpix and costs an eighth of the time.
MAX_STATS_PIXELS = 2_000_000


@dataclass(frozen=True)
class ImageStats:
    """Per-detector statistics that fix the network input of every tile.

    Attributes
    ----------
    sky, noise : float
        Robust sky level and noise in the image's own units (see :func:`compute_stats`).
    gain : float
        Electrons per image unit used (1.0 when the image is already in electrons).
    mean, std : float
        Plain mean and standard deviation of the finite pixels (deepCR's WFC3/UVIS model).
    """

    sky: float
    noise: float
    gain: float = 1.0
    mean: float = 0.0
    std: float = 1.0

    @property
    def sky_e(self) -> float:
        """Sky level in electrons."""
        return self.sky * self.gain

    @property
    def noise_e(self) -> float:
        """Noise in electrons."""
        return self.noise * self.gain

    def to_dict(self) -> dict:
        """Plain dict (for archive attrs and reports), electrons included."""
        return {**asdict(self), "sky_e": self.sky_e, "noise_e": self.noise_e}


def stats_step(shape: tuple[int, ...], *, max_pixels: int = MAX_STATS_PIXELS) -> int:
    """Stride of the regular sub-grid on which :func:`compute_stats` estimates the statistics."""
    size = int(np.prod(shape))
    return max(1, int(np.ceil(np.sqrt(size / max_pixels))))


def _subsample(a: np.ndarray, max_pixels: int) -> np.ndarray:
    step = stats_step(a.shape, max_pixels=max_pixels)
    return a[::step, ::step]


def compute_stats(
    image: np.ndarray,
    *,
    bad: np.ndarray | None = None,
    gain: float | None = None,
    max_pixels: int = MAX_STATS_PIXELS,
) -> ImageStats:
    """Robust statistics of a whole detector image, for :func:`normalise`.

    Sky = median and noise = 1.4826 × MAD of the finite pixels not in ``bad``, with iterated
    5σ clipping (:func:`crscale.detection.sky_noise.robust_sky_noise`), on a regular sub-grid of
    at most ``max_pixels`` pixels (stride :func:`stats_step`).

    Raises
    ------
    ValueError
        When no pixel is finite and unflagged.
    """
    sub = _subsample(np.asarray(image), max_pixels)
    sub_bad = None if bad is None else _subsample(np.asarray(bad, bool), max_pixels)
    return stats_from_sample(sub, bad=sub_bad, gain=gain)


def stats_from_sample(
    sample: np.ndarray, *, bad: np.ndarray | None = None, gain: float | None = None
) -> ImageStats:
    """:class:`ImageStats` from an already sub-sampled image (``image[::step, ::step]``).

    The engine reads only the sub-grid of a detector from the archive and calls this, so that
    its statistics equal :func:`compute_stats` on the whole image without loading it.
    """
    sky, noise = robust_sky_noise(sample, bad=bad)
    finite = sample[np.isfinite(sample)].astype(np.float64)
    return ImageStats(
        sky=float(sky), noise=float(noise), gain=float(gain or 1.0),
        mean=float(finite.mean()), std=float(finite.std()) or 1.0,
    )


def with_noise_floor(stats: ImageStats, readnoise: float | None, gain: float | None) -> ImageStats:
    """Raise the noise to at least half the read noise (image units), when both are known.

    Guards against an implausibly low measured noise (a mostly flat or quantised image).
    """
    if readnoise and gain:
        return replace(stats, noise=max(stats.noise, 0.5 * readnoise / gain))
    return stats


def normalise(image: np.ndarray, stats: ImageStats, normalisation: dict) -> np.ndarray:
    """Network input (float32) from image pixels, following a model card's ``normalisation``.

    Methods: ``"robust-asinh"``: ``asinh((x - sky) / (asinh_scale * noise))``: linear within a
    few σ of the sky, logarithmic above, so that stars and CRs thousands of σ bright keep their
    shape without dominating the activations; ``"scale"``: ``x * gain / scale`` (deepCR: images
    in electrons); ``"meanstd"``: ``(x - mean) / std`` (deepCR's WFC3/UVIS model).
    Pixel-wise with fixed per-image constants, so it commutes with tiling.
    """
    x = np.asarray(image, dtype=np.float32)
    method = normalisation.get("method", "robust-asinh")
    if method == "robust-asinh":
        scale = float(normalisation.get("asinh_scale", 3.0)) * stats.noise
        return np.arcsinh((x - np.float32(stats.sky)) / np.float32(scale)).astype(np.float32, copy=False)
    if method == "scale":
        return x * np.float32(stats.gain / float(normalisation.get("scale", 1.0)))
    if method == "meanstd":
        return (x - np.float32(stats.mean)) / np.float32(stats.std)
    raise ValueError(f"unknown input normalisation method {method!r} in the model card")
