"""The ingest stage's records: what happened to one input file, and the run's report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from crscale.engine._stage import StageReport


@dataclass(kw_only=True)
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


@dataclass(kw_only=True)
class IngestReport(StageReport):
    """All results of an ingest run, in input order, and the settings used."""

    STATUSES: ClassVar[tuple[str, ...]] = ("done", "skipped", "duplicate", "failed")

    results: list[IngestResult]

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
        for r in self.by_status("skipped"):
            if r.message != "already ingested":  # another run on the archive has it
                lines.append(f"  skipped: {r.path}: {r.message}")
        for r in self.by_status("duplicate"):
            lines.append(f"  duplicate: {r.path}: {r.message}")
        for r in self.by_status("failed"):
            lines.append(f"  FAILED: {r.message}")
        n_warn = sum(1 for r in done if r.warnings)
        if n_warn:
            lines.append(f"  {n_warn} exposure(s) with header warnings (see `crscale info`)")
        return "\n".join(lines)
