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


def abandon(client: Any, futures: Any, archive: Any, stage: str, running: Any, exc: BaseException) -> None:
    """Cancel a stage's in-flight tasks and mark its ``running`` exposures ``interrupted``.

    Called when the client is interrupted (a signal, Ctrl-C) or fails itself: no exposure is
    left ``running``, and a re-run redoes those (their status is not ``done``). Best effort and
    quick, since a batch system follows SIGTERM with SIGKILL.
    """
    import contextlib

    with contextlib.suppress(Exception):
        client.cancel(list(futures))
    reason = "interrupted: " + (str(exc) or type(exc).__name__)
    for eid in sorted(running):
        with contextlib.suppress(Exception):
            archive.set_status(eid, stage, "interrupted", message=reason)
