"""The physical values of one detector of one exposure, resolved from its attributes and profile.

Header values (pixel size, binning, gain) win over the instrument profile's
(:mod:`crscale.catalogue.profiles`); what comes from a profile that lists it as a guess, or from
the ``generic`` profile, is recorded as guessed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from crscale.catalogue.profiles import InstrumentProfile, match_profile
from crscale.io.metadata import as_float

__all__ = ["DetectorPhysics", "detector_physics"]


@dataclass(frozen=True)
class DetectorPhysics:
    """The resolved physical values of one detector of one exposure.

    Attributes
    ----------
    profile : str
        Name of the instrument profile used.
    pixel_size_um : float
        Physical, unbinned pixel pitch in micrometres.
    binning : tuple of int
        On-chip binning ``(x, y)``.
    thickness_um : float or None
        Sensitive thickness in micrometres; ``None`` when unknown.
    readout_time_s : float
        Full-frame read-out time in seconds.
    gain : float
        Gain in e-/ADU.
    guessed : tuple of str
        Names of the fields above whose values are guesses.
    """

    profile: str
    pixel_size_um: float
    binning: tuple[int, int]
    thickness_um: float | None
    readout_time_s: float
    gain: float
    guessed: tuple[str, ...] = ()

    @property
    def pixel_area_cm2(self) -> float:
        """Area of one binned pixel in cm^2: ``(pixel_size_um * 1e-4)**2 * bx * by``."""
        side_cm = self.pixel_size_um * 1e-4
        return side_cm * side_cm * self.binning[0] * self.binning[1]


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _positive(value: Any) -> float | None:
    out = as_float(value)
    return out if out is not None and out > 0 else None


def _binning(value: Any) -> tuple[int, int]:
    try:
        bx, by = (int(v) for v in value)
    except (TypeError, ValueError):
        return (1, 1)
    return (bx, by) if bx >= 1 and by >= 1 else (1, 1)


def detector_physics(
    exposure_attrs: dict[str, Any],
    detector_attrs: dict[str, Any],
    *,
    profiles: list[InstrumentProfile] | None = None,
) -> DetectorPhysics:
    """Resolve pixel size, binning, thickness, read-out time and gain of one detector.

    Parameters
    ----------
    exposure_attrs : dict
        The exposure's Zarr attributes (``instrument``, ``telescope``, ``exptime``, ...).
    detector_attrs : dict
        The detector's Zarr attributes (``instrument``, ``telescope``, ``detector``, ``gain``,
        ``guessed``, ``binning``, ``pixel_size_um``, ...). Its ``instrument`` / ``telescope``
        take precedence over the exposure's.
    profiles : list of InstrumentProfile, optional
        Default :func:`~crscale.catalogue.profiles.load_profiles`.

    Returns
    -------
    DetectorPhysics
        With, in ``guessed``:

        * ``pixel_size_um`` when the detector attrs give none and the profile's is a guess
          (or the profile is ``generic``); a header value is never a guess;
        * ``gain`` when ingest guessed the header gain (``'gain'`` in the detector's
          ``guessed``, or no usable gain) so the profile's gain is used, and that is itself a
          guess (or the profile is ``generic``);
        * ``readout_time_s`` / ``thickness_um`` when the profile lists them as guesses
          (``readout_time_s`` always for ``generic``).

        Binning comes from the attrs (default ``(1, 1)``) and is never flagged: ingest marks
        it guessed whenever ``CCDSUM`` is missing, which is normal for unbinned data.
    """
    exp = exposure_attrs or {}
    det = detector_attrs or {}
    instrument = _text(det.get("instrument")) or _text(exp.get("instrument"))
    telescope = _text(det.get("telescope")) or _text(exp.get("telescope"))
    detector = _text(det.get("detector"))
    prof = match_profile(instrument, telescope, detector, profiles=profiles)

    def profile_guess(field: str) -> bool:
        return field in prof.guessed or (prof.is_generic and field != "thickness_um")

    guessed: list[str] = []

    pixel = _positive(det.get("pixel_size_um"))
    if pixel is None:
        pixel = prof.pixel_size_um
        if profile_guess("pixel_size_um"):
            guessed.append("pixel_size_um")

    thickness = prof.thickness_um
    if thickness is not None and profile_guess("thickness_um"):
        guessed.append("thickness_um")

    readout = prof.readout_time_s
    if profile_guess("readout_time_s"):
        guessed.append("readout_time_s")

    header_gain = _positive(det.get("gain"))
    if header_gain is not None and "gain" not in (det.get("guessed") or []):
        gain = header_gain
    else:
        gain = prof.gain
        if profile_guess("gain"):
            guessed.append("gain")

    binning = det.get("binning")
    if binning is None:
        binning = exp.get("binning")

    return DetectorPhysics(
        profile=prof.name,
        pixel_size_um=float(pixel),
        binning=_binning(binning),
        thickness_um=thickness,
        readout_time_s=float(readout),
        gain=float(gain),
        guessed=tuple(guessed),
    )


# --------------------------------------------------------------------------------------
# Listing
