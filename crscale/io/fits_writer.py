"""Write one archive exposure back as FITS, in its pipeline's own layout and flag convention.

The source file is re-opened (its path and SHA-256 were recorded at ingest) and copied HDU by
HDU: same HDUs, same order, same EXTNAME/EXTVER, every header card with its value. Only what
was asked for changes: the science pixels (``pixels="clean"``), the pipeline's DQ plane with
crscale's CRs flagged in the pipeline's convention (:mod:`crscale.io.dq`), or new ``CRMASK`` /
``CRPROB`` extensions appended after the source's HDUs. Tile-compressed HDUs that are not
changed are copied compressed, byte for byte, so their pixels and checksums stay exactly the
source's; changed ones are compressed again with the source's algorithm and tiles.

The primary header gains the ``CRS*`` keywords (:data:`KEYWORDS`) and HISTORY lines. Nothing in
the output depends on the time of writing, so writing twice gives the same bytes; ``CRSKEY``
identifies what went in, so a re-run skips files that are up to date.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import zarr
from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning

from crscale._version import __version__
from crscale.errors import ArchiveError, InputError, SettingsError
from crscale.io import integrity, storage
from crscale.io.archive import Archive, array_names
from crscale.io.dq import DQConvention, convention_for
from crscale.io.fits_hdus import (
    checksummed,
    commit_hdul,
    find_plane,
    image_hdu,
    new_extension,
    open_fits,
    plane_data,
    wcs_cards,
)
from crscale.io.fits_reader import sha256_file

PIXELS = ("original", "clean")
FLAGS = ("native", "crmask")
#: Primary-header keywords written by crscale, with their comments.
KEYWORDS = {
    "CRSVERS": "crscale version that wrote this file",
    "CRSMODEL": "crscale CR model",
    "CRSWSHA": "SHA-256 of the model weights",
    "CRSTHRES": "CR probability threshold",
    "CRSDILAT": "mask dilation (3x3 passes) before inpainting",
    "CRSNPIX": "CR pixels found by crscale (all HDUs)",
    "CRSPIXEL": "science pixels: original or clean (inpainted)",
    "CRSFLAGS": "where CRs are flagged: native or crmask",
    "CRSKEY": "digest of this file's inputs",
}
_NAME_OK = re.compile(r"[^A-Za-z0-9._+\-]+")


@dataclass(frozen=True)
class WriteOptions:
    """What write-fits produces: pixels, flags, probability maps."""

    pixels: str = "original"
    flags: str = "native"
    prob: bool = False

    def __post_init__(self) -> None:
        if self.pixels not in PIXELS:
            raise SettingsError(f"pixels must be one of {PIXELS}, not {self.pixels!r}")
        if self.flags not in FLAGS:
            raise SettingsError(f"flags must be one of {FLAGS}, not {self.flags!r}")


@dataclass
class Provenance:
    """The detection behind the products, as written into the headers."""

    model: str
    weights_sha256: str | None
    threshold: float
    dilation: int
    detect_time: str | None = None


@dataclass
class FitsOutcome:
    """What writing one exposure did."""

    exposure_id: str
    status: str  # done, skipped, failed
    files: list[str] = field(default_factory=list)
    message: str = ""
    kind: str = ""
    n_cr_pixels: int = 0
    nbytes: int = 0
    notes: list[str] = field(default_factory=list)


def safe_name(name: str) -> str:
    """A plain file name from a source name: no folder part, no hidden or relative names."""
    base = _NAME_OK.sub("_", os.path.basename(str(name).replace("\\", "/"))).lstrip(".")
    if not base or base in ("_",):
        raise InputError(str(name), "source name gives no usable output file name", kind="invalid")
    return base


def output_path(outdir: str | Path, name: str) -> Path:
    """``outdir/name``, refused when it would lie anywhere but directly inside ``outdir``."""
    root = Path(outdir).resolve()
    target = (root / safe_name(name)).resolve()
    if target.parent != root:
        raise InputError(str(name), f"output would lie outside {root}", kind="invalid")
    return target


def products_key(
    source_sha: str, provenance: Provenance, options: WriteOptions, conventions: list[str]
) -> str:
    """Digest of everything an output depends on (``CRSKEY``)."""
    blob = json.dumps(
        {
            "source": source_sha,
            "crscale": __version__,
            "detect": [provenance.model, provenance.weights_sha256, provenance.threshold,
                       provenance.dilation, provenance.detect_time],
            "options": [options.pixels, options.flags, options.prob],
            "conventions": conventions,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _up_to_date(targets: list[Path], key: str) -> bool:
    for t in targets:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", AstropyUserWarning)
                if fits.getval(t, "CRSKEY", ext=0) != key:
                    return False
        except (OSError, KeyError):
            return False
    return True


def _hdu_label(attrs: dict[str, Any]) -> str:
    index = attrs.get("hdu_index")
    name = attrs.get("extname") or ("PRIMARY" if index == 0 else f"HDU{index}")
    return f"{name},{attrs['extver']}" if attrs.get("extver") is not None else str(name)


@dataclass
class _Plan:
    """The per-detector facts of one exposure that the writer needs."""

    name: str
    attrs: dict[str, Any]
    mask: np.ndarray
    convention: DQConvention


def _read(archive: Archive, exposure_id: str, detector: str, name: str) -> np.ndarray:
    """A whole array of a detector; absent or corrupt chunks are refused, by name."""
    base = f"exposures/{exposure_id}/{detector}"
    return integrity.checked(archive.root[base], name, f"{archive.path}/{base}")[...]


def read_plans(archive: Archive, exposure_id: str, options: WriteOptions) -> list[_Plan]:
    """Masks, conventions and HDU positions of an exposure's detectors (through the Archive API)."""
    exp = archive.exposure_attrs(exposure_id)
    plans = []
    for det in archive.detectors(exposure_id):
        group = cast(zarr.Group, archive.root[f"exposures/{exposure_id}/{det}"])
        names = array_names(group)
        needed = {"mask"} | ({"clean"} if options.pixels == "clean" else set())
        needed |= {"prob"} if options.prob else set()
        if needed - names:
            raise ArchiveError(
                f"{archive.path}: exposure {exposure_id!r}, detector {det!r} has no "
                f"{', '.join(sorted(needed - names))} (run `crscale detect`"
                f"{' with inpainting' if 'clean' in needed - names else ''} first)"
            )
        attrs = dict(group.attrs)
        mask = np.asarray(_read(archive, exposure_id, det, "mask"))
        plans.append(_Plan(det, attrs, mask, convention_for(exp, detector_attrs=attrs)))
    return plans


