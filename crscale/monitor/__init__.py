"""Monitoring crscale jobs: a live dashboard (Bokeh), and the text monitor for terminals.

* :func:`dashboard` starts the live dashboard of the job on an archive (one call in a
  notebook; ``crscale dashboard ARCHIVE`` from a shell), served on 127.0.0.1;
* the text monitor of :mod:`crscale.engine.monitor` (:func:`watch`, :func:`archive_progress`,
  :func:`rates_so_far`, :func:`wait_for_job`) is re-exported here: the terminal fallback.

This package sits above the engine (it reads what the engine's stages and job record write)
and below the CLI. Bokeh is imported only when a page is served.
"""

from crscale.engine.monitor import (
    RateFollower,
    Snapshot,
    archive_progress,
    format_progress,
    rates_so_far,
    wait_for_job,
    watch,
)
from crscale.monitor.server import DashboardServer, dashboard
from crscale.monitor.state import DashboardState, View

__all__ = [
    "DashboardServer",
    "DashboardState",
    "RateFollower",
    "Snapshot",
    "View",
    "archive_progress",
    "dashboard",
    "format_progress",
    "rates_so_far",
    "wait_for_job",
    "watch",
]
