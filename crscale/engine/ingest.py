"""The ingest stage: FITS files into the archive, in parallel on a Dask cluster.

The client expands the inputs, hashes every file on the workers, decides what to do
with each (ingest, skip as already ingested, reject as a duplicate) and gives every new
exposure a unique id; workers then read the FITS files and write their exposures, each
atomically (see :mod:`crscale.io.archive`). Failures come back as results, never as
exceptions, so one bad file never stops the run; the client records them in the archive.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from distributed import Client

from crscale import config
from crscale._logging import reporter
from crscale.engine._ingest_report import IngestReport, IngestResult
from crscale.engine._stage import Call, windowed
from crscale.engine.cluster import client_or_new
from crscale.errors import ArchiveError, InputError
from crscale.io import integrity
from crscale.io.archive import Archive
from crscale.io.fits_reader import exposure_id_from_path, read_exposure, sha256_file
from crscale.io.inputs import InputSpec, expand_inputs
from crscale.io.lease import Leases, describe_holder

logger = logging.getLogger(__name__)

#: Staging left this long is from a dead run (one exposure is written in seconds).
STALE_STAGING_SECONDS = 3600.0


def ingest_settings(
    *,
    chunks: Sequence[int] | None = None,
    hdus: Sequence[str | int] | None = None,
) -> dict[str, Any]:
    """Resolve ingest settings on the client (workers may not share its dask config)."""
    return {
        "chunks": list(chunks) if chunks else list(config.get("archive.chunks")),
        "shards": config.get("archive.shards"),
        "compressor": dict(config.get("archive.compressor")),
        "image_dtype": config.get("archive.image_dtype"),
        "dq_extnames": list(config.get("ingest.dq_extnames")),
        "aux_extnames": list(config.get("ingest.aux_extnames")),
        "fallbacks": dict(config.get("ingest.fallbacks")),
        "hdus": list(hdus) if hdus else None,
    }


def _hash_file(path: str) -> tuple[str, str | None, str]:
    """Worker task: ``(path, sha256 or None, error message)``."""
    try:
        return path, sha256_file(path), ""
    except OSError as exc:
        return path, None, f"{path}: cannot read ({exc.strerror or exc})"


def ingest_one(
    spec: InputSpec,
    archive_path: str,
    exposure_id: str,
    sha256: str,
    settings: dict[str, Any],
    *,
    overwrite: bool = False,
) -> IngestResult:
    """Worker task: read one FITS exposure and write it to the archive.

    Never raises for bad input or a failed write: the outcome is in the result.
    """
    t0 = time.perf_counter()
    result = IngestResult(path=spec.path, status="failed", exposure_id=exposure_id, sha256=sha256)
    try:
        exposure = read_exposure(
            spec.path,
            dq_path=spec.dq_path,
            weight_path=spec.weight_path,
            hdus=settings["hdus"],
            exposure_id=exposure_id,
            sha256=sha256,
            dq_extnames=settings["dq_extnames"],
            aux_extnames=settings["aux_extnames"],
            fallbacks=settings["fallbacks"],
        )
        if exposure.sha256 != sha256:
            raise InputError(spec.path, "file changed while being ingested (SHA-256 differs)",
                             kind="changed")
        archive = Archive(archive_path, mode="a")
        archive.write_exposure(
            exposure,
            chunks=settings["chunks"],
            shards=settings["shards"],
            compressor=settings["compressor"],
            image_dtype=settings["image_dtype"],
            overwrite=overwrite,
        )
        result.status = "done"
        result.warnings = exposure.all_warnings
        result.n_detectors = len(exposure.detectors)
        result.n_pixels = sum(d.image.size for d in exposure.detectors)
        result.nbytes = exposure.size
        result.message = f"{len(exposure.detectors)} detector(s)"
    except InputError as exc:
        result.message, result.kind = str(exc), exc.kind
    except ArchiveError as exc:
        result.message, result.kind = f"{spec.path}: {exc}", "archive"
        if not overwrite and _ingested_meanwhile(archive_path, exposure_id, sha256):
            # Another run on the same archive wrote this very file first: nothing failed.
            result.status, result.kind = "skipped", ""
            result.message = "ingested by another run on this archive meanwhile"
    except MemoryError:
        result.message, result.kind = f"{spec.path}: out of memory while reading", "memory"
    except Exception as exc:  # one bad file must never stop the run
        result.message = f"{spec.path}: unexpected {type(exc).__name__}: {exc}"
        result.kind = "internal"
    result.seconds = time.perf_counter() - t0
    return result


def _ingested_meanwhile(archive_path: str, exposure_id: str, sha256: str) -> bool:
    """Whether ``exposure_id`` now holds this content with its ingest done (a concurrent run's)."""
    try:
        attrs = Archive(archive_path, mode="r").exposure_attrs(exposure_id)
    except Exception:  # not there, or unreadable: a real failure
        return False
    done = attrs.get("status", {}).get("ingest", {}).get("state") == "done"
    return done and attrs.get("source", {}).get("sha256") == sha256


@dataclass(kw_only=True)
class Planned:
    """A file to ingest: where it goes, and whether it replaces what is there."""

    spec: InputSpec
    exposure_id: str
    sha256: str
    overwrite: bool


def _plan(
    specs: list[InputSpec],
    hashes: dict[str, str],
    archive: Archive,
    force: bool,
) -> tuple[list[Planned], list[IngestResult]]:
    """Decide what to do with each hashed file: ingest it (planned) or settle it (a result)."""
    # The ids taken are listed before the contents are indexed: an exposure a concurrent run
    # moves into place between the two passes is then either in neither (the lease settles it
    # in _claim) or in the index (skipped). Listed after, it would be taken but not indexed, and
    # this run would ingest the same file a second time under a suffixed id.
    taken = set(archive.exposure_ids())
    # Done exposures first; a damaged one (found by verify or a read) is repaired in place by
    # ingesting its source again.
    index = archive.index_by_sha256(states=("done", integrity.DAMAGED))
    first_in_run: dict[str, tuple[str, str | None]] = {}  # sha -> (path, exposure id)
    todo: list[Planned] = []
    settled: list[IngestResult] = []
    for spec in specs:
        sha = hashes.get(spec.path)
        if sha is None:
            continue
        if sha in first_in_run:
            first_path, first_id = first_in_run[sha]
            settled.append(IngestResult(
                path=spec.path, status="duplicate", exposure_id=first_id, kind="duplicate", sha256=sha,
                message=f"same content (SHA-256) as {first_path} in this run; not ingested twice"))
            continue
        existing = index.get(sha)
        if existing is not None:
            attrs = archive.exposure_attrs(existing)
            first_in_run[sha] = (spec.path, existing)
            if attrs.get("status", {}).get("ingest", {}).get("state") != "done" or force:
                todo.append(Planned(spec=spec, exposure_id=existing, sha256=sha, overwrite=True))
                continue
            source = attrs["source"]["path"]
            if os.path.realpath(source) == os.path.realpath(spec.path):
                settled.append(IngestResult(path=spec.path, status="skipped", exposure_id=existing,
                                            message="already ingested", sha256=sha))
            else:
                settled.append(IngestResult(
                    path=spec.path, status="duplicate", exposure_id=existing, kind="duplicate", sha256=sha,
                    message=f"same content (SHA-256) as {source}, already ingested as "
                    f"{existing!r}; not ingested twice"))
            continue
        eid = exposure_id_from_path(spec.path)
        if eid in taken:
            eid = f"{eid}_{sha[:8]}"
        taken.add(eid)
        first_in_run[sha] = (spec.path, eid)
        todo.append(Planned(spec=spec, exposure_id=eid, sha256=sha, overwrite=False))
    return todo, settled


def ingest(
    inputs: Sequence[str | InputSpec],
    archive: str | os.PathLike[str],
    *,
    client: Client | None = None,
    scheduler: str | None = None,
    n_workers: int | None = None,
    cluster: str | None = None,
    force: bool = False,
    hdus: Sequence[str | int] | None = None,
    chunks: Sequence[int] | None = None,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
) -> IngestReport:
    """Ingest FITS files into a crscale archive, in parallel with dask.

    Parameters
    ----------
    inputs : sequence of str or InputSpec
        Files, directories (recursive), glob patterns, manifests, or
        :class:`~crscale.io.inputs.InputSpec` (see :func:`crscale.io.inputs.expand_inputs`).
    archive : path
        The archive (created if missing).
    client : distributed.Client, optional
        A client to use; default: connect to ``scheduler`` or start a LocalCluster.
    scheduler : str, optional
        Scheduler address or scheduler file, when no ``client`` is given.
    n_workers : int, optional
        Worker processes of the LocalCluster started when neither ``client`` nor
        ``scheduler`` is given.
    cluster : str, optional
        Kind of cluster started when neither ``client`` nor ``scheduler`` is given: ``"local"``
        or a batch system (``"slurm"``, ``"pbs"``, ...); default ``crscale.cluster.kind``.
    force : bool
        Re-ingest files whose SHA-256 is already in the archive (in place, atomically).
    hdus : sequence of str or int, optional
        Restrict to these science HDUs (index, EXTNAME or ``"EXTNAME,EXTVER"``).
    chunks : sequence of int, optional
        Zarr chunk shape (y, x); default ``crscale.archive.chunks``.
    progress : bool
        Show progress bars on stderr.
    echo : callable, optional
        Where messages go; default: this module's logger (INFO).

    Returns
    -------
    IngestReport
        One result per input; ``report.ok`` is False when any input failed.
    """
    t0 = time.perf_counter()
    say = reporter(logger, echo)
    arch = Archive(archive, mode="a")
    arch.clean_staging(older_than=STALE_STAGING_SECONDS)
    specs, problems = expand_inputs(inputs)
    results: dict[str, IngestResult] = {}
    for p in problems:
        results[p.path] = IngestResult(path=p.path, status="failed", message=f"{p.path}: {p.problem}",
                                       kind=p.kind)
    settings = ingest_settings(chunks=chunks, hdus=hdus)

    with client_or_new(client, scheduler=scheduler, n_workers=n_workers, cluster=cluster, echo=say) as cl:
        hashes = _hash_all(cl, specs, results, progress)
        todo, settled = _plan(specs, hashes, arch, force)
        for r in settled:
            results[r.path] = r
        calls = [
            Call(args=(p.spec, str(arch.path), p.exposure_id, p.sha256, settings),
                 kwargs={"overwrite": p.overwrite}, subject=p)
            for p in todo
        ]
        leases = Leases(arch.path)
        try:
            for done in windowed(cl, ingest_one, calls, desc="ingest", progress=progress,
                                 claim=lambda call: _claim(arch, leases, call)):
                p = done.item.subject
                r = done.value
                if done.error is not None:
                    r = IngestResult(path=p.spec.path, status="failed", exposure_id=p.exposure_id,
                                     message=f"{p.spec.path}: task lost ({type(done.error).__name__}: "
                                     f"{done.error})", kind="lost", sha256=p.sha256)
                leases.release(p.exposure_id)
                results[r.path] = r
        finally:
            leases.release_all()
        if specs and not calls:
            say("ingest: nothing new to ingest")

    ordered = [results[p.path] for p in problems] + [
        results[s.path] for s in specs if s.path in results
    ]
    report = IngestReport(archive=str(arch.path), results=ordered, settings=settings,
                          seconds=time.perf_counter() - t0)
    _record(arch, report, say)
    return report


def _claim(arch: Archive, leases: Leases, call: Call) -> IngestResult | None:
    """Take the lease of the file's exposure id just before it is ingested (see crscale.io.lease).

    None when this run goes on and ingests it (under another id when a concurrent run took the
    planned one for a different file); else the result that settles it without ingesting: a
    concurrent run is ingesting the same content, or has ingested it since the plan was made.
    """
    p: Planned = call.subject
    ids = [p.exposure_id] if p.overwrite else [p.exposure_id, f"{p.exposure_id}_{p.sha256[:8]}"]
    for eid in ids:
        if leases.acquire(eid, stage="ingest", sha256=p.sha256) is None:
            holder = leases.holder(eid) or {}
            if holder.get("detail", {}).get("sha256") in (p.sha256, None):
                return IngestResult(path=p.spec.path, status="skipped", exposure_id=eid, sha256=p.sha256,
                                    message=f"being ingested by another run ({describe_holder(holder)})")
            continue  # another file under the same name: this one takes the other id
        if not p.overwrite and eid in arch:  # written by another run since the plan was made
            source: dict[str, Any] = {}
            with contextlib.suppress(Exception):
                source = arch.exposure_attrs(eid).get("source", {})
            leases.release(eid)
            if source.get("sha256") == p.sha256:
                return IngestResult(path=p.spec.path, status="skipped", exposure_id=eid, sha256=p.sha256,
                                    message="ingested by another run on this archive meanwhile")
            continue
        p.exposure_id = eid
        call.args = (p.spec, call.args[1], eid, *call.args[3:])
        return None
    return IngestResult(path=p.spec.path, status="failed", exposure_id=None, sha256=p.sha256, kind="archive",
                        message=f"{p.spec.path}: exposure ids {', '.join(ids)} are taken by other runs")


def _hash_all(cl: Client, specs: list[InputSpec], results: dict[str, IngestResult],
              progress: bool) -> dict[str, str]:
    """SHA-256 of every input, on the workers; unreadable files go into ``results``."""
    hashes: dict[str, str] = {}
    calls = [Call(args=(s.path,)) for s in specs]
    for done in windowed(cl, _hash_file, calls, desc="hashing", progress=progress):
        path = done.item.args[0]
        if done.error is not None:
            results[path] = IngestResult(
                path=path, status="failed", kind="lost",
                message=f"{path}: task lost ({type(done.error).__name__}: {done.error})")
            continue
        _, sha, err = done.value
        if sha is None:
            results[path] = IngestResult(path=path, status="failed", message=err, kind="unreadable")
        else:
            hashes[path] = sha
    return hashes


def _record(arch: Archive, report: IngestReport, say: Callable[[str], None]) -> None:
    """Record failures and duplicates in the archive; clear old failures of files now done."""
    for r in report.results:
        try:
            if r.status == "failed":
                arch.record_failure(r.path, r.message, kind=r.kind or "error", sha256=r.sha256)
            elif r.status == "duplicate":
                arch.record_failure(r.path, r.message, kind="duplicate", sha256=r.sha256,
                                    duplicate_of=r.exposure_id)
            else:
                arch.clear_failure(r.path)
        except OSError as exc:
            say(f"warning: could not record the outcome of {r.path} in {arch.path} ({exc})")


__all__ = ["IngestReport", "IngestResult", "ingest", "ingest_one", "ingest_settings"]
