"""Per-detector metadata from FITS headers, with fallbacks and a record of what was guessed.

Every value comes from the first keyword found in the extension header, then in the
primary header (the extension wins, as in the FITS INHERIT convention). A value that is
missing or absurd (EXPTIME <= 0, GAIN <= 0, ...) is replaced by a documented fallback
(or left unset where no fallback makes sense), its field is listed in ``guessed``, and
absurd values also produce a ``warnings`` entry naming the keyword and the value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.time import Time

EXPTIME_KEYS = ("EXPTIME", "EXPOSURE", "EXPTIM", "ITIME", "TEXPTIME", "EXP_TIME", "EXPOSED")
DARKTIME_KEYS = ("DARKTIME",)
GAIN_KEYS = ("GAIN", "EGAIN", "CCDGAIN", "ATODGAIN", "HIERARCH ESO DET OUT1 GAIN")
READNOISE_KEYS = (
    "RDNOISE",
    "READNOIS",
    "READNOISE",
    "RON",
    "RDNOISE1",
    "HIERARCH ESO DET OUT1 RON",
)
SATURATION_KEYS = ("SATURATE", "SATURATN", "SATLEVEL", "SATURATION", "SATUR")
INSTRUMENT_KEYS = ("INSTRUME", "INSTRUMENT")
TELESCOPE_KEYS = ("TELESCOP", "TELESCOPE")
DETECTOR_KEYS = ("DETECTOR", "CCDNAME", "DETNAME", "DETPOS", "CCDID")
FILTER_KEYS = ("FILTER", "FILTER1", "FILTNAME", "BAND")
OBJECT_KEYS = ("OBJECT",)
DATE_KEYS = ("DATE-OBS", "DATE_OBS", "DATEOBS")
TIME_KEYS = ("TIME-OBS", "TIME_OBS", "UT", "UTSTART", "UT-START")
MJD_KEYS = ("MJD-OBS", "MJD_OBS", "MJDSTART", "EXPSTART")

# Per-amplifier keys: DECam GAINA/GAINB, HST ACS ATODGNA..D / READNSEA..D, numbered GAIN1..
_PER_AMP_GAIN = re.compile(r"^(?:GAIN[A-H]|GAIN[1-9]|ATODGN[A-H])$")
_PER_AMP_RN = re.compile(r"^(?:RDNOISE[A-H]|RDNOISE[2-9]|READNSE[A-H]|RON[A-H])$")
_PER_AMP_SAT = re.compile(r"^SATURAT[A-DF-H]$")  # not SATURATE itself
_UNSET_STRINGS = {"", "UNKNOWN", "NONE", "N/A", "NA", "NULL"}


@dataclass
class DetectorMeta:
    """Metadata of one detector (one 2-D image HDU) of an exposure.

    Attributes
    ----------
    exptime : float or None
        Exposure time in seconds; ``None`` when the header has no usable value.
    darktime : float or None
        Dark time in seconds (``DARKTIME``) when given.
    gain : float
        Gain in e-/ADU (mean of the per-amplifier values when only those are given).
    gain_per_amp : dict
        Per-amplifier gains by keyword (``{"GAINA": 3.87, "GAINB": 3.88}``).
    readnoise : float
        Read noise in electrons.
    readnoise_per_amp : dict
        Per-amplifier read noise by keyword.
    saturation : float or None
        Saturation level in the image's units (ADU); the lowest per-amplifier value when
        only those are given; for integer raw data the largest representable value when
        no keyword gives it; ``None`` for float data without a keyword.
    date_obs : str or None
        Start of the exposure, ISO 8601 UTC (``"2021-10-08T01:55:17.144"``).
    mjd_obs : float or None
        The same as a Modified Julian Date.
    instrument, telescope, detector, filter, object : str or None
        Identification strings from the header.
    binning : list of int
        ``[x, y]`` on-chip binning.
    bunit : str or None
        Pixel unit (``BUNIT``).
    keywords : dict
        For each field, the header keyword its value came from.
    guessed : list of str
        Fields whose value is a fallback rather than a header value.
    warnings : list of str
        Human-readable notes on absurd or unparseable header values.
    """

    exptime: float | None = None
    darktime: float | None = None
    gain: float = 1.0
    gain_per_amp: dict[str, float] = field(default_factory=dict)
    readnoise: float = 5.0
    readnoise_per_amp: dict[str, float] = field(default_factory=dict)
    saturation: float | None = None
    date_obs: str | None = None
    mjd_obs: float | None = None
    instrument: str | None = None
    telescope: str | None = None
    detector: str | None = None
    filter: str | None = None
    object: str | None = None
    binning: list[int] = field(default_factory=lambda: [1, 1])
    bunit: str | None = None
    keywords: dict[str, str] = field(default_factory=dict)
    guessed: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dictionary of all fields."""
        return asdict(self)


