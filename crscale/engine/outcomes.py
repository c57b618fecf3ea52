"""What the archive stages' reports share: per-exposure outcomes with a status."""

from __future__ import annotations

from typing import Any

#: Statuses of an exposure in a stage's report.
STATUSES = ("done", "skipped", "failed")


class StageOutcomes:
    """Mixin of a stage report whose ``results`` have a ``status`` (done, skipped, failed)."""

    results: list[Any]

    def by_status(self, status: str) -> list[Any]:
        """Outcomes with the given status."""
        return [r for r in self.results if r.status == status]

    @property
    def ok(self) -> bool:
        """True when no exposure failed."""
        return not self.by_status("failed")

    def counts(self) -> dict[str, int]:
        """Exposures per status."""
        return {s: len(self.by_status(s)) for s in STATUSES}
