"""What a pipeline's data-quality values mean: bad, saturated, already flagged as a cosmic ray.

Each instrument pipeline has its own DQ convention: HST's calibration pipelines OR bits into a
``DQ`` extension (8192: CR found by CR-SPLIT rejection), the NOIRLab Community Pipeline writes
one *code* per pixel into a companion ``ood`` file (5: cosmic ray; codes are not bits), LCO's
BANZAI ORs bits into ``BPM`` (8: cosmic ray). A pixel that the pipeline already flagged as a CR
is not a bad pixel: crscale detects it as usual and reports how its mask agrees with the
pipeline's flags. The conventions are one table, ``dq_conventions.yaml`` next to this module,
matched on the archive's ``instrument`` / ``telescope`` / ``detector`` like the catalogue's
instrument profiles, and extended by users under ``crscale.dq.conventions`` in dask config.

The same table says how ``crscale write-fits --flags native`` writes a CR back
(:attr:`DQConvention.flag_plane`, :attr:`DQConvention.flag_value`).
"""

from __future__ import annotations

import copy
import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from crscale import config
from crscale.errors import SettingsError

__all__ = ["DQConvention", "ExcludedView", "convention_for", "load_conventions", "match_convention"]

CONVENTIONS_FILE = Path(__file__).with_name("dq_conventions.yaml")
KINDS = ("bits", "codes", "nonzero")
_LISTS = ("bad", "saturated", "cosmic_ray", "ignore")
_FIELDS = ("name", "description", "match", "kind", *_LISTS, "flag_cr", "references")
_MATCH_KEYS = ("instrument", "telescope", "detector")


@dataclass(frozen=True)
class DQConvention:
    """The meaning of one pipeline's DQ values, and how it flags a CR.

    Attributes
    ----------
    name : str
        Unique id (``hst``, ``noirlab-cp``, ``lco-banzai``, ``generic`` ...).
    description : str
        One line.
    match : dict of str to str
        Case-insensitive regular expressions on ``instrument`` / ``telescope`` / ``detector``.
    kind : {"bits", "codes", "nonzero"}
        How DQ values combine.
    bad, saturated, cosmic_ray, ignore : tuple of int
        Bit values (kind ``bits``) or codes (kind ``codes``) of each meaning. Values listed
        nowhere are bad.
    flag_plane : str or None
        EXTNAME of the pipeline's own DQ plane, ``"companion"`` for a separate DQ file, or None
        (write a ``CRMASK`` extension instead).
    flag_value : int
        The bit OR-ed in, or the code set where the code was 0.
    references : tuple of str
        Sources of the meanings.
    """

    name: str
    description: str
    match: dict[str, str]
    kind: str
    bad: tuple[int, ...] = ()
    saturated: tuple[int, ...] = ()
    cosmic_ray: tuple[int, ...] = ()
    ignore: tuple[int, ...] = ()
    flag_plane: str | None = None
    flag_value: int = 1
    references: tuple[str, ...] = ()

    def matches(self, instrument: str | None, telescope: str | None, detector: str | None) -> bool:
        """Whether every ``match`` rule holds (an empty ``match`` never does)."""
        if not self.match:
            return False
        values = {"instrument": instrument, "telescope": telescope, "detector": detector}
        return all(
            values.get(k) is not None and re.search(p, str(values[k]), re.IGNORECASE) is not None
            for k, p in self.match.items()
        )

    def _has(self, dq: np.ndarray, values: tuple[int, ...]) -> np.ndarray:
        dq = np.asarray(dq)
        if not values:
            return np.zeros(dq.shape, bool)
        if self.kind == "bits":
            return (dq.astype(np.int64, copy=False) & int(sum(set(values)))) != 0
        return np.isin(dq, values)

    def saturated_mask(self, dq: np.ndarray) -> np.ndarray:
        """Pixels the pipeline flagged as saturated."""
        return self._has(dq, self.saturated)

    def cr_mask(self, dq: np.ndarray) -> np.ndarray:
        """Pixels the pipeline already flagged as cosmic rays."""
        return self._has(dq, self.cosmic_ray)

    def bad_mask(self, dq: np.ndarray) -> np.ndarray:
        """Pixels that are bad for a reason other than saturation (unknown values included)."""
        dq = np.asarray(dq)
        if self.kind == "nonzero":
            return dq != 0
        if self.kind == "codes":
            known = (*self.saturated, *self.cosmic_ray, *self.ignore, 0)
            return ~np.isin(dq, known)
        harmless = int(sum(set((*self.saturated, *self.cosmic_ray, *self.ignore))))
        return (dq.astype(np.int64, copy=False) & ~harmless) != 0

    def excluded(self, dq: np.ndarray) -> np.ndarray:
        """Pixels never called CRs and left out of the usable area: bad or saturated, as uint8.

        A pixel flagged only as a CR (or only with ``ignore`` values) is not excluded. The
        result is a plane in which non-zero means excluded, the form
        :func:`crscale.detection.badpix.bad_pixel_mask` takes.
        """
        return (self.bad_mask(dq) | self.saturated_mask(dq)).astype(np.uint8)

    def flag(self, dq: np.ndarray, crs: np.ndarray) -> np.ndarray:
        """The DQ plane with crscale's CRs flagged in this convention (a new array).

        Bits: ``dq | flag_value`` at CR pixels. Codes: ``flag_value`` only where the code was 0,
        so that every existing code survives.
        """
        out = np.array(dq, copy=True)
        if np.issubdtype(out.dtype, np.integer) and self.flag_value > np.iinfo(out.dtype).max:
            out = out.astype(np.promote_types(out.dtype, np.min_scalar_type(self.flag_value)))
        crs = np.asarray(crs) != 0
        if self.kind == "codes":
            out[crs & (out == 0)] = self.flag_value
        else:
            out[crs] |= np.asarray(self.flag_value).astype(out.dtype)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form, the YAML entry's."""
        return {
            "name": self.name,
            "description": self.description,
            "match": dict(self.match),
            "kind": self.kind,
            **{k: list(getattr(self, k)) for k in _LISTS},
            "flag_cr": {"plane": self.flag_plane, "value": self.flag_value},
            "references": list(self.references),
        }


