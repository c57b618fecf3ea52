"""Chunk integrity: every array write records what it wrote, every engine read checks it.

Zarr returns an array's fill value for a chunk that is not in the store, so a lost chunk (a
deleted file, a failed copy, an object-store hiccup) reads as NaN or 0, indistinguishable from
data. crscale arrays written by format 1.3 and later are therefore

* written with ``write_empty_chunks=True``: every chunk (every shard, when sharded) of the
  array is stored, all-fill ones included, so *absent* always means *lost*;
* checksummed: a ``crc32c`` codec ends each chunk's codec chain (zarr v3's own, so any zarr
  reader verifies it), and the shard index of a sharded array has its own ``crc32c``;
* marked: the array attribute :data:`RECORD_ATTR` says both, so a reader knows it may judge an
  absent chunk as damage. Arrays without it (format 1.2 and older) cannot be judged for absent
  chunks; a chunk that fails to decode is still found.

:class:`CheckedArray` wraps a Zarr array for the engine's reads: before a selection is read it
checks that every stored chunk it covers exists (store API ``exists``, so it works on local
disk and object stores alike), and a chunk that fails to decode (checksum, compression) is
named. Both raise :class:`ChunkIntegrityError`, naming the array and the chunk key.
:func:`mark_damaged` then marks the stage that wrote the array, and every later stage that was
done, ``damaged``; :mod:`crscale.io.verify` scrubs a whole archive.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from crscale.errors import ChunkIntegrityError

#: Array attribute of an array whose every chunk was stored and checksummed.
RECORD_ATTR = "crscale_integrity"
RECORD = {"version": 1, "every_chunk_stored": True, "checksum": "crc32c"}
#: Arrays written by the detection stage; every other array of a detector is ingest's.
DETECT_ARRAYS = ("prob", "mask", "clean")
#: The stages in order (as crscale.io.archive.STAGES), and the state of damaged ones.
_STAGES = ("ingest", "detect", "catalogue")
DAMAGED = "damaged"


def with_checksum(compressors: Sequence[Any] | None) -> list[Any]:
    """The bytes-to-bytes codecs with a ``crc32c`` checksum at the end (added once)."""
    from zarr.codecs import Crc32cCodec

    codecs = list(compressors or [])
    if not any(isinstance(c, Crc32cCodec) for c in codecs):
        codecs.append(Crc32cCodec())
    return codecs


def array_options(compressors: Sequence[Any] | None) -> dict[str, Any]:
    """Keyword arguments of ``create_array`` for a recorded array (see the module notes)."""
    return {
        "compressors": with_checksum(compressors),
        "config": {"write_empty_chunks": True},
        "attributes": {RECORD_ATTR: dict(RECORD)},
    }


def for_writing(array: Any) -> Any:
    """The array configured to store every chunk, as its record promises.

    A reopened array forgets ``write_empty_chunks``: it is a run-time setting, not metadata.
    """
    if is_recorded(array):
        return array.with_config({"write_empty_chunks": True})
    return array


def is_recorded(array: Any) -> bool:
    """Whether the array carries the integrity record (every chunk stored)."""
    record = array.attrs.get(RECORD_ATTR)
    return isinstance(record, dict) and bool(record.get("every_chunk_stored"))


def storage_grid(array: Any) -> tuple[int, ...]:
    """Shape of one stored object: the shard when the array is sharded, else the chunk."""
    return tuple(int(c) for c in (array.shards or array.chunks))


def _axis_blocks(sel: Any, length: int, size: int) -> np.ndarray:
    if isinstance(sel, int | np.integer):
        index = int(sel) + (length if sel < 0 else 0)
        return np.array([index // size])
    if isinstance(sel, slice):
        start, stop, step = sel.indices(length)
        positions = np.arange(start, stop, step)
        return np.unique(positions // size) if positions.size else positions
    positions = np.asarray(sel).ravel()  # integer or boolean index arrays
    if positions.dtype == bool:
        positions = np.flatnonzero(positions)
    return np.unique(positions % max(length, 1) // size)


def covered_chunks(array: Any, selection: Any) -> list[tuple[int, ...]]:
    """Coordinates (on the storage grid) of every stored object a selection reads."""
    sel = selection if isinstance(selection, tuple) else (selection,)
    if any(s is Ellipsis for s in sel):
        i = next(k for k, s in enumerate(sel) if s is Ellipsis)
        sel = sel[:i] + (slice(None),) * (array.ndim - len(sel) + 1) + sel[i + 1 :]
    sel = sel + (slice(None),) * (array.ndim - len(sel))
    axes = [
        _axis_blocks(s, int(n), g) for s, n, g in zip(sel, array.shape, storage_grid(array), strict=True)
    ]
    return [tuple(int(i) for i in c) for c in itertools.product(*axes)]


def chunk_key(array: Any, coords: tuple[int, ...]) -> str:
    """The chunk's key inside its array (``c/0/1``)."""
    return array.metadata.encode_chunk_key(coords)


