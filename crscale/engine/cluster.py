"""Dask clusters for crscale: a LocalCluster by default, or a running scheduler."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import dask.config
from distributed import Client, LocalCluster

from crscale import config
from crscale.io.errors import CrscaleError


class ClusterError(CrscaleError):
    """No Dask cluster could be reached or started."""


def local_cluster_kwargs(n_workers: int | None = None) -> dict[str, Any]:
    """Keyword arguments for the default :class:`distributed.LocalCluster`.

    Sized to the machine from the ``crscale.cluster`` config: one single-threaded
    worker process per core (at most ``max_workers``), bound to localhost.

    Parameters
    ----------
    n_workers : int, optional
        Overrides the configured worker count.

    Returns
    -------
    dict
        Arguments for ``LocalCluster``.
    """
    cfg = config.get("cluster")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = int(cfg.get("threads_per_worker") or 1)
    n = n_workers or cfg.get("n_workers") or max(1, min(int(cfg.get("max_workers", 8)), cores // threads))
    return {
        "n_workers": int(n),
        "threads_per_worker": threads,
        "processes": bool(cfg.get("processes", True)),
        "host": cfg.get("host", "127.0.0.1"),
        "dashboard_address": cfg.get("dashboard_address", "127.0.0.1:0"),
        "memory_limit": cfg.get("memory_limit", "auto"),
    }


def _thread_environ(threads: int) -> dict[str, str]:
    # Worker processes each get `threads` BLAS/OpenMP threads, so that
    # workers x threads never oversubscribes the cores.
    value = str(threads)
    return {k: value for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


@contextlib.contextmanager
def dask_client(
    scheduler: str | None = None,
    *,
    n_workers: int | None = None,
    echo: Callable[[str], None] | None = print,
) -> Iterator[Client]:
    """Yield a dask client: connected to ``scheduler``, or to a new LocalCluster.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running scheduler (``tcp://host:8786``) or a scheduler file path
        (``*.json``). Default: start a LocalCluster sized to the machine and close it
        on exit.
    n_workers : int, optional
        Worker count of the LocalCluster.
    echo : callable, optional
        Where the dashboard address is printed; ``None`` for silence.

    Yields
    ------
    distributed.Client
        The connected client.
    """
    if scheduler:
        try:
            if scheduler.endswith(".json"):
                if not os.path.exists(scheduler):
                    raise ClusterError(f"scheduler file {scheduler} does not exist")
                client = Client(scheduler_file=scheduler)
            else:
                client = Client(scheduler)
        except (OSError, TimeoutError, ValueError) as exc:
            raise ClusterError(f"cannot connect to the Dask scheduler at {scheduler} ({exc})") from exc
        try:
            if echo:
                echo(f"Dask scheduler {client.scheduler.address}, dashboard {client.dashboard_link}")
            yield client
        finally:
            client.close()
        return
    kwargs = local_cluster_kwargs(n_workers)
    with dask.config.set(
        {"distributed.nanny.pre-spawn-environ": _thread_environ(kwargs["threads_per_worker"])}
    ):
        cluster = LocalCluster(**kwargs)
    client = Client(cluster)
    try:
        if echo:
            echo(
                f"Dask LocalCluster: {kwargs['n_workers']} workers x "
                f"{kwargs['threads_per_worker']} thread(s), dashboard {client.dashboard_link}"
            )
        yield client
    finally:
        client.close()
        cluster.close()
