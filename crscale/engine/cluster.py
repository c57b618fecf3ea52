"""Dask clusters for crscale: a LocalCluster by default, or a running scheduler."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import dask.config
from distributed import Client, LocalCluster

from crscale import config, interrupts
from crscale._logging import reporter
from crscale.errors import ClusterError

logger = logging.getLogger(__name__)


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
    if n_workers is not None and n_workers < 1:
        raise ClusterError(f"n_workers must be at least 1, not {n_workers}")
    cfg = config.get("cluster")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = int(cfg.get("threads_per_worker") or 1)
    most = int(config.get("cluster.max_workers"))
    n = n_workers or cfg.get("n_workers") or max(1, min(most, cores // threads))
    return {
        "n_workers": int(n),
        "threads_per_worker": threads,
        "processes": bool(config.get("cluster.processes")),
        "host": config.get("cluster.host"),
        "dashboard_address": config.get("cluster.dashboard_address"),
        "memory_limit": config.get("cluster.memory_limit"),
    }


def count_gpus() -> int:
    """GPUs for the LocalCluster: ``crscale.cluster.gpus``, or with ``auto`` all that torch sees."""
    setting = config.get("cluster.gpus")
    if setting not in (None, "auto"):
        return max(0, int(setting))
    try:
        import torch
    except ImportError:
        return 0
    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def cluster_has_gpus(client: Client) -> bool:
    """Whether any worker of the cluster declares a ``GPU`` resource (then CNN tasks ask for one)."""
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    return any((w.get("resources") or {}).get("GPU", 0) > 0 for w in workers.values())


def gpu_worker_specs(n_gpus: int, *, n_cpu_workers: int = 0) -> dict[str, dict[str, Any]]:
    """Worker specs of a LocalCluster with GPUs: one pinned worker per GPU, plus CPU workers.

    Each GPU worker runs in its own process with ``CUDA_VISIBLE_DEVICES`` set to its device,
    declares the resource ``GPU=1`` (CNN tasks ask for it, so one runs per GPU at a time) and
    has ``crscale.cluster.gpu_worker_threads`` task threads (archive reads and writes overlap
    the CNN). CPU workers see no GPU. Thread variables keep torch/OpenMP/BLAS threads × task
    threads within the cores.
    """
    from distributed import Nanny

    cfg = config.get("cluster")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    gpu_threads = int(cfg.get("gpu_worker_threads") or 2)
    n_workers = n_gpus + n_cpu_workers
    per_worker = max(1, cores // max(1, n_workers))
    common = {"host": config.get("cluster.host"), "memory_limit": config.get("cluster.memory_limit")}
    specs: dict[str, dict[str, Any]] = {}
    for i in range(n_gpus):
        env = {"CUDA_VISIBLE_DEVICES": str(i), **_thread_environ(max(1, per_worker // gpu_threads))}
        specs[f"gpu-{i}"] = {
            "cls": Nanny,
            "options": {**common, "nthreads": gpu_threads, "resources": {"GPU": 1}, "env": env},
        }
    for j in range(n_cpu_workers):
        env = {"CUDA_VISIBLE_DEVICES": "", **_thread_environ(1)}
        specs[f"cpu-{j}"] = {"cls": Nanny, "options": {**common, "nthreads": per_worker, "env": env}}
    return specs


def gpu_local_cluster(n_gpus: int) -> Any:
    """A local cluster with one pinned worker per GPU (dask-cuda's when installed)."""
    cfg = config.get("cluster")
    n_cpu = int(cfg.get("cpu_workers_with_gpus") or 0)
    host = config.get("cluster.host")
    dashboard = config.get("cluster.dashboard_address")
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError:
        LocalCUDACluster = None
    if LocalCUDACluster is not None and n_cpu == 0:
        return LocalCUDACluster(
            CUDA_VISIBLE_DEVICES=list(range(n_gpus)),
            threads_per_worker=int(cfg.get("gpu_worker_threads") or 2),
            resources={"GPU": 1},
            host=host,
            dashboard_address=dashboard,
        )
    from distributed import Scheduler, SpecCluster

    scheduler = {"cls": Scheduler, "options": {"host": host, "dashboard_address": dashboard}}
    workers = gpu_worker_specs(n_gpus, n_cpu_workers=n_cpu)
    return SpecCluster(scheduler=scheduler, workers=workers, name="crscale-gpu")


def _thread_environ(threads: int) -> dict[str, str]:
    # Worker processes each get `threads` BLAS/OpenMP threads, so that
    # workers x threads never oversubscribes the cores.
    value = str(threads)
    return {k: value for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


def client_or_new(
    client: Any = None,
    *,
    scheduler: str | None = None,
    n_workers: int | None = None,
    cluster: str | None = None,
    echo: Callable[[str], None] | None = None,
) -> contextlib.AbstractContextManager[Any]:
    """``client`` as it is (left open), or :func:`dask_client` for ``scheduler`` / ``cluster``.

    Either way the workers get the client's ``crscale.storage`` settings
    (:func:`crscale.engine.storage_config.share_storage_config`).
    """
    if client is not None:
        return _sharing_storage(contextlib.nullcontext(client))
    return _sharing_storage(dask_client(scheduler, n_workers=n_workers, cluster=cluster, echo=echo))


@contextlib.contextmanager
def _sharing_storage(manager: contextlib.AbstractContextManager[Any]) -> Iterator[Any]:
    from crscale.engine.storage_config import share_storage_config

    with manager as cl:
        share_storage_config(cl)
        yield cl


@contextlib.contextmanager
def dask_client(
    scheduler: str | None = None,
    *,
    n_workers: int | None = None,
    gpus: int | None = None,
    cluster: str | None = None,
    echo: Callable[[str], None] | None = None,
) -> Iterator[Client]:
    """Yield a dask client: connected to ``scheduler``, or to a new cluster of kind ``cluster``.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running scheduler (``tcp://host:8786``) or a scheduler file path
        (``*.json``). Default: start a LocalCluster sized to the machine and close it
        on exit.
    n_workers : int, optional
        Worker count of a CPU LocalCluster.
    gpus : int, optional
        GPUs of the LocalCluster (default ``crscale.cluster.gpus``): with any, one worker per
        GPU (see :func:`gpu_worker_specs`); with none, one single-threaded worker per core.
    cluster : str, optional
        Without ``scheduler``: ``"local"`` (a LocalCluster) or a batch system (``"slurm"``,
        ``"pbs"``, ``"lsf"``, ``"sge"``) whose worker jobs dask-jobqueue submits
        (:mod:`crscale.engine.hpc`); the jobs are cancelled on exit. Default
        ``crscale.cluster.kind``.
    echo : callable, optional
        Receives the messages (the cluster and its dashboard address); default: this
        module's logger, at INFO.

    Yields
    ------
    distributed.Client
        The connected client.

    Raises
    ------
    ClusterError
        The scheduler cannot be reached, the batch system's commands are missing, or no
        worker joined in time.
    """
    say = reporter(logger, echo)
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
            assert client.scheduler is not None  # connected above
            say(f"Dask scheduler {client.scheduler.address}, dashboard {client.dashboard_link}")
            yield client
        finally:
            client.close()
        return
    kind = cluster or config.get("cluster.kind") or "local"
    if kind != "local":
        with _jobqueue_client(kind, say) as client:
            yield client
        return
    n_gpus = count_gpus() if gpus is None else gpus
    # Local workers ignore SIGINT/SIGTERM/SIGHUP: the client handles them (crscale.interrupts).
    preload = {"distributed.worker.preload": interrupts.worker_preload(dask.config)}
    if n_gpus > 0:
        with dask.config.set(preload):
            local = gpu_local_cluster(n_gpus)
        description = f"{n_gpus} GPU worker(s), one per GPU"
    else:
        kwargs = local_cluster_kwargs(n_workers)
        with dask.config.set(
            {"distributed.nanny.pre-spawn-environ": _thread_environ(kwargs["threads_per_worker"]), **preload}
        ):
            local = LocalCluster(**kwargs)
        description = f"{kwargs['n_workers']} workers x {kwargs['threads_per_worker']} thread(s)"
    client = Client(local)
    try:
        say(f"Dask LocalCluster: {description}, dashboard {client.dashboard_link}")
        yield client
    finally:
        client.close()
        local.close()


@contextlib.contextmanager
def _jobqueue_client(system: str, say: Callable[[str], None]) -> Iterator[Client]:
    """A client of a dask-jobqueue cluster on ``system``; its jobs are cancelled on exit."""
    import shutil

    from crscale.engine import hpc, hpc_watch

    if system not in hpc.BATCH_SYSTEMS:
        raise ClusterError(f"unknown cluster kind {system!r}; one of {', '.join(hpc.CLUSTER_KINDS)}")
    command = hpc.submit_command(system)
    if shutil.which(command) is None:
        raise ClusterError(
            f"--cluster {system}: the batch command {command!r} is not on PATH. Run crscale where "
            f"{system.upper()} jobs can be submitted (a login node, or inside a batch job), or use "
            "--cluster local / --scheduler"
        )
    jobs = max(1, hpc.setting("jobs", 1))
    gpus = hpc.setting("gpus_per_job", 1)
    cpu_jobs = hpc.setting("cpu_jobs", 0)
    timeout = hpc.wait_timeout()
    expected = hpc.expected_workers(system, jobs, gpus, cpu_jobs)
    wanted = min(max(1, hpc.setting("wait_for_workers", 1)), expected)
    jq = hpc.jobqueue_cluster(system, jobs=jobs, gpus_per_job=gpus, cpu_jobs=cpu_jobs)
    dashboard, tunnel = hpc.dashboard_url(jq)
    watch = hpc_watch.JobWatch(
        jq,
        system,
        interval=hpc.watch_interval(),
        max_resubmits=hpc.setting("max_resubmits", 10),
        wait_timeout=timeout,
    )
    # The dashboard link that Dask builds names the scheduler's address, not where the
    # dashboard is bound (127.0.0.1 by default): give every link (job record, message) the real one.
    with dask.config.set({"distributed.dashboard.link": dashboard} if dashboard else {}):
        client = Client(jq)
        try:
            say(
                f"Dask {system} cluster: {hpc.describe(system, jobs, gpus, cpu_jobs)}, scheduler "
                f"{jq.scheduler_address}, dashboard {dashboard}"
            )
            if tunnel:
                say(tunnel)
            say(f"waiting for {wanted} worker(s) to start (the jobs may queue)")
            watch.start()
            try:
                try:
                    client.wait_for_workers(wanted, timeout=timeout)
                except TimeoutError as exc:
                    raise ClusterError(
                        f"no {system} worker joined within {timeout:.0f} s (crscale.hpc.wait_timeout): "
                        f"check the queue and the jobs' logs (jobqueue.{system}.log-directory)"
                    ) from exc
                yield client
            except KeyboardInterrupt:
                if watch.error:  # the watch interrupted us: no worker can come
                    interrupts.mark_handled()  # the interrupt was the watch's, not a signal to stop
                    raise ClusterError(watch.error) from None
                raise
        finally:
            watch.stop()
            client.close()
            jq.close()
