"""Read FITS exposures: every 2-D image HDU, its data-quality planes and its metadata.

Handles single- and multi-extension files, tile-compressed (``.fz``) and gzip (``.gz``)
files, integer data with BZERO/BSCALE (applied by astropy, as every FITS reader does),
and big-endian data (converted to native byte order without changing a bit).
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning

from crscale import config
from crscale.io import storage
from crscale.io.errors import InputError
from crscale.io.inputs import fits_stem
from crscale.io.metadata import DetectorMeta, extract_metadata, header_to_json

_NAME_OK = re.compile(r"[^A-Za-z0-9_.\-]+")


@dataclass
class DetectorData:
    """One detector (one science image HDU) of an exposure, with its planes.

    Attributes
    ----------
    name : str
        Group name in the archive: EXTNAME where unique in the file, ``EXTNAME_EXTVER``
        where several HDUs share it, ``PRIMARY`` or ``HDU<index>`` without EXTNAME.
    hdu_index : int
        Zero-based HDU index in the source file.
    extname, extver : str or None, int or None
        The HDU's EXTNAME (stripped of trailing spaces) and EXTVER.
    image : numpy.ndarray
        Pixel values after BZERO/BSCALE, in native byte order, shape (ny, nx).
    meta : DetectorMeta
        Header metadata with fallbacks.
    header : dict
        JSON-safe copy of the HDU header (structural keywords dropped).
    bitpix, bzero, bscale : int, float, float
        The on-disk representation of the pixels.
    dq : numpy.ndarray or None
        Data-quality / bad-pixel plane from the source, if any, unsigned where possible.
    dq_source : str or None
        Where ``dq`` came from (``"HDU 3 (BPM)"`` or a companion file path).
    aux : dict of numpy.ndarray
        Other per-pixel planes that belong to this detector (``var``, ``weight`` ...).
    aux_sources : dict of str
        Where each ``aux`` plane came from.
    n_nonfinite : int
        Number of NaN or infinite pixels in ``image``.
    """

    name: str
    hdu_index: int
    extname: str | None
    extver: int | None
    image: np.ndarray
    meta: DetectorMeta
    header: dict[str, Any]
    bitpix: int
    bzero: float
    bscale: float
    dq: np.ndarray | None = None
    dq_source: str | None = None
    aux: dict[str, np.ndarray] = field(default_factory=dict)
    aux_sources: dict[str, str] = field(default_factory=dict)
    n_nonfinite: int = 0


@dataclass
class Exposure:
    """A FITS exposure read into memory.

    Attributes
    ----------
    path : str
        Absolute path of the source file.
    exposure_id : str
        Identifier used as the archive group name.
    sha256 : str
        SHA-256 of the source file's bytes.
    size : int
        Size of the source file in bytes.
    primary_header : dict
        JSON-safe primary header.
    detectors : list of DetectorData
        The science images, in HDU order.
    dq_path, weight_path : str or None
        Companion files that were read.
    warnings : list of str
        Notes on the file as a whole (checksum failures, skipped planes ...).
    """

    path: str
    exposure_id: str
    sha256: str
    size: int
    primary_header: dict[str, Any]
    detectors: list[DetectorData]
    dq_path: str | None = None
    weight_path: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def all_warnings(self) -> list[str]:
        """File warnings followed by each detector's metadata warnings."""
        out = list(self.warnings)
        for det in self.detectors:
            out.extend(f"{det.name}: {w}" for w in det.meta.warnings)
        return out


def sha256_file(path: str | Path, *, block: int = 1 << 20) -> str:
    """Return the hex SHA-256 of a file's bytes.

    Parameters
    ----------
    path : str or Path
        File to hash, or an fsspec URL (``s3://bucket/raw/x.fits``): its bytes are streamed
        from the store, ``block`` at a time, and hashed as they arrive (nothing is written
        to local disk).
    block : int
        Read size in bytes.

    Returns
    -------
    str
        64 hexadecimal digits.
    """
    h = hashlib.sha256()
    with storage.open_input(os.fspath(path), mode="rb", block_size=block) as fh:
        while chunk := fh.read(block):
            h.update(chunk)
    return h.hexdigest()


def exposure_id_from_path(path: str | Path) -> str:
    """Derive an archive-safe exposure id from a file name (its suffixes removed)."""
    return sanitize_name(fits_stem(Path(path).name)) or "exposure"


