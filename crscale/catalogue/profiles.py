"""Instrument profiles: the physical facts a CR rate needs that FITS headers rarely give.

A CR rate in CR cm^-2 s^-1 is ``n_cr / (area_cm2 * effective_exptime)``. The area needs the
physical pixel size (and the binning), the effective exposure time needs the read-out time,
and charges need a gain when the header gave none. These facts live in *profiles*, one per
instrument / detector type, shipped in ``profiles.yaml`` next to this module.

Matching
--------
A profile's ``match`` holds rules on the archive's metadata keys ``instrument``,
``telescope`` and ``detector``: case-insensitive regular expressions applied with
:func:`re.search`. All keys given must match; a key whose value is missing (``None``) never
matches. The first profile whose rules hold is used. A profile with an empty ``match`` never
matches, except ``generic``, the fallback used when nothing else does.

User profiles
-------------
Sites add or change profiles in dask config, key ``crscale.catalogue.profiles`` (e.g. in
``~/.config/dask/crscale.yaml``): a list of entries of the same form as the shipped ones.

* An entry whose ``name`` is a shipped profile's overrides that profile field by field
  (fields it does not give keep the shipped values; ``match`` is replaced as a whole) and
  keeps the shipped profile's position in the order. Unless it gives its own ``guessed``,
  the values it gives are no longer listed as guessed.
* An entry with a new ``name`` is inserted *before* all shipped profiles (users' rules win),
  in the order the user listed them. It must give ``pixel_size_um``; a missing
  ``readout_time_s`` is 0 and a missing ``gain`` is 1.0, and both are then listed as guessed.
"""

from __future__ import annotations

import copy
import functools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import yaml

from crscale import config
from crscale._lazy import attach
from crscale.errors import SettingsError

__all__ = [
    "InstrumentProfile",
    "MATCH_KEYS",
    "load_profiles",
    "match_profile",
    "profiles_table",
]

# The per-detector resolution moved to crscale.catalogue.physics; its names still import from here.
__getattr__, __dir__ = attach(__name__, {
    "DetectorPhysics": "crscale.catalogue.physics", "detector_physics": "crscale.catalogue.physics",
})

if TYPE_CHECKING:  # the lazy names' real types, for mypy
    from crscale.catalogue.physics import DetectorPhysics, detector_physics  # noqa: F401

PROFILES_FILE = Path(__file__).with_name("profiles.yaml")

#: Metadata keys a ``match`` rule may test.
MATCH_KEYS = ("instrument", "telescope", "detector")

#: Name of the fallback profile.
GENERIC = "generic"

_FIELDS = (
    "name",
    "description",
    "match",
    "pixel_size_um",
    "thickness_um",
    "readout_time_s",
    "gain",
    "references",
    "guessed",
)
#: Fields whose values may be listed in ``guessed``.
_VALUE_FIELDS = ("pixel_size_um", "thickness_um", "readout_time_s", "gain")
_NEW_ENTRY_DEFAULTS: dict[str, Any] = {
    "description": "",
    "match": {},
    "thickness_um": None,
    "references": [],
    "guessed": [],
}


@dataclass(frozen=True)
class InstrumentProfile:
    """Physical facts of one instrument / detector type.

    Attributes
    ----------
    name : str
        Unique id, written to the catalogue's ``profile`` column.
    description : str
        One line.
    match : dict of str to str
        Rules on ``instrument`` / ``telescope`` / ``detector``: case-insensitive regular
        expressions (:func:`re.search`), all of which must match. Empty: never matches,
        except as the fallback named ``generic``.
    pixel_size_um : float
        Physical, unbinned pixel pitch in micrometres.
    thickness_um : float or None
        Depletion / sensitive thickness in micrometres; ``None`` when unknown.
    readout_time_s : float
        Full-frame, unbinned read-out time in seconds.
    gain : float
        Typical gain in e-/ADU, used only when the header gave none.
    references : tuple of str
        Sources of the values.
    guessed : tuple of str
        Fields whose values are estimates rather than documented values.
    """

    name: str
    description: str
    match: dict[str, str]
    pixel_size_um: float
    thickness_um: float | None
    readout_time_s: float
    gain: float
    references: tuple[str, ...] = ()
    guessed: tuple[str, ...] = ()

    @property
    def is_generic(self) -> bool:
        """Whether this is the fallback profile."""
        return self.name == GENERIC

    def matches(self, instrument: str | None, telescope: str | None, detector: str | None) -> bool:
        """Return whether all of this profile's ``match`` rules hold.

        Parameters
        ----------
        instrument, telescope, detector : str or None
            The metadata values; a rule on a ``None`` value does not hold.

        Returns
        -------
        bool
            ``False`` for an empty ``match``.
        """
        if not self.match:
            return False
        values = {"instrument": instrument, "telescope": telescope, "detector": detector}
        for key, pattern in self.match.items():
            value = values.get(key)
            if value is None or re.search(pattern, str(value), re.IGNORECASE) is None:
                return False
        return True


# --------------------------------------------------------------------------------------
# Loading and validation


