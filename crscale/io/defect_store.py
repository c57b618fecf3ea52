"""Per-detector defect maps in the archive: ``defects/<key>/`` (format 1.3, docs/archive-format.md §13).

A *detector key* names one physical detector across exposures: instrument, detector (FITS
extension) name, on-chip binning and shape. Each key's group holds

- ``counts``  uint32 (y, x): exposures in which the pixel was masked (the sufficient statistic;
  adding exposures adds to it),
- ``codes``   uint8 (y, x): the defect map (:data:`crscale.catalogue.defects.DEFECT_CODES`),
- ``user``    uint8 (y, x), optional: a user-supplied bad-pixel map (non-zero: bad),

and attributes (``state`` written last): ``instrument``, ``detector``, ``binning``, ``shape``,
``n_exposures``, ``contributions`` (exposure id -> detect time of the mask counted),
``status`` (``verified`` / ``unverified``), ``p_cr``, ``k_min``, ``k_line``, ``settings``,
``n_by_kind``, ``digest`` (what the catalogue depends on), ``user_source``, ``completeness``
(filled by the completeness measurement), ``time``.
"""

from __future__ import annotations

import re
from typing import Any, cast

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from crscale.io import integrity
from crscale.io.archive import Archive, utcnow
from crscale.io.json_values import json_safe

#: Group of the defect maps.
DEFECTS_GROUP = "defects"
_CHUNK = 1024


def detector_key(instrument: str | None, detector: str, binning: Any, shape: Any) -> str:
    """The group name of one physical detector (safe characters only)."""
    bx, by = (int(b) for b in binning)
    ny, nx = (int(s) for s in shape)
    raw = f"{instrument or 'unknown'}__{detector}__{bx}x{by}__{ny}x{nx}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", raw)


def _group(arch: Archive, key: str, create: bool = False) -> zarr.Group | None:
    if DEFECTS_GROUP not in arch.root:
        if not create:
            return None
        try:
            arch.root.create_group(DEFECTS_GROUP)
        except zarr.errors.ContainsGroupError:
            pass
    parent = cast(zarr.Group, arch.root[DEFECTS_GROUP])
    if key not in parent:
        return parent.create_group(key) if create else None
    return cast(zarr.Group, parent[key])


def defect_keys(arch: Archive) -> list[str]:
    """Keys with a defect group (finished or not), sorted (any store: local or object storage)."""
    if DEFECTS_GROUP not in arch.root:
        return []
    return sorted(cast(zarr.Group, arch.root[DEFECTS_GROUP]).group_keys())


def read_defect_attrs(arch: Archive, key: str) -> dict[str, Any] | None:
    """Attributes of one key's map, or None when there is no finished map."""
    group = _group(arch, key)
    if group is None:
        return None
    attrs = dict(group.attrs)
    return attrs if attrs.get("state") == "done" else None


def read_array(arch: Archive, key: str, name: str) -> np.ndarray | None:
    """One array of a key's group, whole (``counts``, ``codes`` or ``user``), or None."""
    group = _group(arch, key)
    if group is None or name not in set(group.array_keys()):
        return None
    # An absent or corrupt chunk is refused, named (reading it would give zeros: "no defect").
    return np.asarray(integrity.checked(group, name, f"{arch.path}/{DEFECTS_GROUP}/{key}")[...])


def codes_path(archive_path: str, key: str) -> str:
    """Store path of a key's ``codes`` array (for band reads on workers)."""
    return f"{archive_path}/{DEFECTS_GROUP}/{key}"


def _write(group: zarr.Group, name: str, data: np.ndarray) -> None:
    chunks = tuple(max(1, min(_CHUNK, s)) for s in data.shape)
    if name in set(group.array_keys()):
        arr = cast(zarr.Array, group[name])
        if tuple(arr.shape) == data.shape and arr.dtype == data.dtype and integrity.is_recorded(arr):
            integrity.for_writing(arr)[...] = data
            return
        del group[name]  # a map of another shape, or one written before it had an integrity record
    arr = group.create_array(
        name,
        shape=data.shape,
        dtype=data.dtype,
        chunks=chunks,
        fill_value=0,
        dimension_names=["y", "x"],
        **integrity.array_options([BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle")]),
    )
    arr[...] = data


def write_defect_map(
    arch: Archive,
    key: str,
    arrays: dict[str, np.ndarray],
    attrs: dict[str, Any],
) -> None:
    """Write a key's arrays, then its attributes with ``state: done`` last.

    A map being rewritten has ``state: writing`` meanwhile, so a reader never takes half a
    map for a finished one.
    """
    group = _group(arch, key, create=True)
    assert group is not None  # created
    old = dict(group.attrs)
    group.attrs.put(json_safe({**old, "state": "writing"}))
    for name, data in arrays.items():
        _write(group, name, np.ascontiguousarray(data))
    group.attrs.put(json_safe({**old, **attrs, "time": utcnow(), "state": "done"}))


def update_defect_attrs(arch: Archive, key: str, **attrs: Any) -> None:
    """Add attributes to a finished map (e.g. its completeness)."""
    group = _group(arch, key)
    if group is None:
        raise KeyError(f"no defect map {key!r} in {arch.path}")
    group.attrs.update(json_safe(attrs))
