"""Follow an archive's exposures and failure records incrementally, for a live dashboard.

A dashboard ticks every few seconds on archives of up to 10⁵ exposures, so nothing here
re-reads the whole archive per tick:

* the ``exposures/`` listing is re-read only when that folder's modification time changes (an
  exposure appears or disappears by a rename in it);
* an exposure's metadata (its ``zarr.json``: status per stage, instrument, detectors) is
  re-read only when the file's signature (inode, mtime, size) changed: Zarr replaces the file
  by a rename, so every status change gives a new signature, and one ``stat`` per exposure is
  the whole cost of an unchanged one;
* exposures that have settled (catalogued, or failed) are stat'ed only every
  ``settled_every``-th tick: a running job does not touch them, a later forced re-run is
  still seen within that many ticks;
* a first look at a large archive reads at most ``budget_s`` seconds of metadata per tick
  (the dashboard shows how many are still to read), so the page is up at once; until it is
  over, exposures already read are checked only at the sweeps.

The files are read as the Zarr v3 JSON they are (``zarr.json`` ``attributes``), without opening
Zarr groups, which is several times faster and never writes. Only a local (or mounted) archive
can be followed this way.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crscale.io.archive import STAGES

log = logging.getLogger(__name__)

#: Stage states that end an exposure's way through a stage.
FINAL = ("done", "failed")

Signature = tuple[int, int, int]


def signature(path: str | os.PathLike) -> Signature | None:
    """``(inode, mtime_ns, size)`` of a file, or None when it is not there."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _mtime(path: Path) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


def parse_time(text: Any) -> float:
    """Epoch seconds of an ISO 8601 time (UTC when it names no zone); NaN when unreadable."""
    if not isinstance(text, str) or not text:
        return math.nan
    try:
        t = _dt.datetime.fromisoformat(text)
    except ValueError:
        return math.nan
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.UTC)
    return t.timestamp()


def read_attributes(path: Path) -> dict[str, Any]:
    """The ``attributes`` of a Zarr v3 ``zarr.json`` file.

    Raises
    ------
    OSError, ValueError
        The file is missing, being replaced, or not JSON.
    """
    meta = json.loads(path.read_bytes())
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: not a JSON object")
    attrs = meta.get("attributes") or {}
    return attrs if isinstance(attrs, dict) else {}


@dataclass(slots=True)
class ExposureState:
    """What the dashboard keeps of one exposure."""

    exposure: str
    instrument: str
    states: tuple[str | None, ...]  #: state per stage of :data:`crscale.io.archive.STAGES`
    times: tuple[float, ...]  #: epoch seconds of each stage's last status (NaN: none)
    detectors: tuple[str, ...]
    pixels: int | None = None  #: image pixels over all detectors (read once, when detected)

    @property
    def settled(self) -> bool:
        """Nothing more is expected of it: catalogued, or a stage failed."""
        return self.states[-1] == "done" or "failed" in self.states


def exposure_state(eid: str, attrs: dict[str, Any]) -> ExposureState:
    """An :class:`ExposureState` from an exposure's attributes."""
    status = attrs.get("status") or {}
    entries = [status.get(stage) or {} for stage in STAGES]
    instrument = attrs.get("instrument")
    instrument = instrument.strip() if isinstance(instrument, str) and instrument.strip() else "unknown"
    return ExposureState(
        exposure=eid,
        instrument=instrument,
        states=tuple(e.get("state") for e in entries),
        times=tuple(parse_time(e.get("time")) for e in entries),
        detectors=tuple(str(d) for d in attrs.get("detectors") or ()),
    )


@dataclass
class Changes:
    """What one :meth:`ArchiveTracker.update` saw change."""

    changed: list[str] = field(default_factory=list)  #: exposures read anew (new or changed)
    removed: list[str] = field(default_factory=list)  #: exposures no longer in the archive
    failures_changed: bool = False
    stat_calls: int = 0  #: files stat'ed (the per-tick cost of unchanged exposures)
    reads: int = 0  #: metadata files read


