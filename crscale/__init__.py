"""crscale: survey-scale cosmic-ray detection, cleaning and cataloguing on Dask."""

from typing import TYPE_CHECKING

from crscale import config  # noqa: F401  (registers the crscale defaults with dask.config)
from crscale._version import __version__

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["__version__", "detect", "sample_data_dir"]


def __getattr__(name: str):
    # Lazy: `import crscale` (and the ingest CLI) should not pay for importing torch.
    if name == "detect":
        from crscale.detection import detect

        return detect
    raise AttributeError(f"module 'crscale' has no attribute {name!r}")


def sample_data_dir() -> "Path":
    """Return the folder of the bundled real sample images (``crscale/data/sample``)."""
    from pathlib import Path

    return Path(__file__).parent / "data" / "sample"