def _first(headers: Sequence[fits.Header], keys: Sequence[str]) -> tuple[str | None, Any]:
    for hdr in headers:
        for key in keys:
            if key in hdr:
                value = card_value(hdr.cards[key])
                if isinstance(value, str):
                    value = value.strip()
                return key, value
    return None, None


def card_value(card: fits.Card) -> Any:
    """A card's value; for a card astropy cannot parse (``GAIN = NaN``, unquoted), its raw text.

    Such a value then reads like the quoted ``'NaN'``: not a number, so a fallback with a
    warning, instead of one card rejecting the whole file.
    """
    try:
        return card.value
    except fits.VerifyError:
        return card.image[10:].split("/", 1)[0].strip().strip("'").strip()


def as_float(value: Any) -> float | None:
    """A finite float from a header or attribute value; None for bools, text, NaN, inf, None."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return None if text.upper() in _UNSET_STRINGS else text


def _per_amp(headers: Sequence[fits.Header], pattern: re.Pattern[str]) -> dict[str, float]:
    # The extension header wins: take its per-amp keys if it has any, else the primary's.
    for hdr in headers:
        found = {}
        for key in hdr:
            if pattern.match(key):
                val = as_float(hdr[key])
                if val is not None and val > 0:
                    found[key] = val
        if found:
            return dict(sorted(found.items()))
    return {}


def _parse_date(headers: Sequence[fits.Header]) -> tuple[str | None, float | None, str | None]:
    """Return (ISO date, MJD, keyword) of the start of the exposure."""
    key, value = _first(headers, DATE_KEYS)
    if key is not None and isinstance(value, str) and value:
        text = value
        # Pre-2000 FITS wrote 'dd/mm/yy' (always 19yy by the standard).
        old = re.fullmatch(r"(\d{2})/(\d{2})/(\d{2})", text)
        if old:
            day, month, year = old.groups()
            text = f"19{year}-{month}-{day}"
        if "T" not in text:
            tkey, tval = _first(headers, TIME_KEYS)
            if isinstance(tval, str) and re.fullmatch(r"\d{1,2}:\d{2}(:\d{2}(\.\d*)?)?", tval):
                text = f"{text}T{tval}"
                key = f"{key}+{tkey}"
        try:
            t = Time(text, format="isot" if "T" in text else "iso", scale="utc")
            return t.isot, float(t.mjd), key
        except ValueError:
            try:
                t = Time(text, scale="utc")
                return t.isot, float(t.mjd), key
            except ValueError:
                pass
    mkey, mval = _first(headers, MJD_KEYS)
    mjd = as_float(mval)
    if mjd is not None and mjd > 0:
        t = Time(mjd, format="mjd", scale="utc")
        return t.isot, mjd, mkey
    return None, None, None


def _parse_binning(headers: Sequence[fits.Header]) -> tuple[list[int] | None, str | None]:
    key, value = _first(headers, ("CCDSUM", "BINNING", "CCDBIN"))
    if isinstance(value, str):
        parts = re.findall(r"\d+", value)
        if len(parts) == 2:
            return [int(parts[0]), int(parts[1])], key
    for kx, ky in (
        ("XBINNING", "YBINNING"),
        ("CCDBIN1", "CCDBIN2"),
        ("BINX", "BINY"),
        ("HIERARCH ESO DET WIN1 BINX", "HIERARCH ESO DET WIN1 BINY"),
    ):
        _, bx = _first(headers, (kx,))
        _, by = _first(headers, (ky,))
        if bx is not None and by is not None:
            try:
                return [int(bx), int(by)], f"{kx}/{ky}"
            except (TypeError, ValueError):
                continue
    return None, None


def integer_saturation(dtype: np.dtype) -> float | None:
    """Largest value a raw integer image of ``dtype`` can hold, or None for floats."""
    if np.issubdtype(dtype, np.integer):
        return float(np.iinfo(dtype).max)
    return None


def extract_metadata(
    ext_header: fits.Header,
    primary_header: fits.Header | None,
    *,
    fallbacks: dict[str, Any],
    raw_dtype: np.dtype | None = None,
) -> DetectorMeta:
    """Read the metadata of one detector from its headers.

    Parameters
    ----------
    ext_header : astropy.io.fits.Header
        Header of the image HDU.
    primary_header : astropy.io.fits.Header or None
        Header of the primary HDU when the image is an extension; its keywords are used
        where the extension lacks them.
    fallbacks : dict
        Values used for missing keywords: ``gain`` (e-/ADU), ``readnoise`` (e-),
        ``binning`` ([x, y]).
    raw_dtype : numpy.dtype, optional
        Dtype of the image after BZERO/BSCALE, used for the saturation fallback of raw
        integer data.

    Returns
    -------
    DetectorMeta
        The metadata with ``keywords``, ``guessed`` and ``warnings`` filled in.
    """
    headers = [ext_header] if primary_header is None else [ext_header, primary_header]
    meta = DetectorMeta()

    # Exposure time: required for rates, so an absurd value is reported, never used.
    key, value = _first(headers, EXPTIME_KEYS)
    exptime = as_float(value)
    if key is None:
        meta.guessed.append("exptime")
        meta.warnings.append("no exposure-time keyword (EXPTIME); exptime left unset")
    elif exptime is None or exptime <= 0:
        meta.guessed.append("exptime")
        meta.warnings.append(f"{key}={value!r} is not a positive exposure time; exptime left unset")
    else:
        meta.exptime = exptime
        meta.keywords["exptime"] = key
    key, value = _first(headers, DARKTIME_KEYS)
    darktime = as_float(value)
    if key is not None and darktime is not None and darktime > 0:
        meta.darktime = darktime
        meta.keywords["darktime"] = key

    # Gain: a single keyword, else the mean of the per-amplifier keywords.
    meta.gain_per_amp = _per_amp(headers, _PER_AMP_GAIN)
    key, value = _first(headers, GAIN_KEYS)
    gain = as_float(value)
    if key is not None and (gain is None or gain <= 0) and not meta.gain_per_amp:
        meta.warnings.append(
            f"{key}={value!r} is not a positive gain; using the fallback "
            f"{fallbacks['gain']} e-/ADU"
        )
    # CCDGAIN / ATODGAIN are nominal settings; measured per-amplifier values beat them.
    nominal = key in ("CCDGAIN", "ATODGAIN")
    if key is not None and gain is not None and gain > 0 and not (nominal and meta.gain_per_amp):
        meta.gain = gain
        meta.keywords["gain"] = key
    elif meta.gain_per_amp:
        meta.gain = float(np.mean(list(meta.gain_per_amp.values())))
        meta.keywords["gain"] = "+".join(meta.gain_per_amp)
    else:
        meta.gain = float(fallbacks["gain"])
        meta.guessed.append("gain")

    meta.readnoise_per_amp = _per_amp(headers, _PER_AMP_RN)
    key, value = _first(headers, READNOISE_KEYS)
    rn = as_float(value)
    if key is not None and rn is not None and rn > 0:
        meta.readnoise = rn
        meta.keywords["readnoise"] = key
    elif meta.readnoise_per_amp:
        meta.readnoise = float(np.mean(list(meta.readnoise_per_amp.values())))
        meta.keywords["readnoise"] = "+".join(meta.readnoise_per_amp)
    else:
        if key is not None:
            meta.warnings.append(
                f"{key}={value!r} is not a positive read noise; using the fallback "
                f"{fallbacks['readnoise']} e-"
            )
        meta.readnoise = float(fallbacks["readnoise"])
        meta.guessed.append("readnoise")

    # Saturation: the lowest amplifier limit is the one that matters for the whole CCD.
    key, value = _first(headers, SATURATION_KEYS)
    sat = as_float(value)
    per_amp_sat = _per_amp(headers, _PER_AMP_SAT)
    if key is not None and sat is not None and sat > 0:
        meta.saturation = min([sat, *per_amp_sat.values()])
        meta.keywords["saturation"] = key if not per_amp_sat else "+".join([key, *per_amp_sat])
    elif per_amp_sat:
        meta.saturation = min(per_amp_sat.values())
        meta.keywords["saturation"] = "+".join(per_amp_sat)
    else:
        if key is not None:
            meta.warnings.append(f"{key}={value!r} is not a positive saturation level")
        meta.saturation = integer_saturation(raw_dtype) if raw_dtype is not None else None
        meta.guessed.append("saturation")

    meta.date_obs, meta.mjd_obs, key = _parse_date(headers)
    if key is None:
        meta.guessed.append("date_obs")
        meta.warnings.append("no usable DATE-OBS or MJD-OBS; date_obs left unset")
    else:
        meta.keywords["date_obs"] = key

    for name, keys in (
        ("instrument", INSTRUMENT_KEYS),
        ("telescope", TELESCOPE_KEYS),
        ("detector", DETECTOR_KEYS),
        ("filter", FILTER_KEYS),
        ("object", OBJECT_KEYS),
    ):
        for hdr in headers:
            found = next(
                ((k, _as_text(hdr[k])) for k in keys if k in hdr and _as_text(hdr[k])), None
            )
            if found:
                setattr(meta, name, found[1])
                meta.keywords[name] = found[0]
                break
        else:
            if name in ("instrument", "detector"):
                meta.guessed.append(name)
    if meta.instrument is None and meta.telescope is not None:
        meta.instrument = meta.telescope

    binning, key = _parse_binning(headers)
    if binning is None or key is None or min(binning) < 1:
        meta.binning = [int(b) for b in fallbacks["binning"]]
        meta.guessed.append("binning")
    else:
        meta.binning = binning
        meta.keywords["binning"] = key

    _, bunit = _first(headers, ("BUNIT",))
    meta.bunit = _as_text(bunit)
    return meta


def header_to_json(header: fits.Header) -> dict[str, Any]:
    """Convert a FITS header to a JSON-safe dict.

    Structural keywords (NAXIS, BITPIX, compression bookkeeping ...) are dropped;
    COMMENT and HISTORY cards become lists of strings; undefined values become ``None``
    and non-finite floats become strings, since JSON has neither.

    Parameters
    ----------
    header : astropy.io.fits.Header
        The header.

    Returns
    -------
    dict
        Keyword to value.
    """
    skip = re.compile(
        r"^(SIMPLE|XTENSION|BITPIX|NAXIS\d*|EXTEND|PCOUNT|GCOUNT|CHECKSUM|DATASUM|"
        r"TFIELDS|TFORM\d+|TTYPE\d+|TUNIT\d+|TDIM\d+|THEAP)$"
    )
    out: dict[str, Any] = {}
    for card in header.cards:
        key = card.keyword
        if not key or skip.match(key):
            continue
        value = card_value(card)
        if key in ("COMMENT", "HISTORY"):
            out.setdefault(key, []).append(str(value))
            continue
        if isinstance(value, fits.card.Undefined):
            value = None
        elif isinstance(value, float) and not math.isfinite(value):
            value = str(value)
        elif isinstance(value, complex):
            value = str(value)
        elif isinstance(value, np.generic):
            value = value.item()
        out[key] = value
    return out
