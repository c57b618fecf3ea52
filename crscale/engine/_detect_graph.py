"""The graph of the detection stage: plans, statistics tasks and the block graph of one exposure.

Used by :mod:`crscale.engine.detect_stage`, which feeds exposures through it. See that module for
the order of the steps and why the writes are safe.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from crscale import config
from crscale.engine.blocks import BLOCK_DTYPE, DetectSettings, block_chunks, detect_block, write_block
from crscale.errors import SettingsError
from crscale.io import integrity
from crscale.io.archive import Archive, array_names
from crscale.io.dq import DQConvention, convention_for
from crscale.io.errors import ArchiveError
from crscale.io.storage import zarr_options

if TYPE_CHECKING:
    import zarr

#: The arrays the detection stage writes next to each detector's image.
OUTPUTS = ("prob", "mask", "clean")


@dataclass
class DetectorPlan:
    """What the client knows of one detector before its blocks are submitted."""

    name: str
    shape: tuple[int, int]
    storage_chunks: tuple[int, int]
    chunks: tuple[tuple[int, ...], tuple[int, ...]]
    has_dq: bool
    gain: float
    readnoise: float | None
    saturation: float | None
    #: What the detector's DQ values mean (a prior CR flag is not a bad pixel).
    dq_convention: DQConvention | None = None

    @property
    def n_blocks(self) -> int:
        """Blocks (dask chunks) of this detector."""
        return len(self.chunks[0]) * len(self.chunks[1])


def detect_settings(
    *,
    model: str | None = None,
    threshold: float | None = None,
    device: str | None = None,
    precision: str | None = None,
    compile: bool | None = None,
    inpaint: bool | None = None,
    inpaint_method: str | None = None,
    tile: int | None = None,
) -> tuple[DetectSettings, Any]:
    """Settings from arguments, falling back to ``crscale.detect.*``; and the model's config.

    The model is loaded once on the client to read its card (threshold, architecture, hence
    the halo) and to fail early on a bad name; only its name travels to the workers.
    """
    from crscale import _validate
    from crscale.detection.inpaint import INPAINT_METHODS
    from crscale.detection.normalise import needs_pixel_noise
    from crscale.models import load_model

    name = str(model or config.get("detect.model"))
    net, card = load_model(name, device="cpu")
    thr = threshold if threshold is not None else config.get("detect.threshold")
    thr = _validate.threshold(card.recommended_threshold if thr is None else thr)
    method = inpaint_method or config.get("detect.inpaint_method")
    from crscale.detection.torch_block import BACKENDS

    backend = _validate.one_of(config.get("detect.backend"), BACKENDS, "crscale.detect.backend")
    _validate.known(method, INPAINT_METHODS, "inpainting method")
    settings = DetectSettings(
        model=name,
        threshold=thr,
        device=str(device or config.get("detect.device")),
        precision=str(precision or config.get("detect.precision")),
        compile=bool(config.get("detect.compile") if compile is None else compile),
        inpaint=bool(config.get("detect.inpaint") if inpaint is None else inpaint),
        inpaint_method=method,
        inpaint_dilate=int(config.get("detect.inpaint_dilate")),
        tile=tile,
        model_name=card.name,
        backend=str(backend),
        pixel_noise=needs_pixel_noise(card.normalisation),
    )
    return settings, net.config


def gpu_task_share() -> float:
    """The share of a worker's ``GPU=1`` resource that one CNN task asks for.

    ``1 / crscale.detect.gpu_tasks_per_worker``: with 2 (the default), two blocks are on a GPU
    worker's device at once, so that one block's host copies overlap the other's device work
    (reads and writes are separate tasks on the worker's other threads). Powers of two keep the
    shares exact in floating point.
    """
    k = int(config.get("detect.gpu_tasks_per_worker") or 1)
    if k < 1:
        raise SettingsError(f"crscale.detect.gpu_tasks_per_worker must be at least 1, not {k}")
    return 1.0 / k


def plan_exposure(archive: Archive, exposure_id: str, target: Sequence[int], halo: int) -> list[DetectorPlan]:
    """Detector plans of one exposure from the archive's metadata (no pixels read).

    Raises
    ------
    ArchiveError
        When a detector has no readable ``image`` array.
    """
    plans = []
    exposure_attrs = archive.exposure_attrs(exposure_id)
    for det in archive.detectors(exposure_id):
        path = f"exposures/{exposure_id}/{det}"
        try:
            group = cast("zarr.Group", archive.root[path])
            image = cast("zarr.Array", group["image"])
        except Exception as exc:  # missing or unreadable metadata
            raise ArchiveError(f"{archive.path}/{path}: no readable image array ({exc})") from exc
        if image.ndim != 2:
            raise ArchiveError(f"{archive.path}/{path}/image: not 2-D (shape {image.shape})")
        storage = tuple(int(c) for c in (image.shards or image.chunks))
        attrs: Mapping[str, Any] = group.attrs
        gain = attrs.get("gain") or 1.0
        plans.append(
            DetectorPlan(
                name=det,
                shape=(int(image.shape[0]), int(image.shape[1])),
                storage_chunks=storage,  # type: ignore[arg-type]
                chunks=block_chunks(tuple(image.shape), storage, tuple(target), halo),  # type: ignore[arg-type]
                has_dq="dq" in array_names(group),
                gain=float(gain),
                readnoise=attrs.get("readnoise"),
                saturation=attrs.get("saturation"),
                dq_convention=convention_for(exposure_attrs, detector_attrs=dict(attrs)),
            )
        )
    if not plans:
        raise ArchiveError(f"{archive.path}: exposure {exposure_id!r} has no detectors")
    return plans


def _pixels_and_bad(
    image: Any, dq_array: Any, plan: DetectorPlan, sel: tuple[slice, slice]
) -> tuple[Any, Any]:
    """Some pixels of an archived detector, and which of them are bad (its DQ read with its meaning)."""
    from crscale.detection.badpix import bad_pixel_mask

    pixels = image[sel]
    dq = None if dq_array is None else dq_array[sel]
    if dq is not None and plan.dq_convention is not None:
        dq = plan.dq_convention.excluded(dq)
    return pixels, bad_pixel_mask(pixels, dq=dq, saturation=plan.saturation)


def _box_pixels_and_bad(
    image: Any, dq_array: Any, plan: DetectorPlan, boxes: list[tuple[slice, slice]]
) -> list[tuple[Any, Any]]:
    """The pixels and bad pixels of each box, read one full-width strip per row of boxes.

    One read per box decompressed each chunk once for every box in it (64 reads of a 2048²
    detector took 0.24 s, 8 strips 0.04 s); a strip of 64 rows keeps memory independent of the
    detector's height.
    """
    strips: dict[tuple[int, int], tuple[Any, Any]] = {}
    out = []
    for rows, cols in boxes:
        key = (int(rows.start), int(rows.stop))
        if key not in strips:
            strips[key] = _pixels_and_bad(image, dq_array, plan, (rows, slice(None)))
        pixels, bad = strips[key]
        out.append((pixels[:, cols], bad[:, cols]))
    return out


def detector_stats(
    archive_path: str, exposure_id: str, plans: list[DetectorPlan], pixel_noise: bool = False
) -> dict[str, Any]:
    """Worker task: the normalisation statistics of every detector of an exposure.

    Reads only the sub-grid ``image[::step, ::step]`` (and the same of ``dq``) that
    :func:`crscale.detection.compute_stats` would use on the whole image, and with
    ``pixel_noise`` the boxes of :func:`crscale.detection.sky_noise.pixel_noise_boxes`, so the
    statistics are identical to single-image detection while memory stays independent of the
    detector size.
    """
    import zarr

    from crscale.detection.normalise import stats_from_sample, stats_step, with_noise_floor, with_pixel_noise
    from crscale.detection.sky_noise import pixel_noise_boxes, pixel_noise_from_boxes

    root = zarr.open_group(store=archive_path, mode="r", storage_options=zarr_options(archive_path))
    out = {}
    for p in plans:
        base = f"exposures/{exposure_id}/{p.name}"
        group = root[base]
        image = integrity.checked(group, "image", f"{archive_path}/{base}")
        dq_array = integrity.checked(group, "dq", f"{archive_path}/{base}") if p.has_dq else None
        step = stats_step(p.shape)
        sample, bad = _pixels_and_bad(image, dq_array, p, (slice(None, None, step), slice(None, None, step)))
        if bad.all():
            raise ValueError(
                f"{archive_path}: exposure {exposure_id!r}, detector {p.name!r}: no finite, "
                "unflagged pixel (all NaN/inf, saturated or DQ-flagged)"
            )
        stats = stats_from_sample(sample, bad=bad, gain=p.gain)
        if pixel_noise:
            boxes = _box_pixels_and_bad(image, dq_array, p, pixel_noise_boxes(p.shape))
            stats = with_pixel_noise(stats, pixel_noise_from_boxes(boxes))
        out[p.name] = with_noise_floor(stats, p.readnoise, p.gain)
    return out


def exposure_graph(
    archive_path: str,
    exposure_id: str,
    plans: list[DetectorPlan],
    stats: dict[str, Any],
    settings: DetectSettings,
    halo: int,
    *,
    gpu: bool,
    prob_dtype: str = "float32",
) -> Any:
    """The Dask graph of one exposure: blocks → CNN → writes into the archive.

    Returns
    -------
    dask.array.Array
        CR pixels per detector. Computing it reads, detects and writes every block (``prob``,
        ``mask`` and ``clean`` of every detector): one collection, so each block runs once.
    """
    import dask
    import dask.array as da
    import zarr

    counts = []
    for p in plans:
        base = f"exposures/{exposure_id}/{p.name}"
        options = zarr_options(archive_path)
        # Reads refuse absent or corrupt chunks (crscale.io.integrity), naming them.
        group = zarr.open_group(store=archive_path, path=base, mode="r", storage_options=options)
        inputs = ("image", "dq") if p.has_dq else ("image",)
        arrays = [
            da.from_array(
                integrity.checked(group, n, f"{archive_path}/{base}"),
                chunks=p.chunks,
                meta=np.empty((0, 0), cast("zarr.Array", group[n]).dtype),
            )
            for n in inputs
        ]
        if p.has_dq and p.dq_convention is not None:
            arrays[1] = arrays[1].map_blocks(p.dq_convention.excluded, dtype=np.uint8)
        label = f"exposure {exposure_id!r}, detector {p.name!r}"
        names = OUTPUTS if settings.inpaint else OUTPUTS[:2]
        targets = {
            n: integrity.for_writing(
                zarr.open_array(store=archive_path, path=f"{base}/{n}", mode="r+", storage_options=options)
            )
            for n in names
        }
        annotation = dask.annotate(resources={"GPU": gpu_task_share()}) if gpu else contextlib.nullcontext()
        with annotation:
            blocks = da.map_overlap(
                detect_block,
                *arrays,
                # No halo along an axis of one block (a side shorter than the halo, e.g. 63 px):
                # there is no neighbour to borrow from, and dask refuses a deeper halo.
                depth={axis: halo if len(c) > 1 else 0 for axis, c in enumerate(p.chunks)},
                boundary="none",
                trim=True,
                dtype=BLOCK_DTYPE,
                meta=np.empty((0, 0), BLOCK_DTYPE),
                stats=stats[p.name],
                settings=settings,
                saturation=p.saturation,
                gain=p.gain,
                detector_chunks=p.chunks,
                halo=halo,
                label=label,
            )
        written = blocks.map_blocks(
            write_block,
            targets=targets,
            dtype=np.int64,
            chunks=((1,) * len(p.chunks[0]), (1,) * len(p.chunks[1])),
        )
        counts.append(written.sum())
    return da.stack(counts)


def create_outputs(
    archive: Archive, exposure_id: str, plans: list[DetectorPlan], settings: DetectSettings, prob_dtype: str
) -> None:
    """Empty output arrays chunked (and sharded) exactly like each detector's image."""
    for p in plans:
        group = cast("zarr.Group", archive.root[f"exposures/{exposure_id}/{p.name}"])
        image = cast("zarr.Array", group["image"])
        spec = {"prob": (prob_dtype, np.nan), "mask": ("uint8", 0), "clean": ("float32", np.nan)}
        for name in OUTPUTS:
            if name == "clean" and not settings.inpaint:
                if name in array_names(group):
                    del group[name]  # a stale cleaned image from another model must not stay
                continue
            dtype, fill = spec[name]
            group.create_array(
                name,
                shape=image.shape,
                dtype=dtype,
                chunks=image.chunks,
                shards=image.shards,
                fill_value=fill,
                dimension_names=["y", "x"],
                overwrite=True,
                **integrity.array_options(image.compressors),
            )


def remove_outputs(archive: Archive, exposure_id: str, plans: list[DetectorPlan]) -> None:
    """Delete a failed exposure's detection outputs and attributes (best effort)."""
    for p in plans:
        with contextlib.suppress(Exception):
            group = cast("zarr.Group", archive.root[f"exposures/{exposure_id}/{p.name}"])
            for name in OUTPUTS:
                if name in array_names(group):
                    del group[name]
            if "detect" in group.attrs:
                del group.attrs["detect"]
