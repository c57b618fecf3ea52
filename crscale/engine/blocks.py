"""Block geometry of the detection graph, and the function every CNN task runs on one block.

A detector is cut into blocks that are unions of whole Zarr chunks (whole shards when the
archive is sharded), so that every write of a block's output covers whole chunks and two tasks
never write into the same chunk or shard. Each block is handed to :func:`detect_block` with a
halo of :func:`engine_halo` pixels (``map_overlap``, ``boundary="none"``): enough for the
network, the bad-pixel fill and the inpainting, so the block's interior equals what
:func:`crscale.detect` gives on the whole image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from crscale.detection.inpaint import DEFAULT_INPAINT

#: One structured output per block, so that the CNN runs once and its three products are
#: split afterwards (``map_overlap`` maps one array to one array).
BLOCK_DTYPE = np.dtype([("prob", "f4"), ("mask", "u1"), ("clean", "f4")])
#: Event topic on which workers report finished blocks (for the progress bar).
PROGRESS_TOPIC = "crscale-detect-block"


@dataclass(frozen=True)
class DetectSettings:
    """Everything a worker needs to run the detector on a block (plain values: cheap to ship).

    Attributes
    ----------
    model : str
        Model name or path as given (loaded on the worker, never pickled).
    threshold : float
        Probability threshold of the mask.
    device, precision : str
        See :func:`crscale.detect`; ``device="auto"`` means the worker's GPU when it has one.
    compile : bool
        ``torch.compile`` the network on each worker.
    inpaint : bool
        Write the cleaned image.
    inpaint_method : str
        Inpainting method.
    inpaint_dilate : int
        Growth of the CR mask for inpainting.
    tile, batch_size : int or None
        Tiling inside a block (None: the predictor's default).
    model_name : str
        The name in the model's card (what the archive records).
    backend : {"auto", "numpy", "torch"}
        Where the per-pixel work around the network runs (see :func:`crscale.detect`):
        ``auto`` keeps all of it on the device of a GPU worker and uses numpy on CPU workers.
    pixel_noise : bool
        The model's input is scaled by the pixel-to-pixel noise (its card's
        ``normalisation["noise"] == "pixel"``): the statistics task measures it too.
    """

    model: str
    threshold: float
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    inpaint: bool = True
    inpaint_method: str = DEFAULT_INPAINT
    inpaint_dilate: int = 1
    tile: int | None = None
    batch_size: int | None = None
    model_name: str = ""
    backend: str = "auto"
    pixel_noise: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return asdict(self)


def engine_halo(model_config: Any, settings: DetectSettings) -> int:
    """Halo (pixels) each block needs so that its interior equals whole-image detection.

    The probability needs :func:`~crscale.detection.tiling.required_halo` (receptive radius
    plus bad-pixel fill); the cleaned image needs, on top, the inpainting radius of the method
    plus the mask growth. Rounded up to the pooling grid 2**depth so that block origins stay
    on it whenever the blocks themselves are.
    """
    from crscale.detection.inpaint import INPAINT_RADIUS
    from crscale.detection.tiling import alignment, required_halo, round_up

    halo = required_halo(model_config)
    if settings.inpaint:
        halo += INPAINT_RADIUS[settings.inpaint_method] + max(0, settings.inpaint_dilate)
    return round_up(halo, alignment(model_config))


def axis_chunks(length: int, unit: int, target: int, minimum: int) -> tuple[int, ...]:
    """Dask chunk sizes along one axis: multiples of ``unit`` near ``target``, none below ``minimum``.

    Parameters
    ----------
    length : int
        Array length.
    unit : int
        Zarr chunk (or shard) length: every boundary falls on a multiple of it.
    target : int
        Wanted block length (rounded to a multiple of ``unit``, at least one unit).
    minimum : int
        Smallest allowed block (the halo: ``map_overlap`` needs blocks at least that large).
        A short last block is merged into the one before it.

    Returns
    -------
    tuple of int
        Chunk lengths summing to ``length``.
    """
    if length <= 0:
        return (0,)
    step = max(unit, (max(target, minimum) + unit - 1) // unit * unit)
    sizes = [step] * (length // step)
    rest = length - step * len(sizes)
    if rest:
        if sizes and rest < minimum:
            sizes[-1] += rest
        else:
            sizes.append(rest)
    return tuple(sizes)


def block_chunks(
    shape: tuple[int, int],
    storage_chunks: tuple[int, int],
    target: tuple[int, int],
    halo: int,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Dask chunks of a detector, aligned to its Zarr chunks (or shards); see :func:`axis_chunks`."""
    return tuple(axis_chunks(n, u, t, halo) for n, u, t in zip(shape, storage_chunks, target, strict=True))  # type: ignore[return-value]


