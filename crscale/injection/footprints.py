"""Libraries of real cosmic-ray footprints to inject into real images.

Two sources of footprints with exact masks:

- the LSST ITL dark-frame CR table bundled with crscale (:func:`load_itl_footprints`), 1,764
  CRs harvested by imSim from 1,500 s of dark exposure on one 4k x 4k ITL CCD;
- a user's own dark frames (:mod:`crscale.injection.darks`), with the label-free recipe of
  the deepCR WFC3/UVIS and DECam attention-U-Net papers.

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

from crscale.errors import InputError, SettingsError

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
        :func:`crscale.injection.inject.inject_crs` rescales by with ``rescale_noise=True``.
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
            raise SettingsError(f"CR library {self.source!r} is empty")
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
