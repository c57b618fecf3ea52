"""Keep a batch-system cluster alive through what batch systems do to its worker jobs.

dask-jobqueue submits worker jobs once and never looks at them again: a job that is cancelled
(``scancel``), preempted or killed at its walltime simply leaves, and a run whose jobs have all
left waits forever for workers that will not come. :class:`JobWatch` looks at the jobs every
``crscale.hpc.watch_interval`` seconds from the process that runs the scheduler:

- a job is **lost** when its workers had joined and have all left (they were seen gone at two
  looks in a row, so a nanny restarting its worker is not a loss), or when the batch system no
  longer lists it (SLURM: ``squeue``), e.g. cancelled while it was still queued;
- a lost job is **replaced** by a new job of the same shape, at most
  ``crscale.hpc.max_resubmits`` times in a run; the tasks its workers held go back to the
  scheduler and run on the others or on the replacement, as after any worker loss;
- the run **gives up** with a message saying why when no worker can come any more: every job
  lost and no replacement left, or no worker connected for ``crscale.hpc.wait_timeout``
  seconds. The main thread is interrupted and the cluster context raises
  :class:`~crscale.engine.cluster.ClusterError` with that message; finished exposures are
  kept, as after any interruption.
"""

from __future__ import annotations

import copy
import getpass
import logging
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

logger = logging.getLogger(__name__)

#: Commands listing the current user's jobs (one job id per line), by batch system. Systems
#: without one rely on the workers leaving alone.
QUEUE_COMMANDS: dict[str, list[str]] = {
    "slurm": ["squeue", "--noheader", "--format=%i", "--user={user}"],
}

_REPLACED = re.compile(r"-r\d+$")


def job_of_worker(worker_name: str, jobs: Iterable[str]) -> str | None:
    """The job whose worker is ``worker_name``: ``<job>`` or ``<job>-<i>`` (multi-process jobs)."""
    names = set(jobs)
    if worker_name in names:
        return worker_name
    head, _, tail = worker_name.rpartition("-")
    return head if tail.isdigit() and head in names else None


def queued_job_ids(system: str, *, run: Callable[..., Any] = subprocess.run) -> set[str] | None:
    """Ids of this user's jobs that the batch system lists, or None when it cannot tell."""
    command = QUEUE_COMMANDS.get(system)
    if command is None:
        return None
    argv = [word.format(user=getpass.getuser()) for word in command]
    try:
        res = run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        logger.warning("crscale: %s failed (%s); judging the jobs by their workers only", argv[0], exc)
        return None
    if res.returncode != 0:
        logger.warning("crscale: %s failed: %s", argv[0], res.stderr.strip())
        return None
    return {line.strip() for line in res.stdout.splitlines() if line.strip()}


def interrupt_main() -> None:
    """Raise KeyboardInterrupt in the main thread, even while it waits on a lock (a real SIGINT)."""
    main = threading.main_thread().ident
    assert main is not None  # the main thread has always started
    signal.pthread_kill(main, signal.SIGINT)


