"""Layer 1: FITS reading, header metadata and the Zarr archive."""

from crscale.errors import ArchiveError, CrscaleError, InputError
from crscale.io.archive import FORMAT_VERSION, Archive
from crscale.io.fits_reader import DetectorData, Exposure, read_exposure, sha256_file

__all__ = [
    "FORMAT_VERSION",
    "Archive",
    "ArchiveError",
    "CrscaleError",
    "DetectorData",
    "Exposure",
    "InputError",
    "read_exposure",
    "sha256_file",
]
