"""The scaffold every archive stage shares: the submission window, statuses, failures, reports.

A stage (ingest, detect, catalogue, write-fits) supplies only its per-exposure work; this
module holds what they all do around it:

- :class:`Window`: futures in flight on the cluster, bounded by a load (tasks, blocks), each
  with the stage's own named in-flight record; :func:`window_size` is the one source of its
  size, and :func:`windowed` the simple form (one task per input, results as they come).
- :class:`StatusBook`: an exposure's status transitions in one stage (``running`` →
  ``done`` or ``failed``), the ``failures/`` record of a failure and its clearing once the
  exposure is done, and, on an interrupt, :meth:`StatusBook.abandon` (nothing left ``running``).
- :func:`progress_bar`: the progress bars' common settings (stderr, off when not wanted).
- :class:`StageReport`: the report of a run, built by keyword, with per-status counts.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from crscale.interrupts import raise_pending
from crscale.io.archive import Archive
from crscale.io.lease import Leases, describe_holder

#: Tasks kept in flight per worker thread (blocks, for the detection stage: see
#: ``crscale.detect.blocks_in_flight_per_thread``): the scheduler always has work, and an
#: archive of any size never becomes one huge graph.
TASKS_IN_FLIGHT_PER_THREAD = 4
#: The smallest window, whatever the cluster.
MIN_WINDOW = 4

Item = TypeVar("Item")


def window_size(client: Any, per_thread: int = TASKS_IN_FLIGHT_PER_THREAD) -> int:
    """How much work to keep in flight on ``client``'s cluster: ``per_thread`` per worker thread."""
    threads = sum(client.nthreads().values()) or 1
    return max(MIN_WINDOW, int(per_thread) * threads)


def progress_bar(total: int, desc: str, unit: str, enabled: bool, **kw: Any) -> Any:
    """A tqdm bar on stderr, disabled when ``enabled`` is false."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, file=sys.stderr,
                dynamic_ncols=True, **kw)


@dataclass(kw_only=True)
class Completed(Generic[Item]):
    """A future that finished: its in-flight record and its value, or the error it raised."""

    item: Item
    value: Any = None
    error: Exception | None = None


class Window(Generic[Item]):
    """Futures in flight, each with the stage's record of it, bounded by a total load.

    Parameters
    ----------
    limit : int
        The load (tasks, blocks ...) up to which :meth:`has_room` says more may be submitted;
        there is always room when nothing is in flight, so that a single item larger than the
        limit still runs.
    """

    def __init__(self, limit: int) -> None:
        from distributed import as_completed

        self.limit = limit
        self.load = 0
        self._items: dict[str, Item] = {}
        self._ac = as_completed()

    def has_room(self) -> bool:
        """Whether more work may be submitted now."""
        return self.load < self.limit or not self._items

    def add(self, future: Any, item: Item, load: int = 0) -> None:
        """Track ``future``, with ``item`` as its record; ``load`` is added to the window's."""
        self._items[future.key] = item
        self.load += load
        self._ac.add(future)

    def release(self, load: int) -> None:
        """Give back ``load`` of the window (the work it stood for is over)."""
        self.load -= load

    @property
    def futures(self) -> list[Any]:
        """The futures still in flight."""
        return list(self._ac.futures)

    def completed(self) -> Iterator[Completed[Item]]:
        """Each future as it finishes (including those added meanwhile), released once read."""
        for future in self._ac:
            raise_pending()  # a signal whose exception a finaliser swallowed (crscale.interrupts)
            item = self._items.pop(future.key)
            try:
                done = Completed(item=item, value=future.result())
            except Exception as exc:  # the task failed or was lost: the stage records it, goes on
                done = Completed(item=item, error=exc)
            finally:
                future.release()
            yield done


@dataclass(kw_only=True)
class Call:
    """One task of :func:`windowed`: the function's arguments, and what the task is about."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    subject: Any = None


def windowed(
    client: Any,
    func: Callable[..., Any],
    calls: Sequence[Call],
    *,
    desc: str,
    progress: bool,
    window: int | None = None,
    unit: str = "file",
    claim: Callable[[Call], Any] | None = None,
) -> Iterable[Completed[Call]]:
    """Run ``func`` over ``calls`` with at most ``window`` tasks in flight.

    Yields a :class:`Completed` per call, as they finish: its ``value``, or its ``error`` when
    the task itself was lost (a worker killed more often than the scheduler allows, a
    cancelled future), so that the caller records that input as failed and the run goes on.
    ``claim(call)``, called just before a call is submitted, may return a value to yield for
    it instead of running it (an input another run is working on); it may change the call.
    """
    if not calls:
        return
    win: Window[Call] = Window(window or window_size(client))
    bar = progress_bar(len(calls), desc, unit, progress)
    pending = iter(calls)

    def fill() -> None:
        while win.has_room():
            call = next(pending, None)
            if call is None:
                return
            settled = claim(call) if claim is not None else None
            if settled is not None:
                bar.update(1)
                ready.append(Completed(item=call, value=settled))
                continue
            win.add(client.submit(func, *call.args, pure=False, **call.kwargs), call, load=1)

    ready: list[Completed[Call]] = []  # settled by claim(), never submitted
    try:
        fill()
        while ready:  # everything claimed elsewhere: nothing in flight to wait for
            yield ready.pop(0)
            fill()
        for done in win.completed():
            win.release(1)
            bar.update(1)
            yield done
            fill()
            while ready:
                yield ready.pop(0)
                fill()
    finally:
        bar.close()


def clear_exposure_failure(arch: Archive, exposure_id: str, stage: str) -> None:
    """Forget the ``failures/`` record of an exposure's stage once it is done (best effort)."""
    with contextlib.suppress(Exception):
        # Keyed as Archive.record_exposure_failure keys it: the source path, else the id.
        source = arch.exposure_attrs(exposure_id).get("source", {}).get("path") or exposure_id
        arch.clear_failure(source, stage=stage)