def chunk_region(array: Any, coords: tuple[int, ...]) -> tuple[slice, ...]:
    """The pixels of one stored object."""
    grid = storage_grid(array)
    return tuple(
        slice(c * g, min((c + 1) * g, int(n))) for c, g, n in zip(coords, grid, array.shape, strict=True)
    )


def all_chunks(array: Any) -> Iterator[tuple[int, ...]]:
    """Every coordinate of the storage grid, in C order."""
    counts = [-(-int(n) // g) for n, g in zip(array.shape, storage_grid(array), strict=True)]
    return itertools.product(*(range(c) for c in counts))


def missing_chunks(array: Any, coords: Sequence[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """The coordinates among ``coords`` whose object is not in the array's store."""
    from zarr.core.sync import sync

    store, base = array.store, array.path.rstrip("/")
    keys = [f"{base}/{chunk_key(array, c)}" if base else chunk_key(array, c) for c in coords]

    async def probe() -> list[bool]:
        return list(await asyncio.gather(*(store.exists(k) for k in keys)))

    present = sync(probe()) if keys else []
    return [c for c, ok in zip(coords, present, strict=True) if not ok]


class CheckedArray:
    """A read-only view of a Zarr array whose reads refuse absent or undecodable chunks.

    Parameters
    ----------
    array : zarr.Array
        The array.
    label : str
        How messages name it (``<archive>/exposures/<id>/<detector>/<name>``).
    """

    def __init__(self, array: Any, label: str) -> None:
        self.array = array
        self.label = label
        self.recorded = is_recorded(array)
        self.shape = tuple(array.shape)
        self.dtype = array.dtype
        self.ndim = array.ndim
        self.chunks = array.chunks
        self.shards = array.shards

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        return ("crscale-checked", self.label, self.shape, str(self.dtype), self.recorded)

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[...]
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, selection: Any) -> np.ndarray:
        coords = covered_chunks(self.array, selection)
        if self.recorded and coords:
            missing = missing_chunks(self.array, coords)
            if missing:
                more = f"{len(missing) - 1} more chunk(s) of this read are missing too" if missing[1:] else ""
                raise ChunkIntegrityError(self.label, chunk_key(self.array, missing[0]), "missing", more)
        try:
            return self.array[selection]
        except Exception as exc:
            bad = self._undecodable(coords)
            if bad is None:
                raise
            raise ChunkIntegrityError(
                self.label, chunk_key(self.array, bad), "corrupt", f"{type(exc).__name__}: {exc}"
            ) from exc

    def _undecodable(self, coords: Sequence[tuple[int, ...]]) -> tuple[int, ...] | None:
        for c in coords:
            try:
                self.array[chunk_region(self.array, c)]
            except Exception:
                return c
        return None


def checked(group: Any, name: str, label: str) -> CheckedArray:
    """``CheckedArray(group[name])`` labelled ``label/name``."""
    return CheckedArray(group[name], f"{label}/{name}")


def owning_stage(array_name: str) -> str:
    """The stage that writes an array: ``detect`` for prob/mask/clean, else ``ingest``."""
    return "detect" if array_name in DETECT_ARRAYS else "ingest"


def mark_damaged(archive: Any, exposure_id: str, array: str, message: str) -> list[str]:
    """Mark the stage that wrote ``array`` and every later stage that was done as ``damaged``.

    Parameters
    ----------
    archive : crscale.io.Archive
        The archive, opened for writing.
    exposure_id : str
        The exposure.
    array : str
        The damaged array's name (``image``, ``mask`` ...) or path.
    message : str
        What was found (recorded in the status).

    Returns
    -------
    list of str
        The stages marked. Best effort: never raises (recording damage must not stop a run).
    """
    name = array.rstrip("/").rsplit("/", 1)[-1]
    owner = owning_stage(name)
    marked = []
    with contextlib.suppress(Exception):
        status = archive.status(exposure_id)
        for stage in _STAGES[_STAGES.index(owner) :]:
            state = status.get(stage, {}).get("state")
            if stage == owner or state == "done":
                note = message if stage == owner else f"its input {name!r} is damaged: {message}"
                archive.set_status(exposure_id, stage, DAMAGED, message=note, array=name)
                marked.append(stage)
    return marked


def note_damage(archive: Any, exposure_id: str, exc: BaseException) -> None:
    """:func:`mark_damaged` when ``exc`` is a :class:`ChunkIntegrityError`, else nothing."""
    if isinstance(exc, ChunkIntegrityError):
        mark_damaged(archive, exposure_id, exc.array_name, str(exc))


def damaged_input(status: dict[str, Any], stage: str) -> str | None:
    """Why ``stage`` cannot run on an exposure whose earlier stage is ``damaged``, or None."""
    for earlier in _STAGES[: _STAGES.index(stage)]:
        entry = status.get(earlier, {})
        if entry.get("state") == DAMAGED:
            redo = "re-ingest its source" if earlier == "ingest" else f"redo `crscale {earlier}`"
            return f"its {earlier} output is damaged ({entry.get('message', '')}); {redo} first"
    return None
