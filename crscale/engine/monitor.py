"""Watch a crscale job from its archive: progress per stage, and the CR rates catalogued so far.

Everything here reads what a running job has already written, and never writes:

* :func:`archive_progress` counts exposures per stage from their ``status`` attributes;
* :class:`RateFollower` (and :func:`rates_so_far`) reads the catalogue's exposure table while
  the catalogue stage is still adding files, re-reading only the files that are new or changed;
* :func:`wait_for_job` waits for the job record that ``crscale run`` writes into the archive
  (:mod:`crscale.engine.jobs`), which holds the job's Dask scheduler and dashboard addresses;
* :func:`watch` puts these together: a :class:`Snapshot` every few seconds until the job ends.

``notebooks/03_monitoring.ipynb`` shows them at work on a live ``crscale run``.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from crscale.catalogue.stats import UNKNOWN, exposure_rates
from crscale.engine.blocks import PROGRESS_TOPIC
from crscale.engine.jobs import read_job
from crscale.io.archive import STAGES, Archive
from crscale.io.catalogue_store import catalogued_exposures, rates_dataset, table_file
from crscale.io.errors import ArchiveError

#: Keys of :func:`archive_progress`, in display order.
PROGRESS_KEYS = (
    "exposures", "ingested", "detected", "catalogued", "running", "failed", "unreadable", "inputs_failed",
)
#: Job states after which nothing more will be written.
FINAL_STATES = ("finished", "failed", "died")

_STAGE_KEYS = dict(zip(STAGES, ("ingested", "detected", "catalogued"), strict=True))


def archive_progress(archive: str | os.PathLike) -> dict[str, int]:
    """Count the archive's exposures per stage, from their status attributes.

    Safe to call while a job writes the archive: an archive not created yet counts zero
    everywhere, and an exposure whose metadata is being rewritten at that instant counts as
    ``unreadable`` (it is back at the next call).

    Parameters
    ----------
    archive : str or path
        The archive.

    Returns
    -------
    dict of str to int
        ``exposures`` (in the archive), ``ingested``, ``detected``, ``catalogued`` (stage
        done), ``running`` (a stage in progress), ``failed`` (a stage failed),
        ``unreadable`` (metadata not readable right now) and ``inputs_failed`` (input files
        whose ingest failed, so that they are no exposure; duplicates are not counted).
    """
    counts = dict.fromkeys(PROGRESS_KEYS, 0)
    try:
        arch = Archive(archive, mode="r")
    except (ArchiveError, OSError):
        return counts
    for _eid, attrs in arch.iter_exposures():
        counts["exposures"] += 1
        if "unreadable" in attrs:
            counts["unreadable"] += 1
            continue
        status = attrs.get("status") or {}
        states = {stage: (status.get(stage) or {}).get("state") for stage in STAGES}
        for stage, key in _STAGE_KEYS.items():
            counts[key] += states[stage] == "done"
        counts["running"] += "running" in states.values()
        counts["failed"] += "failed" in states.values()
    with contextlib.suppress(Exception):  # a record being written right now: counted next time
        counts["inputs_failed"] = sum(
            1 for f in arch.failures()
            if f.get("stage") == "ingest" and f.get("kind") != "duplicate" and not f.get("exposure_id")
        )
    return counts


def format_progress(counts: dict[str, int]) -> str:
    """One line of :func:`archive_progress` counts, e.g. ``6 exposures: 6 ingested, 4 detected, ...``."""
    n = counts.get("exposures", 0)
    parts = [f"{counts.get(k, 0)} {k}" for k in ("ingested", "detected", "catalogued")]
    extra = ("running", "failed", "unreadable", "inputs_failed")
    parts += [f"{counts[k]} {k}" for k in extra if counts.get(k)]
    if not counts.get("failed"):
        parts.append("0 failed")
    return f"{n} exposure(s): " + ", ".join(parts)


# ---------------------------------------------------------------------------------------------
# The CR rates catalogued so far.

_RATE_COLUMNS = [
    "exposure", "instrument", "telescope", "time", "mjd", "n_cr", "n_dot", "n_spot", "n_track", "n_worm",
    "area_cm2", "effective_exptime", "rate", "rate_err", "cr_pixel_fraction",
]


def _signature(path: os.PathLike) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class RateFollower:
    """The CR rates of an archive's catalogue, re-read incrementally while a job adds to it.

    Each :meth:`update` lists the catalogue's exposure-table files and reads only those that
    are new or were replaced since the last call (the catalogue writes each exposure's file
    whole and renames it into place, so a file is either complete or absent). A file that
    disappears (an exposure detected again, whose rows are removed until it is catalogued
    again) drops its rows; one that cannot be read right now is left out and tried again at the
    next call.

    Parameters
    ----------
    archive : str or path
        The archive.
    per : {"exposure", "detector"}
        One row per exposure (CRs and area x time summed over its detectors; rows as
        :func:`crscale.catalogue.stats.exposure_rates`) or per exposure x detector (rows as
        :func:`crscale.io.catalogue_store.rates_dataset` with ``per="detector"``).
    clock : callable
        Seconds, for the ``seen_s`` column (default :func:`time.monotonic`).
    """

    def __init__(
        self,
        archive: str | os.PathLike,
        *,
        per: str = "exposure",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if per not in ("exposure", "detector"):
            raise ValueError(f"per must be 'exposure' or 'detector', not {per!r}")
        self.archive = archive
        self.per = per
        self._clock = clock
        self._start = clock()
        self._rows: dict[str, tuple[tuple[int, int, int] | None, pd.DataFrame]] = {}
        self._seen: dict[str, float] = {}
        #: Exposures whose file could not be read at the last :meth:`update`.
        self.unreadable: list[str] = []

    def _read(self, ids: list[str]) -> pd.DataFrame:
        if self.per == "exposure":
            return exposure_rates(self.archive, exposures=ids)
        df = rates_dataset(self.archive, per="detector", exposures=ids).to_dataframe().reset_index(drop=True)
        df["instrument"] = df["instrument"].astype(object).where(df["instrument"].notna(), UNKNOWN)
        for col in ("rate", "rate_err"):
            values = df[col].astype("float64")
            df[col] = values.where(values.abs() != math.inf)
        return df

    def update(self) -> pd.DataFrame:
        """Read what is new in the catalogue and return all the rates read so far.

        Returns
        -------
        pandas.DataFrame
            The rows of every exposure catalogued so far, sorted by completion then time,
            with the columns of :func:`crscale.catalogue.stats.exposure_rates` (plus
            ``detector`` with ``per="detector"``) and ``seen_s``: the seconds after this
            follower was made at which the exposure's rows were first read (completion order).
        """
        ids = catalogued_exposures(self.archive)
        signatures = {e: _signature(table_file(self.archive, "exposures", e)) for e in ids}
        for gone in set(self._rows) - {e for e, s in signatures.items() if s is not None}:
            del self._rows[gone]
        todo = [e for e, s in signatures.items() if s is not None and self._rows.get(e, (None,))[0] != s]
        self.unreadable = []
        if todo:
            try:
                frames = {"": self._read(todo)}
            except ArchiveError:  # one file vanished or was damaged between listing and reading
                frames = {}
                for e in todo:
                    try:
                        frames[e] = self._read([e])
                    except ArchiveError:
                        self.unreadable.append(e)
                        self._rows.pop(e, None)  # its old rows are no longer what the file holds
            now = self._clock() - self._start
            for frame in frames.values():
                for eid, rows in frame.groupby("exposure", sort=False):
                    self._rows[str(eid)] = (signatures[str(eid)], rows)
                    self._seen.setdefault(str(eid), now)
        return self.frame()

    def frame(self) -> pd.DataFrame:
        """All the rows read so far, without reading anything (see :meth:`update`)."""
        columns = _RATE_COLUMNS[:1] + (["detector"] if self.per == "detector" else []) + _RATE_COLUMNS[1:]
        if not self._rows:
            return pd.DataFrame({c: pd.Series(dtype=object) for c in [*columns, "seen_s"]})
        df = pd.concat([rows for _, rows in self._rows.values()], ignore_index=True)
        df["seen_s"] = df["exposure"].map(self._seen).astype("float64")
        keys = ["seen_s", "time", "exposure"] + (["detector"] if self.per == "detector" else [])
        return df.sort_values(keys, kind="stable").reset_index(drop=True)


def rates_so_far(archive: str | os.PathLike, *, per: str = "exposure") -> pd.DataFrame:
    """The CR rates of every exposure catalogued so far, while a job may still be writing more.

    A catalogue that does not exist yet gives an empty frame; an exposure file that vanishes or
    cannot be read at this instant is left out (see :class:`RateFollower`, which also re-reads
    only what changed when called repeatedly).

    Parameters
    ----------
    archive : str or path
        The archive.
    per : {"exposure", "detector"}
        One row per exposure, or per exposure x detector.

    Returns
    -------
    pandas.DataFrame
        As :meth:`RateFollower.update`. Rates are in CR cm⁻² s⁻¹.
    """
    return RateFollower(archive, per=per).update()


# ---------------------------------------------------------------------------------------------
# The job and its scheduler.


def job_alive(job: dict[str, Any] | None) -> bool | None:
    """Whether the process of a job record is still alive: True, False, or None (cannot tell).

    Only a job on this host can be checked (by its pid); a job record left ``running`` by a
    process that was killed is otherwise indistinguishable from a running one.
    """
    if not job or job.get("host") != socket.gethostname() or not job.get("pid"):
        return None
    try:
        os.kill(int(job["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def job_state(job: dict[str, Any] | None) -> str:
    """``"none"`` (no record yet), the record's status, or ``"died"`` (running, but its process is gone)."""
    if job is None:
        return "none"
    state = str(job.get("status", "unknown"))
    if state == "running" and job_alive(job) is False:
        return "died"
    return state