@dataclass(kw_only=True)
class StatusBook:
    """The status transitions of one stage's exposures, the failures they record, their leases.

    ``running`` holds the exposures this run marked ``running`` and has not finished, so that
    an interrupt leaves none of them ``running`` (:meth:`abandon`). With ``leases``, an
    exposure is worked on only once its lease is taken (:meth:`claim`; see
    :mod:`crscale.io.lease`), and the lease is given back when the exposure is done or failed,
    or the run ends (:meth:`close`).
    """

    arch: Archive
    stage: str
    leases: Leases | None = None
    running: set[str] = field(default_factory=set)

    def claim(self, exposure_id: str) -> str | None:
        """Take the exposure's lease: None when this run may work on it, else why it may not."""
        if self.leases is None or self.leases.acquire(exposure_id, stage=self.stage) is not None:
            return None
        holder = self.leases.holder(exposure_id)
        return "being processed by another run" + (f" ({describe_holder(holder)})" if holder else "")

    def release(self, exposure_id: str) -> None:
        """Give the exposure's lease back (this run is no longer working on it)."""
        if self.leases is not None:
            self.leases.release(exposure_id)

    def start(self, exposure_id: str) -> None:
        """Mark the exposure ``running`` (its outputs are about to be overwritten)."""
        self.arch.set_status(exposure_id, self.stage, "running")
        self.running.add(exposure_id)

    def done(self, exposure_id: str, **info: Any) -> None:
        """Mark the exposure ``done`` (written last, after its outputs) and clear its failure."""
        self.arch.set_status(exposure_id, self.stage, "done", **info)
        self.running.discard(exposure_id)
        clear_exposure_failure(self.arch, exposure_id, self.stage)
        self.release(exposure_id)

    def failed(self, exposure_id: str, message: str, kind: str) -> None:
        """Mark the exposure ``failed`` and record why in ``failures/`` (never raises)."""
        self.running.discard(exposure_id)
        self.arch.record_exposure_failure(exposure_id, self.stage, message, kind)
        self.release(exposure_id)

    def abandon(self, client: Any, futures: Any, exc: BaseException) -> None:
        """Cancel the tasks in flight and mark the ``running`` exposures ``interrupted``.

        Called when the client is interrupted (a signal, Ctrl-C) or fails itself: no exposure
        is left ``running``, and a re-run redoes those (their status is not ``done``). Best
        effort and quick, since a batch system follows SIGTERM with SIGKILL.
        """
        with contextlib.suppress(Exception):
            client.cancel(list(futures))
        reason = "interrupted: " + (str(exc) or type(exc).__name__)
        for eid in sorted(self.running):
            with contextlib.suppress(Exception):
                self.arch.set_status(eid, self.stage, "interrupted", message=reason)
        self.close()

    def close(self) -> None:
        """Give back every lease this run still holds (the stage is over)."""
        if self.leases is not None:
            with contextlib.suppress(Exception):
                self.leases.release_all()


@dataclass(kw_only=True)
class ExposureOutcome:
    """What a stage did with one exposure; each stage's record adds its own counts.

    Attributes
    ----------
    exposure_id : str
    status : {"done", "skipped", "failed"}
    message : str
        The problem (failed) or a note.
    n_detectors : int
    seconds : float
        Wall time from submission to the status being written.
    """

    exposure_id: str
    status: str
    message: str = ""
    n_detectors: int = 0
    seconds: float = 0.0


@dataclass(kw_only=True)
class StageReport:
    """What every stage's report holds: the outcomes in archive order, the settings, the time.

    ``results`` have a ``status``, one of :attr:`STATUSES`.
    """

    STATUSES: ClassVar[tuple[str, ...]] = ("done", "skipped", "failed")

    archive: str
    results: list[Any]
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def by_status(self, status: str) -> list[Any]:
        """Outcomes with the given status."""
        return [r for r in self.results if r.status == status]

    @property
    def ok(self) -> bool:
        """True when nothing failed."""
        return not self.by_status("failed")

    def counts(self) -> dict[str, int]:
        """Outcomes per status."""
        return {s: len(self.by_status(s)) for s in self.STATUSES}

    def _more(self) -> dict[str, Any]:
        """What a stage's report adds to :meth:`to_dict` (JSON-safe)."""
        return {}

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (what ``--report`` writes)."""
        return {
            "archive": self.archive,
            "seconds": self.seconds,
            "counts": self.counts(),
            "settings": self.settings,
            **self._more(),
            "results": [asdict(r) for r in self.results],
        }
