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
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from crscale.catalogue.morphology import MorphologyRules
from crscale.catalogue.profiles import DetectorPhysics, detector_physics, load_profiles
from crscale.engine.cluster import client_or_new
from crscale.engine.defects_stage import defect_info, key_of, refresh_defects
from crscale.engine.outcomes import StageOutcomes, abandon
from crscale.io import integrity
from crscale.io.archive import Archive
from crscale.io.catalogue_store import remove_exposure_tables, table_file
from crscale.io.dq import ExcludedView, convention_for
from crscale.io.errors import ArchiveError, describe
from crscale.io.storage import zarr_options

#: Exposures submitted at a time per worker thread: the scheduler is never starved, and an
#: archive of any size never becomes one huge graph.
EXPOSURES_IN_FLIGHT_PER_THREAD = 4


@dataclass
class ExposureCatalogue:
    """Outcome for one exposure."""

    exposure_id: str
    status: str  # done | skipped | failed
    message: str = ""
    n_detectors: int = 0
    n_cr: int = 0
    seconds: float = 0.0


@dataclass
class CatalogueReport(StageOutcomes):
    """All outcomes of a catalogue run, in archive order."""

    archive: str
    results: list[ExposureCatalogue]
    seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)
    defects: Any = None  #: the DefectReport of the defect update run first, if any
    redone_for_defects: list[str] = field(default_factory=list)  #: recatalogued: their defect map changed

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {
            "archive": self.archive,
            "seconds": self.seconds,
            "counts": self.counts(),
            "settings": self.settings,
            "results": [asdict(r) for r in self.results],
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


def catalogue_detector_task(
    archive: str,
    exposure_id: str,
    detector: str,
    physics: DetectorPhysics,
    rules: MorphologyRules,
    exposure_attrs: dict[str, Any],
    defects: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Worker task: the CR columns and the exposure-table row of one detector.

    ``defects`` (None: no defect information) names the detector's defect map: ``key``,
    ``status`` and ``completeness`` (see :mod:`crscale.engine.defects_stage`).
    """
    import zarr

    from crscale.catalogue.detector import catalogue_detector
    from crscale.catalogue.rates import exposure_row

    label = f"{archive}/exposures/{exposure_id}/{detector}"
    group = zarr.open_group(label, mode="r", zarr_format=3, storage_options=zarr_options(archive))
    attrs: dict[str, Any] = dict(group.attrs)
    arrays = set(group.array_keys())
    if "mask" not in arrays:
        raise ArchiveError(f"{exposure_id}/{detector}: no CR mask (run `crscale detect` first)")
    detect = attrs.get("detect") or {}

    def read(name: str) -> Any:  # reads refuse absent or corrupt chunks, naming them
        return integrity.checked(group, name, label) if name in arrays else None

    codes = None
    if defects and defects.get("key"):
        codes = zarr.open_group(f"{archive}/defects/{defects['key']}", mode="r", zarr_format=3,
                                storage_options=zarr_options(archive))["codes"]
    result = catalogue_detector(
        read("image"),
        read("mask"),
        background=read("clean"),
        dq=(ExcludedView(read("dq"), convention_for(exposure_attrs, detector_attrs=attrs))
            if "dq" in arrays else None),
        gain=physics.gain,
        saturation=attrs.get("saturation"),
        rules=rules,
        fallback=(detect.get("stats") or {}).get("sky"),
        defects=codes,
        defect_map=(defects or {}).get("status"),
    )
    row = exposure_row(
        exposure_id,
        detector,
        result,
        physics,
        exposure_attrs=exposure_attrs,
        detector_attrs=attrs,
        model=detect.get("model"),
        threshold=detect.get("threshold"),
        completeness=(defects or {}).get("completeness"),
    )
    columns = {"exposure": exposure_id, "detector": detector, **result.columns}
    return columns, row


def write_exposure_task(archive: str, exposure_id: str, *parts: tuple[dict[str, Any], dict[str, Any]]) -> int:
    """Worker task: write one exposure's Parquet files from its detectors' results; returns n_cr."""
    import numpy as np

    from crscale.io.catalogue_schema import CR_SCHEMA
    from crscale.io.catalogue_store import as_table, write_exposure_tables

    columns: dict[str, Any] = {}
    for f in CR_SCHEMA:
        pieces = []
        for cols, _row in parts:
            n = cols["id"].size
            value = cols[f.name]
            pieces.append(np.full(n, value, dtype=object) if isinstance(value, str) else np.asarray(value))
        columns[f.name] = np.concatenate(pieces) if pieces else np.zeros(0)
    crs = as_table(columns, "crs")
    rows = as_table([row for _cols, row in parts], "exposures")
    write_exposure_tables(archive, exposure_id, crs, rows)
    return int(sum(row["n_cr"] for _cols, row in parts))


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
    echo: Callable[[str], None] | None = print,
    completeness: Callable[..., Any] | None = None,
) -> CatalogueReport:
    """Run the catalogue stage over an archive (or some of its exposures) on a Dask cluster.

    Parameters
    ----------
    archive : str or path
        The crscale archive.
    client : distributed.Client, optional
        Use this client; default: connect to ``scheduler`` or start a LocalCluster.
    scheduler : str, optional
        Scheduler address or scheduler file, when no ``client`` is given.
    n_workers : int, optional
        Workers of the LocalCluster started otherwise.
    cluster : str, optional
        Kind of cluster started when neither ``client`` nor ``scheduler`` is given: ``"local"``
        or a batch system (``"slurm"``, ``"pbs"``, ...); default ``crscale.cluster.kind``.
    exposures : sequence of str, optional
        Only these exposures (default: every exposure whose detection is done).
    force : bool
        Catalogue again exposures whose catalogue is up to date.
    progress : bool
        A progress bar on stderr.
    echo : callable, optional
        Where messages go; ``None`` for silence.
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
    Archive(archive, mode="r")  # never create an empty archive
    arch = Archive(archive, mode="a")
    path = str(arch.path)
    profiles = load_profiles()
    rules = MorphologyRules.from_config()
    settings = {"morphology": rules.to_dict(), "profiles": [p.name for p in profiles]}
    ids = arch.select_exposures(exposures)

    results: dict[str, ExposureCatalogue] = {}
    plans: dict[str, tuple[dict[str, Any], list[tuple[str, DetectorPhysics, Any]], str]] = {}
    redone: list[str] = []
    with contextlib.ExitStack() as stack:
        opened: list[Any] = []

        def get_client() -> Any:
            if not opened:
                opened.append(
                    stack.enter_context(client_or_new(client, scheduler=scheduler, n_workers=n_workers,
                                                      cluster=cluster, echo=echo))
                )
                arch.note_format()
            return opened[0]

        defect_report, maps = refresh_defects(arch, get_client)
        if completeness is not None:
            maps = completeness(arch, get_client, maps)
        _plan(arch, ids, profiles, maps, force, results, plans, redone)
        if plans:
            _run(get_client(), arch, plans, rules, results, progress)
    report = CatalogueReport(
        path, [results[e] for e in ids if e in results], time.perf_counter() - t0, settings,
        defect_report, [e for e in redone if e in plans],
    )
    return report


def _plan(
    arch: Archive,
    ids: list[str],
    profiles: Any,
    maps: dict[str, dict[str, Any]] | None,
    force: bool,
    results: dict[str, ExposureCatalogue],
    plans: dict[str, tuple[dict[str, Any], list[tuple[str, DetectorPhysics, Any]], str]],
    redone: list[str],
) -> None:
    """What each exposure needs: skipped when its catalogue is current, else planned."""
    path = str(arch.path)
    for eid in ids:
        started = time.perf_counter()
        try:
            attrs = arch.exposure_attrs(eid)
            status = attrs.get("status", {})
            detect = status.get("detect", {})
            damaged = integrity.damaged_input(status, "catalogue")
            if damaged:
                results[eid] = ExposureCatalogue(eid, "failed", f"exposure {eid!r}: {damaged}")
                continue
            if detect.get("state") != "done":
                continue  # nothing to catalogue (yet)
            done = status.get("catalogue", {})
            detectors = []
            for d in arch.detectors(eid):
                dattrs = dict(arch.root[f"exposures/{eid}/{d}"].attrs)
                phys = detector_physics(attrs, dattrs, profiles=profiles)
                detectors.append((d, phys, defect_info(maps, key_of(attrs, d, dattrs, phys))))
            tokens = {d: (info or {}).get("token") for d, _p, info in detectors}
            same_detection = (
                done.get("state") == "done"
                and done.get("detect_time") == detect.get("time")
                and table_file(path, "exposures", eid).is_file()
            )
            current = same_detection and (maps is None or done.get("defects") == tokens)
            if current and not force:
                results[eid] = ExposureCatalogue(eid, "skipped", "catalogue up to date")
                continue
            if same_detection and not force:
                redone.append(eid)
        except Exception as exc:  # this exposure's metadata only: record it, go on
            message = f"exposure {eid!r}: cannot read its metadata in {path} ({describe(exc)})"
            _fail(arch, eid, message, "archive", started, 0, results)
            continue
        exp_attrs = {k: attrs.get(k) for k in ("instrument", "telescope", "date_obs", "mjd_obs", "exptime")}
        plans[eid] = (exp_attrs, detectors, detect.get("time"))


def _run(
    cl: Any,
    arch: Archive,
    plans: dict[str, tuple[dict[str, Any], list[tuple[str, DetectorPhysics, Any]], str]],
    rules: MorphologyRules,
    results: dict[str, ExposureCatalogue],
    progress: bool,
) -> None:
    """Submit exposures in a window of a few per worker thread; finish each as it completes."""
    from distributed import as_completed
    from tqdm.auto import tqdm

    path = str(arch.path)
    limit = max(2, EXPOSURES_IN_FLIGHT_PER_THREAD * (sum(cl.nthreads().values()) or 1))
    pending = iter(plans.items())
    started: dict[str, float] = {}
    owner: dict[str, str] = {}
    ac = as_completed()
    bar = tqdm(total=len(plans), desc="catalogue", unit="exp", file=sys.stderr, disable=not progress)

    def submit() -> bool:
        item = next(pending, None)
        if item is None:
            return False
        eid, (exp_attrs, detectors, _detect_time) = item
        started[eid] = time.perf_counter()
        try:
            arch.set_status(eid, "catalogue", "running")
        except Exception as exc:
            _fail(
                arch,
                eid,
                f"exposure {eid!r}: cannot start: {describe(exc)}",
                "archive",
                started[eid],
                len(detectors),
                results,
            )
            bar.update(1)
            return True
        stamp = time.time_ns()
        parts = [
            cl.submit(
                catalogue_detector_task,
                path,
                eid,
                det,
                phys,
                rules,
                exp_attrs,
                info,
                pure=False,
                key=f"crscale-catalogue-{eid}-{det}-{stamp}",
            )
            for det, phys, info in detectors
        ]
        fut = cl.submit(
            write_exposure_task, path, eid, *parts, pure=False, key=f"crscale-catalogue-write-{eid}-{stamp}"
        )
        owner[fut.key] = eid
        ac.add(fut)
        return True

    try:
        while ac.count() < limit and submit():
            pass
        for fut in ac:
            eid = owner.pop(fut.key)
            n_det = len(plans[eid][1])
            try:
                n_cr = int(fut.result())
                arch.set_status(
                    eid,
                    "catalogue",
                    "done",
                    detect_time=plans[eid][2],
                    n_cr=n_cr,
                    n_detectors=n_det,
                    defects={d: (info or {}).get("token") for d, _p, info in plans[eid][1]},
                    seconds=round(time.perf_counter() - started[eid], 3),
                )
            except Exception as exc:
                _fail(arch, eid, f"exposure {eid!r}: {describe(exc)}", "error", started[eid], n_det, results)
                integrity.note_damage(arch, eid, exc)
            else:
                source = arch.exposure_attrs(eid).get("source", {}).get("path")
                if source:
                    with contextlib.suppress(OSError):
                        arch.clear_failure(source, stage="catalogue")
                results[eid] = ExposureCatalogue(
                    eid, "done", "", n_det, n_cr, time.perf_counter() - started[eid]
                )
            finally:
                fut.release()
            bar.update(1)
            while ac.count() < limit and submit():
                pass
    except BaseException as exc:
        # Interrupted (a signal, Ctrl-C) or failing here: nothing may stay `running`.
        abandon(cl, ac.futures, arch, "catalogue", set(started) - set(results), exc)
        raise
    finally:
        bar.close()


def _fail(
    arch: Archive,
    eid: str,
    message: str,
    kind: str,
    started: float,
    n_det: int,
    results: dict[str, ExposureCatalogue],
) -> None:
    """Record a failed exposure: no rows left, status and failure record (best effort)."""
    with contextlib.suppress(Exception):
        remove_exposure_tables(str(arch.path), eid)
    arch.record_exposure_failure(eid, "catalogue", message, kind)
    results[eid] = ExposureCatalogue(eid, "failed", message, n_det, 0, time.perf_counter() - started)
