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
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from crscale import config
from crscale.engine.blocks import PROGRESS_TOPIC, DetectSettings, engine_halo
from crscale.engine.cluster import client_or_new, cluster_has_gpus
from crscale.engine.detect_graph import (
    DetectorPlan,
    create_outputs,
    detect_settings,
    detector_stats,
    exposure_graph,
    plan_exposure,
    remove_outputs,
)
from crscale.engine.outcomes import StageOutcomes, abandon
from crscale.engine.plugin import ModelPlugin
from crscale.io import integrity
from crscale.io.archive import Archive
from crscale.io.catalogue_store import remove_exposure_tables
from crscale.io.errors import describe


@dataclass
class ExposureDetection:
    """Outcome of the detection stage for one exposure.

    Attributes
    ----------
    exposure_id : str
    status : {"done", "skipped", "failed"}
    message : str
        The problem (failed) or a note.
    n_detectors, n_pixels, n_cr_pixels, n_blocks : int
    seconds : float
        Wall time from submission to the status being written.
    """

    exposure_id: str
    status: str
    message: str = ""
    n_detectors: int = 0
    n_pixels: int = 0
    n_cr_pixels: int = 0
    n_blocks: int = 0
    seconds: float = 0.0


@dataclass
class DetectReport(StageOutcomes):
    """All outcomes of a detection run, in archive order, and the settings used."""

    archive: str
    results: list[ExposureDetection]
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def pixels_done(self) -> int:
        """Pixels processed in this run."""
        return sum(r.n_pixels for r in self.by_status("done"))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {
            "archive": self.archive,
            "seconds": self.seconds,
            "counts": self.counts(),
            "settings": self.settings,
            "pixels_done": self.pixels_done,
            "results": [asdict(r) for r in self.results],
        }

    def summary(self) -> str:
        """A few lines for the terminal."""
        c = self.counts()
        done = self.by_status("done")
        mpix = self.pixels_done / 1e6
        rate = mpix / self.seconds if self.seconds > 0 else 0.0
        n_cr = sum(r.n_cr_pixels for r in done)
        lines = [
            f"detect: {c['done']} exposure(s) done, {c['skipped']} already done (skipped), "
            f"{c['failed']} failed; {mpix:.1f} Mpix in {self.seconds:.1f} s = {rate:.2f} Mpix/s; "
            f"{n_cr:,} CR pixels (model {self.settings.get('model_name') or self.settings.get('model')}, "
            f"threshold {self.settings.get('threshold')})"
        ]
        for r in self.by_status("failed"):
            lines.append(f"  FAILED: {r.message}")
        return "\n".join(lines)


