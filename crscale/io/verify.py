"""``crscale verify``: scrub an archive, chunk by chunk, against its integrity records.

Every array of every detector is checked: each stored object (chunk, or shard) must be in the
store when the array's record says every chunk was stored, and must decode (its ``crc32c``
checksum, the compression). The arrays a stage's ``done`` status promises must exist. Damage is
reported per exposure, with the commands that repair it, and the affected stages are marked
``damaged`` (:func:`crscale.io.integrity.mark_damaged`) so that re-running them redoes exactly
those exposures. See docs/archive-format.md §13.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import zarr

from crscale.io import integrity
from crscale.io.archive import Archive, array_names

#: Damage lines listed per array before the rest is counted.
MAX_LISTED = 5


@dataclass(kw_only=True)
class ExposureCheck:
    """What the scrub found in one exposure."""

    exposure_id: str
    source: str | None = None
    arrays: int = 0
    chunks: int = 0
    damage: list[str] = field(default_factory=list)
    unrecorded: list[str] = field(default_factory=list)
    damaged_arrays: list[str] = field(default_factory=list)
    marked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing is damaged."""
        return not self.damage

    def repair(self, archive: str) -> list[str]:
        """The commands that repair this exposure."""
        if self.ok:
            return []
        a = shlex.quote(archive)
        stages = {integrity.owning_stage(n) for n in self.damaged_arrays} or {"ingest"}
        if "ingest" in stages and self.source:
            return [f"crscale run {shlex.quote(self.source)} --archive {a}"]
        if "ingest" in stages:
            return [f"re-ingest the source of {self.exposure_id!r} with `crscale run SOURCE --archive {a}`"]
        e = shlex.quote(self.exposure_id)
        return [f"crscale detect {a} -e {e}", f"crscale catalogue {a} -e {e}"]


@dataclass(kw_only=True)
class VerifyReport:
    """All exposures checked, in archive order."""

    archive: str
    results: list[ExposureCheck]

    @property
    def ok(self) -> bool:
        """True when no exposure is damaged."""
        return all(r.ok for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {
            "archive": self.archive,
            "ok": self.ok,
            "results": [{**asdict(r), "ok": r.ok, "repair": r.repair(self.archive)} for r in self.results],
        }

    def summary(self) -> str:
        """Per-exposure lines, then the totals and how to repair."""
        lines = []
        for r in self.results:
            head = "ok     " if r.ok else "DAMAGED"
            lines.append(f"{head} {r.exposure_id}: {r.arrays} array(s), {r.chunks} chunk(s) checked")
            lines.extend(f"    {d}" for d in r.damage)
            if r.unrecorded:
                lines.append(
                    f"    {len(r.unrecorded)} array(s) without an integrity record (written before "
                    "format 1.3): a lost chunk there cannot be told from an empty one"
                )
            if r.marked:
                lines.append(f"    marked damaged: {', '.join(r.marked)}")
            lines.extend(f"    repair: {cmd}" for cmd in r.repair(self.archive))
        bad = [r for r in self.results if not r.ok]
        lines.append(
            f"verify: {len(self.results)} exposure(s), {len(bad)} damaged, "
            f"{sum(r.chunks for r in self.results)} chunk(s) checked"
        )
        if bad:
            lines.append(
                "Repair: re-ingest from the source what ingest wrote (the image planes), then redo "
                "the later stages; the commands above do it (a re-run redoes exactly the stages "
                "marked damaged)."
            )
        return "\n".join(lines)


def check_array(array: Any, label: str) -> tuple[int, list[str], bool]:
    """Check every stored object of one array.

    Returns
    -------
    chunks : int
        Objects checked.
    damage : list of str
        One line per missing or undecodable object (the first :data:`MAX_LISTED`, then a count).
    recorded : bool
        Whether the array has an integrity record (absent objects are damage only then).
    """
    coords = list(integrity.all_chunks(array))
    recorded = integrity.is_recorded(array)
    problems: list[str] = []
    missing = set(integrity.missing_chunks(array, coords)) if recorded else set()
    for c in coords:
        key = integrity.chunk_key(array, c)
        if c in missing:
            problems.append(f"{label}: chunk {key} is missing")
            continue
        try:
            array[integrity.chunk_region(array, c)]
        except Exception as exc:  # checksum, decompression or store error: the chunk is unusable
            problems.append(f"{label}: chunk {key} is corrupt ({type(exc).__name__}: {exc})")
    if len(problems) > MAX_LISTED:
        problems = [*problems[:MAX_LISTED], f"{label}: ... and {len(problems) - MAX_LISTED} more"]
    return len(coords), problems, recorded


def _check_exposure(arch: Archive, eid: str) -> ExposureCheck:
    check = ExposureCheck(exposure_id=eid)
    try:
        attrs = arch.exposure_attrs(eid)
        detectors = arch.detectors(eid)
    except Exception as exc:  # unreadable metadata: the whole exposure is damaged
        check.damage.append(f"exposure {eid!r}: unreadable metadata ({type(exc).__name__}: {exc})")
        check.damaged_arrays.append("image")
        return check
    check.source = (attrs.get("source") or {}).get("path")
    status = attrs.get("status", {})
    need = []
    if status.get("ingest", {}).get("state") == "done":
        need.append("image")
    if status.get("detect", {}).get("state") == "done":
        need += ["prob", "mask"]
    for det in detectors:
        base = f"exposures/{eid}/{det}"
        label = f"{det}"
        try:
            group = cast(zarr.Group, arch.root[base])
            names = sorted(array_names(group))
        except Exception as exc:
            check.damage.append(f"{label}: unreadable detector group ({type(exc).__name__}: {exc})")
            check.damaged_arrays.append("image")
            continue
        for name in need:
            if name not in names:
                check.damage.append(f"{label}/{name}: the array is missing")
                check.damaged_arrays.append(name)
        for name in names:
            try:
                n, problems, recorded = check_array(group[name], f"{label}/{name}")
            except Exception as exc:
                n, problems, recorded = 0, [f"{label}/{name}: unreadable ({type(exc).__name__}: {exc})"], True
            check.arrays += 1
            check.chunks += n
            check.damage.extend(problems)
            if problems:
                check.damaged_arrays.append(name)
            if not recorded:
                check.unrecorded.append(f"{label}/{name}")
    return check


def verify_archive(
    archive: str | Path, *, exposures: Sequence[str] | None = None, mark: bool = True
) -> VerifyReport:
    """Scrub an archive (or some exposures): every chunk of every array against its record.

    Parameters
    ----------
    archive : path
        The archive.
    exposures : sequence of str, optional
        Only these exposures.
    mark : bool
        Mark the stages whose arrays are damaged (and the later ones) ``damaged``, so that
        re-running them redoes those exposures. Needs write access.

    Returns
    -------
    VerifyReport
        ``report.ok`` is False when anything is damaged.

    Raises
    ------
    ArchiveError
        The archive cannot be opened, or an exposure asked for is not in it.
    """
    # A scrub must refuse a missing archive, never create an empty one.
    arch = Archive(archive, mode="a" if mark else "r", create=False)
    results = []
    for eid in arch.select_exposures(exposures):
        check = _check_exposure(arch, eid)
        if mark and not check.ok:
            first = check.damage[0]
            for name in dict.fromkeys(check.damaged_arrays):
                for stage in integrity.mark_damaged(arch, eid, name, first):
                    if stage not in check.marked:
                        check.marked.append(stage)
        results.append(check)
    return VerifyReport(archive=str(arch.path), results=results)
