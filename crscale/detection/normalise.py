"""Input normalisation: per-image statistics computed once, applied identically to every tile."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from crscale.detection.sky_noise import pixel_noise, robust_sky_noise
from crscale.models.card import INPUT_NOISES

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
    pixel_noise : float or None
        The pixel-to-pixel noise in image units (:func:`crscale.detection.sky_noise.pixel_noise`),
        for models whose card normalises by it (``normalisation["noise"] == "pixel"``); None
        when not measured.
    """

    sky: float
    noise: float
    gain: float = 1.0
    mean: float = 0.0
    std: float = 1.0
    pixel_noise: float | None = None

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
        pixel_e = None if self.pixel_noise is None else self.pixel_noise * self.gain
        return {**asdict(self), "sky_e": self.sky_e, "noise_e": self.noise_e, "pixel_noise_e": pixel_e}


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
    pixel: bool = False,
) -> ImageStats:
    """Robust statistics of a whole detector image, for :func:`normalise`.

    Sky = median and noise = 1.4826 × MAD of the finite pixels not in ``bad``, with iterated
    5σ clipping (:func:`crscale.detection.sky_noise.robust_sky_noise`), on a regular sub-grid of
    at most ``max_pixels`` pixels (stride :func:`stats_step`). With ``pixel``, also the
    pixel-to-pixel noise (:func:`crscale.detection.sky_noise.pixel_noise`), which models whose
    card says ``normalisation["noise"] == "pixel"`` are fed with (:func:`needs_pixel_noise`).

    Raises
    ------
    ValueError
        When no pixel is finite and unflagged.
    """
    sub = _subsample(np.asarray(image), max_pixels)
    sub_bad = None if bad is None else _subsample(np.asarray(bad, bool), max_pixels)
    stats = stats_from_sample(sub, bad=sub_bad, gain=gain)
    if pixel:
        stats = with_pixel_noise(stats, pixel_noise(np.asarray(image), bad=bad))
    return stats


def stats_from_sample(
    sample: np.ndarray, *, bad: np.ndarray | None = None, gain: float | None = None
) -> ImageStats:
    """:class:`ImageStats` from an already sub-sampled image (``image[::step, ::step]``).

    The engine reads only the sub-grid of a detector from the archive and calls this, so that
    its statistics equal :func:`compute_stats` on the whole image without loading it (and
    :func:`with_pixel_noise` with the pixels of
    :func:`crscale.detection.sky_noise.pixel_noise_boxes`, when the model needs them).
    """
    sky, noise = robust_sky_noise(sample, bad=bad)
    finite = sample[np.isfinite(sample)].astype(np.float64)
    return ImageStats(
        sky=float(sky), noise=float(noise), gain=float(gain or 1.0),
        mean=float(finite.mean()), std=float(finite.std()) or 1.0,
    )


def with_pixel_noise(stats: ImageStats, value: float | None) -> ImageStats:
    """``stats`` with its pixel-to-pixel noise; the robust noise where it could not be measured."""
    return replace(stats, pixel_noise=float(value) if value else stats.noise)


def needs_pixel_noise(normalisation: dict) -> bool:
    """Whether a model card's normalisation scales the input by the pixel-to-pixel noise.

    Raises
    ------
    ValueError
        The card names a noise crscale does not know (found when the model is loaded for a
        run, not in every block).
    """
    noise = normalisation.get("noise", "global")
    if noise not in INPUT_NOISES:
        raise ValueError(
            f"unknown input noise {noise!r} in the model card's normalisation ({', '.join(INPUT_NOISES)})"
        )
    return noise in ("pixel", "poisson")


def input_noise(stats: ImageStats, normalisation: dict) -> float:
    """The noise the input is scaled by: the robust noise, or the pixel-to-pixel noise.

    Raises
    ------
    ValueError
        The card asks for the pixel-to-pixel noise and ``stats`` has none (statistics made by
        hand, or by ``compute_stats`` without ``pixel=True``).
    """
    if not needs_pixel_noise(normalisation):
        return stats.noise
    if stats.pixel_noise is None:
        raise ValueError(
            "this model normalises its input by the pixel-to-pixel noise, and the statistics "
            "given have none: compute them with compute_stats(..., pixel=True)"
        )
    return stats.pixel_noise


