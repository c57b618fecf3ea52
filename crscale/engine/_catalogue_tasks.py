"""The catalogue stage's worker tasks: one detector's CRs, then one exposure's Parquet files."""

from __future__ import annotations

from typing import Any

from crscale.catalogue.morphology import MorphologyRules
from crscale.catalogue.profiles import DetectorPhysics
from crscale.errors import ArchiveError
from crscale.io import integrity
from crscale.io.archive import array_names
from crscale.io.dq import ExcludedView, convention_for
from crscale.io.storage import zarr_options


def catalogue_detector_task(
    archive: str,
    exposure_id: str,
    detector: str,
    physics: DetectorPhysics,
    rules: MorphologyRules,
    exposure_attrs: dict[str, Any],
    defects: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Worker task: the CR columns and the exposure-table row of one detector.

    ``defects`` (None: no defect information) names the detector's defect map: ``key``,
    ``status`` and ``completeness`` (see :mod:`crscale.engine.defects_stage`).
    """
    import zarr

    from crscale.catalogue.detector import catalogue_detector
    from crscale.catalogue.rates import exposure_row

    label = f"{archive}/exposures/{exposure_id}/{detector}"
    group = zarr.open_group(label, mode="r", zarr_format=3, storage_options=zarr_options(archive))
    attrs: dict[str, Any] = dict(group.attrs)
    arrays = array_names(group)
    if "mask" not in arrays:
        raise ArchiveError(f"{exposure_id}/{detector}: no CR mask (run `crscale detect` first)")
    detect = attrs.get("detect") or {}

    def read(name: str) -> Any:  # reads refuse absent or corrupt chunks, naming them
        return integrity.checked(group, name, label) if name in arrays else None

    codes = None
    if defects and defects.get("key"):
        where = f"{archive}/defects/{defects['key']}"
        # Checked like the exposure's own arrays: a lost chunk of codes would read as "no defect".
        codes = integrity.checked(zarr.open_group(where, mode="r", zarr_format=3,
                                                  storage_options=zarr_options(archive)), "codes", where)
    result = catalogue_detector(
        read("image"),
        read("mask"),
        background=read("clean"),
        dq=(ExcludedView(read("dq"), convention_for(exposure_attrs, detector_attrs=attrs))
            if "dq" in arrays else None),
        gain=physics.gain,
        saturation=attrs.get("saturation"),
        rules=rules,
        fallback=(detect.get("stats") or {}).get("sky"),
        defects=codes,
        defect_map=(defects or {}).get("status"),
    )
    row = exposure_row(
        exposure_id,
        detector,
        result,
        physics,
        exposure_attrs=exposure_attrs,
        detector_attrs=attrs,
        model=detect.get("model"),
        threshold=detect.get("threshold"),
        completeness=(defects or {}).get("completeness"),
    )
    columns = {"exposure": exposure_id, "detector": detector, **result.columns}
    return columns, row


def write_exposure_task(archive: str, exposure_id: str, *parts: tuple[dict[str, Any], dict[str, Any]]) -> int:
    """Worker task: write one exposure's Parquet files from its detectors' results; returns n_cr."""
    import numpy as np

    from crscale.io.catalogue_schema import CR_SCHEMA
    from crscale.io.catalogue_store import as_table, write_exposure_tables

    columns: dict[str, Any] = {}
    for f in CR_SCHEMA:
        pieces = []
        for cols, _row in parts:
            n = cols["id"].size
            value = cols[f.name]
            pieces.append(np.full(n, value, dtype=object) if isinstance(value, str) else np.asarray(value))
        columns[f.name] = np.concatenate(pieces) if pieces else np.zeros(0)
    crs = as_table(columns, "crs")
    rows = as_table([row for _cols, row in parts], "exposures")
    write_exposure_tables(archive, exposure_id, crs, rows)
    return int(sum(row["n_cr"] for _cols, row in parts))