def sanitize_name(name: str) -> str:
    """Make a string safe as a Zarr node name (no '/', no leading '__' or '.')."""
    clean = _NAME_OK.sub("_", name.strip()).strip("_")
    clean = clean.lstrip(".")
    while clean.startswith("__"):
        clean = clean[1:]
    if clean.lower() == "zarr.json":  # a group's own metadata file: never a member's name
        clean = clean.replace(".", "_")
    return clean


def _native(arr: np.ndarray) -> np.ndarray:
    """Same values in native byte order (FITS is big-endian on disk)."""
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return np.ascontiguousarray(arr)


def _squeeze_2d(shape: Sequence[int]) -> tuple[int, int] | None:
    dims = [int(s) for s in shape if int(s) != 1] if len(shape) > 2 else [int(s) for s in shape]
    if len(dims) == 2 and min(dims) > 0:
        return dims[0], dims[1]
    return None


def _unsigned(plane: np.ndarray) -> np.ndarray:
    """DQ planes as unsigned integers where that changes no value."""
    plane = _native(plane)
    if plane.dtype == bool:
        return plane.astype(np.uint8)
    if np.issubdtype(plane.dtype, np.signedinteger) and (plane.size == 0 or plane.min() >= 0):
        return plane.astype(np.dtype(f"u{plane.dtype.itemsize}"))
    if np.issubdtype(plane.dtype, np.floating):
        finite = np.isfinite(plane)
        if finite.all() and np.array_equal(plane, np.round(plane)) and plane.min() >= 0:
            return plane.astype(np.uint32)
    return plane


def _selector_matches(selector: str | int, index: int, extname: str | None, extver: int | None) -> bool:
    if isinstance(selector, int) or (isinstance(selector, str) and selector.isdigit()):
        return int(selector) == index
    text = str(selector).strip()
    if "," in text:
        sname, sver = (t.strip() for t in text.split(",", 1))
        return (extname or "").upper() == sname.upper() and str(extver) == sver
    return (extname or "").upper() == text.upper()


def _check_complete(path: str, hdul: fits.HDUList, caught: Iterable[warnings.WarningMessage]) -> None:
    """Raise InputError when the file is truncated or an HDU could not be parsed."""
    for w in caught:
        msg = str(w.message)
        if "Error validating header" in msg or "truncated" in msg.lower():
            first = msg.splitlines()[0].strip()
            detail = " ".join(line.strip() for line in msg.splitlines()[1:2])
            raise InputError(
                path,
                f"truncated or corrupt FITS file ({first} {detail})".strip(),
                kind="truncated",
            )
    info = storage.input_info(path)
    size = info["size"] if info else 0
    if path.lower().endswith(".gz"):
        return  # the on-disk size of a gzip file says nothing about the FITS size
    last = hdul[-1].fileinfo()
    if last is not None and last["datSpan"]:
        needed = last["datLoc"] + last["datSpan"]
        # Some writers leave the last 2880-byte block unpadded: only missing data counts.
        if size <= needed - 2880:
            raise InputError(
                path,
                f"truncated FITS file: {size} bytes on disk, HDU #{len(hdul) - 1} "
                f"needs {needed}",
                kind="truncated",
            )


def _open(path: str) -> tuple[fits.HDUList, list[warnings.WarningMessage]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if storage.is_url(path):
                # Read through fsspec: headers and data sections are fetched as astropy
                # seeks to them, never copied to a local file first.
                hdul = fits.open(path, memmap=False, lazy_load_hdus=False, checksum=True,
                                 use_fsspec=True, fsspec_kwargs=storage.storage_options(path))
            else:
                hdul = fits.open(path, memmap=False, lazy_load_hdus=False, checksum=True)
        except OSError as exc:
            raise InputError(path, f"not a readable FITS file ({exc})", kind="corrupt") from exc
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise InputError(path, f"corrupt FITS file ({exc})", kind="corrupt") from exc
    return hdul, list(caught)


def _load_data(path: str, hdu: fits.hdu.base._BaseHDU, index: int) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyUserWarning)
            data = hdu.data
    except Exception as exc:  # astropy raises many types for damaged data sections
        raise InputError(
            path, f"HDU #{index} ({hdu.name}): cannot read pixel data ({exc})", kind="corrupt"
        ) from exc
    if data is None:
        raise InputError(path, f"HDU #{index} ({hdu.name}): no pixel data", kind="corrupt")
    shape2 = _squeeze_2d(data.shape)
    return _native(np.asarray(data).reshape(shape2))


