"""CR catalogue: labelling, per-CR features, morphology, per-exposure rates, statistics.

- :func:`catalogue_detector`: the CRs of one detector's image and mask (labelled band by band);
- instrument profiles: :func:`load_profiles`, :func:`match_profile`, :func:`detector_physics`,
  :func:`profiles_table`;
- :class:`MorphologyRules`, :class:`DefectSettings`: the settings the catalogue applies;
- :func:`summarise`, :func:`exposure_rates`: survey statistics of an archive's catalogue
  (``crscale stats``).

The names are imported on first use, so that importing one module of the package stays cheap.
"""

from crscale._lazy import attach

_EXPORTS = {
    "DefectSettings": "crscale.catalog.defects",
    "DetectorCatalogue": "crscale.catalog.detector",
    "catalogue_detector": "crscale.catalog.detector",
    "MorphologyRules": "crscale.catalog.morphology",
    "classify": "crscale.catalog.morphology",
    "DetectorPhysics": "crscale.catalog.physics",
    "InstrumentProfile": "crscale.catalog.profiles",
    "detector_physics": "crscale.catalog.physics",
    "load_profiles": "crscale.catalog.profiles",
    "match_profile": "crscale.catalog.profiles",
    "profiles_table": "crscale.catalog.profiles",
    "CatalogueStats": "crscale.catalog.stats",
    "exposure_rates": "crscale.catalog.stats",
    "summarise": "crscale.catalog.stats",
}
__getattr__, __dir__ = attach(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