def with_noise_floor(stats: ImageStats, readnoise: float | None, gain: float | None) -> ImageStats:
    """Raise the noise to at least half the read noise (image units), when both are known.

    Guards against an implausibly low measured noise (a mostly flat or quantised image).
    """
    if readnoise and gain:
        floor = 0.5 * readnoise / gain
        pixel = None if stats.pixel_noise is None else max(stats.pixel_noise, floor)
        return replace(stats, noise=max(stats.noise, floor), pixel_noise=pixel)
    return stats


def poisson_constants(stats: ImageStats) -> tuple[float, float]:
    """``(gain, s_e)`` of :func:`poisson_sigmas`: electrons per image unit and the sky noise in electrons."""
    gain = float(stats.gain or 1.0)
    return gain, input_noise(stats, {"noise": "poisson"}) * gain


def poisson_sigmas(x: np.ndarray, stats: ImageStats) -> np.ndarray:
    """Each pixel's departure from the sky in units of its own noise (the ``poisson`` input noise).

    ``d = (x - sky) × gain`` electrons; below the sky ``d / s`` (``s`` the pixel-to-pixel noise
    at the sky, in electrons), above it ``2 d / (sqrt(d + s²) + s)`` = ``2 (sqrt(d + s²) - s)``,
    the Anscombe transform of light whose variance is ``s² + d``: the shot noise of an arc line,
    a star or a flat's illumination stops its photon noise from looking like CR charge, while a
    CR on the sky keeps the scale of the ``pixel`` input noise. Pixel-wise with per-image
    constants, so it commutes with tiling. In ADU with an unknown gain (1 assumed) the shot
    noise of gains above 1 is overestimated: CRs on bright light look fainter, never brighter.
    """
    gain, s_e = poisson_constants(stats)
    d = (np.asarray(x, np.float32) - np.float32(stats.sky)) * np.float32(gain)
    s = np.float32(s_e)
    v = np.float32(2.0) * d / (np.sqrt(np.maximum(d, np.float32(0.0)) + s * s) + s)
    return v.astype(np.float32, copy=False)


def normalise(image: np.ndarray, stats: ImageStats, normalisation: dict) -> np.ndarray:
    """Network input (float32) from image pixels, following a model card's ``normalisation``.

    Methods: ``"robust-asinh"``: ``asinh((x - sky) / (asinh_scale * noise))``: linear within a
    few σ of the sky, logarithmic above (``noise``: the robust noise, or the pixel-to-pixel
    noise where the card's ``normalisation["noise"]`` is ``"pixel"``, :func:`input_noise`),
    so that stars and CRs thousands of σ bright keep their
    shape without dominating the activations; ``"scale"``: ``x * gain / scale`` (deepCR: images
    in electrons); ``"meanstd"``: ``(x - mean) / std`` (deepCR's WFC3/UVIS model).
    Pixel-wise with fixed per-image constants, so it commutes with tiling.
    """
    x = np.asarray(image, dtype=np.float32)
    method = normalisation.get("method", "robust-asinh")
    if method == "robust-asinh":
        asinh_scale = float(normalisation.get("asinh_scale", 3.0))
        if normalisation.get("noise") == "poisson":
            v = poisson_sigmas(x, stats) / np.float32(asinh_scale)
            return np.arcsinh(v).astype(np.float32, copy=False)
        scale = asinh_scale * input_noise(stats, normalisation)
        return np.arcsinh((x - np.float32(stats.sky)) / np.float32(scale)).astype(np.float32, copy=False)
    if method == "scale":
        return x * np.float32(stats.gain / float(normalisation.get("scale", 1.0)))
    if method == "meanstd":
        return (x - np.float32(stats.mean)) / np.float32(stats.std)
    raise ValueError(f"unknown input normalisation method {method!r} in the model card")
