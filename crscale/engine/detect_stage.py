"""The detection stage: every exposure of an archive through the CNN, on a Dask cluster.

Per exposure, in this order:

1. *Plan* (client): read each detector's shape and Zarr chunking, choose blocks that are whole
   Zarr chunks (whole shards when sharded) of about ``crscale.detect.block`` pixels.
2. *Statistics* (one worker task): the normalisation statistics of each detector from a
   regular sub-grid of its pixels (:func:`detector_stats`), exactly those :func:`crscale.detect`
   computes on the whole image, without loading the whole image.
3. *Blocks* (one task per block): ``da.from_zarr`` → ``map_overlap(detect_block,
   depth=halo, boundary="none")`` → ``prob``, ``mask``, ``clean`` stored with ``da.store`` into
   arrays chunked like the image, so that every write covers whole chunks (no two tasks share a
   chunk or shard, no lock, nothing lost). When the cluster has GPU workers the CNN tasks carry
   ``resources={"GPU": 1}``.
4. *Finish* (client): detector attributes (statistics, counts), then the exposure's
   ``detect`` status ``done``, written last.

Exposures are fed to the cluster in a window (about ``blocks_in_flight_per_thread`` blocks per
worker thread), so the scheduler always has work and memory stays bounded however large the
archive. A killed worker's tasks are recomputed by Dask (outputs are deterministic and written
whole, so a rewrite changes nothing); a killed run leaves ``running`` statuses, redone by the next
run; an exposure that fails is recorded as ``failed`` (its partial outputs removed) and the rest
go on.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from crscale import config
from crscale._logging import reporter
from crscale.engine._detect_graph import (
    DetectorPlan,
    create_outputs,
    detect_settings,
    detector_stats,
    exposure_graph,
    plan_exposure,
    remove_outputs,
)
from crscale.engine._detect_report import DetectReport, ExposureDetection, Progress
from crscale.engine._stage import StatusBook, Window, window_size
from crscale.engine.blocks import PROGRESS_TOPIC, DetectSettings, engine_halo
from crscale.engine.cluster import client_or_new, cluster_has_gpus
from crscale.engine.plugin import ModelPlugin
from crscale.io import integrity
from crscale.io.archive import Archive
from crscale.io.catalogue_store import remove_exposure_tables
from crscale.io.errors import describe
from crscale.io.lease import Leases

logger = logging.getLogger(__name__)

STAGE = "detect"


def detect_archive(
    archive: str,
    *,
    client: Any = None,
    scheduler: str | None = None,
    n_workers: int | None = None,
    cluster: str | None = None,
    exposures: Sequence[str] | None = None,
    force: bool = False,
    model: str | None = None,
    threshold: float | None = None,
    device: str | None = None,
    precision: str | None = None,
    compile: bool | None = None,
    inpaint: bool | None = None,
    inpaint_method: str | None = None,
    block: Sequence[int] | None = None,
    tile: int | None = None,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
) -> DetectReport:
    """Run the detection stage over an archive (or some of its exposures) on a Dask cluster.

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
        Only these exposure ids (default: every ingested exposure).
    force : bool
        Redo exposures whose detection is already done.
    model, threshold, device, precision, compile, inpaint, inpaint_method : optional
        As for :func:`crscale.detect`; defaults from ``crscale.detect.*`` in the dask config.
    block : sequence of int, optional
        Target block shape (y, x); default ``crscale.detect.block`` (``gpu_block`` on GPUs).
    tile : int, optional
        Tile size inside a block (default: the predictor's).
    progress : bool
        Progress bars on stderr.
    echo : callable, optional
        Where messages go; default: this module's logger (INFO).

    Returns
    -------
    DetectReport
        ``report.ok`` is False when an exposure failed.

    Raises
    ------
    ArchiveError
        The archive cannot be opened, or an exposure asked for is not in it.
    """
    t0 = time.perf_counter()
    say = reporter(logger, echo)
    arch = Archive(archive, mode="a", create=False)
    settings, model_config = detect_settings(
        model=model,
        threshold=threshold,
        device=device,
        precision=precision,
        compile=compile,
        inpaint=inpaint,
        inpaint_method=inpaint_method,
        tile=tile,
    )
    halo = engine_halo(model_config, settings)
    cfg = config.get("detect")
    prob_dtype = str(config.get("detect.prob_dtype"))

    book = StatusBook(arch=arch, stage=STAGE, leases=Leases(arch.path))
    ids = arch.select_exposures(exposures)
    results: dict[str, ExposureDetection] = {}
    todo = _select(book, ids, force, results)
    report_settings = {**settings.to_dict(), "halo": halo, "prob_dtype": prob_dtype}
    if todo:
        with client_or_new(client, scheduler=scheduler, n_workers=n_workers, cluster=cluster, echo=say) as cl:
            arch.note_format()  # about to write 1.1 arrays
            gpu = cluster_has_gpus(cl)
            target = list(block or cfg.get("gpu_block" if gpu else "block"))
            job = DetectJob(settings=settings, halo=halo, block=target, gpu=gpu, prob_dtype=prob_dtype,
                            force=force)
            report_settings.update(gpu=gpu, block=job.block)
            plugin = ModelPlugin(
                settings.model, device=settings.device, precision=settings.precision,
                compile=settings.compile,
            gpu_only=gpu,
            )
            cl.register_plugin(plugin, name=plugin.name)
            bar = Progress(len(todo), progress)
            cl.subscribe_topic(PROGRESS_TOPIC, bar.on_event)
            try:
                limit = window_size(cl, config.get("detect.blocks_in_flight_per_thread"))
                _run(cl, book, todo, job, limit, results, bar)
            finally:
                book.close()
                with contextlib.suppress(Exception):
                    cl.unsubscribe_topic(PROGRESS_TOPIC)
                bar.close()
    return DetectReport(
        archive=str(arch.path),
        results=[results[e] for e in ids if e in results],
        settings=report_settings,
        seconds=time.perf_counter() - t0,
    )


def _select(
    book: StatusBook, ids: list[str], force: bool, results: dict[str, ExposureDetection]
) -> list[str]:
    """The exposures to detect; those skipped, or failed before starting, go into ``results``."""
    arch = book.arch
    todo: list[str] = []
    for eid in ids:
        try:
            status = arch.status(eid)
        except Exception as exc:  # unreadable exposure metadata: record it, go on with the rest
            message = f"exposure {eid!r}: cannot read its metadata in {arch.path} ({describe(exc)})"
            results[eid] = ExposureDetection(exposure_id=eid, status="failed", message=message)
            book.failed(eid, message, "archive")
            continue
        damaged = integrity.damaged_input(status, STAGE)
        if damaged:
            results[eid] = ExposureDetection(exposure_id=eid, status="failed",
                                             message=f"exposure {eid!r}: {damaged}")
            continue
        if status.get("ingest", {}).get("state") != "done":
            continue
        if status.get(STAGE, {}).get("state") == "done" and not force:
            results[eid] = ExposureDetection(exposure_id=eid, status="skipped",
                                             message="detection already done")
        else:
            todo.append(eid)
    return todo


@dataclass(kw_only=True)
class DetectJob:
    """What every exposure of one detection run is processed with (resolved on the client)."""

    settings: DetectSettings
    halo: int
    block: list[int]  #: target block shape (y, x)
    gpu: bool
    prob_dtype: str
    force: bool = False  #: redo exposures whose detection is done


@dataclass(kw_only=True)
class InFlight:
    """One exposure on the cluster: its statistics task first, then its blocks."""

    exposure_id: str
    plans: list[DetectorPlan]
    started: float
    phase: str = "stats"  #: "stats", then "blocks"
    stats: dict[str, Any] | None = None  #: the detectors' statistics, once computed

    @property
    def n_blocks(self) -> int:
        """Blocks of all its detectors (the window's load while it is in flight)."""
        return sum(p.n_blocks for p in self.plans)

    def outcome(self, status: str, *, message: str = "", n_cr_pixels: int = 0) -> ExposureDetection:
        """Its result, timed up to now."""
        return ExposureDetection(
            exposure_id=self.exposure_id,
            status=status,
            message=message,
            n_detectors=len(self.plans),
            n_pixels=sum(p.shape[0] * p.shape[1] for p in self.plans),
            n_cr_pixels=n_cr_pixels,
            n_blocks=self.n_blocks,
            seconds=time.perf_counter() - self.started,
        )


def _run(
    cl: Any,
    book: StatusBook,
    todo: list[str],
    job: DetectJob,
    limit: int,
    results: dict[str, ExposureDetection],
    bar: Progress,
) -> None:
    """Feed exposures through statistics → blocks → finish, keeping about ``limit`` blocks in flight."""
    arch = book.arch
    path = str(arch.path)
    pending = iter(todo)
    window: Window[InFlight] = Window(limit)

    def fail(work: InFlight, message: str, kind: str) -> None:
        window.release(work.n_blocks)
        remove_outputs(arch, work.exposure_id, work.plans)
        book.failed(work.exposure_id, message, kind)
        results[work.exposure_id] = work.outcome("failed", message=message)
        bar.exposure_done()

    def refill() -> None:
        while window.has_room():
            eid = next(pending, None)
            if eid is None:
                return
            busy = book.claim(eid) or _done_meanwhile(arch, eid, job.force)
            if busy:  # another run on this archive is at it, or has done it since we looked
                book.release(eid)
                results[eid] = ExposureDetection(exposure_id=eid, status="skipped", message=busy)
                bar.exposure_done()
                continue
            work = InFlight(exposure_id=eid, plans=[], started=time.perf_counter())
            try:
                work.plans = plan_exposure(arch, eid, job.block, job.halo)
            except Exception as exc:  # unreadable metadata of this exposure only
                fail(work, f"exposure {eid!r}: {exc}", "archive")
                continue
            future = cl.submit(
                detector_stats, path, eid, work.plans, job.settings.pixel_noise, pure=False,
                key=f"crscale-stats-{eid}-{time.time_ns()}",
            )
            window.add(future, work, load=work.n_blocks)
            bar.add_blocks(work.n_blocks)

    def start_blocks(work: InFlight) -> None:
        eid = work.exposure_id
        try:
            book.start(eid)  # outputs are about to be overwritten
            remove_exposure_tables(str(arch.path), eid)  # rows of the old mask must not outlive it
            create_outputs(arch, eid, work.plans, job.settings, job.prob_dtype)
            assert work.stats is not None  # computed before the blocks start
            graph = exposure_graph(
                path, eid, work.plans, work.stats, job.settings, job.halo,
                gpu=job.gpu, prob_dtype=job.prob_dtype,
            )
        except Exception as exc:
            fail(work, f"exposure {eid!r}: cannot start detection: {describe(exc)}", "archive")
            return
        work.phase = "blocks"
        # Unoptimised on GPU clusters: blockwise fusion drops the GPU annotations.
        window.add(cl.compute(graph, optimize_graph=not job.gpu), work)

    def finish(work: InFlight, counts: list[int]) -> None:
        try:
            _finish_exposure(book, work, counts, job)
        except Exception as exc:
            message = f"exposure {work.exposure_id!r}: cannot record the results: {describe(exc)}"
            fail(work, message, "archive")
            return
        window.release(work.n_blocks)
        results[work.exposure_id] = work.outcome("done", n_cr_pixels=int(sum(counts)))
        bar.exposure_done()

    try:
        refill()
        for done in window.completed():
            work = done.item
            if done.error is not None:
                fail(work, f"exposure {work.exposure_id!r}: {describe(done.error)}", "error")
                integrity.note_damage(arch, work.exposure_id, done.error)
            elif work.phase == "stats":
                work.stats = done.value
                start_blocks(work)
            else:
                finish(work, [int(c) for c in done.value])
            refill()
    except BaseException as exc:
        # Interrupted (a signal, Ctrl-C) or failing here: nothing may stay `running`.
        book.abandon(cl, window.futures, exc)
        raise


def _done_meanwhile(arch: Archive, eid: str, force: bool) -> str | None:
    """Why not to detect ``eid`` after all: another run finished it since the run looked."""
    if force:
        return None
    with contextlib.suppress(Exception):
        if arch.status(eid).get(STAGE, {}).get("state") == "done":
            return "detected by another run on this archive meanwhile"
    return None


def _finish_exposure(book: StatusBook, work: InFlight, counts: list[int], job: DetectJob) -> None:
    """Detector attributes, then the exposure's status (last)."""
    from crscale.models.store import weights_sha256

    settings, eid = job.settings, work.exposure_id
    assert work.stats is not None  # computed before the blocks ran
    for p, n_cr in zip(work.plans, counts, strict=True):
        group = book.arch.root[f"exposures/{eid}/{p.name}"]
        group.attrs["detect"] = {
            "model": settings.model_name or settings.model,
            "threshold": settings.threshold,
            "n_cr_pixels": int(n_cr),
            "cr_pixel_fraction": n_cr / float(p.shape[0] * p.shape[1]),
            "stats": work.stats[p.name].to_dict(),
            "halo": job.halo,
            "blocks": [list(c) for c in p.chunks],
        }
    book.done(
        eid,
        model=settings.model_name or settings.model,
        # The digest of the weights that made the masks, recorded now: the file of a model
        # name may later hold other weights (write-fits's CRSWSHA reads it from here).
        weights_sha256=weights_sha256(settings.model),
        threshold=settings.threshold,
        precision=settings.precision,
        inpaint_method=settings.inpaint_method if settings.inpaint else None,
        inpaint_dilate=settings.inpaint_dilate,
        n_cr_pixels=int(sum(counts)),
        seconds=round(time.perf_counter() - work.started, 3),
    )


__all__ = ["DetectReport", "ExposureDetection", "detect_archive"]