def block_origin(
    block_id: tuple[int, int], chunks: tuple[tuple[int, ...], tuple[int, ...]], halo: int
) -> tuple[int, int]:
    """Detector (y, x) of the first pixel of block ``block_id`` as ``map_overlap`` hands it over.

    With ``boundary="none"`` the first block of an axis gets no halo before it, the others
    ``halo`` pixels.
    """
    out = []
    for index, sizes in zip(block_id, chunks, strict=True):
        start = int(sum(sizes[:index]))
        out.append(start - halo if index > 0 else 0)
    return out[0], out[1]


def detect_block(
    image: np.ndarray,
    dq: np.ndarray | None = None,
    *,
    stats: Any,
    settings: DetectSettings,
    saturation: float | None,
    gain: float,
    detector_chunks: tuple[tuple[int, ...], tuple[int, ...]],
    halo: int,
    label: str,
    block_id: tuple[int, int] | None = None,
) -> np.ndarray:
    """Run :func:`crscale.detect` on one block (with its halo); return a :data:`BLOCK_DTYPE` array.

    Runs on a worker. The model comes from the worker's cache (put there by
    :class:`crscale.engine.plugin.ModelPlugin`); ``stats`` are the detector's (and its sky the
    inpainting fallback), so every block is normalised and filled as the whole image would be.

    Raises
    ------
    RuntimeError
        Naming the block (``label`` = exposure/detector) and the problem.
    """
    from crscale.detection import detect, get_predictor
    from crscale.detection.torch_block import detect_torch, use_torch_path

    origin = block_origin(block_id or (0, 0), detector_chunks, halo)
    iy, ix = block_id or (0, 0)
    try:
        predictor = get_predictor(
            settings.model, device=settings.device, precision=settings.precision, compile=settings.compile
        )
        if use_torch_path(settings.backend, predictor.device):
            # The device builds the block in BLOCK_DTYPE's layout: one copy back, no host repacking.
            packed = detect_torch(
                image, pred=predictor, stats=stats, threshold=settings.threshold, dq=dq,
                saturation=saturation, tile=settings.tile, batch_size=settings.batch_size, origin=origin,
                inpaint=settings.inpaint, inpaint_method=settings.inpaint_method,
                inpaint_dilate=settings.inpaint_dilate, layout=BLOCK_DTYPE,
            ).packed
            _report_block(label, detector_chunks[0][iy] * detector_chunks[1][ix])
            return packed
        res = detect(
            image,
            model=predictor,
            threshold=settings.threshold,
            gain=gain,
            dq=dq,
            saturation=saturation,
            inpaint=settings.inpaint,
            inpaint_method=settings.inpaint_method,
            inpaint_dilate=settings.inpaint_dilate,
            tile=settings.tile,
            batch_size=settings.batch_size,
            stats=stats,
            origin=origin,
            backend="numpy",
        )
    except Exception as exc:
        raise RuntimeError(
            f"{label}: detection failed on the block at (y, x) = {origin} of shape {image.shape}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    out = np.empty(image.shape, BLOCK_DTYPE)
    out["prob"] = res.prob
    out["mask"] = res.mask
    out["clean"] = res.clean if res.clean is not None else np.nan
    _report_block(label, detector_chunks[0][iy] * detector_chunks[1][ix])
    return out


def _report_block(label: str, pixels: int) -> None:
    try:
        from distributed import get_worker

        worker = get_worker()
        worker.log_event(PROGRESS_TOPIC, {"label": label, "pixels": int(pixels), "worker": worker.address})
    except (ImportError, ValueError):
        pass  # not on a worker (the synchronous scheduler): no progress events


def write_block(block: np.ndarray, *, targets: dict[str, Any], block_info: dict | None = None) -> np.ndarray:
    """Write one detected block's products into the archive; return its CR pixel count as (1, 1).

    ``targets`` maps product names (``prob``, ``mask``, ``clean``) to Zarr arrays chunked like
    the image; the block covers whole chunks of them (see :func:`block_chunks`), so the write
    needs no lock and no other task touches those chunks. A recomputed block (a worker lost)
    rewrites the same values.
    """
    (y0, y1), (x0, x1) = (
        block_info[0]["array-location"] if block_info else ((0, block.shape[0]), (0, block.shape[1]))
    )
    for name, target in targets.items():
        target[y0:y1, x0:x1] = block[name].astype(target.dtype, copy=False)
    return np.array([[np.count_nonzero(block["mask"])]], dtype=np.int64)
