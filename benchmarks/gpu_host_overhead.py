"""Host-side time per pixel of a GPU-style block task (the device path), measured on a CPU.

On a GPU worker a block task is: copy the image into a pinned buffer, a sequence of device
operations (fill, normalise, tiled network, threshold, dilation, inpainting, packing), one copy
back and a copy out of the pinned buffer. The device work runs asynchronously; what limits one
task thread is the host's share: Python and dispatch between the operations, the host copies,
and the few synchronisations (nonzero, convergence checks). This script runs exactly that
sequence (``crscale.detection.torch_block.detect_torch``) on the CPU with a no-op network (so
the network's cost does not hide anything), records every operator with the torch profiler,
and reports

- wall time per pixel of the whole task;
- operator time per pixel (the top-level torch operators: what a GPU would run);
- wall - operators, the time outside the device-op sequence in this run (inflated on a loaded
  machine), and the two host memcpy's of the pinned staging that a CUDA device needs;
- the host cost of dispatching that operator sequence: operators per block times the host
  time per operator, the latter measured in this thread's CPU time on a small cut (where the
  operators themselves cost nothing), so that other processes on a shared machine do not count.

Target (issue #17): host time <= 3 ns/px, so that one task thread feeds >= 300 Mpix/s.

Usage: python benchmarks/gpu_host_overhead.py [--size 2048] [--repeats 3] [--method harmonic]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from astropy.io import fits

import crscale
from crscale.detection import compute_stats, get_predictor
from crscale.detection.torch_block import PACKED_DTYPE, detect_torch
from crscale.train.footprints import load_itl_footprints
from crscale.train.inject import inject_crs

FRAME = crscale.sample_data_dir() / "images" / "banzai_test_frame.fits.fz"


class NoOpNet(torch.nn.Module):
    """Logits from the input alone (CR-like: > ~80 sigma above the sky), at no network cost."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - 4.0) * 50.0


def real_frame(size: int) -> np.ndarray:
    """A size x size frame tiled (mirrored) from the real BANZAI frame, with real ITL CRs added."""
    base = fits.getdata(FRAME, "SCI").astype(np.float32)
    reps = (-(-size // base.shape[0]), -(-size // base.shape[1]))
    flip = [[base[:: 1 - 2 * (i % 2), :: 1 - 2 * (j % 2)] for j in range(reps[1])] for i in range(reps[0])]
    frame = np.block(flip)[:size, :size].copy()
    return inject_crs(frame, load_itl_footprints(), np.random.default_rng(1), rate=2e-4).image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--method", default="harmonic")
    ap.add_argument("--tile", type=int, default=1024, help="GPU default tile")
    args = ap.parse_args()

    torch.set_num_threads(1)
    image = real_frame(args.size)
    px = image.size
    pred = get_predictor("default", device="cpu", precision="float32")
    real_net = pred.net
    stats = compute_stats(image)
    thr = pred.card.recommended_threshold
    kw = dict(pred=pred, stats=stats, threshold=thr, tile=args.tile, batch_size=4, inpaint_method=args.method)
    small = image[:128, :128].copy()
    try:
        pred.net = NoOpNet()
        detect_torch(image, **kw)  # warm up
        walls, ops, counts = [], [], []
        for _ in range(args.repeats):
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                t0 = time.perf_counter()
                out = detect_torch(image, **kw)
                walls.append(time.perf_counter() - t0)
            top = [e for e in prof.events() if e.cpu_parent is None and e.name.startswith("aten::")]
            ops.append(sum(e.cpu_time_total for e in top) * 1e-6)
            counts.append(len(top))
        # The host cost of one operator (dispatch, Python between operators, allocation): the
        # same sequence on a 128 x 128 cut, where the operators themselves cost next to nothing,
        # in this thread's CPU time (immune to other processes on a shared machine).
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            detect_torch(small, **kw)
        n_small = sum(1 for e in prof.events() if e.cpu_parent is None and e.name.startswith("aten::"))
        t0 = time.thread_time()
        for _ in range(5 * args.repeats):
            detect_torch(small, **kw)
        per_op = (time.thread_time() - t0) / (5 * args.repeats) / max(1, n_small)
    finally:
        pred.net = real_net

    # The pinned staging of a CUDA device: image in, packed result out (host memcpy's).
    stage_in = np.empty_like(image)
    packed = np.empty(image.shape, PACKED_DTYPE)
    stage_out = np.empty_like(packed)
    t0 = time.thread_time()
    for _ in range(args.repeats):
        np.copyto(stage_in, image)
        np.copyto(stage_out, packed)
    copies = (time.thread_time() - t0) / args.repeats

    wall, op, n_ops = min(walls), min(ops), int(np.median(counts))
    dispatch = n_ops * per_op
    host = dispatch + copies
    ns = 1e9 / px
    print(f"block {args.size}x{args.size} ({px / 1e6:.1f} Mpix), method {args.method}, "
          f"{int(out.mask.sum())} CR pixels ({out.mask.mean():.2%}), no-op network, 1 thread")
    print(f"wall (the CPU executes the device ops too):  {wall * ns:8.2f} ns/px")
    print(f"top-level torch operators:                   {op * ns:8.2f} ns/px ({n_ops} operators)")
    print(f"wall - operators (this run, shared machine): {max(0.0, wall - op) * ns:8.2f} ns/px")
    print(f"host per operator (128^2 cut, thread CPU):   {per_op * 1e6:8.2f} us ({n_small} operators)")
    print(f"host: dispatch of the operator sequence:     {dispatch * ns:8.2f} ns/px")
    print(f"host: pinned staging copies in + out:        {copies * ns:8.2f} ns/px")
    print(f"host total per pixel:                        {host * ns:8.2f} ns/px (target <= 3)")
    rate = px / host / 1e6
    print(f"predicted rate of one task thread, host-bound: {rate:6.0f} Mpix/s (computed, not measured)")

if __name__ == "__main__":
    main()
