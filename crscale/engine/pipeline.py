"""``crscale run``: the stages one after the other on one Dask cluster."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from crscale._logging import reporter
from crscale.engine.catalogue_stage import CatalogueReport, catalogue_archive
from crscale.engine.cluster import client_or_new
from crscale.engine.detect_stage import DetectReport, detect_archive
from crscale.engine.ingest import IngestReport, ingest
from crscale.engine.jobs import job_record
from crscale.errors import SettingsError
from crscale.io.archive import Archive

logger = logging.getLogger(__name__)

#: Stages of ``crscale run`` in order.
PIPELINE_STAGES = ("ingest", "detect", "catalogue")


@dataclass
class RunReport:
    """Reports of the stages that ran."""

    ingest: IngestReport | None = None
    detect: DetectReport | None = None
    catalogue: CatalogueReport | None = None
    stages: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no input or exposure failed in any stage."""
        return all(r.ok for r in (self.ingest, self.detect, self.catalogue) if r is not None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {
            "stages": self.stages,
            "ingest": self.ingest.to_dict() if self.ingest else None,
            "detect": self.detect.to_dict() if self.detect else None,
            "catalogue": self.catalogue.to_dict() if self.catalogue else None,
        }


def run_pipeline(
    inputs: Sequence[Any],
    archive: str,
    *,
    stages: Sequence[str] = PIPELINE_STAGES,
    client: Any = None,
    scheduler: str | None = None,
    n_workers: int | None = None,
    cluster: str | None = None,
    force: bool = False,
    ingest_options: dict[str, Any] | None = None,
    detect_options: dict[str, Any] | None = None,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
    catalogue_options: dict[str, Any] | None = None,
) -> RunReport:
    """Ingest the inputs, detect the CRs of their exposures, then catalogue them, on one cluster.

    Parameters
    ----------
    inputs : sequence
        As for :func:`crscale.engine.ingest.ingest`.
    archive : str
        The archive (created if missing).
    stages : sequence of str
        Stages to run, from :data:`PIPELINE_STAGES`.
    client, scheduler, n_workers, cluster
        The cluster (see :func:`crscale.engine.cluster.dask_client`).
    force : bool
        Redo every stage for these inputs.
    ingest_options, detect_options : dict, optional
        Extra keyword arguments of :func:`ingest` and :func:`detect_archive`.
    progress : bool
        Progress bars.
    catalogue_options : dict, optional
        Extra keyword arguments of :func:`catalogue_archive` (e.g. ``completeness``).
    echo : callable, optional
        Where messages go; default: this module's logger (INFO).

    Returns
    -------
    RunReport
        The stages' reports. Detection and the catalogue cover the exposures of the inputs
        (newly ingested, already in the archive, or held under another id as duplicates), not
        the rest of the archive; ``crscale detect ARCHIVE`` / ``crscale catalogue ARCHIVE`` do
        the whole archive. Without the ingest stage, they cover the whole archive.
    """
    unknown = [s for s in stages if s not in PIPELINE_STAGES]
    if unknown:
        raise SettingsError(f"unknown stage(s) {unknown}; available: {', '.join(PIPELINE_STAGES)}")
    say = reporter(logger, echo)
    report = RunReport(stages=list(stages))
    with (
        client_or_new(client, scheduler=scheduler, n_workers=n_workers, cluster=cluster, echo=say) as cl,
        job_record(archive, cl, stages),
    ):
        exposure_ids: list[str] | None = None
        if "ingest" in stages:
            report.ingest = ingest(
                inputs,
                archive,
                client=cl,
                force=force,
                progress=progress,
                echo=echo,
                **(ingest_options or {}),
            )
            say(report.ingest.summary())
            exposure_ids = sorted(
                {r.exposure_id for r in report.ingest.results if r.status != "failed" and r.exposure_id}
            )
        later = (
            ("detect", detect_archive, detect_options or {}),
            ("catalogue", catalogue_archive, catalogue_options or {}),
        )
        for name, stage, options in later:
            if name not in stages:
                continue
            ids = exposure_ids
            if ids is not None:  # not those another run on this archive is still ingesting
                present = set(Archive(archive).exposure_ids())
                ids = [e for e in ids if e in present]
            if ids is not None and not ids:
                say(f"{name}: no exposure to process")
                continue
            result = stage(
                archive,
                client=cl,
                exposures=ids,
                force=force,
                progress=progress,
                echo=echo,
                **options,
            )
            setattr(report, name, result)
            say(result.summary())
    return report
