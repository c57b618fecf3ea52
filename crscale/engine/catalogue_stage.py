"""The catalogue stage: every detected exposure's CRs into the archive's Parquet catalogue.

Per exposure:

1. *Plan* (client): the detectors, their physics (instrument profile, pixel size, gain,
   read-out time: :func:`crscale.catalogue.profiles.detector_physics`) and the morphology
   rules, resolved once on the client so that every worker uses the same settings.
2. *Detectors* (one task each): :func:`crscale.catalogue.detector.catalogue_detector` reads the
   detector's ``image``, ``mask``, ``clean`` (the local background) and ``dq`` from the
   archive in bands of whole chunk rows, labels the CRs across band boundaries and measures
   them, and builds the detector's exposure-table row.
3. *Write* (one task, after its detectors): the exposure's two Parquet files, whole
   (:func:`crscale.io.catalogue_store.write_exposure_tables`).
4. *Finish* (client): the exposure's ``catalogue`` status ``done``, written last, with the
   time of the detection it was made from.

A re-run skips exposures catalogued from their current detection; an exposure detected again
since (``crscale detect --force``) is catalogued again. A failed exposure gets ``failed``, a
``failures/`` record, and no rows: its files are removed, so the catalogue never mixes rows
of two detections.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from crscale._logging import reporter
from crscale.catalogue.morphology import MorphologyRules
from crscale.catalogue.profiles import DetectorPhysics, detector_physics, load_profiles
from crscale.engine._catalogue_tasks import catalogue_detector_task, write_exposure_task
from crscale.engine._stage import ExposureOutcome, StageReport, StatusBook, Window, progress_bar, window_size
from crscale.engine.cluster import client_or_new
from crscale.engine.defects_stage import defect_info, key_of, refresh_defects
from crscale.io import integrity
from crscale.io.archive import Archive
from crscale.io.catalogue_store import remove_exposure_tables, table_file
from crscale.io.errors import describe
from crscale.io.lease import Leases

logger = logging.getLogger(__name__)

STAGE = "catalogue"
#: The exposure attributes every exposure-table row carries.
ROW_ATTRS = ("instrument", "telescope", "date_obs", "mjd_obs", "exptime")


@dataclass(kw_only=True)
class ExposureCatalogue(ExposureOutcome):
    """Outcome of the catalogue stage for one exposure (see :class:`ExposureOutcome`)."""

    n_cr: int = 0


@dataclass(kw_only=True)
class CatalogueReport(StageReport):
    """All outcomes of a catalogue run, in archive order, and the settings used."""

    results: list[ExposureCatalogue]
    defects: Any = None  #: the DefectReport of the defect update run first, if any
    redone_for_defects: list[str] = field(default_factory=list)  #: recatalogued: their defect map changed

    def _more(self) -> dict[str, Any]:
        return {
            "defects": self.defects.to_dict() if self.defects is not None else None,
            "redone_for_defects": self.redone_for_defects,
        }

    def summary(self) -> str:
        """A few lines for the terminal."""
        c = self.counts()
        done = self.by_status("done")
        rate = c["done"] / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"catalogue: {c['done']} exposure(s) done, {c['skipped']} already done (skipped), "
            f"{c['failed']} failed; {sum(r.n_cr for r in done):,} CRs in "
            f"{sum(r.n_detectors for r in done)} detector(s), {self.seconds:.1f} s "
            f"= {rate:.2f} exposures/s"
        ]
        for r in self.by_status("failed"):
            lines.append(f"  FAILED: {r.message}")
        if self.defects is not None and any(r.status != "current" for r in self.defects.results):
            lines.append(self.defects.summary())
        if self.redone_for_defects:
            lines.append(
                f"  re-catalogued {len(self.redone_for_defects)} exposure(s) whose defect map or "
                f"completeness changed: {', '.join(self.redone_for_defects[:10])}"
                + (" ..." if len(self.redone_for_defects) > 10 else "")
            )
        return "\n".join(lines)


def catalogue_archive(
    archive: str,
    *,
    client: Any = None,
    scheduler: str | None = None,
    n_workers: int | None = None,
    cluster: str | None = None,
    exposures: Sequence[str] | None = None,
    force: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
    completeness: Callable[..., Any] | None = None,
) -> CatalogueReport:
    """Run the catalogue stage over an archive (or some of its exposures) on a Dask cluster.

    Parameters
    ----------
    archive : str or path
        The crscale archive.
    client, scheduler, n_workers, cluster : optional
        The Dask cluster, as for :func:`crscale.engine.detect_stage.detect_archive`.
    exposures : sequence of str, optional
        Only these exposures (default: every exposure whose detection is done).
    force : bool
        Catalogue again exposures whose catalogue is up to date.
    progress : bool
        A progress bar on stderr.
    echo : callable, optional
        Where messages go; default: this module's logger (INFO).
    completeness : callable, optional
        ``completeness(archive, get_client, maps) -> maps``, run after the defect maps are
        updated: fills in each detector's completeness (the CLI passes
        :func:`crscale.evaluate.completeness.refresh_completeness`).

    Returns
    -------
    CatalogueReport
        ``report.ok`` is False when an exposure failed.

    Raises
    ------
    ArchiveError
        The archive cannot be opened, or an exposure asked for is not in it.
    ValueError
        Bad instrument profiles or morphology settings in the config.
    """
    t0 = time.perf_counter()
    say = reporter(logger, echo)
    arch = Archive(archive, mode="a", create=False)
    path = str(arch.path)
    profiles = load_profiles()
    rules = MorphologyRules.from_config()
    settings = {"morphology": rules.to_dict(), "profiles": [p.name for p in profiles]}
    ids = arch.select_exposures(exposures)

    results: dict[str, ExposureCatalogue] = {}
    plans: dict[str, ExposurePlan] = {}
    redone: list[str] = []
    with contextlib.ExitStack() as stack:
        opened: list[Any] = []

        def get_client() -> Any:
            if not opened:
                opened.append(
                    stack.enter_context(client_or_new(client, scheduler=scheduler, n_workers=n_workers,
                                                      cluster=cluster,
                                                      echo=say))
                )
                arch.note_format()
            return opened[0]

        # The defect maps are made from the exposures detected by now: one detected later (by a
        # concurrent run) is left to a later catalogue run, never catalogued without its map.
        detected = _detect_times(arch, ids)
        defect_report, maps = refresh_defects(arch, get_client)
        if completeness is not None:
            maps = completeness(arch, get_client, maps)
        book = StatusBook(arch=arch, stage=STAGE, leases=Leases(arch.path))
        _plan(book, ids, profiles, maps, force, results, plans, redone, detected)
        if plans:
            try:
                _run(get_client(), book, plans, rules, results, progress, force)
            finally:
                book.close()
    return CatalogueReport(
        archive=path,
        results=[results[e] for e in ids if e in results],
        settings=settings,
        seconds=time.perf_counter() - t0,
        defects=defect_report,
        redone_for_defects=[e for e in redone if e in plans and results[e].status != "skipped"],
    )


@dataclass(kw_only=True)
class DetectorWork:
    """One detector of a planned exposure: its physics and its defect map (see defect_info)."""

    name: str
    physics: DetectorPhysics
    defects: dict[str, Any] | None


@dataclass(kw_only=True)
class ExposurePlan:
    """What the catalogue of one exposure is made from, and, once submitted, when it started."""

    exposure_id: str
    attrs: dict[str, Any]  #: the exposure attributes the rows carry
    detectors: list[DetectorWork]
    detect_time: str | None  #: of the detection catalogued (a later one makes this stale)
    started: float = 0.0

    def tokens(self) -> dict[str, Any]:
        """Per detector, the token of the defect map and completeness its rows used."""
        return {d.name: (d.defects or {}).get("token") for d in self.detectors}


def _plan(
    book: StatusBook,
    ids: list[str],
    profiles: Any,
    maps: dict[str, dict[str, Any]] | None,
    force: bool,
    results: dict[str, ExposureCatalogue],
    plans: dict[str, ExposurePlan],
    redone: list[str],
    detected: dict[str, Any],
) -> None:
    """What each exposure needs: skipped when its catalogue is current, else planned."""
    arch = book.arch
    path = str(arch.path)
    for eid in ids:
        started = time.perf_counter()
        try:
            attrs = arch.exposure_attrs(eid)
            status = attrs.get("status", {})
            detect = status.get("detect", {})
            damaged = integrity.damaged_input(status, STAGE)
            if damaged:
                results[eid] = ExposureCatalogue(exposure_id=eid, status="failed",
                                                 message=f"exposure {eid!r}: {damaged}")
                continue
            if detect.get("state") != "done" or detected.get(eid) != detect.get("time"):
                continue  # nothing to catalogue (yet), or detected since the defect maps were made
            done = status.get(STAGE, {})
            detectors = []
            for d in arch.detectors(eid):
                dattrs = dict(arch.root[f"exposures/{eid}/{d}"].attrs)
                phys = detector_physics(attrs, dattrs, profiles=profiles)
                info = defect_info(maps, key_of(attrs, d, dattrs, phys))
                detectors.append(DetectorWork(name=d, physics=phys, defects=info))
            plan = ExposurePlan(
                exposure_id=eid,
                attrs={k: attrs.get(k) for k in ROW_ATTRS},
                detectors=detectors,
                detect_time=detect.get("time"),
            )
            same_detection = (
                done.get("state") == "done"
                and done.get("detect_time") == detect.get("time")
                and table_file(path, "exposures", eid).is_file()
            )
            current = same_detection and (maps is None or done.get("defects") == plan.tokens())
            if current and not force:
                results[eid] = ExposureCatalogue(exposure_id=eid, status="skipped",
                                                 message="catalogue up to date")
                continue
            if same_detection and not force:
                redone.append(eid)
        except Exception as exc:  # this exposure's metadata only: record it, go on
            message = f"exposure {eid!r}: cannot read its metadata in {path} ({describe(exc)})"
            _fail(book, eid, message, "archive", started, 0, results)
            continue
        plans[eid] = plan


def _detect_times(arch: Archive, ids: list[str]) -> dict[str, Any]:
    """``{exposure: status.detect.time}`` of the exposures whose detection is done."""
    out = {}
    for eid in ids:
        with contextlib.suppress(Exception):  # unreadable metadata: _plan records it
            detect = arch.status(eid).get("detect", {})
            if detect.get("state") == "done":
                out[eid] = detect.get("time")
    return out


def _submit(cl: Any, book: StatusBook, plan: ExposurePlan, rules: MorphologyRules) -> Any:
    """Mark the exposure running; submit its detector tasks and the write task that joins them."""
    path = str(book.arch.path)
    eid = plan.exposure_id
    book.start(eid)
    stamp = time.time_ns()
    parts = [
        cl.submit(
            catalogue_detector_task,
            path,
            eid,
            d.name,
            d.physics,
            rules,
            plan.attrs,
            d.defects,
            pure=False,
            key=f"crscale-catalogue-{eid}-{d.name}-{stamp}",
        )
        for d in plan.detectors
    ]
    return cl.submit(
        write_exposure_task, path, eid, *parts, pure=False, key=f"crscale-catalogue-write-{eid}-{stamp}"
    )


def _run(
    cl: Any,
    book: StatusBook,
    plans: dict[str, ExposurePlan],
    rules: MorphologyRules,
    results: dict[str, ExposureCatalogue],
    progress: bool,
    force: bool,
) -> None:
    """Submit exposures in a window of a few per worker thread; finish each as it completes."""
    window: Window[ExposurePlan] = Window(window_size(cl))
    pending = iter(plans.values())
    bar = progress_bar(len(plans), STAGE, "exp", progress)

    def refill() -> None:
        while window.has_room():
            plan = next(pending, None)
            if plan is None:
                return
            plan.started = time.perf_counter()
            busy = book.claim(plan.exposure_id) or (None if force else _done_meanwhile(book.arch, plan))
            if busy:  # another run on this archive is at it, or has done it since we looked
                book.release(plan.exposure_id)
                results[plan.exposure_id] = ExposureCatalogue(exposure_id=plan.exposure_id, status="skipped",
                                                              message=busy)
                bar.update(1)
                continue
            try:
                future = _submit(cl, book, plan, rules)
            except Exception as exc:
                message = f"exposure {plan.exposure_id!r}: cannot start: {describe(exc)}"
                _fail(book, plan.exposure_id, message, "archive", plan.started, len(plan.detectors), results)
                bar.update(1)
                continue
            window.add(future, plan, load=1)

    try:
        refill()
        for done in window.completed():
            window.release(1)
            _finish(book, done.item, done.value, done.error, results)
            bar.update(1)
            refill()
    except BaseException as exc:
        # Interrupted (a signal, Ctrl-C) or failing here: nothing may stay `running`.
        book.abandon(cl, window.futures, exc)
        raise
    finally:
        bar.close()


def _done_meanwhile(arch: Archive, plan: ExposurePlan) -> str | None:
    """Why not to catalogue after all: another run catalogued this detection since we looked."""
    with contextlib.suppress(Exception):
        done = arch.status(plan.exposure_id).get(STAGE, {})
        if done.get("state") == "done" and done.get("detect_time") == plan.detect_time \
                and done.get("defects") == plan.tokens():
            return "catalogued by another run on this archive meanwhile"
    return None


def _finish(
    book: StatusBook,
    plan: ExposurePlan,
    n_cr: Any,
    error: Exception | None,
    results: dict[str, ExposureCatalogue],
) -> None:
    """The exposure's status ``done`` (last, after its tables), or its failure."""
    eid, n_det = plan.exposure_id, len(plan.detectors)
    try:
        if error is not None:
            raise error
        book.done(
            eid,
            detect_time=plan.detect_time,
            n_cr=int(n_cr),
            n_detectors=n_det,
            defects=plan.tokens(),
            seconds=round(time.perf_counter() - plan.started, 3),
        )
    except Exception as exc:
        _fail(book, eid, f"exposure {eid!r}: {describe(exc)}", "error", plan.started, n_det, results)
        integrity.note_damage(book.arch, eid, exc)
        return
    results[eid] = ExposureCatalogue(exposure_id=eid, status="done", n_detectors=n_det, n_cr=int(n_cr),
                                     seconds=time.perf_counter() - plan.started)


def _fail(
    book: StatusBook,
    eid: str,
    message: str,
    kind: str,
    started: float,
    n_det: int,
    results: dict[str, ExposureCatalogue],
) -> None:
    """Record a failed exposure: no rows left, status and failure record (best effort)."""
    with contextlib.suppress(Exception):
        remove_exposure_tables(str(book.arch.path), eid)
    book.failed(eid, message, kind)
    results[eid] = ExposureCatalogue(exposure_id=eid, status="failed", message=message, n_detectors=n_det,
                                     seconds=time.perf_counter() - started)


__all__ = ["CatalogueReport", "ExposureCatalogue", "catalogue_archive", "write_exposure_task"]