class ArchiveTracker:
    """Exposure states and failure records of an archive, kept up to date incrementally.

    Parameters
    ----------
    archive : str or path
        The archive (local or mounted folder). It need not exist yet.
    settled_every : int
        Stat settled exposures (catalogued or failed) only every this many updates.
    budget_s : float
        Seconds of metadata reading per update at most (a first look at a large archive
        spreads over several updates; see :attr:`unread`).
    """

    def __init__(self, archive: str | os.PathLike, *, settled_every: int = 10, budget_s: float = 1.0) -> None:
        self.path = Path(archive).absolute()
        self._prefix = f"{self.path / 'exposures'}{os.sep}"
        self.settled_every = max(1, int(settled_every))
        self.budget_s = float(budget_s)
        self.exposures: dict[str, ExposureState] = {}
        #: Stage -> state -> number of exposures in that state.
        self.counts: dict[str, Counter[str]] = {stage: Counter() for stage in STAGES}
        #: State -> number of exposures with at least one stage in that state.
        self.any_stage: Counter[str] = Counter()
        #: Failure records by their folder name (see :meth:`crscale.io.archive.Archive.failures`).
        self.failures: dict[str, dict[str, Any]] = {}
        self.updates = 0
        self._names: list[str] = []
        # Listed exposures not read yet (in listing order), and read ones not settled: the only
        # ones a tick between two sweeps looks at.
        self._unread: dict[str, None] = {}
        self._unsettled: set[str] = set()
        self._sig: dict[str, Signature] = {}
        self._listing_mtime: int | None = None
        self._failure_mtime: int | None = None
        self._failure_sig: dict[str, Signature | None] = {}
        # Per stage: exposure -> (time done, pixels), kept up to date by _set.
        self._done_at: dict[str, dict[str, tuple[float, float]]] = {stage: {} for stage in STAGES}
        self._done: dict[str, tuple[np.ndarray, np.ndarray]] | None = None

    # ------------------------------------------------------------------ reading
    @property
    def unread(self) -> int:
        """Exposures listed but whose metadata is not read yet (first look at a large archive)."""
        return len(self._unread)

    def _file(self, eid: str) -> str:
        # Plain strings: building pathlib paths costs more than the stat itself at 10⁵ a tick.
        return f"{self._prefix}{eid}{os.sep}zarr.json"

    def _list(self) -> list[str] | None:
        folder = self.path / "exposures"
        mtime = _mtime(folder)
        if mtime is not None and mtime == self._listing_mtime:
            return None
        names: list[str] = []
        try:
            with os.scandir(folder) as it:
                names = sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
        except OSError:
            names = []
        self._listing_mtime = mtime
        return names

    def _set(self, eid: str, new: ExposureState | None) -> None:
        self._done = None
        for stage in STAGES:
            self._done_at[stage].pop(eid, None)
        old = self.exposures.get(eid)
        if old is not None:
            for stage, state in zip(STAGES, old.states, strict=True):
                self.counts[stage][state or "none"] -= 1
            for state in {s for s in old.states if s}:
                self.any_stage[state] -= 1
        if new is None:
            self.exposures.pop(eid, None)
            self._unsettled.discard(eid)
            return
        self._unread.pop(eid, None)
        if new.settled:
            self._unsettled.discard(eid)
        else:
            self._unsettled.add(eid)
        for stage, state in zip(STAGES, new.states, strict=True):
            self.counts[stage][state or "none"] += 1
        for state in {s for s in new.states if s}:
            self.any_stage[state] += 1
        for stage, state, t in zip(STAGES, new.states, new.times, strict=True):
            if state == "done":
                self._done_at[stage][eid] = (t, float(new.pixels or 0))
        self.exposures[eid] = new

    def _pixels(self, state: ExposureState) -> int | None:
        total = 0
        for det in state.detectors:
            try:
                meta = json.loads((self.path / "exposures" / state.exposure / det / "image" / "zarr.json")
                                  .read_bytes())
                total += math.prod(int(n) for n in meta["shape"])
            except (OSError, ValueError, KeyError, TypeError):
                return None
        return total

    def _read(self, eid: str, sig: Signature) -> bool:
        try:
            attrs = read_attributes(Path(self._file(eid)))
        except (OSError, ValueError) as exc:  # being replaced right now: tried again next time
            log.debug("exposure %s: metadata not readable now (%s)", eid, exc)
            return False
        state = exposure_state(eid, attrs)
        old = self.exposures.get(eid)
        if old is not None and old.detectors == state.detectors:
            state.pixels = old.pixels
        if state.pixels is None and state.states[1] == "done":
            state.pixels = self._pixels(state)
        self._set(eid, state)
        self._sig[eid] = sig
        return True

    def update(self) -> Changes:
        """Read what changed in the archive since the last call.

        Returns
        -------
        Changes
            The exposures read anew or removed, and whether the failure records changed.
        """
        self.updates += 1
        changes = Changes()
        names = self._list()
        if names is not None:
            gone = set(self._names) - set(names)
            for eid in gone:
                self._set(eid, None)
                self._sig.pop(eid, None)
                self._unread.pop(eid, None)
            changes.removed = sorted(gone)
            self._names = names
            self._unread.update((e, None) for e in names if e not in self.exposures)
        full_sweep = self.updates % self.settled_every == 1 or self.settled_every == 1
        if full_sweep:
            candidates = self._names
        elif self._unread:  # a first look: read on; what is read already is checked at sweeps
            candidates = list(self._unread)
        else:
            candidates = list(self._unsettled)
        deadline = time.monotonic() + self.budget_s
        for eid in candidates:
            if eid in self._unread and time.monotonic() > deadline:
                continue  # the rest of a first look: next time
            sig = signature(self._file(eid))
            changes.stat_calls += 1
            if sig is None:
                continue  # listed, but its metadata is not in place (yet)
            if self._sig.get(eid) != sig:
                changes.reads += 1
                if self._read(eid, sig):
                    changes.changed.append(eid)
        changes.failures_changed = self._update_failures(changes)
        return changes

    def _update_failures(self, changes: Changes) -> bool:
        folder = self.path / "failures"
        mtime = _mtime(folder)
        if mtime != self._failure_mtime:
            try:
                with os.scandir(folder) as it:
                    keys = {e.name for e in it if e.is_dir(follow_symlinks=False)}
            except OSError:
                keys = set()
            self._failure_mtime = mtime
            for key in set(self._failure_sig) - keys:
                del self._failure_sig[key]
                self.failures.pop(key, None)
            for key in keys - set(self._failure_sig):
                self._failure_sig[key] = None
            dirty = True
        else:
            dirty = False
        for key, old in list(self._failure_sig.items()):
            sig = signature(folder / key / "zarr.json")
            changes.stat_calls += 1
            if sig == old:
                continue
            try:
                record = read_attributes(folder / key / "zarr.json")
            except (OSError, ValueError):
                continue  # being written: next time
            self._failure_sig[key] = sig
            if record:
                self.failures[key] = record
                dirty = True
        return dirty

    # ------------------------------------------------------------------ views
    def done_times(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per stage, ``(epoch seconds, image pixels)`` of the exposures done with it.

        Rebuilt only after something changed (cached between updates that read nothing).
        """
        if self._done is None:
            self._done = {}
            for stage, done in self._done_at.items():
                pairs = np.fromiter(done.values(), dtype=np.dtype((np.float64, 2)), count=len(done))
                self._done[stage] = (pairs[:, 0].copy(), pairs[:, 1].copy())
        return self._done

    def of(self, ids: Iterable[str]) -> list[ExposureState]:
        """The states of the given exposures that are known."""
        return [self.exposures[e] for e in ids if e in self.exposures]