def build_products(
    archive: Archive,
    exposure_id: str,
    plans: list[_Plan],
    options: WriteOptions,
    provenance: Provenance,
    key: str,
    raw: fits.HDUList,
    dec: fits.HDUList,
) -> tuple[fits.HDUList, dict[int, Any], list[str]]:
    """The output HDU list, the companion DQ HDUs to change (by index), and notes.

    ``raw`` is the source opened without scaling or decompression (what is copied unchanged),
    ``dec`` the same file as astropy normally reads it (for the planes that change).
    """
    src = archive.exposure_attrs(exposure_id)["source"]
    out: list[Any] = list(raw)
    compressed = any(h.header.get("ZIMAGE") for h in raw)
    history: list[str] = []
    appended: list[Any] = []
    companion: dict[int, Any] = {}
    unflagged: dict[str, list[str]] = {}
    n_total = 0
    for p in plans:
        a, idx = p.attrs, int(p.attrs["hdu_index"])
        n_cr = int(np.count_nonzero(p.mask))
        n_total += n_cr
        label = _hdu_label(a)
        if options.pixels == "clean":
            clean = np.asarray(_read(archive, exposure_id, p.name, "clean"), np.float32)
            hdu = image_hdu(idx, clean, dec[idx].header, raw[idx])
            hdu.header["CRSPIXEL"] = ("clean", KEYWORDS["CRSPIXEL"])
            hdu.header["HISTORY"] = f"crscale {__version__}: {n_cr} CR pixels inpainted"
            out[idx] = checksummed(hdu, dec[idx].header)
        where = None
        conv = p.convention
        if options.flags == "native" and conv.flag_plane == "companion" and src.get("dq_path"):
            m = re.search(r"\[(\d+)\]$", str(a.get("dq_source") or ""))
            if m:
                companion[int(m.group(1))] = p
                where = f"code {conv.flag_value} in {os.path.basename(src['dq_path'])}[{m.group(1)}]"
        elif options.flags == "native" and conv.flag_plane:
            j = find_plane(raw, conv.flag_plane, a.get("extver"), len(plans))
            if j is not None:
                data = plane_data(dec, j, p.mask.shape)
                if data.shape != p.mask.shape:
                    raise InputError(src["path"], f"HDU #{j}: DQ plane {data.shape} vs image {p.mask.shape}")
                hdu = image_hdu(j, conv.flag(data, p.mask), dec[j].header, raw[j])
                hdu.header["CRSNPIX"] = (n_cr, "CR pixels flagged by crscale")
                hdu.header["HISTORY"] = f"crscale {__version__}: {n_cr} CR pixels flagged ({conv.name})"
                out[j] = checksummed(hdu, dec[j].header)
                where = f"{'bit' if conv.kind == 'bits' else 'code'} {conv.flag_value} in HDU {j}"
        if where is None:
            if options.flags == "native" and conv.flag_plane:
                unflagged.setdefault(f"no {conv.flag_plane} plane ({conv.name} convention)", []).append(label)
            hdr = wcs_cards(dec[idx].header)
            hdr["EXTNAME"] = "CRMASK"
            hdr["EXTVER"] = a.get("extver") if a.get("extver") is not None else 1
            hdr["CRSSRC"] = (label, "science HDU")
            hdr["CRSNPIX"] = (n_cr, "CR pixels (1)")
            appended.append(new_extension(p.mask.astype(np.uint8), hdr, compressed))
            where = f"CRMASK,{hdr['EXTVER']}"
        history.append(f"crscale: {label} (HDU {idx}): {n_cr} CR pixels; flags: {where}")
        if options.prob:
            prob = np.asarray(_read(archive, exposure_id, p.name, "prob"), np.float32)
            hdr = wcs_cards(dec[idx].header)
            hdr["EXTNAME"] = "CRPROB"
            hdr["EXTVER"] = a.get("extver") if a.get("extver") is not None else 1
            hdr["CRSSRC"] = (label, "science HDU")
            appended.append(new_extension(prob, hdr, compressed))
    primary = out[0]
    ph = primary.header
    values = {
        "CRSVERS": __version__,
        "CRSMODEL": provenance.model,
        "CRSWSHA": provenance.weights_sha256 or "unknown",
        "CRSTHRES": float(provenance.threshold),
        "CRSDILAT": int(provenance.dilation),
        "CRSNPIX": n_total,
        "CRSPIXEL": options.pixels,
        "CRSFLAGS": options.flags,
        "CRSKEY": key,
    }
    for k, v in values.items():
        # A 64-digit digest leaves no room for a comment on its card.
        ph[k] = v if k == "CRSWSHA" else (v, KEYWORDS[k])
    ph["HISTORY"] = (
        f"crscale {__version__} write-fits: CRs by {provenance.model} at threshold {provenance.threshold:g}"
    )
    for line in history:
        ph["HISTORY"] = line
    out[0] = checksummed(primary, raw[0].header)
    notes = [f"{why}: CRMASK for {', '.join(labels)}" for why, labels in unflagged.items()]
    return fits.HDUList(out + appended), companion, notes


