"""The detection stage's records: one exposure's outcome, the run's report, its progress bars."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from crscale.engine._stage import ExposureOutcome, StageReport, progress_bar


@dataclass(kw_only=True)
class ExposureDetection(ExposureOutcome):
    """Outcome of the detection stage for one exposure (see :class:`ExposureOutcome`).

    Attributes
    ----------
    n_pixels, n_cr_pixels, n_blocks : int
    """

    n_pixels: int = 0
    n_cr_pixels: int = 0
    n_blocks: int = 0


@dataclass(kw_only=True)
class DetectReport(StageReport):
    """All outcomes of a detection run, in archive order, and the settings used."""

    results: list[ExposureDetection]

    @property
    def pixels_done(self) -> int:
        """Pixels processed in this run."""
        return sum(r.n_pixels for r in self.by_status("done"))

    def _more(self) -> dict[str, Any]:
        return {"pixels_done": self.pixels_done}

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


class Progress:
    """Two bars, exposures and blocks; blocks advance on the workers' events."""

    def __init__(self, n_exposures: int, enabled: bool) -> None:
        self.exposures = progress_bar(n_exposures, "exposures", "exp", enabled, position=0)
        self.blocks = progress_bar(0, "blocks", "block", enabled, position=1)
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