def wait_for_job(
    archive: str | os.PathLike,
    *,
    pid: int | None = None,
    timeout: float = 120.0,
    poll: float = 0.5,
    process: Any = None,
) -> dict[str, Any]:
    """Wait until the archive holds a job record (of process ``pid`` when given) and return it.

    Parameters
    ----------
    archive : str or path
        The archive the job works on.
    pid : int, optional
        Only a record of this process counts (an older job's record may still be there).
    timeout : float
        Seconds to wait at most.
    poll : float
        Seconds between looks.
    process : subprocess.Popen, optional
        The job's process, when this session started it: its exit before a record appears
        ends the wait at once.

    Returns
    -------
    dict
        The job record (:func:`crscale.engine.jobs.read_job`).

    Raises
    ------
    TimeoutError
        No such record after ``timeout`` seconds.
    RuntimeError
        ``process`` ended before writing a record.
    """
    deadline = time.monotonic() + timeout
    while True:
        job = read_job(archive)
        if job is not None and (pid is None or job.get("pid") == pid):
            return job
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the job exited with status {process.returncode} before recording itself")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no job record in {archive} after {timeout:.0f} s")
        time.sleep(poll)


def _task_states(dask_scheduler: Any) -> dict[str, int]:
    return dict(Counter(ts.state for ts in dask_scheduler.tasks.values()))


