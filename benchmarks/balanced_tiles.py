"""Even tiles against fixed tiles: time of crscale.detect, in one process, interleaved.

Until issue 15's fifth round every tile core was 448 px on CPUs (1024 on GPUs) and the last
tile of each axis ran past the image: a 2048-px axis took 5 cores of 448 (2,240 px). Now each
axis gets the fewest cores of at most 448 px, shrunk to cover it evenly
(:func:`crscale.detection.tiling.core_size`): 5 cores of 416. The largest core stays 448 on
CPUs: ``--tile-sizes`` times the network alone on tile inputs of several sizes, which shows
why (here its time per pixel rose by about a third above 512-px inputs).

Both layouts run the same model on the same image, in the same process, alternately
``--repeat`` times (this machine's speed drifts by ±15 % over minutes), and the median of each
is printed with the network pixels each computes per image pixel and how far apart their
probabilities and masks are (float rounding only: tiling never changes the result).

The images are built from real data only: the bundled LCO BANZAI frame mirror-tiled, with real
LSST ITL CRs injected (as ``detect_speed.py`` builds them), at 2048² (a one-block detector)
and 2176² (an engine block of 2048 with its 64-px halo).

Usage::

    python benchmarks/balanced_tiles.py [--threads 2] [--repeat 5] [--model default]
                                        [--sizes 2048 2176] [--tile-sizes 384 448 ...]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

OLD_TILE = 448


def old_core_size(extent: int, tile: int, align: int) -> int:
    """The layout before: cores of ``tile`` (rounded to the grid), the last one running past the image."""
    from crscale.detection.tiling import round_up

    return min(round_up(max(tile, align), align), round_up(extent, align))


def network_pixels(side: int, core: int, halo: int) -> float:
    """Network pixels per image pixel of a ``side``² image in cores of ``core`` (offset 0)."""
    return (-(-side // core) * (core + 2 * halo) / side) ** 2


def scan_tile_inputs(pred, sizes: list[int], repeat: int) -> None:
    """The network alone on (1, 1, s, s) inputs, ~5 Mpix per size per run, sizes alternated."""
    rng = np.random.default_rng(0)
    xs = {s: rng.normal(size=(1, 1, s, s)).astype(np.float32) for s in sizes}
    for s in sizes:
        pred(xs[s])
    per_px: dict[int, list[float]] = {s: [] for s in sizes}
    for _ in range(repeat):
        for s in sizes:
            n = max(1, round(5e6 / (s * s)))
            t0 = time.perf_counter()
            for _ in range(n):
                pred(xs[s])
            per_px[s].append((time.perf_counter() - t0) / (n * s * s / 1e6))
    print("network alone, s per Mpix of tile input (median; all runs):")
    for s in sizes:
        print(f"  input {s:>4}²  {np.median(per_px[s]):.3f}   " + " ".join(f"{t:.3f}" for t in per_px[s]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--model", default="default")
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 2176])
    parser.add_argument("--tile-sizes", type=int, nargs="*", default=[384, 448, 480, 512, 544, 576, 640],
                        help="tile input sides for the network-only scan (none: skip it)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from detect_speed import build_image

    import crscale
    import crscale.detection.tiling as tiling
    from crscale.detection import get_predictor

    pred = get_predictor(args.model, device="cpu", precision="auto")
    new_tile = pred.default_tile()
    halo = tiling.required_halo(pred.config)
    align = tiling.alignment(pred.config)
    new_core_size = tiling.core_size
    big, n_crs = build_image(max(args.sizes), 2e-5, 0)
    crscale.detect(big[:1024, :1024], model=pred, gain=1.0, inpaint=False)  # warm-up, not timed

    print(f"model {pred.name}, {pred.dtype}, {torch.get_num_threads()} threads, halo {halo} px, "
          f"{args.repeat} alternating runs each")
    if args.tile_sizes:
        scan_tile_inputs(pred, args.tile_sizes, args.repeat)
    print("crscale.detect, mask only, s per Mpix of image (median; all runs):")
    print(f"{'image':>7}  {'layout':<28}{'cores':>8}{'net px/px':>11}{'s/Mpix':>9}   all runs")
    for side in args.sizes:
        img = np.ascontiguousarray(big[:side, :side])
        layouts = {
            f"fixed {OLD_TILE} (before)": (old_core_size, OLD_TILE),
            f"even, at most {new_tile} (now)": (new_core_size, new_tile),
        }
        times: dict[str, list[float]] = {k: [] for k in layouts}
        probs: dict[str, np.ndarray] = {}
        try:
            for _ in range(args.repeat):
                for name, (rule, tile) in layouts.items():
                    tiling.core_size = rule
                    t0 = time.perf_counter()
                    res = crscale.detect(img, model=pred, gain=1.0, inpaint=False, tile=tile)
                    times[name].append((time.perf_counter() - t0) / (side * side / 1e6))
                    probs[name] = res.prob
        finally:
            tiling.core_size = new_core_size
        medians = {}
        for name, (rule, tile) in layouts.items():
            core = rule(side, tile, align)
            medians[name] = float(np.median(times[name]))
            runs = " ".join(f"{t:.3f}" for t in times[name])
            print(f"{side:>5}²  {name:<28}{core:>8}{network_pixels(side, core, halo):>11.3f}"
                  f"{medians[name]:>9.3f}   {runs}")
        before, now = (probs[k] for k in layouts)
        b, n = medians.values()
        thr = pred.card.recommended_threshold
        differ = int(np.count_nonzero((before >= thr) != (now >= thr)))
        print(f"{'':>9}speed-up {b / n:.2f}x; max |prob difference| {np.abs(before - now).max():.1e}, "
              f"mask pixels that differ {differ} of {side * side:,}")


if __name__ == "__main__":
    main()
