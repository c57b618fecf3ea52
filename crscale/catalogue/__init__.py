"""CR catalogue: labelling, per-CR features, morphology, per-exposure rates, statistics.

- :func:`catalogue_detector`: the CRs of one detector's image and mask (labelled band by band);
- instrument profiles: :func:`load_profiles`, :func:`match_profile`, :func:`detector_physics`,
  :func:`profiles_table`;
- :class:`MorphologyRules`, :class:`DefectSettings`: the settings the catalogue applies;
- :func:`summarise`, :func:`exposure_rates`: survey statistics of an archive's catalogue
  (``crscale stats``).

The names are imported on first use, so that importing one module of the package stays cheap.
"""

from typing import TYPE_CHECKING

from crscale._lazy import attach

_EXPORTS = {
    "DefectSettings": "crscale.catalogue.defects",
    "DetectorCatalogue": "crscale.catalogue.detector",
    "catalogue_detector": "crscale.catalogue.detector",
    "MorphologyRules": "crscale.catalogue.morphology",
    "classify": "crscale.catalogue.morphology",
    "DetectorPhysics": "crscale.catalogue.physics",
    "InstrumentProfile": "crscale.catalogue.profiles",
    "detector_physics": "crscale.catalogue.physics",
    "load_profiles": "crscale.catalogue.profiles",
    "match_profile": "crscale.catalogue.profiles",
    "profiles_table": "crscale.catalogue.profiles",
    "CatalogueStats": "crscale.catalogue.stats",
    "exposure_rates": "crscale.catalogue.stats",
    "summarise": "crscale.catalogue.stats",
}
__getattr__, __dir__ = attach(__name__, _EXPORTS)

if TYPE_CHECKING:  # the lazy names' real types, for mypy
    from crscale.catalogue.defects import DefectSettings  # noqa: F401
    from crscale.catalogue.detector import DetectorCatalogue, catalogue_detector  # noqa: F401
    from crscale.catalogue.morphology import MorphologyRules, classify  # noqa: F401
    from crscale.catalogue.physics import DetectorPhysics, detector_physics  # noqa: F401
    from crscale.catalogue.profiles import InstrumentProfile, load_profiles, match_profile, profiles_table  # noqa: F401
    from crscale.catalogue.stats import CatalogueStats, exposure_rates, summarise  # noqa: F401
__all__ = sorted(_EXPORTS)
