"""``crscale.detect``: find, mask and inpaint the CRs of one image."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from crscale import _validate
from crscale.detection.badpix import bad_pixel_mask, fill_bad
from crscale.detection.normalise import (
    ImageStats,
    compute_stats,
    input_noise,
    needs_pixel_noise,
    normalise,
    with_noise_floor,
)
from crscale.detection.predictor import Predictor, predictor_from
from crscale.detection.tiling import alignment, predict_tiled, required_halo, tile_layout
from crscale.detection.torch_block import use_torch_path


@dataclass
class DetectResult:
    """What :func:`detect` returns.

    Attributes
    ----------
    prob : numpy.ndarray
        float32 CR probability per pixel (0 at bad pixels).
    mask : numpy.ndarray
        bool CR mask: ``prob >= threshold``.
    clean : numpy.ndarray or astropy.nddata.CCDData or None
        The image with CR pixels inpainted (float32), or None when ``inpaint=False``. For a
        ``CCDData`` input, a ``CCDData`` like ccdproc's ``cosmicray_lacosmic`` returns: cleaned
        data, ``mask`` = input mask OR CR mask, the input's uncertainty and unit, and a
        HISTORY card in its meta.
    bad : numpy.ndarray
        bool: pixels excluded from detection (NaN/inf, saturated, DQ-flagged).
    threshold : float
        The threshold applied.
    stats : ImageStats
        The per-image normalisation statistics used.
    model : str
        The model's name.
    """

    prob: np.ndarray
    mask: np.ndarray
    clean: Any
    bad: np.ndarray
    threshold: float
    stats: ImageStats
    model: str
    info: dict = field(default_factory=dict)

    @property
    def n_cr_pixels(self) -> int:
        """Number of pixels in the CR mask."""
        return int(self.mask.sum())


def _unpack_ccd(image: Any, gain: float | None, readnoise: float | None, saturation: float | None):
    """Array, DQ and calibration numbers from a CCDData (mask, unit and header conventions)."""
    import astropy.units as u

    data = np.asarray(image.data)
    dq = None if image.mask is None else np.asarray(image.mask, bool)
    meta = image.meta or {}
    unit = image.unit
    if gain is None:
        if unit is not None and unit.is_equivalent(u.electron):
            gain = float((1 * unit).to(u.electron).value)
        elif "GAIN" in meta:
            gain = float(meta["GAIN"])
    if readnoise is None:
        for key in ("RDNOISE", "READNOIS", "RON"):
            if key in meta:
                readnoise = float(meta[key])
                break
    if saturation is None:
        for key in ("SATURATE", "SATURATION"):
            if key in meta:
                saturation = float(meta[key])
                break
    return data, dq, gain, readnoise, saturation


def detect(
    image: Any,
    *,
    model: str | Predictor = "default",
    threshold: float | None = None,
    gain: float | None = None,
    readnoise: float | None = None,
    dq: np.ndarray | None = None,
    saturation: float | None = None,
    inpaint: bool = True,
    inpaint_method: str | None = None,
    inpaint_dilate: int = 1,
    device: str = "auto",
    precision: str = "auto",
    compile: bool = False,
    tile: int | None = None,
    batch_size: int | None = None,
    stats: ImageStats | None = None,
    origin: tuple[int, int] = (0, 0),
    progress: bool = False,
    backend: str = "auto",
) -> DetectResult:
    """Detect cosmic rays in one image with a U-Net, and inpaint them.

    Parameters
    ----------
    image : numpy.ndarray or astropy.nddata.CCDData
        2-D image, any size. A CCDData's ``mask`` is used as DQ, its unit gives the gain when it
        is electrons, and ``GAIN``/``RDNOISE``/``SATURATE`` in its meta fill what is not given.
    model : str or Predictor
        ``"default"`` (the shipped model), a shipped model's name, ``"deepcr:<name>"`` for an
        installed pip deepCR model, a ``.safetensors`` path, or a ready :class:`Predictor`.
    threshold : float, optional
        Probability threshold of the mask; default: the model card's recommended threshold.
    gain : float, optional
        Electrons per image unit (default 1: the image is taken to be in electrons).
    readnoise : float, optional
        Read noise in electrons: a floor for the noise estimate (half the read noise), which
        matters only for images whose measured noise is implausibly low.
    dq : numpy.ndarray, optional
        Data-quality array; non-zero pixels are bad.
    saturation : float, optional
        Pixels at or above this value (image units) are bad.
    inpaint : bool
        Compute ``clean``.
    inpaint_method : str, optional
        One of :data:`crscale.detection.inpaint.INPAINT_METHODS` (default
        :data:`~crscale.detection.inpaint.DEFAULT_INPAINT`).
    inpaint_dilate : int
        Inpaint the CR mask grown by this many pixels (``mask`` itself is not changed): a CR's
        faint wings just below the threshold would otherwise leak into the fill, biasing it by
        ~0.8 σ (``benchmarks/inpaint_error.py``).
    device : str
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
    precision : {"auto", "float32", "bfloat16", "float16"}
        ``"auto"`` is bfloat16 where the hardware computes it natively, else float32.
    compile : bool
        ``torch.compile`` the network (~20 s of compilation, a few % faster here; for long
        runs). See :class:`Predictor`.
    tile : int, optional
        Largest core tile size in pixels; default 448 on CPU, 1024 on GPU (each axis is cut
        into the fewest such cores, as even as the grid allows). Any value gives the same
        result (to float rounding): tiles carry a halo ≥ the receptive radius.
    batch_size : int, optional
        Tiles per network call.
    stats : ImageStats, optional
        Normalisation statistics computed on the whole detector (the engine passes them to
        every block); computed from ``image`` when not given.
    origin : tuple of int
        Position of ``image[0, 0]`` in its detector when ``image`` is a block of it, so tiles
        sit on the detector's grid.
    progress : bool
        Show a progress bar over tiles (numpy path only).
    backend : {"auto", "numpy", "torch"}
        ``"torch"``: every per-pixel step on the predictor's device
        (:mod:`crscale.detection.torch_block`); ``"numpy"``: the numpy/scipy reference around
        the network; ``"auto"``: torch on CUDA devices, numpy on CPUs (where it is faster).

    Returns
    -------
    DetectResult

    Notes
    -----
    Bad pixels (NaN/inf, ``>= saturation``, ``dq != 0``) are never called CRs: their
    probability is set to 0. They never spoil their neighbours either: they are left out of the
    normalisation statistics, and before inference each is replaced by the mean of its good
    3×3 neighbours, growing inwards from the rim of a bad region for up to
    :data:`~crscale.detection.badpix.FILL_RADIUS` pixels (the sky beyond that), so the network
    sees a smooth continuation of the surroundings rather than a hole, a spike or a NaN.
    The input normalisation (the model card says which) uses statistics of the whole image,
    never of a tile, so the result does not depend on the tiling.
    """
    ccd = None
    if hasattr(image, "data") and hasattr(image, "unit") and not isinstance(image, np.ndarray):
        ccd = image
        data, ccd_dq, gain, readnoise, saturation = _unpack_ccd(image, gain, readnoise, saturation)
        if ccd_dq is not None:
            dq = ccd_dq if dq is None else (np.asarray(dq) != 0) | ccd_dq
    else:
        data = np.asarray(image)
    if data.ndim != 2:
        raise ValueError(f"detect() needs a 2-D image, got shape {data.shape}")
    if not (np.issubdtype(data.dtype, np.floating) or np.issubdtype(data.dtype, np.integer)):
        raise TypeError(f"detect() needs a numeric image, got dtype {data.dtype}")
    if data.size == 0:
        raise ValueError("detect() got an empty image")

    if threshold is not None:
        _validate.threshold(threshold)
    if gain is not None and not (np.isfinite(gain) and gain > 0):
        raise ValueError(f"gain must be a positive number of electrons per unit, not {gain}")

    pred = predictor_from(model, device, precision, compile=compile)
    card = pred.card
    torch_path = use_torch_path(backend, pred.device) and not progress
    bad = None if (torch_path and stats is not None) else bad_pixel_mask(data, dq=dq, saturation=saturation)
    if stats is None:
        assert bad is not None  # computed whenever stats are not given
        if bad.all():
            raise ValueError("the image has no finite, unflagged pixel")
        pixel = needs_pixel_noise(card.normalisation)
        stats = with_noise_floor(compute_stats(data, bad=bad, gain=gain, pixel=pixel), readnoise, gain)
    input_noise(stats, card.normalisation)  # statistics given by hand must suit the model
    if torch_path:
        return _detect_on_device(data, dq, saturation, pred, stats, threshold, inpaint, inpaint_method,
                                 inpaint_dilate, tile, batch_size, origin, ccd)
    assert bad is not None  # the numpy path always computes it
    x = fill_bad(normalise(np.where(bad, 0, data) if bad.any() else data, stats, card.normalisation), bad)

    halo = required_halo(pred.config)
    tile = tile or pred.default_tile()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        layout = tile_layout(data.shape[0], data.shape[1], tile, alignment(pred.config), origin=origin)
        n_tiles = len(layout[2])
        bar = tqdm(total=n_tiles, unit="tile", desc="detect")
    try:
        prob = predict_tiled(
            x, pred, tile=tile, halo=halo, align=alignment(pred.config), origin=origin,
            batch_size=batch_size or pred.default_batch(), progress=bar.update if bar else None,
        )
    finally:
        if bar is not None:
            bar.close()
    prob[bad] = 0.0
    thr = float(card.recommended_threshold if threshold is None else threshold)
    mask = prob >= thr
    if thr == 0.0:
        mask &= ~bad

    clean = None
    if inpaint:
        from crscale.detection.inpaint import DEFAULT_INPAINT
        from crscale.detection.inpaint import inpaint as _inpaint

        fill = mask
        if inpaint_dilate > 0 and mask.any():
            from scipy import ndimage

            fill = ndimage.binary_dilation(mask, np.ones((3, 3), bool), iterations=inpaint_dilate) & ~bad
        clean = _inpaint(data, fill, method=inpaint_method or DEFAULT_INPAINT, bad=bad, fallback=stats.sky)
        if ccd is not None:
            clean = _clean_ccd(ccd, clean, mask, pred.name, thr)
    return DetectResult(
        prob=prob, mask=mask, clean=clean, bad=bad, threshold=thr, stats=stats, model=pred.name,
        info={"tile": tile, "halo": halo, "device": str(pred.device), "precision": str(pred.dtype),
              "backend": "numpy"},
    )


def _detect_on_device(data, dq, saturation, pred, stats, threshold, inpaint, inpaint_method, inpaint_dilate,
                      tile, batch_size, origin, ccd) -> DetectResult:
    """The torch path of :func:`detect`: every per-pixel step on the predictor's device."""
    from crscale.detection.inpaint import DEFAULT_INPAINT
    from crscale.detection.torch_block import detect_torch

    thr = float(pred.card.recommended_threshold if threshold is None else threshold)
    tile = tile or pred.default_tile()
    out = detect_torch(
        data, pred=pred, stats=stats, threshold=thr, dq=dq, saturation=saturation, tile=tile,
        batch_size=batch_size, origin=origin, inpaint=inpaint,
        inpaint_method=inpaint_method or DEFAULT_INPAINT, inpaint_dilate=inpaint_dilate,
    )
    assert out.prob is not None and out.mask is not None and out.bad is not None  # the default layout's
    clean = out.clean
    if clean is not None and ccd is not None:
        clean = _clean_ccd(ccd, np.ascontiguousarray(clean), out.mask, pred.name, thr)
    return DetectResult(
        prob=out.prob, mask=out.mask, clean=clean, bad=out.bad, threshold=thr, stats=stats, model=pred.name,
        info={"tile": tile, "halo": required_halo(pred.config), "device": str(pred.device),
              "precision": str(pred.dtype), "backend": "torch"},
    )


def _clean_ccd(ccd: Any, clean: np.ndarray, mask: np.ndarray, model: str, threshold: float) -> Any:
    """A CCDData like ccdproc's cosmicray_lacosmic returns: cleaned data, mask OR CR mask."""
    from astropy.nddata import CCDData

    old = None if ccd.mask is None else np.asarray(ccd.mask, bool)
    meta = ccd.meta.copy() if ccd.meta is not None else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = CCDData(
            clean, unit=ccd.unit, mask=mask if old is None else (old | mask),
            uncertainty=ccd.uncertainty, meta=meta, wcs=getattr(ccd, "wcs", None),
        )
    history = f"crscale.detect: model {model}, threshold {threshold:g}, {int(mask.sum())} CR pixels inpainted"
    try:
        out.meta["HISTORY"] = history
    except Exception:  # a plain dict meta
        out.meta.setdefault("history", []).append(history)
    return out