class ExcludedView:
    """An array-like over a stored DQ plane whose slices are :meth:`DQConvention.excluded`.

    Lets code that reads a DQ plane band by band (the catalogue) apply a convention without
    reading the whole plane.
    """

    def __init__(self, array: Any, convention: DQConvention) -> None:
        self.array = array
        self.convention = convention
        self.shape = tuple(array.shape)
        self.dtype = np.dtype(np.uint8)

    def __getitem__(self, key: Any) -> np.ndarray:
        return self.convention.excluded(np.asarray(self.array[key]))


def _build(entry: dict[str, Any], where: str) -> DQConvention:
    unknown = sorted(set(entry) - set(_FIELDS))
    if unknown:
        raise SettingsError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(_FIELDS)}")
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise SettingsError(f"{where}: 'name' must be a non-empty string")
    kind = entry.get("kind")
    if kind not in KINDS:
        raise SettingsError(f"{where}: kind must be one of {', '.join(KINDS)}, not {kind!r}")
    match = entry.get("match") or {}
    if not isinstance(match, dict) or any(k not in _MATCH_KEYS for k in match):
        raise SettingsError(f"{where}: match must map {'/'.join(_MATCH_KEYS)} to regular expressions")
    for key, pattern in match.items():
        try:
            re.compile(str(pattern))
        except re.error as exc:
            raise SettingsError(f"{where}: bad regex for match.{key} {pattern!r}: {exc}") from None
    lists = {}
    for key in _LISTS:
        values = entry.get(key) or []
        if not isinstance(values, list) or any(isinstance(v, bool) or not isinstance(v, int) for v in values):
            raise SettingsError(f"{where}: {key} must be a list of integers, not {values!r}")
        if kind == "bits" and any(v <= 0 or v & (v - 1) for v in values):
            raise SettingsError(f"{where}: {key} of a 'bits' convention must be powers of two, not {values}")
        if kind == "nonzero" and values:
            raise SettingsError(f"{where}: a 'nonzero' convention lists no values ({key}: {values})")
        lists[key] = tuple(int(v) for v in values)
    flag = entry.get("flag_cr") or {}
    if not isinstance(flag, dict):
        raise SettingsError(f"{where}: flag_cr must be a mapping with 'plane' and 'value'")
    value = flag.get("value", 1)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SettingsError(f"{where}: flag_cr.value must be a positive integer, not {value!r}")
    plane = flag.get("plane")
    return DQConvention(
        name=name,
        description=str(entry.get("description") or ""),
        match={str(k): str(v) for k, v in match.items()},
        kind=kind,
        flag_plane=None if plane is None else str(plane),
        flag_value=int(value),
        references=tuple(str(r) for r in entry.get("references") or ()),
        **lists,
    )


