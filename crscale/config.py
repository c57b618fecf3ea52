"""crscale settings, kept in dask's own config system under the ``crscale:`` key.

The package defaults (``crscale/crscale.yaml``) are registered with
:func:`dask.config.update_defaults` on import, so any YAML file dask reads
(``~/.config/dask/*.yaml``, ``$DASK_CONFIG``) or ``DASK_CRSCALE__...`` environment
variables override them, next to the site's ``distributed:`` and ``jobqueue:`` settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dask.config
import yaml

_DEFAULTS_FILE = Path(__file__).with_name("crscale.yaml")

with _DEFAULTS_FILE.open() as _fh:
    DEFAULTS: dict[str, Any] = yaml.safe_load(_fh)

dask.config.update_defaults(DEFAULTS)


def get(key: str, default: Any = None) -> Any:
    """Return a crscale setting.

    Parameters
    ----------
    key : str
        Dotted key below ``crscale.``, e.g. ``"archive.chunks"``.
    default : Any, optional
        Returned when the key is not set anywhere.

    Returns
    -------
    Any
        The configured value.
    """
    return dask.config.get(f"crscale.{key}", default=default)