def write_companion(dq_path: str, target: Path, parts: dict[int, Any], key: str) -> int:
    """The DQ companion with crscale's CRs in it (codes set only where the code was 0)."""
    with open_fits(dq_path, do_not_scale_image_data=True, disable_image_compression=True) as raw, \
            open_fits(dq_path) as dec:
        out = list(raw)
        for j, p in parts.items():
            data = plane_data(dec, j, p.mask.shape)
            hdu = image_hdu(j, p.convention.flag(data, p.mask), dec[j].header, raw[j])
            hdu.header["CRSNPIX"] = (int(np.count_nonzero(p.mask)), "CR pixels found by crscale")
            hdu.header["HISTORY"] = f"crscale {__version__}: code {p.convention.flag_value} set at CRs"
            out[j] = checksummed(hdu, dec[j].header)
        primary = out[0]
        primary.header["CRSVERS"] = (__version__, KEYWORDS["CRSVERS"])
        primary.header["CRSKEY"] = (key, KEYWORDS["CRSKEY"])
        out[0] = checksummed(primary, raw[0].header)
        return commit_hdul(fits.HDUList(out), target)


def check_source(exposure_id: str, source: dict[str, Any]) -> None:
    """Raise InputError unless the ingested source file (and DQ companion) is there, unchanged."""
    path = source.get("path")
    if not path or storage.input_info(path) is None:
        raise InputError(
            str(path), f"source file of exposure {exposure_id!r} is gone; write-fits copies its HDUs "
            "and headers, so restore the file at this path (or re-ingest it from its new place)",
            kind="missing",
        )
    if sha256_file(path) != source.get("sha256"):
        raise InputError(path, f"source file of exposure {exposure_id!r} changed since it was ingested "
                         "(SHA-256 differs); re-ingest it with --force", kind="changed")
    dq = source.get("dq_path")
    if dq and storage.input_info(dq) is None:
        raise InputError(dq, f"DQ companion of exposure {exposure_id!r} is gone", kind="missing")


