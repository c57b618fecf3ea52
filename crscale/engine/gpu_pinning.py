"""Pin each Dask worker of a multi-GPU batch job to its own GPU (a worker preload).

A batch job that books N GPUs starts N worker processes (``dask worker --nworkers N``), which
all inherit the job's ``CUDA_VISIBLE_DEVICES`` (e.g. ``"0,1,2,3"``, or nothing at all on sites
that do not set it). dask-jobqueue names them ``<job>-0`` … ``<job>-{N-1}``. This module,
loaded with ``--preload crscale.engine.gpu_pinning``, narrows ``CUDA_VISIBLE_DEVICES`` of worker
``i`` to the job's ``i``-th GPU before torch initialises CUDA, so each worker sees exactly one
GPU as ``cuda:0``. The job prologue that crscale writes exports ``CRSCALE_GPUS_PER_JOB=N``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import MutableMapping
from typing import Any

#: Environment variable holding the GPUs booked per job (set by the job prologue).
GPUS_PER_JOB_VAR = "CRSCALE_GPUS_PER_JOB"

logger = logging.getLogger(__name__)


def worker_gpu(name: Any, environ: MutableMapping[str, str]) -> str | None:
    """The device that worker ``name`` of a job should see, or None to leave it as it is.

    Parameters
    ----------
    name : str or int
        The worker's name; dask names the workers of a multi-process job ``<job>-<i>``.
    environ : mapping
        The job's environment: ``CRSCALE_GPUS_PER_JOB`` and ``CUDA_VISIBLE_DEVICES``.

    Returns
    -------
    str or None
        The entry of the job's ``CUDA_VISIBLE_DEVICES`` for this worker (its index ``i`` when the
        variable is unset). None with one GPU per job (the batch system pins it already).

    Raises
    ------
    ValueError
        The worker name carries no index, or the index exceeds the GPUs of the job.
    """
    n = int(environ.get(GPUS_PER_JOB_VAR) or 1)
    if n <= 1:
        return None
    head, _, tail = str(name).rpartition("-")
    if not head or not tail.isdigit():
        raise ValueError(f"worker {name!r}: no '-<index>' suffix to choose one of the job's {n} GPUs")
    index = int(tail)
    visible = [d.strip() for d in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    devices = visible or [str(i) for i in range(n)]
    if index >= len(devices):
        raise ValueError(f"worker {name!r}: index {index} but the job sees GPUs {devices}")
    return devices[index]


def pin(name: Any, *, environ: MutableMapping[str, str] = os.environ) -> str | None:
    """Set ``CUDA_VISIBLE_DEVICES`` in ``environ`` to worker ``name``'s GPU; return it (or None)."""
    device = worker_gpu(name, environ)
    if device is not None:
        environ["CUDA_VISIBLE_DEVICES"] = device
    return device


def dask_setup(worker: Any) -> None:
    """Preload hook: distributed calls it in the worker process before any task runs."""
    device = pin(worker.name)
    if device is not None:
        logger.info("crscale: worker %s pinned to GPU %s", worker.name, device)
