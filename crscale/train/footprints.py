"""Libraries of real cosmic-ray footprints to inject into real images.

Two sources of footprints with exact masks:

- the LSST ITL dark-frame CR table bundled with crscale (:func:`load_itl_footprints`), 1,764
  CRs harvested by imSim from 1,500 s of dark exposure on one 4k x 4k ITL CCD;
- a user's own dark frames (:func:`footprints_from_dark`, :func:`footprints_from_dark_file`),
  with the label-free recipe of the deepCR WFC3/UVIS and DECam attention-U-Net papers: pixels
  more than ``nsigma`` noise sigmas above the median are CR seeds, the seed mask is dilated
  with a 3 x 3 square, and each 8-connected component is one footprint.

All values are in electrons.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import numpy as np
from astropy.io import fits
from scipy import ndimage

from crscale.detection.stats import robust_sky_noise
from crscale.io.errors import InputError

#: Columns of the imSim CR footprint table.
ITL_COLUMNS = ("fp_id", "x0", "y0", "pixel_values")


@dataclass
class CRFootprint:
    """One cosmic ray as a tight stamp.

    Attributes
    ----------
    values : numpy.ndarray
        float32 (h, w) deposited charge in electrons; 0 outside the CR.
    mask : numpy.ndarray
        bool (h, w): the truth pixels of the CR. For dark-frame footprints it is the
        dilated mask, so it may hold pixels whose value is 0.
    source : str
        Where the footprint came from (``"itl_2017#fp17"``, ``"dark.fits[PRIMARY]#3"``).
    """

    values: np.ndarray
    mask: np.ndarray
    source: str

    @property
    def shape(self) -> tuple[int, int]:
        """Stamp shape (h, w)."""
        return self.values.shape

    @property
    def n_pixels(self) -> int:
        """Number of truth pixels."""
        return int(np.count_nonzero(self.mask))

    @property
    def charge(self) -> float:
        """Total charge in electrons."""
        return float(self.values.sum(dtype=np.float64))


@dataclass
class CRLibrary:
    """A list of CR footprints with the conditions they were recorded under.

    Attributes
    ----------
    footprints : list of CRFootprint
        The footprints.
    source : str
        Description of the origin (a file path or a data set name).
    noise_e : float or None
        Noise sigma, in electrons, of the frame the footprints were cut from; what
        :func:`crscale.train.inject.inject_crs` rescales by with ``rescale_noise=True``.
        None where unknown (the ITL table).
    exptime : float or None
        Exposure (dark) time in seconds that collected the footprints.
    area_pix : int or None
        Number of pixels searched.
    meta : dict
        Anything else worth keeping (thresholds, per-detector noise, ...).
    """

    footprints: list[CRFootprint]
    source: str
    noise_e: float | None = None
    exptime: float | None = None
    area_pix: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.footprints)

    @overload
    def __getitem__(self, i: int) -> CRFootprint: ...

    @overload
    def __getitem__(self, i: slice) -> list[CRFootprint]: ...

    def __getitem__(self, i: int | slice) -> CRFootprint | list[CRFootprint]:
        return self.footprints[i]

    def __iter__(self) -> Iterator[CRFootprint]:
        return iter(self.footprints)

    @property
    def rate(self) -> float | None:
        """CRs per pixel per second, where ``exptime`` and ``area_pix`` are known."""
        if not self.exptime or not self.area_pix:
            return None
        return len(self) / (self.exptime * self.area_pix)

    def sizes(self) -> np.ndarray:
        """Number of truth pixels of each footprint."""
        return np.array([fp.n_pixels for fp in self.footprints], dtype=np.int64)

    def charges(self) -> np.ndarray:
        """Total charge (e-) of each footprint."""
        return np.array([fp.charge for fp in self.footprints], dtype=np.float64)

    def sample(self, rng: np.random.Generator, n: int) -> list[CRFootprint]:
        """Draw ``n`` footprints uniformly, with replacement.

        Parameters
        ----------
        rng : numpy.random.Generator
            Source of randomness.
        n : int
            Number of footprints.

        Returns
        -------
        list of CRFootprint
        """
        if len(self) == 0:
            raise ValueError(f"CR library {self.source!r} is empty")
        return [self.footprints[i] for i in rng.integers(0, len(self), size=int(n))]


def itl_footprints_path() -> Path:
    """Path of the bundled LSST ITL CR footprint table."""
    from crscale import sample_data_dir

    return sample_data_dir() / "crs" / "cosmic_rays_itl_2017.fits.gz"


def load_itl_footprints(path: str | os.PathLike | None = None) -> CRLibrary:
    """Load the LSST ITL dark-frame CR footprints.

    The table (imSim's ``cosmic_rays_itl_2017.fits.gz``) has one row per horizontal run of
    pixels: ``fp_id`` names the CR, ``(x0, y0)`` is the run's first pixel and
    ``pixel_values`` its charges in electrons. Runs are grouped by ``fp_id`` and painted
    into a stamp just large enough for the CR.

    Parameters
    ----------
    path : str or Path, optional
        The table; default the copy bundled in ``crscale/data/sample/crs``.

    Returns
    -------
    CRLibrary
        One footprint per ``fp_id`` in increasing order, with ``exptime`` and ``area_pix``
        from the header (``EXPTIME``, ``NUM_PIX``) and ``noise_e`` None.

    Raises
    ------
    InputError
        The file is missing, not FITS, or holds no table with the four columns.
    """
    path = Path(path) if path is not None else itl_footprints_path()
    if not path.is_file():
        raise InputError(path, "CR footprint table does not exist", kind="missing")
    try:
        with fits.open(path) as hdul:
            table = next(
                (
                    h for h in hdul
                    if isinstance(h, fits.BinTableHDU) and all(c in h.columns.names for c in ITL_COLUMNS)
                ),
                None,
            )
            if table is None:
                raise InputError(
                    path, f"no binary table with columns {', '.join(ITL_COLUMNS)}", kind="no-table"
                )
            header = table.header
            data = table.data
            fp_id = np.asarray(data["fp_id"], dtype=np.int64)
            x0 = np.asarray(data["x0"], dtype=np.int64)
            y0 = np.asarray(data["y0"], dtype=np.int64)
            runs = list(data["pixel_values"])
    except InputError:
        raise
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise InputError(path, f"cannot read the CR footprint table: {exc}", kind="corrupt") from exc

    lengths = np.array([len(r) for r in runs], dtype=np.int64)
    values = np.concatenate(runs).astype(np.float64) if lengths.sum() else np.zeros(0)
    # One entry per pixel: its CR, row and column.
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    pix_fp = np.repeat(fp_id, lengths)
    pix_y = np.repeat(y0, lengths)
    pix_x = np.repeat(x0, lengths) + (np.arange(lengths.sum()) - starts)

    order = np.argsort(pix_fp, kind="stable")
    pix_fp, pix_y, pix_x, values = pix_fp[order], pix_y[order], pix_x[order], values[order]
    ids, first = np.unique(pix_fp, return_index=True)
    ymin = np.minimum.reduceat(pix_y, first) if ids.size else ids
    ymax = np.maximum.reduceat(pix_y, first) if ids.size else ids
    xmin = np.minimum.reduceat(pix_x, first) if ids.size else ids
    xmax = np.maximum.reduceat(pix_x, first) if ids.size else ids
    bounds = np.append(first, pix_fp.size)

    name = "itl_2017"
    footprints = []
    for i, fid in enumerate(ids):
        sl = slice(bounds[i], bounds[i + 1])
        shape = (int(ymax[i] - ymin[i] + 1), int(xmax[i] - xmin[i] + 1))
        yy, xx = pix_y[sl] - ymin[i], pix_x[sl] - xmin[i]
        stamp = np.zeros(shape, np.float64)
        # add.at: a pixel listed twice keeps all its charge.
        np.add.at(stamp, (yy, xx), values[sl])
        mask = np.zeros(shape, bool)
        mask[yy, xx] = True
        footprints.append(CRFootprint(stamp.astype(np.float32), mask, f"{name}#fp{int(fid)}"))

    exptime = header.get("EXPTIME")
    num_pix = header.get("NUM_PIX")
    return CRLibrary(
        footprints,
        source=str(path),
        noise_e=None,
        exptime=float(exptime) if exptime else None,
        area_pix=int(num_pix) if num_pix else None,
        meta={"table_rows": int(lengths.size), "pixel_values_sum": float(values.sum())},
    )


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
       (:func:`crscale.detection.stats.robust_sky_noise`: 5-sigma clipped MAD).
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
        :class:`~crscale.io.errors.InputError` naming it (ValueError without it).
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

    median, sigma = robust_sky_noise(dark_e, ~good)
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