def write_exposure(
    archive: Archive,
    exposure_id: str,
    outdir: str | Path,
    options: WriteOptions,
    provenance: Provenance,
    names: tuple[str, str | None],
    *,
    force: bool = False,
) -> FitsOutcome:
    """Write one exposure's FITS product(s) into ``outdir``; raise for bad input.

    Parameters
    ----------
    archive : Archive
        The archive (read through its API only).
    exposure_id : str
        The exposure.
    outdir : path
        Output folder (must exist). Nothing is written anywhere else.
    options : WriteOptions
        Pixels, flags, probability maps.
    provenance : Provenance
        Model, weights digest, threshold, dilation of the detection.
    names : (str, str or None)
        Output file names of the image and of its DQ companion (see the engine stage).
    force : bool
        Rewrite files that are up to date.

    Returns
    -------
    FitsOutcome
        ``done`` or ``skipped``, with the files.
    """
    attrs = archive.exposure_attrs(exposure_id)
    src = attrs["source"]
    check_source(exposure_id, src)
    plans = read_plans(archive, exposure_id, options)
    conventions = sorted({json.dumps(p.convention.to_dict(), sort_keys=True) for p in plans})
    key = products_key(src["sha256"], provenance, options, conventions)
    targets = [output_path(outdir, names[0])]
    if names[1] and options.flags == "native" and any(
        p.convention.flag_plane == "companion" for p in plans
    ):
        targets.append(output_path(outdir, names[1]))
    n_cr = sum(int(np.count_nonzero(p.mask)) for p in plans)
    if not force and _up_to_date(targets, key):
        return FitsOutcome(exposure_id, "skipped", [str(t) for t in targets], "up to date", n_cr_pixels=n_cr)
    with open_fits(src["path"], do_not_scale_image_data=True, disable_image_compression=True) as raw, \
            open_fits(src["path"]) as dec:
        hdul, companion, notes = build_products(
            archive, exposure_id, plans, options, provenance, key, raw, dec
        )
        nbytes = commit_hdul(hdul, targets[0])
    if companion:
        nbytes += write_companion(src["dq_path"], targets[1], companion, key)
    else:
        del targets[1:]
    return FitsOutcome(exposure_id, "done", [str(t) for t in targets], "", n_cr_pixels=n_cr,
                       nbytes=nbytes, notes=notes)