def _image_hdus(hdul: fits.HDUList) -> list[tuple[int, Any, tuple[int, int]]]:
    out = []
    for index, hdu in enumerate(hdul):
        if not isinstance(hdu, fits.PrimaryHDU | fits.ImageHDU | fits.CompImageHDU):
            continue
        # For a CompImageHDU astropy shows the decompressed image's header (NAXISn).
        naxis = int(hdu.header.get("NAXIS", 0))
        shape = tuple(int(hdu.header.get(f"NAXIS{i}", 0)) for i in range(naxis, 0, -1))
        shape2 = _squeeze_2d(shape) if naxis >= 2 else None
        if shape2 is not None:
            out.append((index, hdu, shape2))
    return out


def _ext_id(hdu: Any, index: int) -> tuple[str | None, int | None]:
    name = hdu.header.get("EXTNAME")
    # EXTNAME values padded with trailing spaces are normal FITS.
    extname = (str(name).strip() or None) if name is not None else None
    extver = hdu.header.get("EXTVER")
    try:
        extver = int(extver) if extver is not None else None
    except (TypeError, ValueError):
        extver = None
    return extname, extver


def _detector_names(entries: list[tuple[int, str | None, int | None]]) -> list[str]:
    counts: dict[str, int] = {}
    for _, extname, _ in entries:
        if extname:
            counts[extname.upper()] = counts.get(extname.upper(), 0) + 1
    names = []
    for index, extname, extver in entries:
        if not extname:
            base = "PRIMARY" if index == 0 else f"HDU{index}"
        elif counts[extname.upper()] > 1:
            base = f"{extname}_{extver if extver is not None else index}"
        else:
            base = extname
        names.append(sanitize_name(base) or f"HDU{index}")
    # Two HDUs with the same EXTNAME and EXTVER (against the standard) still get two groups.
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            names[i] = f"{name}_HDU{entries[i][0]}"
        seen[names[i]] = i
    return names


def _attach(
    planes: list[tuple[str, int, Any, str | None, int | None]],
    science: list[tuple[int, Any, str | None, int | None]],
    detectors: list[DetectorData],
    kind: str,
    path: str,
    file_warnings: list[str],
) -> None:
    """Attach DQ / auxiliary planes found in the same file to their science detector.

    A plane belongs to the only science HDU of the file, or else to the one science HDU
    with its EXTVER; planes of science HDUs left out by an HDU selection are not read.
    """
    by_index = {d.hdu_index: d for d in detectors}
    for plane_name, index, hdu, extname, extver in planes:
        owners = science if len(science) == 1 else [e for e in science if e[3] == extver]
        if len(owners) != 1:
            file_warnings.append(
                f"HDU #{index} ({extname}) is a {kind} plane but matches no single science "
                "HDU by EXTVER; not kept"
            )
            continue
        target = by_index.get(owners[0][0])
        if target is None:
            continue  # its science HDU was not selected
        data = _load_data(path, hdu, index)
        if data.shape != target.image.shape:
            file_warnings.append(
                f"HDU #{index} ({extname}) has shape {data.shape}, science HDU {target.name} "
                f"has {target.image.shape}; not kept"
            )
            continue
        source = f"HDU {index} ({extname})" if extname else f"HDU {index}"
        if kind == "dq":
            if target.dq is not None:
                target.dq = target.dq | _unsigned(data).astype(target.dq.dtype)
                target.dq_source = f"{target.dq_source} | {source}"
            else:
                target.dq = _unsigned(data)
                target.dq_source = source
        else:
            target.aux[plane_name] = data
            target.aux_sources[plane_name] = source


