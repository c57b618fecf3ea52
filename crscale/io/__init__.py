"""Layer 1: FITS reading, header metadata, input discovery, the Zarr archive and the catalogue files.

The catalogue readers and input discovery are imported on first use (pyarrow and pandas are
not needed to read FITS files or open an archive).
"""

from typing import TYPE_CHECKING

from crscale._lazy import attach
from crscale.errors import ArchiveError, CrscaleError, InputError
from crscale.io.archive import FORMAT_VERSION, Archive
from crscale.io.fits_reader import DetectorData, Exposure, read_exposure, sha256_file

_LAZY = {
    "catalogued_exposures": "crscale.io.catalogue_store",
    "export_table": "crscale.io.catalogue_store",
    "rates_dataset": "crscale.io.catalogue_store",
    "read_table": "crscale.io.catalogue_store",
    "read_table_dask": "crscale.io.catalogue_store",
    "InputSpec": "crscale.io.inputs",
    "expand_inputs": "crscale.io.inputs",
    "fits_files": "crscale.io.inputs",
}
__getattr__, __dir__ = attach(__name__, _LAZY)

if TYPE_CHECKING:  # the lazy names' real types, for mypy
    from crscale.io.catalogue_store import (
        catalogued_exposures,
        export_table,
        rates_dataset,
        read_table,
        read_table_dask,
    )
    from crscale.io.inputs import InputSpec, expand_inputs, fits_files

__all__ = [
    "FORMAT_VERSION",
    "Archive",
    "ArchiveError",
    "CrscaleError",
    "DetectorData",
    "Exposure",
    "InputError",
    "InputSpec",
    "catalogued_exposures",
    "expand_inputs",
    "export_table",
    "fits_files",
    "rates_dataset",
    "read_exposure",
    "read_table",
    "read_table_dask",
    "sha256_file",
]
