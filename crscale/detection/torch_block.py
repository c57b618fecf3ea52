"""The whole per-pixel pipeline of one image or block in torch, on the predictor's device.

Bad-pixel mask and fill, normalisation with the detector's statistics, the tiled network with
its halo, the threshold, the mask dilation and the inpainting (:mod:`crscale.detection.inpaint_torch`)
all run as one sequence of device operations: the image (and DQ) cross to the device once, and
``prob``, ``mask``, ``clean`` and ``bad`` come back in one copy of one packed buffer. On a CUDA
device each calling thread gets its own stream and its own pinned host buffers, so the k task
threads of a GPU worker overlap their copies and host work with each other's device work.

The numpy path of :func:`crscale.detect` stays the reference and the CPU default;
:func:`use_torch_path` says which one a call takes.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from crscale import _validate
from crscale.detection.badpix import FILL_RADIUS
from crscale.detection.inpaint import DEFAULT_INPAINT
from crscale.detection.normalise import ImageStats, input_noise, poisson_constants
from crscale.detection.tiling import alignment, required_halo, tile_layout

#: ``backend`` values: ``auto`` takes the torch path on CUDA devices and the numpy path on CPUs.
BACKENDS = ("auto", "numpy", "torch")
#: Layout of the packed result that comes back from the device in one copy.
PACKED_DTYPE = np.dtype([("prob", "f4"), ("clean", "f4"), ("mask", "u1"), ("bad", "u1")])
#: Device memory per pixel of network input held at once by one batch (activations, bf16/fp16
#: or float32 with room for the allocator); sets the batch size from the device's memory.
NET_BYTES_PER_PIXEL = {2: 640, 4: 1280}

_local = threading.local()
_WORKER_THREADS = [1]


def use_torch_path(backend: str, device: torch.device) -> bool:
    """Whether ``backend`` means the torch path on ``device`` (``auto``: only on CUDA)."""
    _validate.one_of(backend, BACKENDS, "backend")
    return backend == "torch" or (backend == "auto" and device.type == "cuda")


@dataclass
class BlockOutput:
    """What :func:`detect_torch` returns: host arrays, views of one packed buffer.

    ``packed`` is that buffer (a structured array of the requested layout); the named fields
    are None when the layout lacks them (``clean`` also without inpainting).
    """

    packed: np.ndarray
    prob: np.ndarray | None
    mask: np.ndarray | None
    clean: np.ndarray | None
    bad: np.ndarray | None


_FIELD_KINDS = {"prob": "f4", "clean": "f4", "mask": "u1", "bad": "u1"}


def check_layout(layout: np.dtype) -> np.dtype:
    """A packed layout: a structured dtype of some of ``prob``/``clean`` (f4), ``mask``/``bad`` (u1)."""
    layout = np.dtype(layout)
    if layout.names is None or layout.fields is None:
        raise ValueError(f"layout must be a structured dtype, not {layout}")
    for name in layout.names:
        kind = _FIELD_KINDS.get(name)
        if kind is None or layout.fields[name][0] != np.dtype(kind):
            raise ValueError(f"layout field {name!r}: expected one of {_FIELD_KINDS} with that dtype")
    return layout


def device_batch(pred, tile: int, halo: int, *, threads: int = 1, fraction: float = 0.5) -> int:
    """Tiles per network call so that ``threads`` concurrent blocks fit in ``fraction`` of the device.

    On a CPU the predictor's own default. On CUDA the device's total memory (not what is free:
    another thread's batch may be in flight) shared by the worker's task threads.
    """
    if pred.device.type != "cuda":
        return pred.default_batch()
    total = torch.cuda.get_device_properties(pred.device).total_memory
    per_tile = (tile + 2 * halo) ** 2 * NET_BYTES_PER_PIXEL[2 if pred.dtype != torch.float32 else 4]
    return int(max(1, min(64, fraction * total // max(1, threads) // per_tile)))


def _stream(device: torch.device):
    """The calling thread's CUDA stream on ``device`` (a context manager), or a null context on CPU."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    streams = getattr(_local, "streams", None)
    if streams is None:
        streams = _local.streams = {}
    if device not in streams:
        streams[device] = torch.cuda.Stream(device=device)
    return torch.cuda.stream(streams[device])


def _staging(name: str, nbytes: int, device: torch.device) -> torch.Tensor:
    """A reusable host byte buffer of this thread (pinned when the device is CUDA)."""
    buffers = getattr(_local, "buffers", None)
    if buffers is None:
        buffers = _local.buffers = {}
    buf = buffers.get(name)
    if buf is None or buf.numel() < nbytes:
        buf = torch.empty(nbytes, dtype=torch.uint8, pin_memory=device.type == "cuda")
        buffers[name] = buf
    return buf[:nbytes]


def _upload(array: np.ndarray, name: str, device: torch.device) -> torch.Tensor:
    """One host→device copy (through this thread's pinned buffer on CUDA)."""
    array = np.ascontiguousarray(array)
    if array.dtype.byteorder == ">" or array.dtype == np.uint16 or array.dtype == np.uint32:
        # torch lacks big-endian and some unsigned types; these conversions are exact.
        array = array.astype(np.float64 if array.dtype.itemsize > 2 else np.float32)
    host = torch.from_numpy(array)
    if device.type != "cuda":
        return host
    stage = _staging(name, array.nbytes, device)
    stage.view(host.dtype).view(host.shape).copy_(host)
    return stage.view(host.dtype).view(host.shape).to(device, non_blocking=True)


def _symmetric_index(n: int, before: int, after: int, device: torch.device) -> torch.Tensor:
    """Indices of ``numpy.pad(mode="symmetric")`` along one axis (any pad width)."""
    j = torch.arange(-before, n + after, device=device) % (2 * n)
    return torch.where(j < n, j, 2 * n - 1 - j)


def fill_bad_tensor(x: torch.Tensor, bad: torch.Tensor, *, radius: int = FILL_RADIUS) -> torch.Tensor:
    """:func:`crscale.detection.badpix.fill_bad` on the device (3×3 sums, zero outside)."""
    out = torch.where(bad, 0, x)
    good = (~bad).to(x.dtype)
    todo = bad.clone()
    ones = torch.ones(1, 1, 3, 3, dtype=x.dtype, device=x.device)
    for _ in range(radius):
        sums = F.conv2d(torch.stack([out * good, good])[:, None], ones, padding=1)[:, 0]
        ready = todo & (sums[1] > 1e-6 * 9)
        out = torch.where(ready, sums[0] / torch.where(ready, sums[1], 1), out)
        good = torch.where(ready, 1, good)
        todo &= ~ready
    return out


def normalise_tensor(x: torch.Tensor, stats: ImageStats, normalisation: dict) -> torch.Tensor:
    """:func:`crscale.detection.normalise.normalise` on a float32 tensor."""
    method = normalisation.get("method", "robust-asinh")
    if method == "robust-asinh":
        if normalisation.get("noise") == "poisson":
            gain, s_e = poisson_constants(stats)
            d = (x - float(np.float32(stats.sky))) * float(np.float32(gain))
            s = float(np.float32(s_e))
            v = 2.0 * d / (torch.sqrt(torch.clamp(d, min=0.0) + s * s) + s)
            return torch.asinh(v / float(np.float32(normalisation.get("asinh_scale", 3.0))))
        scale = float(normalisation.get("asinh_scale", 3.0)) * input_noise(stats, normalisation)
        # float(np.float32(v)): the value numpy's normalise uses, as a scalar torch's stubs accept
        return torch.asinh((x - float(np.float32(stats.sky))) / float(np.float32(scale)))
    if method == "scale":
        return x * float(np.float32(stats.gain / float(normalisation.get("scale", 1.0))))
    if method == "meanstd":
        return (x - float(np.float32(stats.mean))) / float(np.float32(stats.std))
    raise ValueError(f"unknown input normalisation method {method!r} in the model card")


def predict_tiled_tensor(
    x: torch.Tensor, pred, *, tile: int, halo: int, align: int, origin: tuple[int, int], batch_size: int
) -> torch.Tensor:
    """:func:`crscale.detection.tiling.predict_tiled` with the predictor's network, on the device.

    The same tiles in the same batches as the numpy path, so the same network calls.
    """
    h, w = x.shape
    (ty, tx), off, origins = tile_layout(h, w, tile, align, origin=origin)
    ny, nx = origins[-1][0] + ty, origins[-1][1] + tx
    iy = _symmetric_index(h, halo + off[0], ny + halo - off[0] - h, x.device)
    ix = _symmetric_index(w, halo + off[1], nx + halo - off[1] - w, x.device)
    padded = x[iy][:, ix]
    out = torch.empty((ny, nx), dtype=torch.float32, device=x.device)
    size_y, size_x = ty + 2 * halo, tx + 2 * halo
    for start in range(0, len(origins), batch_size):
        chunk = origins[start : start + batch_size]
        batch = torch.stack([padded[y : y + size_y, x0 : x0 + size_x] for y, x0 in chunk])[:, None]
        batch = batch.to(pred.dtype).contiguous(memory_format=torch.channels_last)
        prob = torch.sigmoid(_run_net(pred, batch).float())
        for k, (y, x0) in enumerate(chunk):
            out[y : y + ty, x0 : x0 + tx] = prob[k, 0, halo : halo + ty, halo : halo + tx]
    return out[off[0] : off[0] + h, off[1] : off[1] + w]


def _run_net(pred, batch: torch.Tensor) -> torch.Tensor:
    """The predictor's network on a device batch, falling back to eager mode as it does."""
    try:
        return pred.net(batch)
    except Exception:
        if not pred.compiled or pred.net is pred.eager:
            raise
        pred.net = pred.eager
        return pred.net(batch)


def detect_torch(
    data: np.ndarray,
    *,
    pred,
    stats: ImageStats,
    threshold: float,
    dq: np.ndarray | None = None,
    saturation: float | None = None,
    tile: int | None = None,
    batch_size: int | None = None,
    origin: tuple[int, int] = (0, 0),
    inpaint: bool = True,
    inpaint_method: str = DEFAULT_INPAINT,
    inpaint_dilate: int = 1,
    layout: np.dtype = PACKED_DTYPE,
) -> BlockOutput:
    """Detect and inpaint one image or block on ``pred.device``; see :func:`crscale.detect`.

    Parameters are those of :func:`crscale.detect` (``stats`` required, ``pred`` a ready
    :class:`~crscale.detection.Predictor`). The ``median`` inpainting runs on the host (numpy
    reference) after the device work.

    Returns
    -------
    BlockOutput
        Host arrays: float32 ``prob``, bool ``mask``, float32 ``clean`` (None without
        inpainting) and bool ``bad``, as fields of one ``layout`` structured array (the engine
        passes its block dtype, so the downloaded buffer is its block).
    """
    layout = check_layout(layout)
    device = pred.device
    halo = required_halo(pred.config)
    tile = tile or pred.default_tile()
    batch = batch_size or device_batch(pred, tile, halo, threads=_WORKER_THREADS[0])
    on_host_inpaint = inpaint and inpaint_method == "median"
    with torch.inference_mode(), _stream(device):
        img = _upload(data, "image", device)
        bad = ~torch.isfinite(img) if img.is_floating_point() else torch.zeros(img.shape, dtype=torch.bool,
                                                                                device=device)
        if saturation is not None and np.isfinite(saturation):
            bad |= img >= saturation
        if dq is not None:
            if dq.shape != data.shape:
                raise ValueError(f"dq shape {dq.shape} does not match image shape {data.shape}")
            bad |= _upload(dq, "dq", device) != 0
        x = normalise_tensor(torch.where(bad, 0, img).to(torch.float32), stats, pred.card.normalisation)
        x = fill_bad_tensor(x, bad)
        prob = predict_tiled_tensor(x, pred, tile=tile, halo=halo, align=alignment(pred.config),
                                    origin=origin, batch_size=batch)
        prob = torch.where(bad, 0, prob)
        mask = prob >= threshold
        if threshold == 0.0:
            mask &= ~bad
        clean = None
        if inpaint and not on_host_inpaint:
            from crscale.detection.inpaint_torch import inpaint_tensor

            fill = mask
            if inpaint_dilate > 0 and bool(mask.any()):
                grown = mask[None, None].to(torch.float32)
                for _ in range(inpaint_dilate):
                    grown = F.max_pool2d(grown, 3, stride=1, padding=1)
                fill = (grown[0, 0] > 0) & ~bad
            clean = inpaint_tensor(img, fill, method=inpaint_method, bad=bad, fallback=stats.sky)
        planes = {"prob": prob, "clean": clean, "mask": mask, "bad": bad}
        host = _download(_pack(planes, layout, data.shape), device)
    out = host.view(layout).reshape(data.shape)
    assert layout.names is not None  # check_layout: a structured dtype
    fields = {n: out[n] for n in layout.names}
    for name in ("mask", "bad"):
        if name in fields:
            fields[name] = fields[name].view(bool)
    if on_host_inpaint:
        bad_host = fields.get("bad")
        if bad_host is None:
            from crscale.detection.badpix import bad_pixel_mask

            bad_host = bad_pixel_mask(data, dq=dq, saturation=saturation)
        fields["clean"] = _host_inpaint(data, fields["mask"], bad_host, inpaint_dilate, stats)
        if "clean" in layout.names:
            out["clean"] = fields["clean"]
    elif not inpaint:
        fields.pop("clean", None)  # no cleaned image without inpainting
    return BlockOutput(
        packed=out, prob=fields.get("prob"), mask=fields.get("mask"), clean=fields.get("clean"),
        bad=fields.get("bad"),
    )


def _pack(planes: dict, layout: np.dtype, shape: tuple[int, int]) -> torch.Tensor:
    """The result planes interleaved on the device as the bytes of a ``layout`` structured array."""
    some = planes["prob"]
    packed = torch.empty((*shape, layout.itemsize), dtype=torch.uint8, device=some.device)
    assert layout.names is not None and layout.fields is not None  # check_layout: a structured dtype
    for name in layout.names:
        kind, offset = layout.fields[name][:2]
        plane = planes[name]
        if kind.itemsize == 4:
            if plane is None:
                plane = torch.full(shape, float("nan"), dtype=torch.float32, device=some.device)
            as_bytes = plane.to(torch.float32).contiguous().view(torch.uint8)
            packed[..., offset : offset + 4] = as_bytes.view(*shape, 4)
        else:
            packed[..., offset] = plane.to(torch.uint8)
    return packed


def _download(packed: torch.Tensor, device: torch.device) -> np.ndarray:
    """One device→host copy of the packed result; a fresh host array the caller may keep."""
    if device.type != "cuda":
        return packed.numpy().reshape(-1)
    stage = _staging("result", packed.numel(), device)
    stage.copy_(packed.reshape(-1), non_blocking=True)
    torch.cuda.current_stream(device).synchronize()
    return stage.numpy().copy()


def _host_inpaint(data, mask, bad, dilate: int, stats: ImageStats) -> np.ndarray:
    from scipy import ndimage

    from crscale.detection.inpaint import inpaint

    fill = mask
    if dilate > 0 and mask.any():
        fill = ndimage.binary_dilation(mask, np.ones((3, 3), bool), iterations=dilate) & ~bad
    return inpaint(data, fill, method="median", bad=bad, fallback=stats.sky)


def set_worker_threads(threads: int) -> None:
    """Declare how many task threads of this process share the device (sizes :func:`device_batch`)."""
    _WORKER_THREADS[0] = max(1, int(threads))