def _read_companion(
    comp_path: str,
    detectors: list[DetectorData],
    kind: str,
) -> None:
    """Read a companion file (DQ or weight) and attach its planes to the detectors."""
    if storage.input_info(comp_path) is None:
        raise InputError(comp_path, f"{kind} file does not exist", kind="missing")
    hdul, caught = _open(comp_path)
    with hdul:
        _check_complete(comp_path, hdul, caught)
        entries = _image_hdus(hdul)
        if not entries:
            raise InputError(comp_path, f"{kind} file has no 2-D image HDU", kind="no-image")
        by_name = {}
        for index, hdu, _ in entries:
            extname, extver = _ext_id(hdu, index)
            by_name[((extname or "").upper(), extver)] = (index, hdu)
        for pos, det in enumerate(detectors):
            key = ((det.extname or "").upper(), det.extver)
            hit = by_name.get(key)
            if hit is None:
                named = [v for k, v in by_name.items() if k[0] and k[0] == key[0]]
                hit = named[0] if len(named) == 1 else None
            if hit is None and len(entries) == len(detectors):
                hit = (entries[pos][0], entries[pos][1])
            if hit is None:
                raise InputError(
                    comp_path,
                    f"no {kind} plane matches detector {det.name} "
                    f"(EXTNAME={det.extname!r}, EXTVER={det.extver})",
                    kind="dq-mismatch",
                )
            index, hdu = hit
            data = _load_data(comp_path, hdu, index)
            if data.shape != det.image.shape:
                raise InputError(
                    comp_path,
                    f"{kind} plane HDU #{index} has shape {data.shape} but detector {det.name} "
                    f"has {det.image.shape}",
                    kind="dq-mismatch",
                )
            source = f"{comp_path}[{index}]"
            if kind == "dq" and det.dq is not None:
                plane = _unsigned(data)
                det.dq = det.dq.astype(np.promote_types(det.dq.dtype, plane.dtype)) | plane
                det.dq_source = f"{det.dq_source} | {source}"
            elif kind == "dq":
                det.dq = _unsigned(data)
                det.dq_source = source
            else:
                det.aux[kind] = data
                det.aux_sources[kind] = source


