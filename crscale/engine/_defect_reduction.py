"""The defect reduction on the cluster: count tasks, a tree of additions, one finish per key.

See :mod:`crscale.engine.defects_stage` for the plan; this module holds what runs on the workers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from crscale.catalogue.defects import DefectSettings, add_user_map, find_defects
from crscale.errors import ArchiveError, error_text
from crscale.io.archive import Archive
from crscale.io.defect_store import read_array, read_defect_attrs, write_defect_map

log = logging.getLogger("crscale.engine.defects_stage")

#: Masks one count task reads (one after the other, into one array).
EXPOSURES_PER_TASK = 32


@dataclass(kw_only=True)
class KeyPlan:
    """What one detector key needs."""

    key: str
    instrument: str | None
    detector: str
    binning: tuple[int, int]
    shape: tuple[int, int]
    members: dict[str, str] = field(default_factory=dict)  #: exposure -> detect time (all with a mask)
    todo: list[str] = field(default_factory=list)  #: exposures to count now
    rebuild: bool = False


@dataclass(kw_only=True)
class DefectResult:
    """Outcome for one key."""

    key: str
    status: str  # verified | unverified | failed | current
    n_exposures: int = 0
    n_added: int = 0
    rebuilt: bool = False
    changed: bool = False
    n_by_kind: dict[str, int] = field(default_factory=dict)
    digest: str | None = None
    message: str = ""


def count_masks_task(archive: str, items: Sequence[tuple[str, str]], shape: tuple[int, int]) -> np.ndarray:
    """Worker task: in how many of these masks each pixel is set (uint32)."""
    import zarr

    from crscale.io.storage import zarr_options

    total = np.zeros(shape, np.uint32)
    for eid, det in items:
        mask = zarr.open_array(f"{archive}/exposures/{eid}/{det}/mask", mode="r", zarr_format=3,
                               storage_options=zarr_options(archive))
        if tuple(mask.shape) != tuple(shape):
            raise ArchiveError(f"{eid}/{det}: mask shape {tuple(mask.shape)} is not the detector's {shape}")
        step = int(mask.chunks[0])
        for y0 in range(0, shape[0], step):  # whole chunk rows: one band in memory
            total[y0 : y0 + step] += np.asarray(mask[y0 : y0 + step]) != 0
    return total


def add_counts_task(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Worker task: the sum of two count arrays."""
    a += b
    return a


def finish_key_task(
    archive: str,
    plan: KeyPlan,
    counts: np.ndarray | None,
    settings: DefectSettings,
) -> DefectResult:
    """Worker task: add to the stored counts, find the defects, write the key's map."""
    arch = Archive(archive, mode="a")
    old = read_defect_attrs(arch, plan.key) or {}
    stored = None if plan.rebuild else read_array(arch, plan.key, "counts")
    counted = {} if plan.rebuild or stored is None else dict(old.get("contributions") or {})
    total = np.zeros(plan.shape, np.uint32) if stored is None else stored.astype(np.uint32)
    if counts is not None:
        total += counts
    counted.update({e: plan.members[e] for e in plan.todo})
    dmap = find_defects(total, len(counted), settings=settings)
    user = read_array(arch, plan.key, "user")
    codes = add_user_map(dmap.codes, user)
    dmap.codes = codes
    digest = dmap.digest()
    write_defect_map(
        arch,
        plan.key,
        {"counts": total, "codes": codes},
        {
            "instrument": plan.instrument,
            "detector": plan.detector,
            "binning": list(plan.binning),
            "shape": list(plan.shape),
            "n_exposures": len(counted),
            "contributions": counted,
            "status": dmap.status,
            "p_cr": dmap.p_cr,
            "k_min": dmap.k_min,
            "k_line": dmap.k_line,
            "settings": settings.to_dict(),
            "n_by_kind": dmap.counts_by_kind(),
            "digest": digest,
        },
    )
    return DefectResult(
        key=plan.key, status=dmap.status, n_exposures=len(counted), n_added=len(plan.todo),
        rebuilt=plan.rebuild, changed=digest != old.get("digest"), n_by_kind=dmap.counts_by_kind(),
        digest=digest,
    )


def run_defects(
    cl: Any, archive: str, plans: dict[str, KeyPlan], settings: DefectSettings
) -> list[DefectResult]:
    """Submit the count trees and finish tasks of the keys with work; gather them."""
    futures = {}
    for key, plan in plans.items():
        if not plan.todo:
            continue
        items = [(e, plan.detector) for e in plan.todo]
        level = [
            cl.submit(count_masks_task, archive, items[i : i + EXPOSURES_PER_TASK], plan.shape, pure=False)
            for i in range(0, len(items), EXPOSURES_PER_TASK)
        ]
        while len(level) > 1:
            pairs = [level[i : i + 2] for i in range(0, len(level), 2)]
            level = [cl.submit(add_counts_task, *p, pure=False) if len(p) == 2 else p[0] for p in pairs]
        futures[key] = cl.submit(finish_key_task, archive, plan, level[0], settings, pure=False)
    results = []
    for key, fut in futures.items():
        try:
            results.append(fut.result())
        except Exception as exc:
            message = f"detector {key!r}: {error_text(exc)}"
            log.error("defects: %s", message)
            results.append(DefectResult(key=key, status="failed", message=message))
        finally:
            fut.release()
    return results