class _Progress:
    """Two bars, exposures and blocks; blocks advance on the workers' events."""

    def __init__(self, n_exposures: int, enabled: bool) -> None:
        from tqdm.auto import tqdm

        kw = {"file": sys.stderr, "dynamic_ncols": True, "disable": not enabled}
        self.exposures = tqdm(total=n_exposures, desc="exposures", unit="exp", position=0, **kw)
        self.blocks = tqdm(total=0, desc="blocks", unit="block", position=1, **kw)
        self.pixels = 0
        self.t0 = time.perf_counter()

    def add_blocks(self, n: int) -> None:
        self.blocks.total += n
        self.blocks.refresh()

    def on_event(self, event: Any) -> None:
        msg = event[1] if isinstance(event, tuple) else event
        if self.blocks.n < self.blocks.total:  # a recomputed block (worker lost) counts once
            self.blocks.update(1)
        self.pixels += int(msg.get("pixels", 0)) if isinstance(msg, dict) else 0
        rate = self.pixels / max(time.perf_counter() - self.t0, 1e-9) / 1e6
        self.blocks.set_postfix_str(f"{rate:.2f} Mpix/s", refresh=False)

    def exposure_done(self) -> None:
        self.exposures.update(1)

    def close(self) -> None:
        self.blocks.close()
        self.exposures.close()


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
    echo: Callable[[str], None] | None = print,
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
        Where messages go; ``None`` for silence.

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
    Archive(archive, mode="r")  # detection needs an existing archive: never create an empty one
    arch = Archive(archive, mode="a")
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

    ids = arch.select_exposures(exposures)
    results: dict[str, ExposureDetection] = {}
    todo: list[str] = []
    for eid in ids:
        try:
            status = arch.status(eid)
        except Exception as exc:  # unreadable exposure metadata: record it, go on with the rest
            message = f"exposure {eid!r}: cannot read its metadata in {arch.path} ({describe(exc)})"
            results[eid] = ExposureDetection(eid, "failed", message)
            arch.record_exposure_failure(eid, "detect", message, "archive")
            continue
        damaged = integrity.damaged_input(status, "detect")
        if damaged:
            results[eid] = ExposureDetection(eid, "failed", f"exposure {eid!r}: {damaged}")
            continue
        if status.get("ingest", {}).get("state") != "done":
            continue
        if status.get("detect", {}).get("state") == "done" and not force:
            results[eid] = ExposureDetection(eid, "skipped", "detection already done")
        else:
            todo.append(eid)
    report_settings = {**settings.to_dict(), "halo": halo, "prob_dtype": prob_dtype}
    if not todo:
        return DetectReport(
            str(arch.path),
            [results[e] for e in ids if e in results],
            report_settings,
            time.perf_counter() - t0,
        )

    with client_or_new(client, scheduler=scheduler, n_workers=n_workers, cluster=cluster, echo=echo) as cl:
        arch.note_format()  # about to write 1.1 arrays
        gpu = cluster_has_gpus(cl)
        target = list(block or cfg.get("gpu_block" if gpu else "block"))
        report_settings.update(gpu=gpu, block=target)
        plugin = ModelPlugin(
            settings.model, device=settings.device, precision=settings.precision, compile=settings.compile,
            gpu_only=gpu,
        )
        cl.register_plugin(plugin, name=plugin.name)
        threads = sum(cl.nthreads().values()) or 1
        limit = max(1, int(config.get("detect.blocks_in_flight_per_thread")) * threads)
        bar = _Progress(len(todo), progress)
        cl.subscribe_topic(PROGRESS_TOPIC, bar.on_event)
        try:
            _run(cl, arch, todo, settings, halo, target, gpu, prob_dtype, limit, results, bar)
        finally:
            with contextlib.suppress(Exception):
                cl.unsubscribe_topic(PROGRESS_TOPIC)
            bar.close()

    report = DetectReport(
        str(arch.path), [results[e] for e in ids if e in results], report_settings, time.perf_counter() - t0
    )
    return report


