"""The dashboard's picture of a job, recomputed each tick from what changed in its archive.

:class:`DashboardState` owns the incremental readers (the archive tracker, the catalogue
follower and the scheduler probe) and turns them into a :class:`View` per tick: everything one
page shows, built once per tick for every browser session. Nothing here knows about Bokeh.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crscale.engine.jobs import read_job
from crscale.engine.monitor import FINAL_STATES, job_state
from crscale.io import storage
from crscale.io.archive import STAGES
from crscale.io.errors import ArchiveError
from crscale.monitor.advice import advice
from crscale.monitor.catalogue_reader import CatalogueFollower
from crscale.monitor.scheduler_probe import SchedulerProbe, WorkerUse
from crscale.monitor.tracker import ArchiveTracker, parse_time

#: Rows of the failures table at most (the newest; the total is shown beside it).
MAX_FAILURE_ROWS = 500
#: Time bins of the throughput plot.
THROUGHPUT_BINS = 60


@dataclass
class StageProgress:
    """One row of the progress table."""

    stage: str
    done: int
    running: int
    failed: int
    total: int | None  #: exposures that go through this stage (None: not known yet)
    rate: float  #: exposures per second recently (NaN: none)
    eta_s: float  #: seconds to go at that rate (NaN: not known)

    @property
    def remaining(self) -> int | None:
        """Exposures still to do (None: total not known)."""
        return None if self.total is None else max(self.total - self.done - self.failed, 0)


@dataclass
class View:
    """Everything the dashboard shows at one tick."""

    tick: int
    read_at: float  #: epoch seconds when the reading of this view began
    cost_s: float  #: seconds this tick's reading took
    archive: str
    job: dict[str, Any] | None
    state: str  #: :func:`crscale.engine.monitor.job_state`
    exposures: int
    unread: int  #: exposures listed but not read yet (first look at a large archive)
    catalogue_unread: int  #: catalogued exposures whose catalogue rows are not read yet
    inputs_failed: int  #: input files that never became an exposure
    duplicates: int
    stages: list[StageProgress]
    throughput: dict[str, np.ndarray]  #: ``time`` (epoch ms), ``<stage>`` exposures/s, ``mpix`` Mpix/s
    failures: list[dict[str, Any]]  #: newest first, at most :data:`MAX_FAILURE_ROWS`
    n_failures: int
    rates_generation: int
    rate_rows: list[Any]  #: :class:`~crscale.monitor.catalogue_reader.ExposureRate` in arrival order
    classes: dict[str, int]
    kinds: dict[str, int] | None  #: None: the catalogue has no ``kind`` column
    workers: list[WorkerUse] = field(default_factory=list)
    tasks: dict[str, int] = field(default_factory=dict)
    scheduler_error: str | None = None
    running: int = 0  #: exposures with a stage running
    failed: int = 0  #: exposures with a stage failed

    @property
    def dashboard_link(self) -> str | None:
        """The Dask dashboard of the job's cluster (while it runs)."""
        return (self.job or {}).get("dashboard") if self.state == "running" else None

    def counts(self) -> dict[str, int]:
        """Counts as :func:`crscale.engine.monitor.archive_progress` gives them."""
        by = {s.stage: s for s in self.stages}
        return {
            "exposures": self.exposures,
            "ingested": by["ingest"].done,
            "detected": by["detect"].done,
            "catalogued": by["catalogue"].done,
            "running": self.running,
            "failed": self.failed,
            "inputs_failed": self.inputs_failed,
        }


