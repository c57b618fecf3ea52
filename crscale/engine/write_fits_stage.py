"""The write-fits stage: every detected exposure back to FITS, in parallel on a Dask cluster.

The client decides the output names (the source file's basename; see :func:`output_names`) and
the provenance written into the headers, then the workers write one exposure each with
:func:`crscale.io.fits_writer.write_exposure`. Each file is written to a temporary name and
renamed, so an interrupted run leaves no half-written product; a re-run skips files whose
``CRSKEY`` says they are up to date. Failures come back as results and are recorded in the
archive (``failures/``, stage ``write-fits``); they never stop the rest of the run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from crscale import config
from crscale._logging import reporter
from crscale.engine._stage import Call, StageReport, clear_exposure_failure, windowed
from crscale.engine.cluster import client_or_new
from crscale.errors import OutputError
from crscale.io.archive import Archive
from crscale.io.errors import ArchiveError, InputError, describe
from crscale.io.fits_writer import FitsOutcome, Provenance, WriteOptions, safe_name, write_exposure

logger = logging.getLogger(__name__)

STAGE = "write-fits"


@dataclass(kw_only=True)
class WriteFitsReport(StageReport):
    """All outcomes of a write-fits run, in exposure order, and the options used."""

    results: list[FitsOutcome]
    outdir: str

    def _more(self) -> dict[str, Any]:
        return {"outdir": self.outdir}

    def summary(self) -> str:
        """A few lines for the terminal."""
        c = self.counts()
        done = self.by_status("done")
        n_files = sum(len(r.files) for r in done)
        mb = sum(r.nbytes for r in done) / 1e6
        rate = n_files / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"write-fits: {c['done']} exposure(s) written, {c['skipped']} skipped, {c['failed']} failed; "
            f"{n_files} file(s), {mb:.1f} MB in {self.seconds:.1f} s = {rate:.2f} files/s, into {self.outdir}"
        ]
        lines += [f"  skipped {r.exposure_id}: {r.message}" for r in self.by_status("skipped")
                  if r.message != "up to date"]
        lines += [f"  note {r.exposure_id}: {n}" for r in done for n in r.notes]
        lines += [f"  FAILED: {r.message}" for r in self.by_status("failed")]
        return "\n".join(lines)


def output_names(archive: Archive) -> dict[str, tuple[str, str | None]]:
    """Output file names of every exposure: the source's basename, and its DQ companion's.

    Names are decided over the whole archive, so they do not depend on ``-e``: a name that two
    exposures would share (two sources of the same name in different folders) is prefixed with
    each one's exposure id.
    """
    wanted: dict[str, tuple[str, str | None]] = {}
    for eid, attrs in archive.iter_exposures():
        src = attrs.get("source") or {}
        try:
            image = safe_name(src.get("name") or src.get("path") or eid)
            dq = safe_name(os.path.basename(src["dq_path"])) if src.get("dq_path") else None
        except InputError:
            image, dq = safe_name(eid) + ".fits", None
        wanted[eid] = (image, dq)
    users: dict[str, int] = {}
    for image, dq in wanted.values():
        for n in (image, dq):
            if n:
                users[n] = users.get(n, 0) + 1
    return {
        eid: tuple(f"{eid}.{n}" if n and users[n] > 1 else n for n in pair)  # type: ignore[misc]
        for eid, pair in wanted.items()
    }


def _weights_sha256(model: str) -> str | None:
    # Archives detected before the digest was recorded: the file's digest now (lazy: torch).
    from crscale.models.store import weights_sha256

    return weights_sha256(model)


def provenance_of(detect_status: dict[str, Any]) -> Provenance:
    """The detection behind an exposure's masks, from its ``status.detect``."""
    model = str(detect_status.get("model") or "unknown")
    dilation = detect_status.get("inpaint_dilate", config.get("detect.inpaint_dilate"))
    return Provenance(
        model=model,
        weights_sha256=detect_status.get("weights_sha256") or _weights_sha256(model),
        threshold=float(detect_status.get("threshold", float("nan"))),
        dilation=int(dilation),
        detect_time=detect_status.get("time"),
    )


