"""Dask clusters on HPC batch systems (SLURM, PBS, LSF, SGE) through dask-jobqueue.

The site describes its batch system under dask's ``jobqueue.<system>:`` key (queue, account,
walltime, cores and memory of a job, its prologue); crscale adds its worker layout from
``crscale.hpc`` on top:

- a **GPU pool**: each job books ``gpus_per_job`` GPUs and ``cpus_per_gpu`` cores per GPU and
  starts one worker process per GPU, pinned to it (:mod:`crscale.engine.gpu_pinning`) and
  declaring the resource ``GPU=1`` that the CNN tasks ask for; thread variables in the job
  prologue keep torch and BLAS threads within the booked cores; workers spill to local scratch;
- an optional **CPU pool** (``cpu_jobs``) of CPU-only jobs for ingest and the catalogue, with
  the site's job shape as it is;
- with ``gpus_per_job: 0``, a CPU pool only.

The scheduler runs in the process that calls crscale (a login node or a batch job of its own);
see docs/hpc.md and the examples in ``cluster/``.
"""

from __future__ import annotations

import contextlib
import copy
import signal
from typing import Any

import dask.config

from crscale import config
from crscale.engine.gpu_pinning import GPUS_PER_JOB_VAR
from crscale.errors import HPCConfigError


def _import_dask_jobqueue() -> Any:
    # dask_jobqueue.runner sets SIGINT to sys.exit() when imported: Ctrl-C, SIGTERM handling
    # (crscale.interrupts) and JobWatch giving up would end crscale with status 0 and no
    # message. The handler in place before the import goes back.
    previous = signal.getsignal(signal.SIGINT)
    import dask_jobqueue

    if previous is not None and signal.getsignal(signal.SIGINT) is not previous:
        with contextlib.suppress(ValueError):  # not the main thread: leave it
            signal.signal(signal.SIGINT, previous)
    return dask_jobqueue


# Imported here, not lazily: importing dask_jobqueue registers its `jobqueue:` defaults in dask's
# config, which must happen before any `dask.config.set` scope is entered and left.
dask_jobqueue = _import_dask_jobqueue()

#: Batch systems crscale sets up, and their dask-jobqueue cluster classes.
BATCH_SYSTEMS: dict[str, str] = {
    "slurm": "SLURMCluster",
    "pbs": "PBSCluster",
    "lsf": "LSFCluster",
    "sge": "SGECluster",
}

#: Values of ``--cluster`` / ``crscale.cluster.kind``.
CLUSTER_KINDS: tuple[str, ...] = ("local", *BATCH_SYSTEMS)

#: The usual directive booking ``{n}`` GPUs per job, by batch system (PBS: in the select).
GPU_DIRECTIVES: dict[str, str] = {"slurm": "--gres=gpu:{n}", "pbs": "ngpus={n}", "lsf": '-gpu "num={n}"'}

#: Where workers spill when neither crscale.hpc.scratch nor jobqueue's local-directory is set.
DEFAULT_SCRATCH = "${TMPDIR:-/tmp}"

_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _site(system: str, key: str) -> Any:
    return dask.config.get(f"jobqueue.{system}.{key}", default=None)


def _check_system(system: str) -> None:
    if system not in BATCH_SYSTEMS:
        raise HPCConfigError(f"unknown batch system {system!r}; one of {', '.join(BATCH_SYSTEMS)}")


def cluster_class(system: str) -> type[Any]:
    """The dask-jobqueue cluster class of ``system`` (``"slurm"``, ``"pbs"``, ...)."""
    _check_system(system)
    return getattr(dask_jobqueue, BATCH_SYSTEMS[system])


def _exports(values: dict[str, Any]) -> list[str]:
    return [f'export {k}="{v}"' for k, v in values.items()]


def _scratch(system: str) -> str:
    return config.get("hpc.scratch") or _site(system, "local-directory") or DEFAULT_SCRATCH


