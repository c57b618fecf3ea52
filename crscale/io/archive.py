"""The crscale archive: a Zarr v3 store with one group per exposure and per detector.

The layout and every attribute are specified in ``docs/archive-format.md``; this module
is the only code that writes it. Format version :data:`FORMAT_VERSION` is stored in the
root attribute ``crscale_format``.

Write safety
------------
An exposure is written into ``staging/<id>-<token>`` and moved into
``exposures/<id>`` with one directory rename once every array and attribute is on disk,
its ingest status (``done``) written last. A job killed mid-write (or a full disk) leaves
only a staging directory, removed on the next open for writing; the exposure either is
complete or is not there. A forced re-ingest keeps the old copy until the new one is
complete. Later stages write their arrays into the exposure group first and set their
status last (:meth:`Archive.set_status`). On object storage, which cannot rename, the move
copies the objects with the group's ``zarr.json`` last (:func:`crscale.io.storage.replace`).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import json
import os
import platform
import time
import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, cast

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from crscale import config
from crscale._version import __version__
from crscale.io import integrity, storage
from crscale.io.errors import ArchiveError
from crscale.io.fits_reader import DetectorData, Exposure
from crscale.io.json_values import json_safe

FORMAT_VERSION = "1.4"  # 1.1: detect arrays and attributes; 1.2: the catalogue (Parquet, status.catalogue)
# 1.3: chunk integrity records (every chunk stored, crc32c; crscale.io.integrity)
# 1.4: per-detector defect maps defects/, the catalogue kind and completeness columns
STAGES = ("ingest", "detect", "catalogue")
_STAGING = "staging"
_TRASH = "trash"
#: Group whose folder holds the record of the job working on the archive (crscale.engine.jobs).
JOBS_GROUP = "jobs"


def array_names(group: zarr.Group) -> set[str]:
    """Names of the arrays in ``group``, leftovers that are not Zarr nodes passed over quietly.

    An interrupted detection can leave such a leftover: a worker that was still writing a block
    stores its chunks under ``prob/`` after the array itself was removed. It is no array (no
    ``zarr.json``), the next write of the array replaces it (``overwrite=True``), and Zarr's
    "Object at prob is not recognized" warning about it would only alarm the user.

    Parameters
    ----------
    group : zarr.Group
        An exposure's detector group (or any group).

    Returns
    -------
    set of str
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Object at .* is not recognized")
        return set(group.array_keys())