def scheduler_tasks(client: Any, *, timeout: float = 5.0) -> dict[str, int]:
    """Tasks on the job's scheduler by state (``processing``, ``memory``, ``waiting`` ...).

    Returns an empty dict when the scheduler cannot be asked (gone, or not answering within
    ``timeout`` seconds).
    """
    if client is None or getattr(client, "status", None) != "running":
        return {}
    try:
        return dict(client.run_on_scheduler(_task_states, callback_timeout=timeout))
    except Exception:  # the scheduler went away, or refuses to run functions
        return {}


class BlockCounter:
    """Counts the blocks the detection workers finish, from the events they send the scheduler.

    Workers report each finished block on :data:`crscale.engine.blocks.PROGRESS_TOPIC`; every
    client subscribed to that topic gets the events, so a monitoring client counts them as the
    job's own progress bar does. Use as a context manager, or call :meth:`close`.

    Parameters
    ----------
    client : distributed.Client
        A client of the job's scheduler.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self.blocks = 0
        self.pixels = 0
        self._lock = threading.Lock()
        client.subscribe_topic(PROGRESS_TOPIC, self._on_event)

    def _on_event(self, event: Any) -> None:
        _, msg = event
        with self._lock:
            self.blocks += 1
            self.pixels += int(msg.get("pixels", 0)) if isinstance(msg, dict) else 0

    def close(self) -> None:
        """Stop counting."""
        with contextlib.suppress(Exception):
            self.client.unsubscribe_topic(PROGRESS_TOPIC)

    def __enter__(self) -> BlockCounter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Snapshot:
    """What :func:`watch` saw at one moment."""

    elapsed: float  #: seconds since the watch began
    job: dict[str, Any] | None  #: the job record
    state: str  #: :func:`job_state` of the record
    progress: dict[str, int]  #: :func:`archive_progress`
    rates: pd.DataFrame  #: :meth:`RateFollower.update` (CR cm⁻² s⁻¹)
    tasks: dict[str, int] = field(default_factory=dict)  #: :func:`scheduler_tasks`
    blocks: int | None = None  #: detection blocks finished since the watch began (with a client)
    mpix: float | None = None  #: their megapixels

    @property
    def over(self) -> bool:
        """The job has ended (finished, failed, or its process is gone)."""
        return self.state in FINAL_STATES

    def line(self) -> str:
        """One line of text: time, job state, stage counts, blocks and scheduler tasks."""
        out = f"[{self.elapsed:5.1f} s] job {self.state} | {format_progress(self.progress)}"
        if self.blocks is not None:
            out += f" | blocks detected: {self.blocks} ({self.mpix or 0.0:.2f} Mpix)"
        if self.tasks:
            out += " | tasks: " + ", ".join(f"{n} {s}" for s, n in sorted(self.tasks.items()))
        return out


def watch(
    archive: str | os.PathLike,
    *,
    every: float = 2.0,
    client: Any = None,
    per: str = "exposure",
    timeout: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[Snapshot]:
    """Yield a :class:`Snapshot` of a job every ``every`` seconds, the last one once it has ended.

    Parameters
    ----------
    archive : str or path
        The archive the job works on.
    every : float
        Seconds between snapshots.
    client : distributed.Client, optional
        A client of the job's scheduler: adds its task counts and the detection blocks done.
        It is not asked once the job record says the job has ended (its scheduler is closing).
    per : {"exposure", "detector"}
        Rows of the rates (see :class:`RateFollower`).
    timeout : float, optional
        Stop with :class:`TimeoutError` after this many seconds.
    sleep : callable
        Waits between snapshots (tests pass their own).

    Yields
    ------
    Snapshot
        The state of the job, its archive and its scheduler.
    """
    start = time.monotonic()
    follower = RateFollower(archive, per=per)
    counter = None
    if client is not None:
        with contextlib.suppress(Exception):
            counter = BlockCounter(client)
    try:
        while True:
            job = read_job(archive)
            state = job_state(job)
            over = state in FINAL_STATES
            snap = Snapshot(
                elapsed=time.monotonic() - start,
                job=job,
                state=state,
                progress=archive_progress(archive),
                rates=follower.update(),
                tasks={} if over else scheduler_tasks(client),
                blocks=counter.blocks if counter else None,
                mpix=counter.pixels / 1e6 if counter else None,
            )
            yield snap
            if over:
                return
            if timeout is not None and snap.elapsed > timeout:
                raise TimeoutError(f"the job on {archive} has not ended after {timeout:.0f} s")
            sleep(every)
    finally:
        if counter is not None:
            counter.close()