@functools.lru_cache(maxsize=1)
def _shipped_entries() -> tuple[dict[str, Any], ...]:
    with PROFILES_FILE.open() as fh:
        data = yaml.safe_load(fh)
    entries = data.get("profiles") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise SettingsError(f"{PROFILES_FILE}: expected a top-level 'profiles:' list")
    return tuple(entries)


def _label(entry: Any, index: int, source: str) -> str:
    name = entry.get("name") if isinstance(entry, dict) else None
    return f"{source} profile {name!r}" if name else f"{source} profile #{index}"


@overload
def _number(value: Any, field: str, where: str) -> float: ...
@overload
def _number(value: Any, field: str, where: str, *, allow_none: bool) -> float | None: ...
def _number(value: Any, field: str, where: str, *, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SettingsError(f"{where}: {field} must be a number, got {value!r}")
    out = float(value)
    if not math.isfinite(out):
        raise SettingsError(f"{where}: {field} must be finite, got {value!r}")
    return out


def _check_keys(entry: dict[str, Any], where: str) -> None:
    unknown = sorted(set(entry) - set(_FIELDS))
    if unknown:
        raise SettingsError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(_FIELDS)}")


def _build(entry: dict[str, Any], where: str) -> InstrumentProfile:
    """Validate a complete entry and make the profile."""
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise SettingsError(f"{where}: 'name' must be a non-empty string")

    match = entry.get("match") or {}
    if not isinstance(match, dict):
        raise SettingsError(f"{where}: match must be a mapping of {'/'.join(MATCH_KEYS)} to regexes")
    for key, pattern in match.items():
        if key not in MATCH_KEYS:
            raise SettingsError(f"{where}: unknown match key {key!r}; allowed: {', '.join(MATCH_KEYS)}")
        if not isinstance(pattern, str):
            raise SettingsError(f"{where}: match.{key} must be a string regex, got {pattern!r}")
        try:
            re.compile(pattern, re.IGNORECASE)
        except re.error as exc:
            raise SettingsError(f"{where}: bad regex for match.{key} {pattern!r}: {exc}") from None

    if entry.get("pixel_size_um") is None:
        raise SettingsError(f"{where}: pixel_size_um is missing")
    pixel = _number(entry["pixel_size_um"], "pixel_size_um", where)
    if pixel <= 0:
        raise SettingsError(f"{where}: pixel_size_um must be positive, got {pixel}")
    thickness = _number(entry.get("thickness_um"), "thickness_um", where, allow_none=True)
    if thickness is not None and thickness <= 0:
        raise SettingsError(f"{where}: thickness_um must be positive or null, got {thickness}")
    readout = _number(entry.get("readout_time_s"), "readout_time_s", where)
    if readout < 0:
        raise SettingsError(f"{where}: readout_time_s must not be negative, got {readout}")
    gain = _number(entry.get("gain"), "gain", where)
    if gain <= 0:
        raise SettingsError(f"{where}: gain must be positive, got {gain}")

    description = entry.get("description") or ""
    if not isinstance(description, str):
        raise SettingsError(f"{where}: description must be a string")
    references = entry.get("references") or []
    if isinstance(references, str):
        references = [references]
    if not isinstance(references, (list, tuple)) or not all(isinstance(r, str) for r in references):
        raise SettingsError(f"{where}: references must be a list of strings")
    guessed = entry.get("guessed") or []
    if isinstance(guessed, str):
        guessed = [guessed]
    if not isinstance(guessed, (list, tuple)):
        raise SettingsError(f"{where}: guessed must be a list of field names")
    bad = [g for g in guessed if g not in _VALUE_FIELDS]
    if bad:
        raise SettingsError(
            f"{where}: guessed lists unknown field(s) {bad}; allowed: {', '.join(_VALUE_FIELDS)}"
        )

    return InstrumentProfile(
        name=name,
        description=description,
        match={str(k): str(v) for k, v in match.items()},
        pixel_size_um=pixel,
        thickness_um=thickness,
        readout_time_s=readout,
        gain=gain,
        references=tuple(references),
        guessed=tuple(dict.fromkeys(guessed)),
    )