@functools.lru_cache(maxsize=1)
def _shipped() -> tuple[dict[str, Any], ...]:
    with CONVENTIONS_FILE.open() as fh:
        data = yaml.safe_load(fh)
    return tuple(data["conventions"])


def load_conventions(user: list[dict[str, Any]] | None = None) -> list[DQConvention]:
    """The conventions in match order: users' new entries, then the shipped ones.

    Parameters
    ----------
    user : list of dict, optional
        Entries of the YAML form; default ``crscale.dq.conventions`` from dask config. An entry
        named like a shipped one overrides that entry's fields (``match`` as a whole).

    Raises
    ------
    ValueError
        An entry is malformed (the message names it and the problem).
    """
    user = config.get("dq.conventions") if user is None else user
    shipped = [copy.deepcopy(e) for e in _shipped()]
    names = [e["name"] for e in shipped]
    new = []
    for i, entry in enumerate(user or []):
        if not isinstance(entry, dict):
            raise SettingsError(f"crscale.dq.conventions entry #{i}: expected a mapping, got {entry!r}")
        if entry.get("name") in names:
            shipped[names.index(entry["name"])].update(copy.deepcopy(entry))
        else:
            new.append(copy.deepcopy(entry))
    return [
        _build(e, f"dq convention {e.get('name', '#' + str(i))!r}") for i, e in enumerate(new + shipped)
    ]


def match_convention(
    instrument: str | None,
    telescope: str | None,
    *,
    detector: str | None = None,
    conventions: list[DQConvention] | None = None,
) -> DQConvention:
    """The first convention whose rules hold, else ``generic`` (any non-zero value is bad)."""
    table = conventions if conventions is not None else load_conventions()
    for conv in table:
        if conv.matches(instrument, telescope, detector):
            return conv
    for conv in table:
        if conv.name == "generic":
            return conv
    return DQConvention("generic", "any non-zero value is bad", {}, "nonzero")


def convention_for(
    exposure_attrs: dict[str, Any],
    *,
    detector_attrs: dict[str, Any] | None = None,
    conventions: list[DQConvention] | None = None,
) -> DQConvention:
    """The convention of one archive detector, from its exposure's and its own attributes."""
    det = detector_attrs or {}
    return match_convention(
        det.get("instrument") or exposure_attrs.get("instrument"),
        det.get("telescope") or exposure_attrs.get("telescope"),
        detector=det.get("detector"),
        conventions=conventions,
    )


def cr_flag_agreement(dq: np.ndarray, mask: np.ndarray, convention: DQConvention) -> dict[str, Any]:
    """How crscale's CR mask agrees with the CR flags a pipeline left in its DQ plane.

    Parameters
    ----------
    dq : numpy.ndarray
        The pipeline's DQ plane.
    mask : numpy.ndarray
        crscale's CR mask (non-zero: CR).
    convention : DQConvention
        What the DQ values mean.

    Returns
    -------
    dict
        ``pipeline`` (pixels the pipeline flagged as CRs), ``crscale`` (crscale's CR pixels on
        usable pixels), ``both``, ``recall`` (share of the pipeline's flags crscale also found)
        and ``precision`` (share of crscale's pixels the pipeline flagged too); the shares are
        None when their denominator is 0. ``convention`` names the convention used.
    """
    prior = convention.cr_mask(dq)
    usable = convention.excluded(dq) == 0
    found = (np.asarray(mask) != 0) & usable
    n_prior, n_found = int(np.count_nonzero(prior)), int(np.count_nonzero(found))
    both = int(np.count_nonzero(prior & found))
    return {
        "convention": convention.name,
        "pipeline": n_prior,
        "crscale": n_found,
        "both": both,
        "recall": both / n_prior if n_prior else None,
        "precision": both / n_found if n_found else None,
    }
