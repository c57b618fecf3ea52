"""Per exposure x detector: CR counts, sensitive area, effective exposure time and the CR rate.

- **Sensitive area** = usable pixels (finite, not DQ-flagged, not saturated) x the binned
  pixel area from the instrument profile (:mod:`crscale.catalog.profiles`).
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
from crscale.catalog.detector import DetectorCatalogue
from crscale.io.catalogue_schema import CLASSES


def effective_exptime(
    exptime: float | None, darktime: float | None, readout_time: float, fraction: float | None = None
) -> float | None:
    """Seconds during which the detector's pixels collect CRs (see the module documentation)."""
    fraction = float(config.get("catalogue.readout_fraction", 0.5) if fraction is None else fraction)
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
) -> dict[str, Any]:
    """The exposure-table row of one detector.

    Parameters
    ----------
    exposure_id, detector : str
        Names.
    result : DetectorCatalogue
        The detector's CRs and pixel counts.
    physics : crscale.catalog.profiles.DetectorPhysics
        Pixel size, binning, read-out time, gain and which of them are guesses.
    exposure_attrs, detector_attrs : dict
        The archive's attributes of the exposure and the detector (exptime, darktime, dates,
        instrument ...).
    model, threshold : optional
        What made the mask.

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
    classes = Counter(result.columns["morphology"].tolist())
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
        "charge_e": float(np.sum(result.columns["charge_e"])),
        "profile": physics.profile,
        "guessed": ",".join(guessed),
        "background": result.background,
        "model": model,
        "threshold": threshold,
    }
