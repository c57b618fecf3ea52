"""crscale: survey-scale cosmic-ray detection, cleaning and cataloguing on Dask."""

from crscale import config  # noqa: F401  (registers the crscale defaults with dask.config)
from crscale._version import __version__

__all__ = ["__version__", "sample_data_dir"]


def sample_data_dir() -> "Path":  # noqa: F821
    """Return the folder of the bundled real sample images (``crscale/data/sample``)."""
    from pathlib import Path

    return Path(__file__).parent / "data" / "sample"
