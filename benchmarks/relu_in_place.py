"""The default model's ``crscale.detect`` with the ReLUs in place (inference) against a new tensor each.

Without gradients, the U-Net's ReLUs run in place (``crscale.models.unet._relu``): each
activation is then written once, not allocated, written and read again. This script measures
what that saves, on the image of ``benchmarks/detect_speed.py`` (the real LCO BANZAI frame,
mirror-tiled, with real LSST ITL CRs), in one process, alternating the two forms so that a
noisy machine slows both alike, and prints the median of each and their ratio. The masks of the
two forms are checked to be identical.

Usage::

    python benchmarks/relu_in_place.py [--size 2048] [--threads 2] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> None:
    """Time both forms and print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from detect_speed import build_image

    import crscale
    from crscale.detection import get_predictor
    from crscale.models import unet

    image, n_crs = build_image(args.size, 1.08e-4, 1)
    mpix = image.size / 1e6
    pred = get_predictor("default", device="cpu", precision="auto")
    forms = {"new tensor (torch.relu)": lambda: torch.relu, "in place (crscale)": unet._relu}
    times: dict[str, list[float]] = {name: [] for name in forms}
    masks: dict[str, np.ndarray] = {}
    try:
        crscale.detect(image[:1024, :1024], model=pred, gain=1.0, inpaint=False)  # warm-up
        for _ in range(args.repeat):
            for name, form in forms.items():
                unet._relu = form  # type: ignore[assignment]
                t0 = time.perf_counter()
                masks[name] = crscale.detect(image, model=pred, gain=1.0, inpaint=False).mask
                times[name].append((time.perf_counter() - t0) / mpix)
    finally:
        unet._relu = forms["in place (crscale)"]  # type: ignore[assignment]
    print(f"{args.size}x{args.size} ({mpix:.1f} Mpix, {n_crs} real ITL CRs), {pred.name} {pred.dtype}, "
          f"{args.threads} threads, the two forms alternated {args.repeat} times")
    for name, values in times.items():
        print(f"  {name:26s} median {statistics.median(values):.3f} s/Mpix, best {min(values):.3f}, "
              f"all {' '.join(f'{v:.3f}' for v in values)}")
    a, b = (statistics.median(v) for v in times.values())
    same = all(np.array_equal(masks[next(iter(masks))], m) for m in masks.values())
    print(f"  in place is {a / b:.2f}x the new-tensor form (ratio of medians); masks identical: {same}")


if __name__ == "__main__":
    main()
