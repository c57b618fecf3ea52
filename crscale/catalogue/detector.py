"""The catalogue of one detector: labelling, features and pixel counts, band by band.

:func:`catalogue_detector` takes array-likes that slice like numpy (numpy arrays or the
archive's Zarr arrays), so the engine runs it on a worker straight from the archive and a
user runs it on arrays in memory. Memory is bounded by one band of rows (whole chunk rows
of a Zarr array) plus the pixels of the CRs still open at the band's edge.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from crscale.catalogue.defects import DefectSettings, region_kinds
from crscale.catalogue.features import cr_features
from crscale.catalogue.labels import Band, label_bands
from crscale.catalogue.morphology import MorphologyRules
from crscale.detection.badpix import bad_pixel_mask
from crscale.detection.inpaint import DEFAULT_INPAINT, INPAINT_RADIUS, inpaint

#: Rows per band when the arrays are not chunked (numpy).
DEFAULT_BAND_ROWS = 1024
#: Bands span whole chunk rows and at least this many rows.
MIN_BAND_ROWS = 512


@dataclass
class DetectorCatalogue:
    """The CRs of one detector and the counts the rate needs.

    Attributes
    ----------
    columns : dict of numpy.ndarray
        One entry per CR column (without ``exposure`` and ``detector``), rows ordered by ``id``.
    shape : tuple of int
        Detector shape.
    n_cr_pixels : int
        Pixels in CRs.
    n_pixels_usable : int
        Finite pixels not flagged bad (DQ, saturated) nor on a persistent defect: those that
        can record a CR.
    background : str
        How the local background was had: ``"clean"`` (given, e.g. the archive's inpainted
        image) or ``"inpaint"`` (inpainted here from the image and mask).
    """

    columns: dict[str, np.ndarray]
    shape: tuple[int, int]
    n_cr_pixels: int
    n_pixels_usable: int
    background: str
    n_defect_pixels: int = 0
    defect_map: str | None = None

    @property
    def n_regions(self) -> int:
        """Number of catalogued regions, of every kind."""
        return int(self.columns["id"].size)

    @property
    def is_cr(self) -> np.ndarray:
        """Rows of kind ``cr``."""
        return np.asarray(self.columns["kind"] == "cr", dtype=bool)

    @property
    def n_cr(self) -> int:
        """Number of CRs (rows of kind ``cr``)."""
        return int(np.count_nonzero(self.is_cr))


def band_rows_for(array: Any, *, minimum: int = MIN_BAND_ROWS) -> int:
    """Rows per band: whole chunk (or shard) rows of a Zarr array, at least ``minimum``."""
    step = None
    for attr in ("shards", "chunks"):
        value = getattr(array, attr, None)
        if value:
            step = int(value[0])
            break
    if not step:
        return DEFAULT_BAND_ROWS
    return step * max(1, math.ceil(minimum / step))


def _read(array: Any, y0: int, y1: int) -> np.ndarray:
    return np.asarray(array[y0:y1])


def catalogue_detector(
    image: Any,
    mask: Any,
    *,
    background: Any = None,
    dq: Any = None,
    gain: float = 1.0,
    saturation: float | None = None,
    band_rows: int | None = None,
    rules: MorphologyRules | None = None,
    inpaint_method: str = DEFAULT_INPAINT,
    inpaint_dilate: int = 1,
    fallback: float | None = None,
    defects: Any = None,
    defect_map: str | None = None,
    defect_settings: DefectSettings | None = None,
) -> DetectorCatalogue:
    """Label the CRs of one detector and measure each one.

    Parameters
    ----------
    image : array-like
        2-D image (ADU, or whatever ``gain`` converts to electrons).
    mask : array-like
        2-D CR mask (non-zero: CR).
    background : array-like, optional
        Local background at every pixel, e.g. the inpainted ``clean`` image. Default: inpaint
        the (dilated) mask here, as the detect stage does, band by band with a halo.
    dq : array-like, optional
        Data-quality plane; non-zero pixels are not usable.
    gain : float
        e-/ADU.
    saturation : float, optional
        Saturation level in image units (such pixels are not usable; CRs reaching it are
        flagged).
    band_rows : int, optional
        Rows per band (default: whole chunk rows of ``image``, at least 512).
    rules : MorphologyRules, optional
        Morphology thresholds (default from the config).
    inpaint_method, inpaint_dilate
        Inpainting used when ``background`` is None.
    fallback : float, optional
        Inpainting value for pixels with no good neighbour (default: the median of the usable
        pixels of the first band).
    defects : array-like, optional
        The detector's defect codes (:data:`crscale.catalogue.defects.DEFECT_CODES`, 0: none):
        regions mostly on defects get the defect's kind, defect pixels leave the usable area.
    defect_map : str, optional
        State of that map, ``"verified"`` or ``"unverified"`` (see
        :func:`crscale.catalogue.defects.region_kinds`). None (no defect information, e.g.
        one image in memory): no region is marked ``unverified``.
    defect_settings : DefectSettings, optional
        Default from the config.

    Returns
    -------
    DetectorCatalogue
    """
    shape = tuple(int(s) for s in image.shape)
    if len(shape) != 2:
        raise ValueError(f"catalogue_detector needs 2-D arrays, got shape {shape}")
    for name, arr in (("mask", mask), ("background", background), ("dq", dq), ("defects", defects)):
        if arr is not None and tuple(arr.shape) != shape:
            raise ValueError(f"{name} shape {tuple(arr.shape)} does not match image shape {shape}")
    if not gain or not np.isfinite(gain) or gain <= 0:
        raise ValueError(f"gain must be a positive number, not {gain!r}")
    h, w = shape
    rows = int(band_rows or band_rows_for(image))
    rules = rules or MorphologyRules.from_config()
    defect_settings = defect_settings or DefectSettings.from_config()
    counts = {"usable": 0, "defect": 0}
    halo = INPAINT_RADIUS[inpaint_method] + int(inpaint_dilate) if background is None else 0
    fill: list[float] = [] if fallback is None else [float(fallback)]

    def bands() -> Iterator[Band]:
        for y0 in range(0, h, rows):
            y1 = min(h, y0 + rows)
            lo, hi = max(0, y0 - halo), min(h, y1 + halo)
            img = _read(image, lo, hi)
            msk = _read(mask, lo, hi) != 0
            bad = bad_pixel_mask(img, dq=_read(dq, lo, hi) if dq is not None else None, saturation=saturation)
            inner = slice(y0 - lo, y0 - lo + (y1 - y0))
            codes = _read(defects, y0, y1) if defects is not None else np.zeros((y1 - y0, w), np.uint8)
            on_defect = codes != 0
            counts["defect"] += int(np.count_nonzero(on_defect))
            counts["usable"] += int(np.count_nonzero(~bad[inner] & ~on_defect))
            if background is not None:
                bkg = _read(background, y0, y1)
            elif msk[inner].any():
                if not fill:
                    good = img[~bad & ~msk]
                    fill.append(float(np.median(good)) if good.size else 0.0)
                grown = ndimage.binary_dilation(msk, np.ones((3, 3), bool), iterations=int(inpaint_dilate))
                bkg = inpaint(img, grown, method=inpaint_method, bad=bad, fallback=fill[0])[inner]
            else:
                bkg = np.zeros((y1 - y0, w), np.float32)
            yield Band(y0, msk[inner], {"image": img[inner], "background": bkg, "defect": codes})

    parts = []
    for c in label_bands(bands(), w):
        cols = cr_features(c, (h, w), gain=float(gain), saturation=saturation, rules=rules)
        cols["kind"] = region_kinds(
            np.asarray(c.values["defect"]),
            c.offsets,
            cols["n_pixels"],
            cols["morphology"],
            cols["y_max"] - cols["y_min"] + 1,
            cols["x_max"] - cols["x_min"] + 1,
            status=defect_map,
            settings=defect_settings,
        )
        parts.append(cols)
    if parts:
        columns = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    else:
        columns = cr_features_empty()
    order = np.argsort(columns.pop("first"), kind="stable")
    columns = {k: v[order] for k, v in columns.items()}
    columns["id"] = np.arange(1, order.size + 1, dtype=np.int32)
    cr = columns["kind"] == "cr"
    return DetectorCatalogue(
        columns=columns,
        shape=(h, w),
        n_cr_pixels=int(np.sum(columns["n_pixels"][cr.astype(bool)], dtype=np.int64)),
        n_pixels_usable=counts["usable"],
        background="clean" if background is not None else "inpaint",
        n_defect_pixels=counts["defect"],
        defect_map=defect_map,
    )


def cr_features_empty() -> dict[str, np.ndarray]:
    """Feature columns of a detector without CRs (right dtypes, no rows)."""
    from crscale.io.catalogue_schema import CR_SCHEMA

    out: dict[str, np.ndarray] = {"first": np.zeros(0, np.int64)}
    for f in CR_SCHEMA:
        if f.name in ("exposure", "detector", "id"):
            continue
        out[f.name] = np.zeros(0, dtype=object if f.type == "string" else f.type.to_pandas_dtype())
    return out
