"""The ingest stage: FITS files into the archive, in parallel on a Dask cluster.

The client expands the inputs, hashes every file on the workers, decides what to do
with each (ingest, skip as already ingested, reject as a duplicate) and gives every new
exposure a unique id; workers then read the FITS files and write their exposures, each
atomically (see :mod:`crscale.io.archive`). Failures come back as results, never as
exceptions, so one bad file never stops the run; the client records them in the archive.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from distributed import Client, as_completed
from tqdm.auto import tqdm

from crscale import config
from crscale.engine.cluster import client_or_new
from crscale.io import integrity
from crscale.io.archive import Archive
from crscale.io.errors import ArchiveError, InputError
from crscale.io.fits_reader import exposure_id_from_path, read_exposure, sha256_file
from crscale.io.inputs import InputSpec, expand_inputs

#: Futures kept in flight per worker thread; bounds scheduler memory on huge inputs.
IN_FLIGHT_PER_THREAD = 4
#: Staging left this long is from a dead run (one exposure is written in seconds).
STALE_STAGING_SECONDS = 3600.0


@dataclass
class IngestResult:
    """What happened to one input file.

    Attributes
    ----------
    path : str
        The input file.
    status : {"done", "skipped", "duplicate", "failed"}
        Outcome.
    exposure_id : str or None
        Archive id (for done, skipped and duplicates: the id holding that content).
    message : str
        Human-readable detail (the problem, for failures).
    kind : str
        Class of failure (``"corrupt"``, ``"truncated"``, ``"no-image"``, ``"archive"``...).
    sha256 : str or None
        Checksum of the file.
    warnings : list of str
        Metadata warnings (guessed keywords, NaN pixels ...).
    n_detectors, n_pixels, nbytes : int
        Size of what was written.
    seconds : float
        Worker time spent.
    """

    path: str
    status: str
    exposure_id: str | None = None
    message: str = ""
    kind: str = ""
    sha256: str | None = None
    warnings: list[str] = field(default_factory=list)
    n_detectors: int = 0
    n_pixels: int = 0
    nbytes: int = 0
    seconds: float = 0.0


@dataclass
class IngestReport:
    """All results of an ingest run, in input order."""

    archive: str
    results: list[IngestResult]
    seconds: float = 0.0

    def by_status(self, status: str) -> list[IngestResult]:
        """Results with the given status."""
        return [r for r in self.results if r.status == status]

    @property
    def ok(self) -> bool:
        """True when no input failed."""
        return not self.by_status("failed")

    def counts(self) -> dict[str, int]:
        """Number of results per status."""
        return {s: len(self.by_status(s)) for s in ("done", "skipped", "duplicate", "failed")}

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {"archive": self.archive, "seconds": self.seconds, "counts": self.counts(),
                "results": [asdict(r) for r in self.results]}

    def summary(self) -> str:
        """A few lines for the terminal."""
        c = self.counts()
        done = self.by_status("done")
        mpix = sum(r.n_pixels for r in done) / 1e6
        mb = sum(r.nbytes for r in done) / 1e6
        lines = [
            f"ingest: {c['done']} ingested, {c['skipped']} already in the archive, "
            f"{c['duplicate']} duplicate(s), {c['failed']} failed "
            f"({mpix:.1f} Mpix, {mb:.1f} MB read, {self.seconds:.1f} s)"
        ]
        for r in self.by_status("duplicate"):
            lines.append(f"  duplicate: {r.path}: {r.message}")
        for r in self.by_status("failed"):
            lines.append(f"  FAILED: {r.message}")
        n_warn = sum(1 for r in done if r.warnings)
        if n_warn:
            lines.append(f"  {n_warn} exposure(s) with header warnings (see `crscale info`)")
        return "\n".join(lines)


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


def hash_file(path: str) -> tuple[str, str | None, str]:
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


def _windowed(
    client: Client,
    func: Callable[..., Any],
    calls: Sequence[tuple[tuple[Any, ...], dict[str, Any]]],
    *,
    desc: str,
    progress: bool,
    window: int,
) -> Iterable[tuple[tuple[Any, ...], Any, BaseException | None]]:
    """Run ``func`` over ``calls`` with at most ``window`` tasks in flight.

    Yields ``(args, result, None)``, or ``(args, None, error)`` when the task itself was
    lost (a worker killed more often than the scheduler allows, a cancelled future), so
    that the caller records that file as failed and the run goes on.
    """
    bar = tqdm(total=len(calls), desc=desc, unit="file", disable=not progress, file=sys.stderr,
               dynamic_ncols=True)
    pending = iter(calls)
    ac = as_completed()
    args_of = {}

    def submit(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        future = client.submit(func, *args, pure=False, **kwargs)
        args_of[future.key] = args
        ac.add(future)

    for args, kwargs in itertools.islice(pending, window):
        submit(args, kwargs)
    try:
        for future in ac:
            args = args_of.pop(future.key)
            try:
                value, error = future.result(), None
            except Exception as exc:  # the task was lost, not a bad file: record, go on
                value, error = None, exc
            finally:
                future.release()
                bar.update(1)
            yield args, value, error
            nxt = next(pending, None)
            if nxt is not None:
                submit(*nxt)
    finally:
        bar.close()


def _plan(
    specs: list[InputSpec],
    hashes: dict[str, str],
    archive: Archive,
    force: bool,
) -> tuple[list[tuple[InputSpec, str, str, bool]], list[IngestResult]]:
    """Decide what to do with each hashed file: (spec, id, sha, overwrite) or a result."""
    done_index: dict[str, str] = {}  # sha256 -> exposure id
    source_of: dict[str, str] = {}  # exposure id -> source path
    taken: set[str] = set()
    damaged: dict[str, str] = {}  # sha256 -> id of an exposure whose arrays are damaged
    for eid, attrs in archive.iter_exposures():  # one pass over the archive's attrs
        taken.add(eid)
        state = attrs.get("status", {}).get("ingest", {}).get("state")
        if state == "done":
            done_index[attrs["source"]["sha256"]] = eid
            source_of[eid] = attrs["source"]["path"]
        elif state == integrity.DAMAGED:  # found damaged: ingesting its source repairs it in place
            damaged[attrs["source"]["sha256"]] = eid
    first_in_run: dict[str, tuple[str, str | None]] = {}  # sha -> (path, exposure id)
    todo: list[tuple[InputSpec, str, str, bool]] = []
    settled: list[IngestResult] = []
    for spec in specs:
        sha = hashes.get(spec.path)
        if sha is None:
            continue
        if sha in first_in_run:
            first_path, first_id = first_in_run[sha]
            settled.append(IngestResult(
                spec.path, "duplicate", first_id, f"same content (SHA-256) as {first_path} "
                "in this run; not ingested twice", "duplicate", sha))
            continue
        if sha in damaged and sha not in done_index:
            first_in_run[sha] = (spec.path, damaged[sha])
            todo.append((spec, damaged[sha], sha, True))
            continue
        existing = done_index.get(sha)
        first_in_run[sha] = (spec.path, existing)
        if existing is not None and not force:
            if os.path.realpath(source_of[existing]) == os.path.realpath(spec.path):
                settled.append(IngestResult(spec.path, "skipped", existing,
                                            "already ingested", "", sha))
            else:
                settled.append(IngestResult(
                    spec.path, "duplicate", existing,
                    f"same content (SHA-256) as {source_of[existing]}, already ingested as "
                    f"{existing!r}; not ingested twice", "duplicate", sha))
            continue
        if existing is not None:
            todo.append((spec, existing, sha, True))
            continue
        eid = exposure_id_from_path(spec.path)
        if eid in taken:
            eid = f"{eid}_{sha[:8]}"
        taken.add(eid)
        first_in_run[sha] = (spec.path, eid)
        todo.append((spec, eid, sha, False))
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
    echo: Callable[[str], None] | None = print,
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
        Where messages go; ``None`` for silence.

    Returns
    -------
    IngestReport
        One result per input; ``report.ok`` is False when any input failed.
    """
    t0 = time.perf_counter()
    say = echo or (lambda _msg: None)
    arch = Archive(archive, mode="a")
    arch.clean_staging(older_than=STALE_STAGING_SECONDS)
    specs, problems = expand_inputs(inputs)
    results: dict[str, IngestResult] = {}
    for p in problems:
        results[p.path] = IngestResult(p.path, "failed", message=f"{p.path}: {p.problem}",
                                       kind=p.kind)
    settings = ingest_settings(chunks=chunks, hdus=hdus)

    with client_or_new(client, scheduler=scheduler, n_workers=n_workers, cluster=cluster, echo=echo) as cl:
        threads = sum(cl.nthreads().values()) or 1
        window = max(8, IN_FLIGHT_PER_THREAD * threads)
        hashes: dict[str, str] = {}
        if specs:
            for (path,), value, lost in _windowed(
                cl, hash_file, [((s.path,), {}) for s in specs], desc="hashing",
                progress=progress, window=window,
            ):
                if lost is not None:
                    value = (path, None, f"{path}: task lost ({type(lost).__name__}: {lost})")
                _, sha, err = value
                if sha is None:
                    kind = "lost" if lost is not None else "unreadable"
                    results[path] = IngestResult(path, "failed", message=err, kind=kind)
                else:
                    hashes[path] = sha
        todo, settled = _plan(specs, hashes, arch, force)
        for r in settled:
            results[r.path] = r
        calls = [
            ((spec, str(arch.path), eid, sha, settings), {"overwrite": overwrite})
            for spec, eid, sha, overwrite in todo
        ]
        if calls:
            for args, r, lost in _windowed(cl, ingest_one, calls, desc="ingest",
                                           progress=progress, window=window):
                if lost is not None:
                    spec, _, eid, sha = args[:4]
                    r = IngestResult(spec.path, "failed", eid,
                                     f"{spec.path}: task lost ({type(lost).__name__}: {lost})",
                                     "lost", sha)
                results[r.path] = r
        elif specs:
            say("ingest: nothing new to ingest")

    ordered = [results[p.path] for p in problems] + [
        results[s.path] for s in specs if s.path in results
    ]
    report = IngestReport(archive=str(arch.path), results=ordered,
                          seconds=time.perf_counter() - t0)
    _record(arch, report, say)
    return report


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