def utcnow() -> str:
    """Current UTC time as ISO 8601 with seconds."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def software_versions() -> dict[str, str]:
    """Versions of crscale and the libraries that shape the archive."""
    import astropy
    import dask
    import xarray

    return {
        "crscale": __version__,
        "zarr": zarr.__version__,
        "numpy": np.__version__,
        "astropy": astropy.__version__,
        "dask": dask.__version__,
        "xarray": xarray.__version__,
        "python": platform.python_version(),
    }


def image_storage_dtype(image: np.ndarray, policy: str) -> tuple[np.dtype, str | None]:
    """Pick the stored dtype of an image and say whether that loses information.

    Parameters
    ----------
    image : numpy.ndarray
        Pixel values as read.
    policy : {"auto", "float32"}
        ``"auto"`` stores float32 when every value survives the conversion exactly and
        the source dtype otherwise; ``"float32"`` always stores float32.

    Returns
    -------
    dtype : numpy.dtype
        The dtype to store.
    note : str or None
        A warning when the conversion is lossy, else None.
    """
    f32 = np.dtype("float32")
    if image.dtype == f32:
        return f32, None
    if np.issubdtype(image.dtype, np.integer) and image.dtype.itemsize <= 2:
        return f32, None  # every 8- and 16-bit integer is exact in float32
    converted = image.astype(f32)
    exact = np.array_equal(converted.astype(image.dtype), image, equal_nan=True) if (
        np.issubdtype(image.dtype, np.floating)
    ) else bool(np.all(np.abs(image) <= 2**24))
    if exact:
        return f32, None
    if policy == "float32":
        return f32, f"stored as float32: the source {image.dtype} values are not all exact in float32"
    return image.dtype, None


class Archive:
    """A crscale archive on local disk or on object storage.

    Parameters
    ----------
    path : str or Path
        The archive directory (``*.zarr``), or an fsspec URL (``s3://bucket/survey.zarr``;
        see :mod:`crscale.io.storage`).
    mode : {"r", "a"}
        ``"r"`` opens an existing archive read-only; ``"a"`` opens or creates it.
    create : bool
        With ``mode="a"``: create the archive when it is missing. False for the stages that
        need an existing one (a typo in the path is then an error, never a new empty archive).

    Raises
    ------
    ArchiveError
        The path is not a crscale archive, or has a newer format than this crscale reads.
    """

    def __init__(
        self, path: str | os.PathLike[str] | storage.RemotePath, *, mode: str = "r", create: bool = True
    ) -> None:
        self.path = storage.location(path)
        self.mode = mode
        if mode not in ("r", "a"):
            raise ValueError("mode must be 'r' or 'a'")
        try:
            exists = (self.path / "zarr.json").exists()
        except OSError as exc:  # an object store that cannot be reached or read
            raise ArchiveError(str(exc)) from exc
        if not exists and (mode == "r" or not create):
            raise ArchiveError(f"{self.path}: no crscale archive here (no zarr.json)")
        if exists:
            fmt = self._open_existing(mode)
            try:
                major = int(str(fmt).split(".")[0])
            except ValueError as exc:
                raise ArchiveError(f"{self.path}: unreadable crscale_format {fmt!r}") from exc
            if major > int(FORMAT_VERSION.split(".")[0]):
                raise ArchiveError(
                    f"{self.path}: archive format {fmt} is newer than this crscale "
                    f"({__version__}, format {FORMAT_VERSION}); upgrade crscale"
                )
        else:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                # The attributes go into the group's first metadata write: a concurrent run
                # that opens the new archive never sees a Zarr group without crscale_format.
                self.root = zarr.open_group(
                    store=str(self.path), mode="a", zarr_format=3,
                    storage_options=storage.zarr_options(self.path),
                    attributes={"crscale_format": FORMAT_VERSION, "created": utcnow(),
                                "software": software_versions()},
                )
            except OSError as exc:  # a file where a folder should be, no permission ...
                raise ArchiveError(str(exc)) from exc
            if "crscale_format" not in self.root.attrs:  # another run created it first
                self._open_existing(mode)
        if mode == "a":
            # staging/, trash/ and jobs/ are groups too, so that Zarr sees no stray folders.
            for name in ("exposures", "failures", _STAGING, _TRASH, JOBS_GROUP):
                if name not in self.root:
                    try:
                        self.root.create_group(name)
                    except zarr.errors.ContainsGroupError:
                        pass  # another process created it first

    def _open_existing(self, mode: str) -> Any:
        """Open the existing root group; return its ``crscale_format``.

        A group another run is creating this very moment can be unreadable or lack its
        attributes for a few milliseconds: such a group is looked at again for up to a second
        before it is called no crscale archive.
        """
        for attempt in range(6):
            problem: Exception | None = None
            try:
                self.root = zarr.open_group(
                    store=str(self.path), mode="r" if mode == "r" else "r+",
                    storage_options=storage.zarr_options(self.path),
                )
                fmt = self.root.attrs.get("crscale_format")
                if fmt is not None:
                    return fmt
            except Exception as exc:  # zarr raises several types for unreadable metadata
                problem = exc
            if attempt < 5:
                time.sleep(0.2)
        if problem is not None:
            raise ArchiveError(f"{self.path}: cannot open as a Zarr v3 group ({problem})") from problem
        raise ArchiveError(f"{self.path}: a Zarr group but not a crscale archive")

    # ------------------------------------------------------------------ reading
    @property
    def format_version(self) -> str:
        """The archive's ``crscale_format``."""
        return str(self.root.attrs["crscale_format"])

    def exposure_ids(self) -> list[str]:
        """Identifiers of the exposures in the archive, sorted."""
        # From the directory listing, not zarr's group_keys(): that parses every member's
        # metadata, so one corrupt zarr.json would hide the whole archive.
        folder = self.path / "exposures"
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if (p / "zarr.json").is_file())

    def select_exposures(self, exposures: Sequence[str] | None = None) -> list[str]:
        """Exposure ids, sorted: all of them, or those asked for.

        Raises
        ------
        ArchiveError
            An exposure asked for is not in the archive.
        """
        ids = self.exposure_ids()
        if exposures:
            missing = [e for e in exposures if e not in set(ids)]
            if missing:
                raise ArchiveError(f"{self.path}: no exposure(s) {', '.join(map(repr, missing))}")
            ids = [e for e in ids if e in set(exposures)]
        return ids

    def __contains__(self, exposure_id: str) -> bool:
        return (self.path / "exposures" / exposure_id / "zarr.json").exists()

    def exposure(self, exposure_id: str) -> zarr.Group:
        """The Zarr group of one exposure."""
        try:
            return cast(zarr.Group, self.root[f"exposures/{exposure_id}"])  # the layout: a group
        except KeyError as exc:
            raise KeyError(f"no exposure {exposure_id!r} in {self.path}") from exc

    def exposure_attrs(self, exposure_id: str) -> dict[str, Any]:
        """All attributes of one exposure."""
        return dict(self.exposure(exposure_id).attrs)

    def detectors(self, exposure_id: str) -> list[str]:
        """Detector group names of one exposure, in source HDU order."""
        attrs: Mapping[str, Any] = self.exposure(exposure_id).attrs
        return list(attrs.get("detectors", sorted(self.exposure(exposure_id).group_keys())))

    def iter_exposures(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Yield ``(exposure_id, attrs)`` for every exposure.

        An exposure whose metadata cannot be read yields ``{"unreadable": message}`` instead
        of failing the whole listing.
        """
        for eid in self.exposure_ids():
            try:
                attrs = self.exposure_attrs(eid)
            except Exception as exc:  # zarr raises several types for unreadable metadata
                attrs = {"unreadable": f"{self.path}/exposures/{eid}: unreadable metadata ({exc})"}
            yield eid, attrs

    def index_by_sha256(self, states: Sequence[str] = ("done",)) -> dict[str, str]:
        """Map source SHA-256 to exposure id, for exposures whose ingest state is in ``states``.

        One pass over the exposures' metadata. When exposures of several states hold the same
        content, the one whose state comes first in ``states`` is indexed (the last in id order
        among those of that state).
        """
        rank = {state: i for i, state in enumerate(states)}
        out: dict[str, str] = {}
        best: dict[str, int] = {}
        for eid, attrs in self.iter_exposures():
            state = attrs.get("status", {}).get("ingest", {}).get("state")
            if state not in rank:
                continue
            sha = attrs["source"]["sha256"]
            if rank[state] <= best.get(sha, len(rank)):  # within a rank the last wins
                out[sha], best[sha] = eid, rank[state]
        return out

    def open_detector(self, exposure_id: str, detector: str) -> Any:
        """Open one detector group as an :class:`xarray.Dataset` with dims (y, x).

        Parameters
        ----------
        exposure_id : str
            The exposure.
        detector : str
            The detector group name (see :meth:`detectors`).

        Returns
        -------
        xarray.Dataset
            Lazily loaded (dask-backed) ``image``, ``dq`` and any other planes, with the
            detector attributes in ``.attrs``.
        """
        import xarray as xr

        group = f"exposures/{exposure_id}/{detector}"
        if group not in self.root:
            raise KeyError(f"no detector {detector!r} in exposure {exposure_id!r} of {self.path}")
        return xr.open_zarr(
            str(self.path), group=group, consolidated=False, zarr_format=3,
            storage_options=storage.zarr_options(self.path),
        )

    def status(self, exposure_id: str) -> dict[str, Any]:
        """Per-stage status of one exposure (``{"ingest": {"state": "done", ...}}``)."""
        attrs: Mapping[str, Any] = self.exposure(exposure_id).attrs
        return dict(attrs.get("status", {}))

    def failures(self) -> list[dict[str, Any]]:
        """Recorded input failures, oldest first."""
        if "failures" not in self.root:
            return []
        with warnings.catch_warnings():
            # A record folder without metadata (a full disk while it was written) is no record.
            warnings.simplefilter("ignore", zarr.errors.ZarrUserWarning)
            keys = list(cast(zarr.Group, self.root["failures"]).group_keys())
        recs = [dict(self.root[f"failures/{k}"].attrs) for k in keys]
        return sorted(recs, key=lambda r: (r.get("time", ""), r.get("path", "")))

    # ------------------------------------------------------------------ writing
    def _require_writable(self) -> None:
        if self.mode != "a":
            raise ArchiveError(f"{self.path}: opened read-only")

    def clean_staging(self, older_than: float = 0.0) -> int:
        """Remove what interrupted writes left behind; return how many entries were handled.

        Parameters
        ----------
        older_than : float
            Only entries untouched for this many seconds, so that a run does not remove
            the writes of another run still in progress on the same archive.

        Notes
        -----
        A copy in ``trash/`` whose exposure is missing from ``exposures/`` (a forced
        re-ingest killed between its two renames) is moved back, not deleted.
        """
        self._require_writable()
        handled = 0
        now = time.time()
        for name in (_STAGING, _TRASH):
            folder = self.path / name
            if not folder.is_dir():
                continue
            for child in folder.iterdir():
                if not child.is_dir() or now - child.stat().st_mtime < older_than:
                    continue
                handled += 1
                if name == _TRASH:
                    home = self.path / "exposures" / child.name.rsplit("-", 1)[0]
                    if not home.exists():
                        storage.replace(child, home)
                        continue
                storage.rmtree(child)
        return handled

    def note_format(self) -> None:
        """Raise ``crscale_format`` to this crscale's minor version before writing what it adds.

        Minor versions are additive (docs/archive-format.md §10): an older archive of the same
        major version stays readable by older crscale, and says that it now holds newer parts.
        """
        self._require_writable()
        major, minor = (int(x) for x in self.format_version.split(".")[:2])
        mine = tuple(int(x) for x in FORMAT_VERSION.split("."))
        if (major, minor) < mine and major == mine[0]:
            self.root.attrs["crscale_format"] = FORMAT_VERSION

    def set_status(self, exposure_id: str, stage: str, state: str, **info: Any) -> None:
        """Record a stage's status for one exposure (write it after the stage's data).

        Parameters
        ----------
        exposure_id : str
            The exposure.
        stage : str
            One of :data:`STAGES`.
        state : str
            ``"done"``, ``"failed"`` or ``"running"``.
        **info
            Extra JSON-safe fields (model id, threshold, error message ...).
        """
        self._require_writable()
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
        group = self.exposure(exposure_id)
        attrs: Mapping[str, Any] = group.attrs
        status = dict(attrs.get("status", {}))
        status[stage] = json_safe(
            {"state": state, "time": utcnow(), "crscale_version": __version__, **info}
        )
        group.attrs["status"] = status

    def record_failure(
        self,
        path: str,
        problem: str,
        *,
        stage: str = "ingest",
        kind: str = "error",
        sha256: str | None = None,
        **extra: Any,
    ) -> None:
        """Record a failed (or duplicate) input in ``failures/``, one record per source path.

        Parameters
        ----------
        path : str
            Source file.
        problem : str
            The message shown to the user.
        stage : str
            Stage that failed.
        kind : str
            Class of problem (``"corrupt"``, ``"truncated"``, ``"duplicate"`` ...).
        sha256 : str, optional
            Source checksum when known.
        **extra
            More JSON-safe fields.
        """
        self._require_writable()
        key = _failure_key(path, stage)
        group = cast(zarr.Group, self.root["failures"]).require_group(key)
        group.attrs.put(
            json_safe(
                {
                    "path": path,
                    "stage": stage,
                    "kind": kind,
                    "problem": problem,
                    "sha256": sha256,
                    "time": utcnow(),
                    "crscale_version": __version__,
                    **extra,
                }
            )
        )

    def record_exposure_failure(self, exposure_id: str, stage: str, message: str, kind: str) -> None:
        """Mark a stage ``failed`` for one exposure and record it in ``failures/``, best effort.

        Never raises: recording a failure must not stop the rest of a run, even when the
        exposure's own metadata is what is broken (the record then names the exposure id
        instead of its source file).
        """
        source = exposure_id
        with contextlib.suppress(Exception):
            source = self.exposure_attrs(exposure_id).get("source", {}).get("path", exposure_id)
        with contextlib.suppress(Exception):
            self.set_status(exposure_id, stage, "failed", message=message, kind=kind)
        with contextlib.suppress(Exception):
            self.record_failure(source, message, stage=stage, kind=kind, exposure_id=exposure_id)

    def clear_failure(self, path: str, *, stage: str = "ingest") -> None:
        """Forget a failure record once the same source has been processed."""
        self._require_writable()
        key = _failure_key(path, stage)
        if f"failures/{key}" in self.root:
            storage.rmtree(self.path / "failures" / key)

    def write_exposure(
        self,
        exposure: Exposure,
        *,
        chunks: Sequence[int] | None = None,
        shards: Sequence[int] | None = None,
        compressor: dict[str, Any] | None = None,
        image_dtype: str | None = None,
        overwrite: bool = False,
    ) -> str:
        """Write one exposure atomically and mark its ingest done.

        Parameters
        ----------
        exposure : Exposure
            What :func:`crscale.io.read_exposure` returned.
        chunks : sequence of int, optional
            Chunk shape (y, x); default ``crscale.archive.chunks``. Clipped to the image.
        shards : sequence of int, optional
            Shard shape (a multiple of ``chunks``); default ``crscale.archive.shards``.
        compressor : dict, optional
            Blosc settings ``{"cname", "clevel", "shuffle"}``; default from config.
        image_dtype : {"auto", "float32"}, optional
            Stored dtype policy; default ``crscale.archive.image_dtype``.
        overwrite : bool
            Replace an existing exposure of the same id (the old one is kept until the
            new one is complete).

        Returns
        -------
        str
            The exposure id.

        Raises
        ------
        ArchiveError
            The exposure exists and ``overwrite`` is false, or the write failed (the
            message names the archive and the cause, e.g. no space left on device).
        """
        self._require_writable()
        chunks = list(chunks or config.get("archive.chunks"))
        shards = shards if shards is not None else config.get("archive.shards")
        compressor = compressor or config.get("archive.compressor")
        policy = image_dtype or config.get("archive.image_dtype")
        eid = exposure.exposure_id
        final = self.path / "exposures" / eid
        if final.exists() and not overwrite:
            raise ArchiveError(f"{self.path}: exposure {eid!r} exists (use overwrite/--force)")

        token = uuid.uuid4().hex[:12]
        staging_name = f"{eid}-{token}"
        staging_dir = self.path / _STAGING / staging_name
        try:
            group = zarr.open_group(
                store=str(staging_dir), mode="w", zarr_format=3,
                storage_options=storage.zarr_options(staging_dir),
            )
            warnings_out = list(exposure.all_warnings)
            for det in exposure.detectors:
                warnings_out.extend(
                    self._write_detector(group, det, chunks, shards, compressor, policy)
                )
            first = exposure.detectors[0].meta
            attrs = {
                "exposure_id": eid,
                "source": {
                    "path": exposure.path,
                    "name": os.path.basename(str(exposure.path).rstrip("/")),
                    "sha256": exposure.sha256,
                    "size": exposure.size,
                    "dq_path": exposure.dq_path,
                    "weight_path": exposure.weight_path,
                },
                "instrument": first.instrument,
                "telescope": first.telescope,
                "date_obs": first.date_obs,
                "mjd_obs": first.mjd_obs,
                "exptime": first.exptime,
                "filter": first.filter,
                "object": first.object,
                "detectors": [d.name for d in exposure.detectors],
                "header": exposure.primary_header,
                "warnings": warnings_out,
                "software": software_versions(),
            }
            group.attrs.put(json_safe(attrs))
            # Status last: a group without it was never finished.
            group.attrs["status"] = json_safe(
                {"ingest": {"state": "done", "time": utcnow(), "crscale_version": __version__}}
            )
            self._move_into_place(staging_dir, final)
        except OSError as exc:
            _remove_staging(staging_dir)
            if exc.errno == errno.ENOSPC:
                raise ArchiveError(
                    f"{self.path}: no space left on device while writing exposure {eid!r}; "
                    "nothing of it was kept, the rest of the archive is intact"
                ) from exc
            raise ArchiveError(f"{self.path}: cannot write exposure {eid!r} ({exc})") from exc
        except BaseException:
            _remove_staging(staging_dir)
            raise
        return eid

    def _write_detector(
        self,
        group: zarr.Group,
        det: DetectorData,
        chunks: list[int],
        shards: Sequence[int] | None,
        compressor: dict[str, Any],
        policy: str,
    ) -> list[str]:
        notes = []
        sub = group.create_group(det.name)
        dtype, note = image_storage_dtype(det.image, policy)
        if note:
            notes.append(f"{det.name}: {note}")
        self._write_array(sub, "image", det.image.astype(dtype, copy=False), chunks, shards, compressor)
        if det.dq is not None:
            self._write_array(sub, "dq", det.dq, chunks, shards, compressor)
        for name, plane in det.aux.items():
            self._write_array(sub, name, plane, chunks, shards, compressor)
        meta = det.meta.to_dict()
        attrs = {
            **meta,
            "pixel_size_um": None,
            "extname": det.extname,
            "extver": det.extver,
            "hdu_index": det.hdu_index,
            "shape": list(det.image.shape),
            "bitpix": det.bitpix,
            "bzero": det.bzero,
            "bscale": det.bscale,
            "source_dtype": str(det.image.dtype),
            "image_dtype": str(dtype),
            "n_nonfinite": det.n_nonfinite,
            "dq_source": det.dq_source,
            "aux_sources": det.aux_sources,
            "header": det.header,
        }
        sub.attrs.put(json_safe(attrs))
        return notes

    @staticmethod
    def _write_array(
        group: zarr.Group,
        name: str,
        data: np.ndarray,
        chunks: list[int],
        shards: Sequence[int] | None,
        compressor: dict[str, Any],
    ) -> None:
        chunk_shape = tuple(max(1, min(int(c), int(s))) for c, s in zip(chunks, data.shape, strict=True))
        shard_shape = None
        if shards:
            shard_shape = tuple(
                max(c, (min(int(s), n) + c - 1) // c * c)
                for s, c, n in zip(shards, chunk_shape, data.shape, strict=True)
            )
        fill = np.nan if np.issubdtype(data.dtype, np.floating) else 0
        arr = group.create_array(
            name,
            shape=data.shape,
            dtype=data.dtype,
            chunks=chunk_shape,
            shards=shard_shape,
            fill_value=fill,
            dimension_names=["y", "x"],
            # Every chunk stored and checksummed, and recorded as such (crscale.io.integrity).
            **integrity.array_options([
                BloscCodec(
                    cname=compressor.get("cname", "zstd"),
                    clevel=int(compressor.get("clevel", 5)),
                    shuffle=compressor.get("shuffle", "bitshuffle"),
                )
            ]),
        )
        arr[...] = data

    def _move_into_place(self, staging_dir: Any, final: Any) -> None:
        """Rename a finished staging group into ``exposures/``, keeping any old copy until then.

        On object storage the "rename" copies the objects, the group's ``zarr.json`` last
        (:func:`crscale.io.storage.replace`).
        """
        trash_dir = None
        if final.exists():
            trash_dir = self.path / _TRASH / f"{final.name}-{uuid.uuid4().hex[:12]}"
            storage.replace(final, trash_dir)
        try:
            storage.replace(staging_dir, final)
        except OSError:
            if trash_dir is not None:
                storage.replace(trash_dir, final)
            raise
        if trash_dir is not None:
            storage.rmtree(trash_dir)

    # ------------------------------------------------------------------ summary
    def summary(self) -> dict[str, Any]:
        """A JSON-safe summary: format, counts, per-exposure rows, failures."""
        rows = []
        n_det = 0
        n_pix = 0
        for eid, attrs in self.iter_exposures():
            dets = attrs.get("detectors", [])
            n_det += len(dets)
            shapes = []
            guessed: list[str] = []
            for d in dets:
                try:
                    det_group = cast(zarr.Group, self.root[f"exposures/{eid}/{d}"])
                    shape = tuple(cast(zarr.Array, det_group["image"]).shape)
                except Exception:  # missing or unreadable detector: not counted
                    continue
                shapes.append(shape)
                n_pix += int(np.prod(shape))
                det_attrs: Mapping[str, Any] = det_group.attrs
                guessed.extend(g for g in det_attrs.get("guessed", []) if g not in guessed)
            rows.append(
                {
                    "exposure_id": eid,
                    "instrument": attrs.get("instrument"),
                    "date_obs": attrs.get("date_obs"),
                    "exptime": attrs.get("exptime"),
                    "detectors": dets,
                    "shapes": shapes,
                    "guessed": guessed,
                    "status": {k: v.get("state") for k, v in attrs.get("status", {}).items()},
                    "warnings": attrs.get("warnings", [])
                    + ([attrs["unreadable"]] if "unreadable" in attrs else []),
                    "source": attrs.get("source", {}).get("path"),
                }
            )
        staging = self.path / _STAGING
        return {
            "path": str(self.path),
            "crscale_format": self.format_version,
            "created": self.root.attrs.get("created"),
            "software": self.root.attrs.get("software", {}),
            "n_exposures": len(rows),
            "n_detectors": n_det,
            "n_pixels": n_pix,
            "disk_bytes": storage.du(self.path),
            "exposures": rows,
            "failures": self.failures(),
            "n_staging_leftovers": sum(1 for c in staging.iterdir() if c.is_dir())
            if staging.is_dir()
            else 0,
        }


def _remove_staging(folder: Any) -> None:
    # A chunk write still in flight in zarr's I/O threads can re-create part of the folder
    # just after it is removed; look again briefly. A later ingest removes any remnant.
    for _ in range(5):
        with contextlib.suppress(OSError):
            storage.rmtree(folder)
        time.sleep(0.05)
        if not folder.exists():
            return


def _failure_key(path: str, stage: str) -> str:
    digest = hashlib.sha1(f"{stage}:{storage.normalize(path)}".encode()).hexdigest()[:16]
    return f"{stage}-{digest}"


def dumps_summary(summary: dict[str, Any]) -> str:
    """Serialise :meth:`Archive.summary` as indented JSON."""
    return json.dumps(summary, indent=2, sort_keys=False)
