"""crscale settings, kept in dask's own config system under the ``crscale:`` key.

The package defaults (``crscale/crscale.yaml``) are registered with
:func:`dask.config.update_defaults` on import, so any YAML file dask reads
(``~/.config/dask/*.yaml``, ``$DASK_CONFIG``) or ``DASK_CRSCALE__...`` environment
variables override them, next to the site's ``distributed:`` and ``jobqueue:`` settings.

``crscale.yaml`` is the one source of every default: :func:`get` fails on a key that is
not set rather than falling back to a value written in code, and code that needs a
default outside the config (a dataclass field, a keyword default) reads it with
:func:`shipped`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dask.config
import yaml

from crscale.errors import SettingsError

_DEFAULTS_FILE = Path(__file__).with_name("crscale.yaml")

with _DEFAULTS_FILE.open() as _fh:
    DEFAULTS: dict[str, Any] = yaml.safe_load(_fh)

dask.config.update_defaults(DEFAULTS)

_MISSING = object()


def get(key: str, default: Any = _MISSING) -> Any:
    """Return a crscale setting.

    Parameters
    ----------
    key : str
        Dotted key below ``crscale.``, e.g. ``"archive.chunks"``.
    default : Any, optional
        Returned when the key is not set anywhere. crscale itself never passes one: every
        key it reads has its default in ``crscale/crscale.yaml``.

    Returns
    -------
    Any
        The configured value.

    Raises
    ------
    crscale.errors.SettingsError
        When the key is not set and no ``default`` is given (e.g. a site config that
        replaced a whole section and left the key out).
    """
    value = dask.config.get(f"crscale.{key}", default=_MISSING)
    if value is not _MISSING:
        return value
    if default is not _MISSING:
        return default
    raise SettingsError(
        f"crscale.{key} is not set: the site config must keep it (its shipped default is in {_DEFAULTS_FILE})"
    )


def shipped(key: str) -> Any:
    """The packaged default of ``crscale.<key>`` from ``crscale/crscale.yaml``, ignoring site config.

    Parameters
    ----------
    key : str
        Dotted key below ``crscale.``, e.g. ``"detect.inpaint_method"``.

    Returns
    -------
    Any
        The value written in ``crscale.yaml``.

    Raises
    ------
    crscale.errors.SettingsError
        When ``crscale.yaml`` has no such key.
    """
    node: Any = DEFAULTS["crscale"]
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise SettingsError(f"crscale.{key} has no shipped default in {_DEFAULTS_FILE}")
        node = node[part]
    return node
