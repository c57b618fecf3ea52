"""Deprecated location of :mod:`crscale.injection.footprints`, kept importable for a while.

The CR footprint libraries (and :mod:`crscale.injection.darks`) moved below training and
evaluation, which both use them.
"""

from crscale.injection.darks import footprints_from_dark, footprints_from_dark_file
from crscale.injection.footprints import (
    ITL_COLUMNS,
    CRFootprint,
    CRLibrary,
    itl_footprints_path,
    load_itl_footprints,
)

__all__ = [
    "ITL_COLUMNS",
    "CRFootprint",
    "CRLibrary",
    "footprints_from_dark",
    "footprints_from_dark_file",
    "itl_footprints_path",
    "load_itl_footprints",
]