def load_profiles() -> list[InstrumentProfile]:
    """Return the instrument profiles in matching order: user entries, then shipped ones.

    The shipped table (``crscale/catalogue/profiles.yaml``) is combined with the user entries
    in dask config key ``crscale.catalogue.profiles`` (a list of entries of the same form):

    * a user entry named like a shipped profile overrides that profile field by field
      (fields it leaves out keep the shipped values) and keeps the shipped position; unless
      it gives its own ``guessed``, the values it gives are no longer listed as guessed;
    * a user entry with a new name is inserted before all shipped profiles, in the user's
      order, so users' rules win. It must give ``pixel_size_um``; a missing ``readout_time_s``
      becomes 0 and a missing ``gain`` 1.0, both then listed in ``guessed``.

    Returns
    -------
    list of InstrumentProfile
        First match wins; ``generic`` (the fallback) is among them.

    Raises
    ------
    ValueError
        For an entry with unknown keys, no ``name``, a missing pixel size (new entries), a
        non-positive pixel size, thickness or gain, a negative read-out time, a bad regex, an
        unknown ``match`` key or ``guessed`` field, or a duplicate name. The message names
        the entry and the problem.
    """
    shipped: list[dict[str, Any]] = []
    for i, raw in enumerate(_shipped_entries()):
        where = _label(raw, i, "shipped")
        if not isinstance(raw, dict):
            raise SettingsError(f"{where}: expected a mapping, got {type(raw).__name__}")
        _check_keys(raw, where)
        shipped.append(copy.deepcopy(raw))
    positions = {e.get("name"): i for i, e in enumerate(shipped)}
    if len(positions) != len(shipped):
        raise SettingsError(f"{PROFILES_FILE}: duplicate profile names")

    user = config.get("catalogue.profiles") or []
    if not isinstance(user, (list, tuple)):
        raise SettingsError(
            f"crscale.catalogue.profiles must be a list of profile entries, got {type(user).__name__}"
        )
    new_entries: list[tuple[dict[str, Any], str]] = []
    seen: set[str] = set()
    for i, raw in enumerate(user):
        where = _label(raw, i, "user")
        if not isinstance(raw, dict):
            raise SettingsError(f"{where}: expected a mapping, got {type(raw).__name__}")
        _check_keys(raw, where)
        name = raw.get("name")
        if not isinstance(name, str) or not name.strip():
            raise SettingsError(f"{where}: 'name' must be a non-empty string")
        if name in seen:
            raise SettingsError(f"{where}: duplicate name in crscale.catalogue.profiles")
        seen.add(name)
        if name in positions:
            merged = shipped[positions[name]]
            if "guessed" not in raw:
                # A value the user gives is theirs, not the shipped guess.
                merged["guessed"] = [g for g in merged.get("guessed") or [] if g not in raw]
            merged.update(copy.deepcopy(raw))
        else:
            entry = {**copy.deepcopy(_NEW_ENTRY_DEFAULTS), **copy.deepcopy(raw)}
            guessed = list(entry.get("guessed") or [])
            for field, default in (("readout_time_s", 0.0), ("gain", 1.0)):
                if entry.get(field) is None:
                    entry[field] = default
                    if field not in guessed:
                        guessed.append(field)
            entry["guessed"] = guessed
            new_entries.append((entry, where))

    shipped_where = [
        _label(e, i, "user-overridden" if e.get("name") in seen else "shipped") for i, e in enumerate(shipped)
    ]
    profiles = [_build(e, w) for e, w in new_entries]
    profiles += [_build(e, w) for e, w in zip(shipped, shipped_where, strict=True)]
    return profiles


def match_profile(
    instrument: str | None,
    telescope: str | None,
    detector: str | None,
    *,
    profiles: list[InstrumentProfile] | None = None,
) -> InstrumentProfile:
    """Return the first profile whose ``match`` rules hold, else ``generic``.

    Parameters
    ----------
    instrument, telescope, detector : str or None
        Metadata of the detector (``INSTRUME``, ``TELESCOP``, ``DETECTOR`` as ingested).
    profiles : list of InstrumentProfile, optional
        The profiles to search, in order; default :func:`load_profiles`.

    Returns
    -------
    InstrumentProfile
        The first match; the profile named ``generic`` when none matches.

    Raises
    ------
    LookupError
        When nothing matches and ``profiles`` has no ``generic`` entry.
    """
    if profiles is None:
        profiles = load_profiles()
    fallback = None
    for prof in profiles:
        if prof.matches(instrument, telescope, detector):
            return prof
        if prof.is_generic and fallback is None:
            fallback = prof
    if fallback is None:
        raise LookupError(
            f"no profile matches instrument={instrument!r} telescope={telescope!r} "
            f"detector={detector!r} and there is no {GENERIC!r} fallback"
        )
    return fallback


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def profiles_table(profiles: list[InstrumentProfile] | None = None) -> str:
    """Return a plain-text table of the profiles, in matching order.

    Parameters
    ----------
    profiles : list of InstrumentProfile, optional
        Default :func:`load_profiles` (shipped plus user entries).

    Returns
    -------
    str
        Columns: name, match, pixel (um), thickness (um; ``-`` unknown), readout (s),
        gain (e-/ADU), guessed. Lines end with a newline.
    """
    if profiles is None:
        profiles = load_profiles()
    header = ("name", "match", "pixel_um", "thick_um", "readout_s", "gain", "guessed")
    rows = [header]
    for p in profiles:
        match = " ".join(f"{k}~/{v}/" for k, v in p.match.items()) or (
            "(fallback)" if p.is_generic else "(never)"
        )
        rows.append(
            (
                p.name,
                match,
                _fmt(p.pixel_size_um),
                _fmt(p.thickness_um),
                _fmt(p.readout_time_s),
                _fmt(p.gain),
                ",".join(p.guessed) or "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    numeric = {2, 3, 4, 5}
    lines = []
    for r in rows:
        cells = [
            c.rjust(w) if i in numeric and r is not header else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"
