"""FITS building blocks of write-fits: open a source, rebuild an HDU of its kind, commit a file.

Kept apart from :mod:`crscale.io.fits_writer` (what goes into a product) so that the store the
products go to is one function, :func:`commit_hdul`.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning

from crscale.errors import InputError
from crscale.io import storage

_CHECKSUM_NOTE = "crscale write-fits"
_UMASK = os.umask(0o022)
os.umask(_UMASK)
_WCS_KEY = re.compile(
    r"^(WCSAXES|CTYPE\d|CRPIX\d|CRVAL\d|CDELT\d|CUNIT\d|CD\d_\d|PC\d_\d|PV\d_\d+|"
    r"CROTA\d|RADESYS|EQUINOX|LONPOLE|LATPOLE|[AB]P?_(ORDER|\d_\d))$"
)

def commit_hdul(hdul: fits.HDUList, target: Path) -> int:
    """Write an HDU list to ``target`` atomically (temporary file, then rename); return bytes.

    The one place write-fits touches the output store.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh, warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyUserWarning)
            hdul.writeto(fh, output_verify="silentfix", checksum=False)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; products are ordinary files
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return target.stat().st_size


def open_fits(path: str, **kwargs: Any) -> fits.HDUList:
    """Open a source without memory mapping, every header parsed with astropy's card warnings muted.

    A source on object storage (an fsspec URL) is read through astropy's fsspec support, with the
    store's options (see :mod:`crscale.io.storage`).
    """
    if storage.is_url(path):
        kwargs = {"use_fsspec": True, "fsspec_kwargs": storage.storage_options(path), **kwargs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyUserWarning)
        hdul = fits.open(path, memmap=False, **kwargs)
        for hdu in hdul:  # parse every header now, while non-standard cards' warnings are muted
            hdu.header  # noqa: B018
        return hdul


def checksummed(new: Any, old_header: fits.Header) -> Any:
    """Recompute CHECKSUM/DATASUM where the source had them (deterministic comment)."""
    if "CHECKSUM" in old_header or "DATASUM" in old_header:
        new.add_checksum(when=_CHECKSUM_NOTE)
    return new


def image_hdu(index: int, data: np.ndarray, header: fits.Header, raw: Any) -> Any:
    """An HDU of the source's kind (primary, image, tile-compressed) holding new pixels."""
    header = header.copy()
    if np.issubdtype(data.dtype, np.floating):
        for key in ("BZERO", "BSCALE", "BLANK"):
            header.remove(key, ignore_missing=True)
    if raw.header.get("ZIMAGE"):
        rh = raw.header
        naxis = int(rh.get("ZNAXIS", data.ndim))
        tiles = tuple(int(rh.get(f"ZTILE{i}", 0)) for i in range(naxis, 0, -1))
        kwargs: dict[str, Any] = {"compression_type": str(rh.get("ZCMPTYPE", "RICE_1")).strip()}
        if all(tiles):
            kwargs["tile_shape"] = tiles
        if np.issubdtype(data.dtype, np.floating):
            quant = rh.get("ZQUANTIZ", "NO_DITHER")
            kwargs["quantize_method"] = {"NO_DITHER": -1, "SUBTRACTIVE_DITHER_1": 1,
                                         "SUBTRACTIVE_DITHER_2": 2}.get(str(quant).strip(), -1)
            kwargs["dither_seed"] = int(rh.get("ZDITHER0", 0))
            # The source's quantisation level is not recorded in FITS; 16 is fpack's default.
            kwargs["quantize_level"] = 16.0
        return fits.CompImageHDU(data=data, header=header, **kwargs)
    if index == 0:
        return fits.PrimaryHDU(data=data, header=header)
    return fits.ImageHDU(data=data, header=header)


def new_extension(data: np.ndarray, header: fits.Header, compressed: bool) -> Any:
    """A new image extension; tile-compressed (lossless) when the product is a compressed file."""
    if not compressed:
        return fits.ImageHDU(data=data, header=header)
    kind = "RICE_1" if np.issubdtype(data.dtype, np.integer) else "GZIP_2"
    return fits.CompImageHDU(data=data, header=header, compression_type=kind, quantize_level=0.0)


def find_plane(hdul: fits.HDUList, extname: str, extver: int | None, n_science: int) -> int | None:
    """Index of the HDU named ``extname`` with this EXTVER (or the only one, for one science HDU)."""
    extname = extname.upper()
    hits = [i for i, h in enumerate(hdul) if str(h.header.get("EXTNAME", "")).strip().upper() == extname]
    same = [i for i in hits if hdul[i].header.get("EXTVER", 1) == (extver if extver is not None else 1)]
    if len(same) == 1:
        return same[0]
    return hits[0] if len(hits) == 1 and n_science == 1 else None


def plane_data(hdul_dec: fits.HDUList, index: int, shape: tuple[int, int]) -> np.ndarray:
    """Pixels of a DQ plane; an empty (NAXIS=0) HST plane is expanded from NPIX1/NPIX2/PIXVALUE."""
    hdu = hdul_dec[index]
    if hdu.data is not None:
        data = np.asarray(hdu.data)
        return data.astype(data.dtype.newbyteorder("="))
    h = hdu.header
    ny, nx = int(h.get("NPIX2", shape[0])), int(h.get("NPIX1", shape[1]))
    if (ny, nx) != tuple(shape):
        raise InputError("", f"HDU #{index}: empty plane of {ny}x{nx}, image is {shape[0]}x{shape[1]}")
    dtype = {8: np.uint8, 16: np.int16, 32: np.int32}.get(int(h.get("BITPIX", 16)), np.int16)
    return np.full((ny, nx), h.get("PIXVALUE", 0), dtype=dtype)


def wcs_cards(header: fits.Header) -> fits.Header:
    """The WCS cards of a header (celestial and SIP), for an extension that overlays its image."""
    out = fits.Header()
    for card in header.cards:
        if _WCS_KEY.match(card.keyword):
            out.append(card)
    return out