def _run(
    cl: Any,
    arch: Archive,
    todo: list[str],
    settings: DetectSettings,
    halo: int,
    target: list[int],
    gpu: bool,
    prob_dtype: str,
    limit: int,
    results: dict[str, ExposureDetection],
    bar: _Progress,
) -> None:
    """Feed exposures through statistics → blocks → finish, keeping about ``limit`` blocks in flight."""
    from distributed import as_completed

    pending = iter(todo)
    ac = as_completed()
    state: dict[str, tuple[str, str, list[DetectorPlan], float]] = {}  # future key -> phase
    stats_of: dict[str, Any] = {}  # exposure id -> its detectors' statistics, while in flight
    in_flight = 0
    running: set[str] = set()  # exposures whose status is `running`
    path = str(arch.path)

    def fail(eid: str, plans: list[DetectorPlan], message: str, kind: str, started: float) -> None:
        running.discard(eid)
        remove_outputs(arch, eid, plans)
        arch.record_exposure_failure(eid, "detect", message, kind)
        results[eid] = ExposureDetection(
            eid,
            "failed",
            message,
            len(plans),
            sum(p.shape[0] * p.shape[1] for p in plans),
            n_blocks=sum(p.n_blocks for p in plans),
            seconds=time.perf_counter() - started,
        )
        bar.exposure_done()

    def refill() -> None:
        nonlocal in_flight
        while in_flight < limit or not state:
            eid = next(pending, None)
            if eid is None:
                return
            started = time.perf_counter()
            try:
                plans = plan_exposure(arch, eid, target, halo)
            except Exception as exc:  # unreadable metadata of this exposure only
                fail(eid, [], f"exposure {eid!r}: {exc}", "archive", started)
                continue
            future = cl.submit(
                detector_stats, path, eid, plans, pure=False, key=f"crscale-stats-{eid}-{time.time_ns()}"
            )
            state[future.key] = ("stats", eid, plans, started)
            n = sum(p.n_blocks for p in plans)
            in_flight += n
            bar.add_blocks(n)
            ac.add(future)

    try:
        refill()
        for future in ac:
            phase, eid, plans, started = state.pop(future.key)
            n_blocks = sum(p.n_blocks for p in plans)
            try:
                value = future.result()
            except Exception as exc:
                in_flight -= n_blocks
                stats_of.pop(eid, None)
                fail(eid, plans, f"exposure {eid!r}: {describe(exc)}", "error", started)
                integrity.note_damage(arch, eid, exc)
                refill()
                continue
            finally:
                future.release()
            if phase == "stats":
                try:
                    arch.set_status(eid, "detect", "running")  # outputs are about to be overwritten
                    running.add(eid)
                    remove_exposure_tables(str(arch.path), eid)  # rows of the old mask must not outlive it
                    create_outputs(arch, eid, plans, settings, prob_dtype)
                    graph = exposure_graph(
                        path, eid, plans, value, settings, halo, gpu=gpu, prob_dtype=prob_dtype
                    )
                except Exception as exc:
                    in_flight -= n_blocks
                    fail(
                        eid,
                        plans,
                        f"exposure {eid!r}: cannot start detection: {describe(exc)}",
                        "archive",
                        started,
                    )
                    refill()
                    continue
                # Unoptimised on GPU clusters: blockwise fusion drops the GPU annotations.
                nxt = cl.compute(graph, optimize_graph=not gpu)
                state[nxt.key] = ("blocks", eid, plans, started)
                stats_of[eid] = value
                ac.add(nxt)
                continue
            in_flight -= n_blocks
            try:
                _finish_exposure(
                    arch, eid, plans, stats_of.pop(eid), [int(c) for c in value], settings, halo, started
                )
            except Exception as exc:
                fail(
                    eid,
                    plans,
                    f"exposure {eid!r}: cannot record the results: {describe(exc)}",
                    "archive",
                    started,
                )
            else:
                running.discard(eid)
                results[eid] = ExposureDetection(
                    eid,
                    "done",
                    "",
                    len(plans),
                    sum(p.shape[0] * p.shape[1] for p in plans),
                    int(sum(value)),
                    n_blocks,
                    time.perf_counter() - started,
                )
                bar.exposure_done()
            refill()

    except BaseException as exc:
        # Interrupted (a signal, Ctrl-C) or failing here: nothing may stay `running`.
        abandon(cl, ac.futures, arch, "detect", running, exc)
        raise

def _finish_exposure(
    arch: Archive,
    eid: str,
    plans: list[DetectorPlan],
    stats: dict[str, Any],
    counts: list[int],
    settings: DetectSettings,
    halo: int,
    started: float,
) -> None:
    """Detector attributes, then the exposure's status (last)."""
    for p, n_cr in zip(plans, counts, strict=True):
        group = arch.root[f"exposures/{eid}/{p.name}"]
        group.attrs["detect"] = {
            "model": settings.model_name or settings.model,
            "threshold": settings.threshold,
            "n_cr_pixels": int(n_cr),
            "cr_pixel_fraction": n_cr / float(p.shape[0] * p.shape[1]),
            "stats": stats[p.name].to_dict(),
            "halo": halo,
            "blocks": [list(c) for c in p.chunks],
        }
    arch.set_status(
        eid,
        "detect",
        "done",
        model=settings.model_name or settings.model,
        threshold=settings.threshold,
        precision=settings.precision,
        inpaint_method=settings.inpaint_method if settings.inpaint else None,
        inpaint_dilate=settings.inpaint_dilate,
        n_cr_pixels=int(sum(counts)),
        seconds=round(time.perf_counter() - started, 3),
    )
    source = arch.exposure_attrs(eid).get("source", {}).get("path")
    if source:
        with contextlib.suppress(OSError):
            arch.clear_failure(source, stage="detect")

