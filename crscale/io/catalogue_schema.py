"""Column schemas of the two catalogue tables (Parquet, via pyarrow).

``CR_SCHEMA``: one row per cosmic ray. ``EXPOSURE_SCHEMA``: one row per exposure x detector.
Units are in the field metadata (``unit``) and in ``docs/catalogue.md``. Pixel coordinates are
0-based (x: column, y: row) on the detector as stored in the archive.
"""

from __future__ import annotations

import pyarrow as pa

#: Morphology classes, in the order of the rules (rules in :mod:`crscale.catalogue.morphology`).
CLASSES = ("dot", "spot", "track", "worm")

#: Energy to make one electron-hole pair in silicon (eV).
EV_PER_ELECTRON = 3.65


def _f(name: str, type_: pa.DataType, unit: str, doc: str, nullable: bool = False) -> pa.Field:
    return pa.field(name, type_, nullable=nullable, metadata={"unit": unit, "doc": doc})


CR_SCHEMA = pa.schema(
    [
        _f("exposure", pa.string(), "", "exposure id in the archive"),
        _f("detector", pa.string(), "", "detector (FITS extension) name"),
        _f("id", pa.int32(), "", "CR id on its detector: 1, 2, ... in raster order of the first pixel"),
        _f("x", pa.float64(), "pix", "centroid column (charge-weighted; geometric when no charge)"),
        _f("y", pa.float64(), "pix", "centroid row"),
        _f("x_min", pa.int32(), "pix", "bounding box, first column"),
        _f("x_max", pa.int32(), "pix", "bounding box, last column (inclusive)"),
        _f("y_min", pa.int32(), "pix", "bounding box, first row"),
        _f("y_max", pa.int32(), "pix", "bounding box, last row (inclusive)"),
        _f("n_pixels", pa.int32(), "pix", "number of pixels"),
        _f("length", pa.float32(), "pix", "length along the CR (geodesic diameter of its pixels)"),
        _f("width", pa.float32(), "pix", "mean width: n_pixels / length"),
        _f("orientation", pa.float32(), "deg", "major axis from +x towards +y, in (-90, 90]"),
        _f("straightness", pa.float32(), "", "straight-line path length / length (1: straight)"),
        _f("peak_e", pa.float32(), "electron", "highest pixel above the local background"),
        _f("charge_e", pa.float64(), "electron", "sum of (image - local background) x gain"),
        _f("energy_ev", pa.float64(), "eV", "charge_e x 3.65 eV (electron-hole pair in silicon)"),
        _f("edge_distance", pa.int32(), "pix", "pixels between the CR and the nearest detector edge"),
        _f("saturated", pa.bool_(), "", "a pixel reaches the saturation level: charge is a lower limit"),
        _f("morphology", pa.string(), "", "dot, spot, track or worm"),
        _f("kind", pa.string(), "", "cr, a defect (hot_pixel, hot_column, hot_row, persistent, bad_pixel) "
           "or unverified (format 1.3; null in older catalogues)", nullable=True),
    ]
)

EXPOSURE_SCHEMA = pa.schema(
    [
        _f("exposure", pa.string(), "", "exposure id in the archive"),
        _f("detector", pa.string(), "", "detector (FITS extension) name"),
        _f("instrument", pa.string(), "", "INSTRUME", nullable=True),
        _f("telescope", pa.string(), "", "TELESCOP", nullable=True),
        _f("date_obs", pa.string(), "", "start of the exposure, ISO 8601 UTC", nullable=True),
        _f("mjd", pa.float64(), "d", "start of the exposure, MJD", nullable=True),
        _f("exptime", pa.float64(), "s", "exposure time from the header", nullable=True),
        _f("readout_time", pa.float64(), "s", "full-frame read-out time of the profile"),
        _f("effective_exptime", pa.float64(), "s", "time the pixels collect CRs", nullable=True),
        _f("n_cr", pa.int64(), "", "number of CRs"),
        _f("n_dot", pa.int64(), "", "CRs of class dot"),
        _f("n_spot", pa.int64(), "", "CRs of class spot"),
        _f("n_track", pa.int64(), "", "CRs of class track"),
        _f("n_worm", pa.int64(), "", "CRs of class worm"),
        _f("n_cr_pixels", pa.int64(), "pix", "pixels in CRs"),
        _f("n_pixels_usable", pa.int64(), "pix", "pixels that can record a CR (finite, not flagged bad)"),
        _f("cr_pixel_fraction", pa.float64(), "", "n_cr_pixels / n_pixels_usable"),
        _f("pixel_size_um", pa.float64(), "um", "physical (unbinned) pixel size"),
        _f("binning", pa.string(), "", "on-chip binning x,y"),
        _f("thickness_um", pa.float64(), "um", "sensor thickness of the profile", nullable=True),
        _f("area_cm2", pa.float64(), "cm2", "sensitive area: usable pixels x binned pixel area"),
        _f("rate", pa.float64(), "cm-2 s-1", "n_cr / (area_cm2 x effective_exptime)", nullable=True),
        _f("rate_err", pa.float64(), "cm-2 s-1", "Poisson error: sqrt(n_cr) / (area x time)", nullable=True),
        _f("gain", pa.float64(), "electron/adu", "gain used for the charges"),
        _f("charge_e", pa.float64(), "electron", "sum of the CRs' charges"),
        _f("profile", pa.string(), "", "instrument profile used"),
        _f("guessed", pa.string(), "", "comma-separated fields that are guesses, not measured"),
        _f("background", pa.string(), "", "local background: clean (the archive's) or inpaint"),
        _f("model", pa.string(), "", "model that made the mask", nullable=True),
        _f("threshold", pa.float64(), "", "probability threshold of the mask", nullable=True),
        # format 1.3: artefacts and completeness (null in older catalogues)
        _f("n_defects", pa.int64(), "", "regions on persistent defects (not counted in n_cr)",
           nullable=True),
        _f("n_unverified", pa.int64(), "", "regions a defect could explain on a detector with too few "
           "exposures to tell (not counted in n_cr)", nullable=True),
        _f("n_defect_pixels", pa.int64(), "pix", "defect pixels (not in n_pixels_usable)", nullable=True),
        _f("defect_map", pa.string(), "", "state of the detector's defect map: verified or unverified",
           nullable=True),
        _f("completeness", pa.float64(), "", "probability that a CR of the detector is catalogued as kind cr",
           nullable=True),
        _f("completeness_err", pa.float64(), "", "binomial error of completeness", nullable=True),
        _f("rate_corrected", pa.float64(), "cm-2 s-1", "rate / completeness", nullable=True),
        _f("rate_corrected_err", pa.float64(), "cm-2 s-1", "Poisson and completeness errors combined",
           nullable=True),
    ]
)
