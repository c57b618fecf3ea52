"""Figures of the detection engine's throughput model (``docs/throughput-model.md``).

Computed, not timed:

1. **FLOPs per output pixel** of the shipped default model and of the presets
   ``deepcr-3-32-att`` and ``deepcr-2-32``. They are counted with
   :class:`torch.utils.flop_counter.FlopCounterMode` on a 1×1×512×512 input, in eval mode,
   under :func:`torch.inference_mode`, with BatchNorm folded as the predictor folds it.
   A multiply-add counts as 2 FLOPs, which is torch's convention. Only convolutions are
   counted; ReLU, pooling, concatenation, bias adds and the sigmoid are under 1 % of the
   total. Folding BatchNorm does not change the convolution FLOPs.
2. **Activation bytes per pixel** at bf16, the traffic to GPU memory:
   ``fused`` assumes every convolution reads its input and writes its output once, with
   bias, ReLU and concatenation fused into it. ``eager`` assumes every aten operator (each
   convolution, ReLU, pooling, concatenation, ...) reads its inputs and writes its outputs
   once, which is how eager PyTorch runs; at 1024 px tiles one activation (64 MiB for a
   batch of 8) exceeds the L2 cache. Weights are left out (under 1 MB per tile).
   This section also gives the FLOPs, bytes and arithmetic intensity of every convolution
   of the default model.
3. **Tiling overhead**: network pixels computed per useful pixel. It is given for the
   tile halo alone, ((tile + 2·32)/tile)², and for the block halo alone, ((B + 2·64)/B)²,
   both for interior tiles and blocks. It is also given with the whole-tile quantisation
   of :func:`crscale.detection.tiling.predict_tiled`, which covers a block with whole tiles.
4. **GPU bounds**: pixels per second from the datasheet dense bf16 tensor throughput and
   the HBM bandwidth of the A100, H100 and H200.

Measured on this machine, with ``--measure`` only (about 10 s more):

5. **Blosc** (zstd, clevel 5, bit-shuffle: the archive's default), single-threaded as in a
   dask task. It gives the compression ratio and speed of the image (the bundled real
   BANZAI frame, and the raw LCO amplifiers as float32) and of the three outputs of
   ``crscale.detect``.
6. **CPU-side time of crscale.detect**: the CPU time of everything except the network (bad
   pixels, normalisation, fill, mirror padding, tile copies, threshold, inpainting). It is
   run on a 1024² image made from the real BANZAI frame with real ITL CRs at the 1,500 s
   rate, with the detector statistics given as the engine gives them; the better of two runs.

Both timings count thread CPU time (:func:`time.thread_time`), not wall time, so a busy
machine does not inflate them much.

Usage::

    python benchmarks/flops_per_pixel.py [--measure] [--threads 2]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

SIDE = 512
BF16 = 2  # bytes per activation element
MODELS = ("default", "deepcr-3-32-att", "deepcr-2-32")
#: Dense bf16 tensor TFLOPS (no sparsity) and HBM TB/s: A100 SXM 80 GB, H100 SXM, H200 SXM.
GPUS = {"A100": (312.0, 2.0), "H100": (989.0, 3.35), "H200": (989.0, 4.8)}
UTILISATION = (0.15, 0.35)
#: Block side B, core tile side, per device (crscale.yaml block / gpu_block; Predictor.default_tile).
GEOMETRY = {"CPU": (2048, 448), "GPU": (4096, 1024)}
EXTRA_GPU_TILES = (1408, 2112)


# --------------------------------------------------------------------------- networks


def build(name: str) -> tuple[torch.nn.Module, int]:
    """The network as the predictor runs it (eval, BatchNorm folded, channels-last), and its parameters."""
    from crscale.models import UNet, count_parameters, fold_batchnorm, load_model, preset

    net = load_model("default")[0] if name == "default" else UNet(preset(name))
    net = net.eval()
    n_params = count_parameters(net)
    if net.config.norm == "batch":
        net = fold_batchnorm(net)
    return net.eval().to(memory_format=torch.channels_last), n_params


def _dtype() -> torch.dtype:
    """bf16 where this CPU computes it natively (fast); the counts do not depend on the dtype."""
    from crscale.detection.predictor import cpu_has_fast_bf16

    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


class _Traffic(TorchDispatchMode):
    """Floating-point elements each non-view aten operator reads and writes (weights excluded)."""

    def __init__(self, skip: set[int]):
        super().__init__()
        self.skip = skip
        self.elements = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(r.alias_info is not None for r in func._schema.returns):
            return out  # a view moves no data
        for t in tree_flatten((args, kwargs or {}))[0] + tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                if t.untyped_storage().data_ptr() not in self.skip:
                    self.elements += t.numel()
        return out


def profile(net: torch.nn.Module) -> tuple[dict[str, float], list[tuple[str, str, float]], float]:
    """One forward pass on 1x1x512x512 under FlopCounterMode, a traffic counter and conv hooks.

    Returns
    -------
    flops : dict
        FLOPs per output pixel: ``"total"`` and one entry per module.
    convs : list of (name, shape, bytes)
        Every convolution, with its input read plus output written at bf16, per output pixel.
    eager : float
        Bytes per output pixel at bf16 when every operator goes through memory (eager PyTorch).
    """
    dtype = _dtype()
    net = net.to(dtype)
    convs: list[tuple[str, str, float]] = []
    hooks = []
    for name, mod in net.named_modules():
        if isinstance(mod, torch.nn.Conv2d | torch.nn.ConvTranspose2d):
            def hook(m, inp, out, name=name):
                k = "x".join(map(str, m.kernel_size))
                shape = f"{m.in_channels}->{m.out_channels} {k} @1/{(SIDE // out.shape[-1]) ** 2}"
                convs.append((name, shape, (inp[0].numel() + out.numel()) * BF16 / SIDE**2))
            hooks.append(mod.register_forward_hook(hook))
    counter = FlopCounterMode(display=False)
    traffic = _Traffic({p.untyped_storage().data_ptr() for p in net.parameters()})
    x = torch.zeros(1, 1, SIDE, SIDE, dtype=dtype).contiguous(memory_format=torch.channels_last)
    try:
        with torch.inference_mode(), counter, traffic:
            net(x)
    finally:
        for h in hooks:
            h.remove()
    flops = {"total": counter.get_total_flops() / SIDE**2}
    for module, counts in counter.get_flop_counts().items():
        flops[module.removeprefix("UNet.")] = sum(counts.values()) / SIDE**2
    return flops, convs, traffic.elements * BF16 / SIDE**2


# --------------------------------------------------------------------------- tiling


def network_side(n: int, tile: int, halo: int, align: int) -> int:
    """Pixels the network computes along an axis of ``n`` pixels (as predict_tiled tiles it, offset 0)."""
    from crscale.detection.tiling import core_size

    t = core_size(n, tile, align)
    return -(-n // t) * (t + 2 * halo)


# --------------------------------------------------------------------------- measurements


def measure_cpu_side(threads: int, side: int = 1024) -> tuple[float, float, int, object]:
    """CPU s/Mpix of crscale.detect outside the network, of which inpainting; CRs injected; the result.

    Counted as the calling thread's CPU time (:func:`time.thread_time`) minus its CPU time inside
    the network calls, so that other processes on the machine do not inflate it. The work outside
    the network (numpy, scipy) runs in the calling thread.
    """
    import crscale
    import crscale.detection.api as api
    import crscale.detection.inpaint as inpaint_module
    from crscale.train.inject import ITL_RATE_1500S

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from detect_speed import build_image

    torch.set_num_threads(threads)
    image, n_crs = build_image(side, ITL_RATE_1500S, 1)
    crscale.detect(image[:256, :256], gain=1.0, device="cpu")  # warm-up: model, thread pools
    stats = crscale.detection.compute_stats(image, gain=1.0)  # the engine computes these once per detector
    spent = {"net": 0.0, "inpaint": 0.0}
    original, original_inpaint = api.predict_tiled, inpaint_module.inpaint

    def timed(x, run_batch, **kw):
        def run(batch):
            t = time.thread_time()
            out = run_batch(batch)
            spent["net"] += time.thread_time() - t
            return out

        return original(x, run, **kw)

    def timed_inpaint(*a, **kw):
        t = time.thread_time()
        out = original_inpaint(*a, **kw)
        spent["inpaint"] += time.thread_time() - t
        return out

    best = (math.inf, math.inf)
    api.predict_tiled, inpaint_module.inpaint = timed, timed_inpaint
    try:
        for _ in range(2):  # the better of two runs
            spent.update(net=0.0, inpaint=0.0)
            t = time.thread_time()
            res = crscale.detect(image, gain=1.0, device="cpu", stats=stats)
            best = min(best, (time.thread_time() - t - spent["net"], spent["inpaint"]))
    finally:
        api.predict_tiled, inpaint_module.inpaint = original, original_inpaint
    mpix = image.size / 1e6
    return best[0] / mpix, best[1] / mpix, n_crs, res


def measure_blosc(res) -> list[tuple[str, float, float, float]]:
    """(array, ratio, compress MB/s, decompress MB/s) on one core, best of 3: the image and the outputs.

    Timed as thread CPU time (:func:`time.thread_time`); Blosc runs single-threaded here.
    """
    import numcodecs
    from astropy.io import fits
    from numcodecs import Blosc

    import crscale

    numcodecs.blosc.use_threads = False  # as in a dask task (not the main thread)
    images = crscale.sample_data_dir() / "images"
    sci = fits.getdata(images / "banzai_test_frame.fits.fz", "SCI").astype(np.float32)
    with fits.open(images / "mef_raw_test_frame.fits") as hdul:
        raw = np.concatenate([h.data.astype(np.float32) for h in hdul[1:]], axis=1)
    arrays = {
        "image (reduced float, BANZAI)": sci[:1020, :1020],
        "image (raw ADU as float32)": raw,
        "prob float32": res.prob,
        "prob float16": res.prob.astype(np.float16),
        "mask uint8": res.mask.astype(np.uint8),
        "clean float32": np.asarray(res.clean, np.float32),
    }
    codec = Blosc(cname="zstd", clevel=5, shuffle=Blosc.BITSHUFFLE)
    rows = []
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        tc = td = math.inf
        for _ in range(3):
            t = time.thread_time()
            enc = codec.encode(a)
            tc = min(tc, time.thread_time() - t)
            t = time.thread_time()
            codec.decode(enc)
            td = min(td, time.thread_time() - t)
        rows.append((name, a.nbytes / len(enc), a.nbytes / tc / 1e6, a.nbytes / td / 1e6))
    return rows


# --------------------------------------------------------------------------- report


def main(argv: list[str] | None = None) -> None:
    """Print the tables."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--measure", action="store_true",
                    help="also time Blosc and the CPU side of crscale.detect (~15 s)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from crscale.detection.tiling import alignment, required_halo
    from crscale.engine.blocks import DetectSettings, engine_halo

    print(f"1. Per output pixel (FlopCounterMode, 1x1x{SIDE}x{SIDE}, eval, inference_mode, BatchNorm folded;")
    print("   multiply-add = 2 FLOPs; convolutions only). Activation bytes at bf16.")
    print(f"{'model':<18}{'params':>9}{'FLOP/px':>10}{'fused B/px':>12}{'eager B/px':>12}"
          f"{'FLOP/B eager':>14}")
    prof = {}
    for name in MODELS:
        net, n_params = build(name)
        flops, convs, eager = prof[name] = profile(net)
        fused = sum(r[2] for r in convs)
        print(f"{name:<18}{n_params:>9,}{flops['total']:>10,.0f}{fused:>12,.0f}{eager:>12,.0f}"
              f"{flops['total'] / eager:>14.0f}")

    flops, convs, eager = prof["default"]
    print("\n2. Convolutions of the default model (bytes: input read + output written, bf16, per output px)")
    print(f"{'layer':<20}{'channels kernel @res':<22}{'FLOP/px':>9}{'B/px':>7}{'FLOP/B':>8}")
    for name, shape, nbytes in convs:
        print(f"{name:<20}{shape:<22}{flops[name]:>9,.0f}{nbytes:>7,.0f}{flops[name] / nbytes:>8.0f}")
    ridge = ", ".join(f"{g} {tf / bw:.0f}" for g, (tf, bw) in GPUS.items())
    print(f"ridge points (peak FLOP/s / peak B/s): {ridge} FLOP/B")

    config = build("default")[0].config
    halo = required_halo(config)
    bhalo = engine_halo(config, DetectSettings(model="default", threshold=0.85))
    align = alignment(config)
    print(f"\n3. Network pixels per useful pixel (default model: tile halo {halo} px, block halo {bhalo} px)")
    print(f"{'device':<7}{'B':>5}{'tile':>6}{'tile halo':>11}{'block halo':>12}{'product':>9}"
          f"{'interior block':>16}{'1-block det.':>14}")
    cases = [(dev, b, t) for dev, (b, t) in GEOMETRY.items()]
    cases += [("GPU", GEOMETRY["GPU"][0], t) for t in EXTRA_GPU_TILES]
    for dev, b, tile in cases:
        f_tile = ((tile + 2 * halo) / tile) ** 2
        f_block = ((b + 2 * bhalo) / b) ** 2
        interior = (network_side(b + 2 * bhalo, tile, halo, align) / b) ** 2
        single = (network_side(b, tile, halo, align) / b) ** 2
        print(f"{dev:<7}{b:>5}{tile:>6}{f_tile:>11.3f}{f_block:>12.3f}{f_tile * f_block:>9.3f}"
              f"{interior:>16.3f}{single:>14.3f}")
    print("   interior block: a block of B with its halo on all sides, covered by whole tiles;")
    print("   1-block det.: a B x B detector that is a single block (no block halo), covered by whole tiles")

    total = flops["total"]
    fused = sum(r[2] for r in convs)
    print("\n4. GPU bounds, default model, network Gpx/s (datasheet dense bf16 TFLOPS and HBM TB/s)")
    print(f"{'GPU':<6}{'TFLOPS':>7}{'TB/s':>6}{'compute 100%':>14}{'15-35 %':>12}{'BW eager':>10}"
          f"{'BW fused':>10}{'min':>12}")
    for g, (tf, bw) in GPUS.items():
        comp = tf * 1e12 / total / 1e9
        lo, hi = (comp * u for u in UTILISATION)
        bw_e, bw_f = bw * 1e12 / eager / 1e9, bw * 1e12 / fused / 1e9
        print(f"{g:<6}{tf:>7.0f}{bw:>6.2f}{comp:>14.2f}{f'{lo:.2f}-{hi:.2f}':>12}{bw_e:>10.2f}{bw_f:>10.2f}"
              f"{f'{min(lo, bw_e):.2f}-{min(hi, bw_e):.2f}':>12}")

    if not args.measure:
        return
    cpu_side, inpainting, n_crs, res = measure_cpu_side(args.threads)
    print("\n5. MEASURED on this CPU: Blosc zstd clevel 5 bit-shuffle, 1 thread, best of 3,")
    print("   MB/s of raw data per core (thread CPU time)")
    print(f"{'array':<32}{'ratio':>8}{'compress':>10}{'decompress':>12}")
    for name, ratio, c, d in measure_blosc(res):
        print(f"{name:<32}{ratio:>8.2f}{c:>10.0f}{d:>12.0f}")
    print(f"\n6. MEASURED on this CPU: crscale.detect on a 1024x1024 real frame + {n_crs} real ITL CRs,")
    print("   statistics given: CPU time outside the network (bad pixels, normalisation, fill, padding,")
    print(f"   tile copies, threshold, harmonic inpainting): {cpu_side:.3f} CPU s/Mpix,")
    print(f"   of which inpainting {inpainting:.3f}")


if __name__ == "__main__":
    main()