def read_exposure(
    path: str | os.PathLike[str],
    *,
    dq_path: str | Path | None = None,
    weight_path: str | Path | None = None,
    hdus: Sequence[str | int] | None = None,
    exposure_id: str | None = None,
    sha256: str | None = None,
    dq_extnames: Sequence[str] | None = None,
    aux_extnames: Sequence[str] | None = None,
    fallbacks: dict[str, Any] | None = None,
) -> Exposure:
    """Read every 2-D science image of a FITS file, with DQ planes and metadata.

    Parameters
    ----------
    path : str or Path
        The FITS file (plain, ``.fz`` tile-compressed or ``.gz``), a local path or an fsspec
        URL (``s3://``, ``gs://``, ``https://``; see :mod:`crscale.io.storage`).
    dq_path : str or Path, optional
        A separate data-quality / bad-pixel file; its 2-D planes are matched to the
        science HDUs by EXTNAME/EXTVER, then by order.
    weight_path : str or Path, optional
        A separate weight (inverse-variance) file, matched the same way, kept as the
        ``weight`` plane.
    hdus : sequence of str or int, optional
        Science HDUs to read, by index (``1``), EXTNAME (``"SCI"``) or ``"EXTNAME,EXTVER"``
        (``"SCI,2"``). Default: every 2-D image HDU that is not a DQ or auxiliary plane.
    exposure_id : str, optional
        Identifier; default from the file name.
    sha256 : str, optional
        Known SHA-256 of the file (computed when not given).
    dq_extnames, aux_extnames : sequence of str, optional
        EXTNAMEs treated as DQ planes and as auxiliary planes; defaults from the
        ``crscale.ingest`` config.
    fallbacks : dict, optional
        Metadata fallbacks; default from ``crscale.ingest.fallbacks``.

    Returns
    -------
    Exposure
        The exposure with one :class:`DetectorData` per science HDU.

    Raises
    ------
    InputError
        The file is missing, not FITS, truncated, has no 2-D image, or has an image
        with no finite pixel. The message names the file and the problem.
    """
    path = storage.normalize(path)
    info = storage.input_info(path)
    if info is None:
        raise InputError(path, "file does not exist", kind="missing")
    if info["type"] == "directory":
        raise InputError(path, "is a directory, not a FITS file", kind="invalid")
    size = info["size"]
    if size == 0:
        raise InputError(path, "empty file (0 bytes)", kind="corrupt")
    dq_names = {n.upper() for n in (dq_extnames or config.get("ingest.dq_extnames"))}
    aux_names = {n.upper() for n in (aux_extnames or config.get("ingest.aux_extnames"))}
    fallbacks = fallbacks or config.get("ingest.fallbacks")

    file_warnings: list[str] = []
    hdul, caught = _open(path)
    with hdul:
        _check_complete(path, hdul, caught)
        for w in caught:
            msg = str(w.message)
            if "checksum" in msg.lower() or "datasum" in msg.lower():
                file_warnings.append(msg.splitlines()[0])
        primary = hdul[0].header
        entries = _image_hdus(hdul)
        if not entries:
            raise InputError(path, "no 2-D image HDU in the file", kind="no-image")

        science: list[tuple[int, Any, str | None, int | None]] = []
        dq_planes: list[tuple[int, Any, str | None, int | None]] = []
        aux_planes: list[tuple[int, Any, str | None, int | None]] = []
        for index, hdu, _ in entries:
            extname, extver = _ext_id(hdu, index)
            upper = (extname or "").upper()
            if upper in dq_names:
                dq_planes.append((index, hdu, extname, extver))
            elif upper in aux_names:
                aux_planes.append((index, hdu, extname, extver))
            else:
                science.append((index, hdu, extname, extver))
        # Names come from every science HDU, so a selection does not rename groups.
        all_names = _detector_names([(i, n, v) for i, _, n, v in science])
        chosen = [
            (name, entry)
            for name, entry in zip(all_names, science, strict=True)
            if hdus is None or any(_selector_matches(s, entry[0], entry[2], entry[3]) for s in hdus)
        ]
        if not chosen:
            what = "no 2-D science image HDU" if hdus is None else f"no HDU matches {list(hdus)}"
            raise InputError(path, what, kind="no-image")

        detectors = []
        for name, (index, hdu, extname, extver) in chosen:
            # Copy the header before touching the data: astropy rewrites BITPIX/BZERO/BSCALE
            # of scaled integer images once they are read.
            header = hdu.header.copy()
            image = _load_data(path, hdu, index)
            finite = np.isfinite(image) if np.issubdtype(image.dtype, np.floating) else None
            n_bad = 0 if finite is None else int(image.size - np.count_nonzero(finite))
            if n_bad == image.size:
                raise InputError(
                    path, f"HDU #{index} ({name}): no finite pixel (all NaN/inf)", kind="no-finite-pixels"
                )
            meta = extract_metadata(
                header, primary if index > 0 else None, fallbacks=fallbacks, raw_dtype=image.dtype
            )
            if n_bad:
                meta.warnings.append(f"{n_bad} NaN/inf pixels ({100 * n_bad / image.size:.3g} %)")
            if isinstance(hdu, fits.CompImageHDU):
                bitpix = int(header.get("ZBITPIX", header.get("BITPIX")))
            else:
                bitpix = int(header.get("BITPIX"))
            detectors.append(
                DetectorData(
                    name=name,
                    hdu_index=index,
                    extname=extname,
                    extver=extver,
                    image=image,
                    meta=meta,
                    header=header_to_json(header),
                    bitpix=bitpix,
                    bzero=float(header.get("BZERO", 0.0)),
                    bscale=float(header.get("BSCALE", 1.0)),
                    n_nonfinite=n_bad,
                )
            )
        _attach([(n or f"hdu{i}", i, h, n, v) for i, h, n, v in dq_planes],
                science, detectors, "dq", path, file_warnings)
        _attach([((n or f"hdu{i}").lower(), i, h, n, v) for i, h, n, v in aux_planes],
                science, detectors, "aux", path, file_warnings)
        primary_json = header_to_json(primary)

    if dq_path is not None:
        _read_companion(storage.normalize(dq_path), detectors, "dq")
    if weight_path is not None:
        _read_companion(storage.normalize(weight_path), detectors, "weight")

    return Exposure(
        path=path,
        exposure_id=exposure_id or exposure_id_from_path(path),
        sha256=sha256 or sha256_file(path),
        size=size,
        primary_header=primary_json,
        detectors=detectors,
        dq_path=storage.normalize(dq_path) if dq_path is not None else None,
        weight_path=storage.normalize(weight_path) if weight_path is not None else None,
        warnings=file_warnings,
    )
