"""The defect reduction: every detector's masks, over all its exposures, into a defect map.

Per detector key (:func:`crscale.io.defect_store.detector_key`: instrument, detector, binning,
shape), on the Dask cluster:

1. *Count* tasks, one per batch of :data:`EXPOSURES_PER_TASK` exposures: read each mask in
   turn and add ``mask != 0`` into one uint32 array of the detector's shape.
2. *Add* tasks sum the batches pairwise (a tree), so no process ever holds more than three
   count arrays, whatever the number of exposures, and never two masks at once.
3. *Finish* (one task per key): add the counts already in the archive (an incremental update
   adds only the exposures not yet counted), run the test of :mod:`crscale.catalogue.defects`,
   merge a user-supplied bad-pixel map, and write ``defects/<key>/`` (``state: done`` last).

A key is rebuilt from scratch when one of the exposures it counted was detected again (its
detect time changed) or left the archive: a mask cannot be subtracted once it changed.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np

from crscale import config
from crscale._logging import reporter
from crscale.catalogue.defects import UNVERIFIED, DefectSettings, add_user_map, find_defects
from crscale.catalogue.profiles import detector_physics, load_profiles
from crscale.engine._defect_reduction import DefectResult, KeyPlan, run_defects
from crscale.engine._stage import StageReport
from crscale.io.archive import Archive
from crscale.io.defect_store import (
    DEFECTS_GROUP,
    defect_keys,
    detector_key,
    read_array,
    read_defect_attrs,
    write_defect_map,
)
from crscale.io.errors import InputError, describe
from crscale.io.lease import Leases

log = logging.getLogger(__name__)

@dataclass(kw_only=True)
class DefectReport(StageReport):
    """All keys of a defect update, and the settings of the test."""

    STATUSES: ClassVar[tuple[str, ...]] = ("verified", "unverified", "current", "failed")

    results: list[DefectResult]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {"archive": self.archive, "seconds": self.seconds,
                "results": [asdict(r) for r in self.results]}

    def summary(self) -> str:
        """A few lines for the terminal."""
        updated = [r for r in self.results if r.status not in ("current", "failed")]
        lines = [
            f"defects: {len(updated)} detector map(s) updated "
            f"({sum(r.n_added for r in updated)} exposure(s) counted), "
            f"{sum(r.status == 'current' for r in self.results)} current, "
            f"{sum(r.status == 'failed' for r in self.results)} failed, {self.seconds:.1f} s"
        ]
        for r in updated:
            kinds = ", ".join(f"{n} {k}" for k, n in r.n_by_kind.items() if n) or "no defect pixels"
            how = "rebuilt" if r.rebuilt else "updated"
            lines.append(f"  {r.key}: {r.status} over {r.n_exposures} exposure(s), {how}: {kinds}")
        lines += [f"  FAILED {r.key}: {r.message}" for r in self.results if r.status == "failed"]
        return "\n".join(lines)


def key_of(
    exposure_attrs: dict[str, Any], detector: str, detector_attrs: dict[str, Any], physics: Any
) -> str:
    """The detector key of one detector of one exposure."""
    shape = detector_attrs.get("shape") or ()
    return detector_key(exposure_attrs.get("instrument"), detector, physics.binning, shape)


Entry = tuple[str, str, str, str, dict[str, Any]]


def plan_defects(arch: Archive, entries: Sequence[Entry]) -> dict[str, KeyPlan]:
    """Group detectors by key and find what each key's map is missing.

    Parameters
    ----------
    arch : Archive
        The archive.
    entries : sequence of (exposure, detector, key, detect_time, meta)
        Every detector with a finished detection; ``meta`` holds ``instrument``, ``binning``,
        ``shape``.
    """
    plans: dict[str, KeyPlan] = {}
    for eid, det, key, detect_time, meta in entries:
        plan = plans.get(key)
        if plan is None:
            plan = plans[key] = KeyPlan(
                key=key, instrument=meta.get("instrument"), detector=det,
                binning=tuple(meta["binning"]), shape=tuple(meta["shape"]),
            )
        plan.members[eid] = str(detect_time)
    for key, plan in plans.items():
        attrs = read_defect_attrs(arch, key) or {}
        counted = dict(attrs.get("contributions") or {})
        stale = [e for e, t in counted.items() if plan.members.get(e) != t]
        plan.rebuild = bool(stale) or (bool(counted) and read_array(arch, key, "counts") is None)
        plan.todo = sorted(plan.members) if plan.rebuild else sorted(set(plan.members) - set(counted))
        if not attrs:
            plan.todo = sorted(plan.members)
    return plans


def scan_archive(arch: Archive, *, exposures: Sequence[str] | None = None) -> list[Entry]:
    """Every detector with a finished detection, with its key (see :func:`plan_defects`)."""
    profiles = load_profiles()
    out = []
    for eid in arch.select_exposures(exposures):
        try:
            attrs = arch.exposure_attrs(eid)
            detect = attrs.get("status", {}).get("detect", {})
            if detect.get("state") != "done":
                continue
            for det in arch.detectors(eid):
                dattrs = dict(arch.root[f"exposures/{eid}/{det}"].attrs)
                phys = detector_physics(attrs, dattrs, profiles=profiles)
                key = key_of(attrs, det, dattrs, phys)
                meta = {"instrument": attrs.get("instrument"), "binning": phys.binning,
                        "shape": dattrs["shape"]}
                out.append((eid, det, key, str(detect.get("time")), meta))
        except Exception as exc:  # one exposure's metadata: the others go on
            log.warning("defects: exposure %r skipped: %s", eid, describe(exc))
    return out


def current_maps(arch: Archive) -> dict[str, dict[str, Any]]:
    """``{key: {"status", "digest", "completeness"}}`` of the finished maps."""
    out = {}
    for key in defect_keys(arch):
        attrs = read_defect_attrs(arch, key)
        if attrs:
            out[key] = {k: attrs.get(k) for k in ("status", "digest", "completeness", "n_exposures")}
    return out


def refresh_defects(
    arch: Archive, get_client: Any, *, settings: DefectSettings | None = None
) -> tuple[DefectReport | None, dict[str, dict[str, Any]] | None]:
    """Update every defect map that misses exposures (the catalogue stage's first step).

    Parameters
    ----------
    arch : Archive
        The archive, open for writing.
    get_client : callable
        Returns the Dask client; called only when some map has work.
    settings : DefectSettings, optional
        Default from the config.

    Returns
    -------
    report : DefectReport or None
        None when defect maps are switched off (``crscale.defects.enabled: false``).
    maps : dict or None
        :func:`current_maps` after the update (None when switched off).
    """
    if not config.get("defects.enabled"):
        return None, None
    report = _update(arch, get_client, settings or DefectSettings.from_config(), None)
    return report, current_maps(arch)


def _update(
    arch: Archive, get_client: Any, settings: DefectSettings, exposures: Sequence[str] | None
) -> DefectReport:
    """Plan every key, run those with work (``get_client()`` only then), report them all.

    Each key is updated under its lease (crscale.io.lease, scope ``defects``): a key another
    run is updating is waited for, then planned again, so that two runs never write one map at
    once and neither reads a map the other is rewriting.
    """
    t0 = time.perf_counter()
    leases = Leases(arch.path, scope="defects")
    results: dict[str, DefectResult] = {}
    try:
        while True:
            plans = plan_defects(arch, scan_archive(arch, exposures=exposures))
            for k, p in plans.items():
                if not p.todo:
                    results.setdefault(k, DefectResult(key=k, status="current", n_exposures=len(p.members)))
            work = {k: p for k, p in plans.items() if p.todo}
            mine = {k: p for k, p in work.items() if leases.acquire(k, stage="defects") is not None}
            if mine:
                results.update((r.key, r) for r in run_defects(get_client(), str(arch.path), mine, settings))
                for k in mine:
                    leases.release(k)
            busy = [k for k in work if k not in mine]
            for k in busy or leases.held_by_others():  # a map being rewritten is not read meanwhile
                leases.wait_while_held(k)
            if not busy:
                break
    finally:
        leases.release_all()
    return DefectReport(archive=str(arch.path), results=sorted(results.values(), key=lambda r: r.key),
                        settings=settings.to_dict(), seconds=time.perf_counter() - t0)


def defect_info(maps: dict[str, dict[str, Any]] | None, key: str) -> dict[str, Any] | None:
    """What a catalogue task needs of a detector's map: key, status, completeness, token.

    ``token`` changes whenever the catalogue rows of the detector would: the map's digest and
    the completeness. A detector without a finished map is ``unverified``.
    """
    if maps is None:
        return None
    found = maps.get(key)
    if not found:
        return {"key": None, "status": UNVERIFIED, "completeness": None, "token": "none"}
    comp = found.get("completeness") or None
    value = (float(comp["value"]), float(comp["error"])) if comp and comp.get("value") else None
    return {"key": key, "status": found.get("status") or UNVERIFIED, "completeness": value,
            "token": f"{found.get('digest')}|{value}"}


def update_defects(
    archive: str,
    *,
    client: Any = None,
    scheduler: str | None = None,
    n_workers: int | None = None,
    cluster: str | None = None,
    exposures: Sequence[str] | None = None,
    settings: DefectSettings | None = None,
    echo: Any = None,
) -> DefectReport:
    """Bring every detector's defect map up to date with the archive's masks.

    Parameters
    ----------
    archive : str or path
        The crscale archive.
    client, scheduler, n_workers, cluster
        The Dask cluster, as for :func:`crscale.engine.catalogue_stage.catalogue_archive`.
    exposures : sequence of str, optional
        Only these exposures (default: all with a finished detection).
    settings : DefectSettings, optional
        Default from the config (``crscale.defects``).
    echo : callable, optional
        Where the cluster's messages go; default: this module's logger (INFO).

    Returns
    -------
    DefectReport
    """
    from crscale.engine.cluster import client_or_new

    arch = Archive(archive, mode="a", create=False)
    with contextlib.ExitStack() as stack:
        opened: list[Any] = []

        def get_client() -> Any:
            if not opened:
                opened.append(stack.enter_context(client_or_new(
                    client, scheduler=scheduler, n_workers=n_workers, cluster=cluster,
                    echo=reporter(log, echo))))
                arch.note_format()
            return opened[0]

        return _update(arch, get_client, settings or DefectSettings.from_config(), exposures)


def set_user_map(
    archive: str,
    frame: np.ndarray,
    *,
    source: str,
    detector: str = "*",
    settings: DefectSettings | None = None,
) -> list[str]:
    """Store a user-supplied bad-pixel map (bool or non-zero = bad) for matching detector keys.

    Parameters
    ----------
    archive : str or path
        The archive (its defect maps must exist: run the catalogue or ``crscale defects`` first).
    frame : numpy.ndarray
        The map; applied to every key of the same shape whose name matches ``detector``.
    source : str
        Where it came from (recorded).
    detector : str
        fnmatch pattern on the keys (``instrument__detector__binning__shape``).
    settings : DefectSettings, optional
        Default from the config.

    Returns
    -------
    list of str
        The keys updated; their codes are recomputed at once.

    Raises
    ------
    InputError
        No detector key matches the pattern and the map's shape.
    """
    arch = Archive(archive, mode="a")
    settings = settings or DefectSettings.from_config()
    user = (np.asarray(frame) != 0).astype(np.uint8)
    done = []
    for key in defect_keys(arch):
        attrs = read_defect_attrs(arch, key)
        if not attrs or not fnmatch.fnmatch(key, detector) or tuple(attrs["shape"]) != user.shape:
            continue
        counts = read_array(arch, key, "counts")
        assert counts is not None  # a finished map has its counts
        dmap = find_defects(counts, int(attrs.get("n_exposures", 0)), settings=settings)
        dmap.codes = add_user_map(dmap.codes, user)
        write_defect_map(
            arch, key, {"user": user, "codes": dmap.codes},
            {"user_source": source, "digest": dmap.digest(), "n_by_kind": dmap.counts_by_kind(),
             "status": dmap.status},
        )
        done.append(key)
    if not done:
        raise InputError(
            source,
            f"no detector map in {arch.path}/{DEFECTS_GROUP} matches {detector!r} "
            f"and the map's shape {user.shape}",
        )
    return done


__all__ = ["UNVERIFIED", "DefectReport", "DefectResult", "KeyPlan", "current_maps", "plan_defects",
           "scan_archive", "set_user_map", "update_defects"]
