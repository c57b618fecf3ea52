"""Worker (and GPU) use of a running job, asked of its Dask scheduler when it can be reached."""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from crscale.engine.monitor import scheduler_tasks

log = logging.getLogger(__name__)


@dataclass
class WorkerUse:
    """One worker as its scheduler last saw it."""

    name: str
    address: str
    nthreads: int
    executing: int  #: tasks running on it now
    cpu: float  #: CPU use, % of one core
    memory_gib: float
    memory_limit_gib: float
    gpu_utilization: float | None = None  #: % (where the worker reports NVML metrics)
    gpu_memory_gib: float | None = None
    gpu_memory_total_gib: float | None = None
    resources: dict[str, float] = field(default_factory=dict)


def worker_use(info: dict[str, Any]) -> list[WorkerUse]:
    """:class:`WorkerUse` rows from ``Client.scheduler_info()``, sorted by name."""
    out = []
    gib = 2.0**30
    for address, w in (info.get("workers") or {}).items():
        metrics = w.get("metrics") or {}
        # distributed reports NVML figures twice: flat (its system monitor) and under "gpu"
        # (the worker's metric); the total comes with the startup information.
        nvml = gpu if isinstance(gpu := metrics.get("gpu"), dict) else {}
        startup = gpu_info if isinstance(gpu_info := w.get("gpu"), dict) else {}
        util = metrics.get("gpu_utilization", nvml.get("utilization"))
        used = metrics.get("gpu_memory_used", nvml.get("memory-used"))
        total = metrics.get("gpu-memory-total", startup.get("memory-total"))
        out.append(WorkerUse(
            name=str(w.get("name", address)),
            address=address,
            nthreads=int(w.get("nthreads") or 0),
            executing=int((metrics.get("task_counts") or {}).get("executing", 0) or 0),
            cpu=float(metrics.get("cpu") or 0.0),
            memory_gib=float(metrics.get("memory") or 0.0) / gib,
            memory_limit_gib=float(w.get("memory_limit") or 0.0) / gib,
            gpu_utilization=_float(util),
            gpu_memory_gib=None if (used_f := _float(used)) is None else used_f / gib,
            gpu_memory_total_gib=None if (total_f := _float(total)) is None else total_f / gib,
            resources=dict(w.get("resources") or {}),
        ))
    return sorted(out, key=lambda u: u.name)


def _float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


class SchedulerProbe:
    """A client of a job's scheduler, connected on first use and dropped when it stops answering.

    Parameters
    ----------
    timeout : float
        Seconds to connect or to get an answer, at most.
    retry_s : float
        Seconds before trying again a scheduler that could not be reached (a job on a network
        this machine cannot see must not slow every tick by ``timeout``).
    """

    def __init__(self, timeout: float = 3.0, *, retry_s: float = 30.0) -> None:
        self.timeout = timeout
        self.retry_s = retry_s
        self._retry_at = 0.0
        self.address: str | None = None
        self.client: Any = None
        #: Why the scheduler could not be asked at the last :meth:`poll` (None: it answered).
        self.error: str | None = "no job record yet"

    def close(self) -> None:
        """Disconnect (the job's cluster is not touched)."""
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close(timeout=self.timeout)
        self.client = None
        self.address = None

    def poll(self, address: str | None, running: bool) -> tuple[list[WorkerUse], dict[str, int]]:
        """Workers and tasks by state of the scheduler at ``address`` (empty when unreachable).

        Parameters
        ----------
        address : str or None
            The job's scheduler (``jobs/current.json``).
        running : bool
            Whether the job is still running; an ended job's scheduler is not asked.
        """
        if not running or not address:
            self.close()
            self.error = "the job is not running" if address else "no scheduler recorded"
            return [], {}
        if address != self.address:
            self.close()
            if time.monotonic() < self._retry_at:
                return [], {}
            from distributed import Client

            try:
                self.client = Client(address, timeout=self.timeout, set_as_default=False)
                self.address = address
            except Exception as exc:  # refused, timed out, or another protocol
                self.error = f"scheduler {address} not reachable ({type(exc).__name__})"
                self._retry_at = time.monotonic() + self.retry_s
                log.debug("cannot connect to %s: %s", address, exc)
                return [], {}
        try:
            info = self.client.scheduler_info(n_workers=-1)
        except Exception as exc:  # the scheduler went away
            self.error = f"scheduler {address} stopped answering ({type(exc).__name__})"
            self._retry_at = time.monotonic() + self.retry_s
            self.close()
            return [], {}
        self.error = None
        return worker_use(info), scheduler_tasks(self.client, timeout=self.timeout)
