"""Send the client's ``crscale.storage`` settings to the workers, which open the stores themselves.

Workers read inputs and archives on object storage directly (``s3://``, ``gs://`` ...), so they
need the fsspec options of ``crscale.storage`` (an endpoint, a profile) that the client was given.
A ``LocalCluster`` inherits them; the workers of a cluster started elsewhere (``--scheduler``,
dask-jobqueue jobs) do not. :func:`share_storage_config` registers a worker plugin that sets
them on every worker, including workers that join later. Credentials are best left to each
worker's environment (``AWS_*`` variables, instance roles): the plugin carries whatever the
settings hold to the scheduler and the workers.
"""

from __future__ import annotations

from typing import Any

import dask.config
from distributed import WorkerPlugin

from crscale import config

PLUGIN_NAME = "crscale-storage-config"


class StorageConfigPlugin(WorkerPlugin):
    """Set ``crscale.storage`` on a worker to the client's settings.

    Parameters
    ----------
    settings : dict
        The client's ``crscale.storage`` mapping (protocol -> fsspec options).
    """

    idempotent = False  # a later registration (changed settings) replaces the earlier one

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings

    def setup(self, worker: Any) -> None:
        """Install the settings in the worker process's dask config."""
        dask.config.set({"crscale.storage": self.settings})


def share_storage_config(client: Any) -> bool:
    """Register :class:`StorageConfigPlugin` when ``crscale.storage`` holds any option.

    Returns
    -------
    bool
        True when settings were sent (nothing is sent when every protocol's mapping is empty).
    """
    settings = {k: dict(v) for k, v in (config.get("storage") or {}).items() if v}
    if not settings or not hasattr(client, "register_plugin"):
        return False
    client.register_plugin(StorageConfigPlugin(settings), name=PLUGIN_NAME)
    return True