class JobWatch:
    """Watch the worker jobs of a dask-jobqueue cluster; replace lost ones; give up when none can come.

    Parameters
    ----------
    cluster : dask_jobqueue.JobQueueCluster
        The cluster (its scheduler runs in this process).
    system : str
        ``"slurm"``, ``"pbs"``, ...: how to list the jobs (:data:`QUEUE_COMMANDS`).
    interval : float
        Seconds between looks.
    max_resubmits : int
        Lost jobs replaced at most in this run.
    wait_timeout : float or None
        Give up after this many seconds without any connected worker; None: never for that.
    on_give_up : callable, optional
        Called (from the watch thread) after :attr:`error` is set; default: interrupt the main
        thread.
    """

    def __init__(
        self,
        cluster: Any,
        system: str,
        *,
        interval: float = 15.0,
        max_resubmits: int = 10,
        wait_timeout: float | None = 3600.0,
        on_give_up: Callable[[], None] | None = None,
    ) -> None:
        self.cluster = cluster
        self.system = system
        self.interval = interval
        self.max_resubmits = max_resubmits
        self.wait_timeout = wait_timeout
        self.on_give_up = on_give_up or interrupt_main
        #: Why the run gave up; None while it goes on.
        self.error: str | None = None
        #: ``(lost job, its replacement or None, why)`` in order.
        self.replaced: list[tuple[str, str | None, str]] = []
        self._joined: set[str] = set()  # jobs whose workers have connected
        self._missing: set[str] = set()  # jobs whose workers were gone at the last look
        self._last_worker = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> JobWatch:
        """Start looking, in a daemon thread."""
        self._thread = threading.Thread(target=self._loop, name="crscale-jobwatch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop looking (before the cluster closes)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 35)

    def __enter__(self) -> JobWatch:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:  # a failed look must not end the watch
                logger.exception("crscale: looking at the worker jobs failed")
            if self.error:
                return

    # ------------------------------------------------------------------ one look

    def _connected(self) -> dict[str, int]:
        """Connected workers per job."""
        workers = self.cluster.scheduler_info.get("workers", {})
        counts: dict[str, int] = {}
        jobs = list(self.cluster.worker_spec)
        for info in list(workers.values()):
            job = job_of_worker(str(info.get("name")), jobs)
            if job is not None:
                counts[job] = counts.get(job, 0) + 1
        return counts

    def lost_jobs(self) -> dict[str, str]:
        """Jobs lost since the last look, with the reason (updates what was seen)."""
        connected = self._connected()
        if connected:
            self._last_worker = time.monotonic()
        queued = queued_job_ids(self.system)
        lost: dict[str, str] = {}
        gone_now: set[str] = set()
        for name in list(self.cluster.worker_spec):
            job = self.cluster.workers.get(name)
            if job is None and name not in self._joined:
                continue  # not submitted yet
            if connected.get(name):
                self._joined.add(name)
                continue
            job_id = getattr(job, "job_id", None)
            if queued is not None and job_id and str(job_id) not in queued:
                joined = name in self._joined
                what = "left the queue" if joined else "ended before its workers joined"
                lost[name] = f"job {job_id} {what}"
            elif name in self._joined:
                gone_now.add(name)
                if name in self._missing:
                    lost[name] = f"the workers of job {job_id} left"
        self._missing = gone_now
        return lost

    def check(self) -> list[str]:
        """One look: replace lost jobs, give up if no worker can come. Returns the new jobs."""
        lost = self.lost_jobs()
        new: list[str] = []
        for name, why in lost.items():
            left = self.max_resubmits - sum(1 for r in self.replaced if r[1] is not None)
            replacement = self._replacement_name(name) if left > 0 else None
            self.replaced.append((name, replacement, why))
            if replacement is None:
                logger.warning(
                    "crscale: %s lost (%s); no replacement left (crscale.hpc.max_resubmits)", name, why
                )
                self._drop(name)
                continue
            logger.warning("crscale: %s lost (%s); submitting %s in its place", name, why, replacement)
            self._swap(name, replacement)
            new.append(replacement)
        self._give_up_if_hopeless()
        return new

    def _replacement_name(self, name: str) -> str:
        base = _REPLACED.sub("", name)
        k = 1 + sum(1 for old, _, _ in self.replaced if _REPLACED.sub("", old) == base)
        return f"{base}-r{k}"

    def _swap(self, old: str, new: str) -> None:
        def swap() -> None:
            spec = self.cluster.worker_spec.pop(old, None)
            if spec is not None:
                self.cluster.worker_spec[new] = copy.deepcopy(spec)
            # Closes the old job (cancelling a job that is gone is harmless) and submits the new.
            self.cluster.scale(jobs=len(self.cluster.worker_spec))

        self.cluster.loop.add_callback(swap)

    def _drop(self, old: str) -> None:
        def drop() -> None:
            self.cluster.worker_spec.pop(old, None)
            self.cluster.scale(jobs=len(self.cluster.worker_spec))

        self.cluster.loop.add_callback(drop)

    def _give_up_if_hopeless(self) -> None:
        if self._connected():
            return
        exhausted = [r for r in self.replaced if r[1] is None]
        remaining = set(self.cluster.worker_spec) - {r[0] for r in exhausted}
        if exhausted and not remaining:
            lost = len(self.replaced)
            self.error = (
                f"all {self.system} worker jobs were lost ({lost} lost; last: {exhausted[-1][0]}: "
                f"{exhausted[-1][2]}) and the {self.max_resubmits} replacement(s) allowed "
                "(crscale.hpc.max_resubmits) are used up: check the jobs' logs "
                f"(jobqueue.{self.system}.log-directory) and walltime"
            )
        elif self.wait_timeout is not None and time.monotonic() - self._last_worker > self.wait_timeout:
            self.error = (
                f"no {self.system} worker has been connected for {self.wait_timeout:.0f} s "
                "(crscale.hpc.wait_timeout): the worker jobs are queued or failing; check the "
                f"queue and the jobs' logs (jobqueue.{self.system}.log-directory)"
            )
        if self.error:
            logger.debug("crscale: giving up: %s", self.error)
            self.on_give_up()
