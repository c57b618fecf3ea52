"""Per exposure x detector: CR counts, sensitive area, effective exposure time and the CR rate.

- **Sensitive area** = usable pixels (finite, not DQ-flagged, not saturated) x the binned
  pixel area from the instrument profile (:mod:`crscale.catalogue.profiles`).
- **Effective exposure time**: CRs hit the silicon whether the shutter is open or not, from
  the clearing of the CCD to the moment each pixel is read. That is ``DARKTIME`` where the
  header gives it (the exposure plus shutter overheads), else ``EXPTIME``, plus the time a
  pixel waits to be read out: ``readout_fraction`` (0.5, settable under
  ``crscale.catalogue.readout_fraction``) x the profile's full-frame read-out time, since
  rows near the output amplifier are read at once and the farthest ones last.
- **Rate** = n_cr / (area x time) in CR cm⁻² s⁻¹, with the Poisson error sqrt(n_cr) / (area
  x time) (for n_cr = 0 the rate is 0 ± 0; the 1-sigma upper limit is 1.84 / (area x time)).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from crscale import config
from crscale.catalogue.defects import DEFECT_KINDS
from crscale.catalogue.detector import DetectorCatalogue
from crscale.io.catalogue_schema import CLASSES


def effective_exptime(
    exptime: float | None, darktime: float | None, readout_time: float, *, fraction: float | None = None
) -> float | None:
    """Seconds during which the detector's pixels collect CRs (see the module documentation)."""
    fraction = float(config.get("catalogue.readout_fraction") if fraction is None else fraction)
    base = darktime if darktime is not None and np.isfinite(darktime) and darktime > 0 else exptime
    if base is None or not np.isfinite(base) or base < 0:
        return None
    return float(base) + fraction * float(readout_time or 0.0)


def exposure_row(
    exposure_id: str,
    detector: str,
    result: DetectorCatalogue,
    physics: Any,
    *,
    exposure_attrs: dict[str, Any],
    detector_attrs: dict[str, Any],
    model: str | None = None,
    threshold: float | None = None,
    completeness: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """The exposure-table row of one detector.

    Parameters
    ----------
    exposure_id, detector : str
        Names.
    result : DetectorCatalogue
        The detector's CRs and pixel counts.
    physics : crscale.catalogue.profiles.DetectorPhysics
        Pixel size, binning, read-out time, gain and which of them are guesses.
    exposure_attrs, detector_attrs : dict
        The archive's attributes of the exposure and the detector (exptime, darktime, dates,
        instrument ...).
    model, threshold : optional
        What made the mask.
    completeness : tuple (C, sigma_C), optional
        The detector's measured completeness (:func:`corrected_rate`).

    Returns
    -------
    dict
        One row of :data:`crscale.io.catalogue_schema.EXPOSURE_SCHEMA`.
    """

    def pick(key: str) -> Any:
        value = detector_attrs.get(key)
        return value if value is not None else exposure_attrs.get(key)

    exptime = pick("exptime")
    darktime = detector_attrs.get("darktime")
    t_eff = effective_exptime(exptime, darktime, physics.readout_time_s)
    area = result.n_pixels_usable * physics.pixel_area_cm2
    n_cr = result.n_cr
    exposure = t_eff * area if t_eff is not None else 0.0
    is_cr = result.is_cr
    kinds = Counter(result.columns["kind"].tolist())
    classes = Counter(result.columns["morphology"][is_cr].tolist())
    guessed = list(physics.guessed)
    if t_eff is None:  # no usable (finite, non-negative) exposure time: no rate
        guessed.append("exptime")
    return {
        "exposure": exposure_id,
        "detector": detector,
        "instrument": pick("instrument"),
        "telescope": pick("telescope"),
        "date_obs": pick("date_obs"),
        "mjd": pick("mjd_obs"),
        "exptime": exptime,
        "readout_time": float(physics.readout_time_s or 0.0),
        "effective_exptime": t_eff,
        "n_cr": n_cr,
        **{f"n_{c}": int(classes.get(c, 0)) for c in CLASSES},
        "n_cr_pixels": result.n_cr_pixels,
        "n_pixels_usable": result.n_pixels_usable,
        "cr_pixel_fraction": result.n_cr_pixels / result.n_pixels_usable if result.n_pixels_usable else 0.0,
        "pixel_size_um": float(physics.pixel_size_um),
        "binning": ",".join(str(int(b)) for b in physics.binning),
        "thickness_um": physics.thickness_um,
        "area_cm2": area,
        "rate": n_cr / exposure if exposure > 0 else None,
        "rate_err": float(np.sqrt(n_cr)) / exposure if exposure > 0 else None,
        "gain": float(physics.gain),
        "charge_e": float(np.sum(result.columns["charge_e"][is_cr])),
        "profile": physics.profile,
        "guessed": ",".join(guessed),
        "background": result.background,
        "model": model,
        "threshold": threshold,
        "n_defects": int(sum(kinds.get(k, 0) for k in DEFECT_KINDS)),
        "n_unverified": int(kinds.get("unverified", 0)),
        "n_defect_pixels": int(result.n_defect_pixels),
        "defect_map": result.defect_map,
        **corrected_rate(n_cr, exposure, completeness=completeness),
    }


def corrected_rate(n_cr: int, exposure_cm2_s: float, *, completeness: Any = None) -> dict[str, float | None]:
    """Completeness-corrected rate and its error.

    Parameters
    ----------
    n_cr : int
        CRs counted.
    exposure_cm2_s : float
        Area x effective exposure time.
    completeness : tuple (C, sigma_C), optional
        Probability that a CR is catalogued as kind ``cr``, and its error.

    Returns
    -------
    dict
        ``completeness``, ``completeness_err``, ``rate_corrected`` = rate / C and
        ``rate_corrected_err`` = sqrt((sqrt(n) / C)² + (n sigma_C / C²)²) / exposure (the
        Poisson error and the completeness error combined), all None when unknown.
    """
    none: dict[str, float | None] = dict.fromkeys(
        ("completeness", "completeness_err", "rate_corrected", "rate_corrected_err")
    )
    if completeness is None or exposure_cm2_s <= 0:
        return none
    c, sc = (float(v) for v in completeness)
    if not np.isfinite(c) or c <= 0:
        return none
    rate = n_cr / exposure_cm2_s / c
    err = float(np.hypot(np.sqrt(n_cr) / c, n_cr * sc / c**2)) / exposure_cm2_s
    return {"completeness": c, "completeness_err": sc, "rate_corrected": rate, "rate_corrected_err": err}