def _write_fits_task(
    archive: str,
    exposure_id: str,
    outdir: str,
    options: WriteOptions,
    provenance: Provenance,
    names: tuple[str, str | None],
    force: bool,
) -> FitsOutcome:
    """Worker task: write one exposure; never raises for bad input (the outcome says)."""
    try:
        return write_exposure(Archive(archive, mode="r"), exposure_id, outdir, options, provenance,
                              names, force=force)
    except InputError as exc:
        return FitsOutcome(exposure_id, "failed", message=f"exposure {exposure_id!r}: {exc}", kind=exc.kind)
    except (ArchiveError, KeyError) as exc:
        return FitsOutcome(exposure_id, "failed", message=f"exposure {exposure_id!r}: {exc}", kind="archive")
    except OSError as exc:
        return FitsOutcome(exposure_id, "failed", kind="write",
                           message=f"exposure {exposure_id!r}: cannot write into {outdir} ({describe(exc)})")
    except Exception as exc:  # one bad exposure must never stop the run
        return FitsOutcome(exposure_id, "failed", kind="internal",
                           message=f"exposure {exposure_id!r}: unexpected {type(exc).__name__}: {exc}")


def write_fits_archive(
    archive: str | os.PathLike[str],
    outdir: str | os.PathLike[str],
    *,
    exposures: Sequence[str] | None = None,
    pixels: str = "original",
    flags: str = "native",
    prob: bool = False,
    force: bool = False,
    client: Any = None,
    scheduler: str | None = None,
    n_workers: int | None = None,
    cluster: str | None = None,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
) -> WriteFitsReport:
    """Write FITS products of an archive's detected exposures into ``outdir``, on Dask.

    Parameters
    ----------
    archive : path
        The crscale archive.
    outdir : path
        Output folder (created). Every file goes directly into it, whatever the names say.
    exposures : sequence of str, optional
        Only these exposures (default: every exposure whose detection is done).
    pixels : {"original", "clean"}
        Science pixels as in the source, or the archive's inpainted ``clean`` image.
    flags : {"native", "crmask"}
        CRs in the pipeline's own DQ plane and convention where it has one, else (or always
        with ``"crmask"``) a uint8 ``CRMASK`` extension per science HDU.
    prob : bool
        Also a float32 ``CRPROB`` extension per science HDU.
    force : bool
        Rewrite files that are up to date.
    client, scheduler, n_workers, cluster
        The Dask cluster, as for the other stages.
    progress : bool
        A progress bar on stderr.
    echo : callable, optional
        Where messages go; default: this module's logger (INFO).

    Returns
    -------
    WriteFitsReport
        ``report.ok`` is False when an exposure failed.

    Raises
    ------
    ArchiveError
        The archive cannot be opened, or an exposure asked for is not in it.
    ValueError
        Bad ``pixels`` or ``flags``.
    """
    t0 = time.perf_counter()
    say = reporter(logger, echo)
    options = WriteOptions(pixels=pixels, flags=flags, prob=prob)
    arch = Archive(archive, mode="a", create=False)
    out = Path(outdir).absolute()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file where the folder should be, no permission ...
        raise OutputError(str(exc)) from exc
    names = output_names(arch)
    results: dict[str, FitsOutcome] = {}
    calls: list[Any] = []
    for eid in arch.select_exposures(exposures):
        try:
            detect = arch.status(eid).get("detect", {})
        except Exception as exc:  # this exposure's metadata only
            results[eid] = FitsOutcome(eid, "failed", message=f"exposure {eid!r}: unreadable ({exc})",
                                       kind="archive")
            continue
        if detect.get("state") != "done":
            results[eid] = FitsOutcome(eid, "skipped", message="not detected yet (run `crscale detect`)")
            continue
        args = (str(arch.path), eid, str(out), options, provenance_of(detect), names[eid], force)
        calls.append(Call(args=args, subject=eid))
    if calls:
        with client_or_new(client, scheduler=scheduler, n_workers=n_workers, cluster=cluster, echo=say) as cl:
            for done in windowed(cl, _write_fits_task, calls, desc=STAGE, progress=progress):
                eid = done.item.subject
                outcome = done.value
                if done.error is not None:
                    outcome = FitsOutcome(eid, "failed", kind="lost",
                                          message=f"exposure {eid!r}: task lost ({describe(done.error)})")
                results[eid] = outcome
    report = WriteFitsReport(archive=str(arch.path), outdir=str(out), results=list(results.values()),
                             settings=asdict(options), seconds=time.perf_counter() - t0)
    _record(arch, report)
    return report


def _record(arch: Archive, report: WriteFitsReport) -> None:
    """Failures into ``failures/`` (stage write-fits); forget old ones of exposures now written."""
    for r in report.results:
        if r.status == "failed":
            with contextlib.suppress(Exception):
                source = arch.exposure_attrs(r.exposure_id).get("source", {}).get("path", r.exposure_id)
                arch.record_failure(source, r.message, stage=STAGE, kind=r.kind or "error",
                                    exposure_id=r.exposure_id)
        elif r.status == "done":
            clear_exposure_failure(arch, r.exposure_id, STAGE)