def gpu_pool_options(system: str, *, gpus_per_job: int | None = None) -> dict[str, Any]:
    """dask-jobqueue keyword arguments of the GPU worker jobs of ``system``.

    Parameters
    ----------
    system : str
        ``"slurm"``, ``"pbs"``, ``"lsf"`` or ``"sge"``.
    gpus_per_job : int, optional
        GPUs booked per job (default ``crscale.hpc.gpus_per_job``); one worker each.

    Returns
    -------
    dict
        Arguments for the cluster class: the site's settings with crscale's worker layout
        (processes, cores, the GPU directive, ``--resources GPU=1``, the pinning preload,
        thread variables, scratch) added.

    Raises
    ------
    HPCConfigError
        No job memory is configured, or SGE without ``crscale.hpc.gpu_directive``.
    """
    _check_system(system)
    n = gpus_per_job if gpus_per_job is not None else setting("gpus_per_job", 1)
    if n < 1:
        raise HPCConfigError(f"gpus_per_job must be at least 1 for a GPU pool, not {n}")
    threads = int(config.get("cluster.gpu_worker_threads") or 2)
    cpus_per_gpu = max(1, setting("cpus_per_gpu", 1))
    memory = _site(system, "memory")
    if not memory:
        raise HPCConfigError(
            f"jobqueue.{system}.memory is not set: give the memory of one job in the site config "
            "(examples: cluster/slurm.yaml, cluster/pbs.yaml)"
        )
    directive = config.get("hpc.gpu_directive") or GPU_DIRECTIVES.get(system)
    if directive is None:
        raise HPCConfigError(
            f"{system}: set crscale.hpc.gpu_directive to the directive that books GPUs on this "
            "site, e.g. '-l gpu={n}'"
        )
    directive = directive.format(n=n)
    booked_cores = n * cpus_per_gpu
    prologue = list(_site(system, "job-script-prologue") or [])
    prologue += _exports({GPUS_PER_JOB_VAR: n})
    prologue += _exports({k: max(1, cpus_per_gpu // threads) for k in _THREAD_VARS})
    options: dict[str, Any] = {
        "processes": n,
        "cores": n * threads,
        "memory": memory,
        "local_directory": _scratch(system),
        "job_script_prologue": prologue,
        "worker_extra_args": [
            *(_site(system, "worker-extra-args") or []),
            "--resources",
            "GPU=1",
            "--preload",
            "crscale.engine.gpu_pinning",
        ],
    }
    extra = list(_site(system, "job-extra-directives") or [])
    if system == "slurm":
        options["job_cpu"] = booked_cores
        options["job_extra_directives"] = [*extra, directive]
    elif system == "pbs":
        from dask.utils import parse_bytes
        from dask_jobqueue.pbs import pbs_format_bytes_ceil

        mem = pbs_format_bytes_ceil(parse_bytes(memory))
        options["resource_spec"] = f"select=1:ncpus={booked_cores}:{directive}:mem={mem}"
    elif system == "lsf":
        options["ncpus"] = booked_cores
        options["job_extra_directives"] = [*extra, directive]
    else:
        options["job_extra_directives"] = [*extra, directive]
    return options


def cpu_pool_options(system: str) -> dict[str, Any]:
    """dask-jobqueue keyword arguments of CPU-only worker jobs: the site's job shape, no GPU.

    Raises
    ------
    HPCConfigError
        The site config gives no cores or memory for ``system`` jobs.
    """
    _check_system(system)
    cores, memory = _site(system, "cores"), _site(system, "memory")
    if not cores or not memory:
        raise HPCConfigError(
            f"jobqueue.{system}.cores and jobqueue.{system}.memory must be set for CPU worker jobs "
            "(examples: cluster/slurm.yaml, cluster/pbs.yaml)"
        )
    processes = int(_site(system, "processes") or cores)
    threads = max(1, int(cores) // processes)
    prologue = list(_site(system, "job-script-prologue") or [])
    prologue += _exports({"CUDA_VISIBLE_DEVICES": ""})
    prologue += _exports({k: threads for k in _THREAD_VARS})
    return {
        "cores": int(cores),
        "processes": processes,
        "memory": memory,
        "local_directory": _scratch(system),
        "job_script_prologue": prologue,
    }


def scheduler_options(system: str) -> dict[str, Any]:
    """Options of the scheduler: crscale's dashboard and interface, then the site's own."""
    ours: dict[str, Any] = {"dashboard_address": config.get("hpc.dashboard_address")}
    if config.get("hpc.scheduler_interface"):
        ours["interface"] = config.get("hpc.scheduler_interface")
    return {**ours, **(_site(system, "scheduler-options") or {})}


def jobqueue_cluster(
    system: str,
    *,
    jobs: int | None = None,
    gpus_per_job: int | None = None,
    cpu_jobs: int | None = None,
    submit: bool = True,
) -> Any:
    """A dask-jobqueue cluster for ``system`` with crscale's worker pools.

    Parameters
    ----------
    system : str
        ``"slurm"``, ``"pbs"``, ``"lsf"`` or ``"sge"``.
    jobs : int, optional
        Worker jobs of the main pool (default ``crscale.hpc.jobs``).
    gpus_per_job : int, optional
        GPUs per job (default ``crscale.hpc.gpus_per_job``); 0 makes the main pool CPU-only.
    cpu_jobs : int, optional
        Extra CPU-only jobs beside GPU jobs (default ``crscale.hpc.cpu_jobs``).
    submit : bool
        Submit the jobs now. False builds the cluster without submitting anything (to look
        at :meth:`job_script`).

    Returns
    -------
    dask_jobqueue.JobQueueCluster
        The cluster; its scheduler runs in this process. Close it when done (the jobs are
        cancelled).
    """
    cls = cluster_class(system)
    n_gpus = gpus_per_job if gpus_per_job is not None else setting("gpus_per_job", 1)
    options = gpu_pool_options(system, gpus_per_job=n_gpus) if n_gpus > 0 else cpu_pool_options(system)
    try:
        cluster = cls(scheduler_options=scheduler_options(system), **options)
    except ValueError as exc:
        # dask-jobqueue's own checks (e.g. cores/memory missing): name the config keys.
        raise HPCConfigError(f"{system}: {exc} (see jobqueue.{system} in the site config)") from exc
    if not submit:
        return cluster
    n_jobs = jobs if jobs is not None else setting("jobs", 1)
    cluster.scale(jobs=n_jobs)
    extra = cpu_jobs if cpu_jobs is not None else setting("cpu_jobs", 0)
    if n_gpus > 0 and extra > 0:
        add_cpu_jobs(cluster, system, extra)
    return cluster


def cpu_job_spec(cluster: Any, system: str) -> dict[str, Any]:
    """The worker spec of one CPU-only job on ``cluster`` (same scheduler, security, interface)."""
    spec = copy.deepcopy(cluster.new_spec)
    options = cpu_pool_options(system)
    # The GPU pool's layout keys go; the site's job shape and CPU-only environment come in.
    for key in ("job_cpu", "ncpus", "resource_spec", "worker_extra_args", "job_extra_directives"):
        spec["options"].pop(key, None)
    spec["options"].update(options)
    if config.get("hpc.cpu_queue"):
        spec["options"]["queue"] = config.get("hpc.cpu_queue")
    processes = options["processes"]
    if processes > 1:
        spec["group"] = [f"-{i}" for i in range(processes)]
    else:
        spec.pop("group", None)
    return spec


def add_cpu_jobs(cluster: Any, system: str, n: int) -> list[str]:
    """Submit ``n`` CPU-only jobs to ``cluster`` beside its GPU jobs; return their job names."""
    spec = cpu_job_spec(cluster, system)
    names = [f"{cluster.name}-cpu-{i}" for i in range(n)]
    for name in names:
        cluster.worker_spec[name] = copy.deepcopy(spec)
    # scale() to the current size adds nothing and starts the jobs of the new specs.
    cluster.scale(jobs=len(cluster.worker_spec))
    return names


def submit_command(system: str) -> str:
    """The batch system's submit command (``sbatch``, ``qsub``, ``bsub``)."""
    return str(cluster_class(system).job_cls.submit_command).split()[0]


def expected_workers(system: str, jobs: int, gpus_per_job: int, cpu_jobs: int) -> int:
    """Workers that ``jobs`` main-pool jobs and ``cpu_jobs`` CPU jobs start."""
    if gpus_per_job > 0:
        cpu_processes = int(_site(system, "processes") or _site(system, "cores") or 1) if cpu_jobs else 0
        return jobs * gpus_per_job + cpu_jobs * cpu_processes
    cores = int(_site(system, "cores") or 1)
    return jobs * int(_site(system, "processes") or cores)


def describe(system: str, jobs: int, gpus_per_job: int, cpu_jobs: int) -> str:
    """One line on the pools submitted, for the start of a run."""
    if gpus_per_job > 0:
        text = f"{jobs} {system} job(s) x {gpus_per_job} GPU worker(s)"
        if cpu_jobs:
            text += f" + {cpu_jobs} CPU job(s)"
        return text
    return f"{jobs} {system} CPU job(s)"


def setting(key: str, default: int) -> int:
    """The whole, non-negative number ``crscale.hpc.<key>``; a clear error for anything else."""
    value = config.get(f"hpc.{key}")
    if value is None:
        return default
    try:
        number = int(str(value).strip())  # via str: 2.5 and True are refused, "4" is not
    except ValueError:
        number = -1
    if number < 0:
        raise HPCConfigError(f"crscale.hpc.{key} must be a whole number >= 0, not {value!r}")
    return number


def wait_timeout() -> float | None:
    """Seconds to wait for the first workers (``crscale.hpc.wait_timeout``); None: no limit."""
    value = config.get("hpc.wait_timeout")
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise HPCConfigError(f"crscale.hpc.wait_timeout must be seconds or null, not {value!r}") from None


def watch_interval() -> float:
    """Seconds between looks at the worker jobs (``crscale.hpc.watch_interval``)."""
    value = config.get("hpc.watch_interval")
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if not seconds > 0:
        raise HPCConfigError(f"crscale.hpc.watch_interval must be seconds > 0, not {value!r}")
    return seconds


def dashboard_url(cluster: Any) -> tuple[str, str | None]:
    """The dashboard's link where it is really bound, and how to reach it from elsewhere.

    Returns
    -------
    url : str
        ``http://<bound address>:<port>/status``; the host name when bound to every interface.
    tunnel : str or None
        The SSH tunnel to open from a laptop when the dashboard listens on localhost only;
        None when it listens on the network.
    """
    import socket

    server = getattr(getattr(cluster, "scheduler", None), "http_server", None)
    address, port = getattr(server, "address", None), getattr(server, "port", None)
    if port is None:  # no dashboard (bokeh missing, or dashboard_address None)
        return "", None
    host = socket.gethostname()
    if address in (None, "", "0.0.0.0", "::"):
        return f"http://{host}:{port}/status", None
    shown = f"[{address}]" if ":" in address else address
    url = f"http://{shown}:{port}/status"
    if address.startswith("127.") or address == "::1":
        return url, (
            f"the dashboard listens on {address} of {host} only; from your machine: "
            f"ssh -N -L {port}:{address}:{port} {host} (add -J <login node> if {host} is a compute "
            f"node), then open http://localhost:{port}/status"
        )
    return url, None