class DashboardState:
    """Reads an archive (and its job's scheduler) incrementally and makes a :class:`View` per tick.

    Parameters
    ----------
    archive : str or path
        The archive of the job.
    window_s : float
        Seconds of recent completions the rates and ETAs are measured over.
    scheduler : bool
        Ask the job's scheduler for its workers (when it can be reached).
    settled_every, budget_s
        See :class:`~crscale.monitor.tracker.ArchiveTracker`.
    """

    def __init__(self, archive: str | os.PathLike, *, window_s: float = 120.0, scheduler: bool = True,
                 settled_every: int = 10, budget_s: float = 1.0) -> None:
        if storage.is_url(archive):
            raise ArchiveError(
                f"{archive}: the dashboard follows a local or mounted archive (it stats files and "
                "lists folders each tick); run it on a machine where the bucket is mounted as a "
                "folder, and give it that folder"
            )
        self.path = Path(archive).absolute()
        self.window_s = window_s
        self.tracker = ArchiveTracker(self.path, settled_every=settled_every, budget_s=budget_s)
        self.catalogue = CatalogueFollower(self.path)
        self.probe = SchedulerProbe() if scheduler else None
        self._catalogue_time: dict[str, float] = {}
        self._catalogue_todo: dict[str, None] = {}
        self._tick = 0
        self._throughput: dict[str, np.ndarray] | None = None
        self._failures: tuple[list[dict[str, Any]], int, int, int] = ([], 0, 0, 0)

    def close(self) -> None:
        """Disconnect from the scheduler."""
        if self.probe is not None:
            self.probe.close()

    def _follow_catalogue(self, changed: list[str], removed: list[str]) -> None:
        undone = list(removed)
        k = STAGES.index("catalogue")
        for e in self.tracker.of(changed):
            t = e.times[k]
            if e.states[k] == "done":
                if self._catalogue_time.get(e.exposure) != t:
                    self._catalogue_time[e.exposure] = t
                    self._catalogue_todo[e.exposure] = None
            elif e.exposure in self._catalogue_time:
                del self._catalogue_time[e.exposure]
                self._catalogue_todo.pop(e.exposure, None)
                undone.append(e.exposure)
        for eid in removed:
            self._catalogue_time.pop(eid, None)
            self._catalogue_todo.pop(eid, None)
        if undone:
            self.catalogue.update([], uncatalogued=undone)
        # A first look at a large catalogue reads a few batches a tick, not all of it at once.
        deadline = time.monotonic() + self.tracker.budget_s
        while self._catalogue_todo and time.monotonic() < deadline:
            batch = list(self._catalogue_todo)[: self.catalogue.batch]
            for eid in batch:
                del self._catalogue_todo[eid]
            self.catalogue.update(batch)
            for eid in self.catalogue.unreadable:  # being replaced right now: next tick
                self._catalogue_todo[eid] = None

    def tick(self) -> View:
        """Read what changed and return the new :class:`View`."""
        t0 = time.monotonic()
        # The view is "as of" the start of its reading: every file it shows was read after this.
        now = time.time()
        self._tick += 1
        job = read_job(self.path)
        state = job_state(job)
        changes = self.tracker.update()
        self._follow_catalogue(changes.changed, changes.removed)
        if changes.failures_changed or self._tick == 1:
            self._failures = _failure_rows(self.tracker.failures)
        failures, n_failures, inputs_failed, duplicates = self._failures
        stages = self._progress(job, state, inputs_failed, now)
        if changes.changed or changes.removed or self._throughput is None or state == "running":
            self._throughput = self._throughput_series(job, now)
        workers: list[WorkerUse] = []
        tasks: dict[str, int] = {}
        error: str | None = "the scheduler is not asked (scheduler=False)"
        if self.probe is not None:
            workers, tasks = self.probe.poll((job or {}).get("scheduler"), state == "running")
            error = self.probe.error
        view = View(
            tick=self._tick, read_at=now, cost_s=0.0, archive=str(self.path), job=job, state=state,
            exposures=len(self.tracker.exposures), unread=self.tracker.unread,
            catalogue_unread=len(self._catalogue_todo),
            inputs_failed=inputs_failed, duplicates=duplicates, stages=stages,
            throughput=self._throughput, failures=failures, n_failures=n_failures,
            rates_generation=self.catalogue.generation,
            rate_rows=[self.catalogue.rates[e] for e in self.catalogue.order if e in self.catalogue.rates],
            classes=dict(self.catalogue.classes),
            kinds=dict(self.catalogue.kinds) if self.catalogue.has_kinds else None,
            workers=workers, tasks=tasks, scheduler_error=error,
            running=self.tracker.any_stage["running"], failed=self.tracker.any_stage["failed"],
        )
        view.cost_s = time.monotonic() - t0
        return view

    def _job_span(self, job: dict[str, Any] | None, now: float) -> tuple[float, float]:
        started = parse_time((job or {}).get("started"))
        ended = parse_time((job or {}).get("ended")) if job_state(job) in FINAL_STATES else math.nan
        return started, (ended if math.isfinite(ended) else now)

    def _progress(self, job: dict[str, Any] | None, state: str, inputs_failed: int,
                  now: float) -> list[StageProgress]:
        counts = self.tracker.counts
        started, end = self._job_span(job, now)
        over = state in FINAL_STATES
        exposures = len(self.tracker.exposures) + self.tracker.unread
        ingested = counts["ingest"]["done"]
        rows = []
        for stage in STAGES:
            c = counts[stage]
            if stage == "ingest":
                n_inputs = (job or {}).get("inputs")
                total = int(n_inputs) if isinstance(n_inputs, int) else exposures + inputs_failed
                failed = c["failed"] + inputs_failed
            else:
                total, failed = ingested, c["failed"]
            rate = self._rate(stage, started, end, over)
            row = StageProgress(stage, c["done"], c["running"], failed, total, rate, math.nan)
            if not over and row.remaining and rate > 0:
                row.eta_s = row.remaining / rate
            elif row.remaining == 0:
                row.eta_s = 0.0
            rows.append(row)
        return rows

    def _rate(self, stage: str, started: float, end: float, over: bool) -> float:
        times = self.tracker.done_times()[stage][0]
        if over and math.isfinite(started):
            lo = started  # an ended job: its mean rate
        else:
            lo = end - self.window_s
            if math.isfinite(started):
                lo = max(lo, started)
        span = end - lo
        if span <= 0:
            return math.nan
        n = int(np.count_nonzero((times >= lo) & (times <= end + 1)))
        return n / span if n else (0.0 if math.isfinite(started) else math.nan)

    def _throughput_series(self, job: dict[str, Any] | None, now: float) -> dict[str, np.ndarray]:
        started, end = self._job_span(job, now)
        series = self.tracker.done_times()
        all_t = np.concatenate([t for t, _ in series.values()])
        all_t = all_t[np.isfinite(all_t)]
        lo = started if math.isfinite(started) else (all_t.min() if all_t.size else end)
        if all_t.size and not math.isfinite(started):
            end = max(end, all_t.max() + 1)
        width = max(2.0, (end - lo) / THROUGHPUT_BINS)
        edges = np.arange(lo, end + width, width)
        if edges.size < 2:
            edges = np.array([lo, lo + width])
        centres = (edges[:-1] + width / 2) * 1e3
        out = {"time": centres, "width": np.full(centres.shape, width * 1e3 * 0.9)}
        for stage, (t, px) in series.items():
            ok = np.isfinite(t)
            out[stage] = np.histogram(t[ok], bins=edges)[0] / width
            if stage == "detect":
                out["mpix"] = np.histogram(t[ok], bins=edges, weights=px[ok] / 1e6)[0] / width
        return out


def _failure_rows(records: dict[str, dict[str, Any]]) -> tuple[list[dict[str, Any]], int, int, int]:
    rows, inputs_failed, duplicates = [], 0, 0
    for rec in records.values():
        if rec.get("kind") == "duplicate":
            duplicates += 1
            continue
        if rec.get("stage") == "ingest" and not rec.get("exposure_id"):
            inputs_failed += 1
        path = str(rec.get("path") or "")
        rows.append({
            "exposure": rec.get("exposure_id") or os.path.basename(path) or "?",
            "path": path,
            "stage": rec.get("stage", "?"),
            "kind": rec.get("kind", "?"),
            "message": str(rec.get("problem") or ""),
            "time": str(rec.get("time") or ""),
            "advice": advice(rec),
        })
    rows.sort(key=lambda r: r["time"], reverse=True)
    return rows[:MAX_FAILURE_ROWS], len(rows), inputs_failed, duplicates
