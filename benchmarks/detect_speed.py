"""Detection speed and memory: crscale.detect against pip deepCR, each in its own process.

The test image is built from real data only: the bundled LCO BANZAI frame (SCI, gain 1 e-/ADU),
mirror-tiled to ``--size`` x ``--size`` pixels, with real LSST ITL cosmic-ray footprints
injected at ``--rate`` CRs per pixel (default: 1,500 s of dark on an ITL CCD).

Every method runs in a fresh subprocess, so that its peak resident memory (``ru_maxrss``) is
its own and no method inherits another's warm caches or thread pools. Each child loads the
image, sets its torch threads, runs once on a ``min(size, 1024)`` crop as a warm-up (model
loading, allocator and thread-pool start-up, excluded from the timing), then times
``--repeat`` full-image runs and reports the fastest.

Methods:

- ``crscale <model> auto``: ``crscale.detect`` with the model under test (``--model``; default
  the shipped default model, else an *untrained* deepcr-3-32 saved to a temporary file, which
  is timed like any other but whose masks mean nothing), precision ``auto`` (bf16 on CPUs with
  AMX / AVX512-BF16, bf16 or fp16 on CUDA);
- ``crscale <model> float32``: the same in float32;
- ``crscale <model> auto+compile``: precision ``auto`` with ``torch.compile`` (the engine's
  setting for long runs; compilation happens in the warm-up and is not timed);
- ``crscale deepcr:ACS-WFC`` (auto and float32): crscale running deepCR's own ACS-WFC
  weights: the like-for-like comparison with the line below (same network, same weights);
- ``deepCR ACS-WFC``: pip deepCR as users run it, ``clean(segment=True, patch=1024,
  inpaint=False)`` (binary mask at threshold 0.5).

Also printed: the fraction of pixels on which the bf16 and float32 masks agree at the model's
threshold (target >= 99.99 %), and how far crscale's deepcr:ACS-WFC mask is from deepCR's.

Usage::

    python benchmarks/detect_speed.py [--size 4096] [--threads 2] [--repeat 1]
                                      [--model PATH|NAME] [--device cpu|cuda] [--no-deepcr]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WARMUP_SIZE = 1024
DEEPCR_MODEL = "ACS-WFC"


# --------------------------------------------------------------------------- the image


def build_image(size: int, rate: float, seed: int) -> tuple[np.ndarray, int]:
    """A ``size`` x ``size`` image in electrons from the real BANZAI frame plus real ITL CRs.

    Mirror tiling keeps the sky, noise and stars of the real frame and makes no seams a CR
    detector could mistake for something (the mirrored copies meet at identical pixels).
    """
    from astropy.io import fits

    import crscale
    from crscale.train.footprints import load_itl_footprints
    from crscale.train.inject import inject_crs

    path = crscale.sample_data_dir() / "images" / "banzai_test_frame.fits.fz"
    with fits.open(path) as hdul:
        sci = hdul["SCI"].data.astype(np.float32)
        gain = float(hdul["SCI"].header.get("GAIN", 1.0))
    image_e = sci * np.float32(gain)
    # numpy's "symmetric" pad repeats the reflection as often as needed for any size.
    image_e = np.pad(image_e, ((0, max(0, size - image_e.shape[0])), (0, max(0, size - image_e.shape[1]))),
                     mode="symmetric")[:size, :size]
    rng = np.random.default_rng(seed)
    injected = inject_crs(image_e, load_itl_footprints(), rng, rate=rate)
    return np.ascontiguousarray(injected.image, dtype=np.float32), len(injected.indices)


def resolve_model(spec: str | None, tmp: Path) -> tuple[str, str]:
    """The crscale model to time, and a line saying which it is.

    Falls back, when no model is given and no default model ships yet, to an untrained
    deepcr-3-32: its speed is that of a trained one (same architecture), its masks are noise.
    """
    from crscale.models import ModelCard, UNet, load_model, preset, save_model

    if spec is not None:
        _, card = load_model(spec)
        return spec, f"model under test: {card.name} ({spec})"
    try:
        _, card = load_model("default")
        return "default", f"model under test: the shipped default model {card.name}"
    except Exception as exc:  # no shipped default yet: InputError, or anything a partial file raises
        import torch

        torch.manual_seed(0)
        config = preset("deepcr-3-32")
        card = ModelCard(name="untrained-deepcr-3-32", architecture=config.to_dict(),
                         notes="random weights, for timing only")
        path = save_model(UNet(config).eval(), card, tmp / "untrained-deepcr-3-32")
        return str(path), (f"model under test: UNTRAINED deepcr-3-32 (random weights; no default model: "
                           f"{type(exc).__name__}: {exc}); its timings hold, its masks mean nothing")


# --------------------------------------------------------------------------- children


def _peak_rss_gb() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1e9


def run_child(args: argparse.Namespace) -> None:
    """Time one method in this process and write its figures (and mask) beside the image."""
    import torch

    torch.set_num_threads(args.threads)
    image = np.load(args.image)
    base_rss = _peak_rss_gb()
    cuda = args.device.startswith("cuda")
    warm = image[: min(WARMUP_SIZE, image.shape[0]), : min(WARMUP_SIZE, image.shape[1])]

    if args.child == "deepcr":
        from deepCR import deepCR

        net = deepCR(mask=DEEPCR_MODEL, device="GPU" if cuda else "CPU")

        def run(img: np.ndarray) -> np.ndarray:
            return net.clean(img, threshold=0.5, inpaint=False, segment=True, patch=1024) > 0.5

        precision = "float32"
    else:
        import crscale
        from crscale.detection import get_predictor

        prec, _, comp = args.precision.partition("+")
        pred = get_predictor(args.model, device=args.device, precision=prec, compile=comp == "compile")
        precision = str(pred.dtype).removeprefix("torch.") + ("+compile" if pred.compiled else "")

        def run(img: np.ndarray) -> np.ndarray:
            # Gain 1: the benchmark image is already in electrons.
            return crscale.detect(img, model=pred, gain=1.0, inpaint=False).mask

    run(warm)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        mask = run(image)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    np.save(args.out + ".npy", np.packbits(np.asarray(mask, bool)))
    result = {
        "seconds": min(times),
        "all_seconds": times,
        "peak_rss_gb": _peak_rss_gb(),
        "base_rss_gb": base_rss,
        "gpu_peak_gb": torch.cuda.max_memory_allocated() / 1e9 if cuda else None,
        "precision": precision,
        "threads": torch.get_num_threads(),
        "n_mask": int(np.count_nonzero(mask)),
    }
    Path(args.out + ".json").write_text(json.dumps(result))


def spawn(method: str, image: Path, out: Path, args: argparse.Namespace, model: str, precision: str) -> dict:
    """Run one method in a fresh interpreter; its figures, or the error it died of."""
    env = dict(os.environ)
    # Set before torch loads, so that OpenMP/MKL pools start at the requested size too.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(args.threads)
    cmd = [
        sys.executable, __file__, "--child", method, "--image", str(image), "--out", str(out),
        "--threads", str(args.threads), "--repeat", str(args.repeat), "--device", args.device,
        "--model", model, "--precision", precision,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": " | ".join(tail) or f"exit status {proc.returncode}"}
    result = json.loads(Path(str(out) + ".json").read_text())
    result["mask"] = np.unpackbits(np.load(str(out) + ".npy")).astype(bool)
    return result


# --------------------------------------------------------------------------- parent


def _deepcr_available() -> str | None:
    """None when ``from deepCR import deepCR`` works in a child; else why not."""
    proc = subprocess.run([sys.executable, "-c", "from deepCR import deepCR"], capture_output=True, text=True)
    if proc.returncode == 0:
        return None
    return (proc.stderr.strip().splitlines() or ["import failed"])[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096, help="image side in pixels (default 4096)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads per method (default 2)")
    ap.add_argument("--repeat", type=int, default=1, help="timed runs per method; the fastest counts")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    ap.add_argument("--model", default=None,
                    help="crscale model (name, path, deepcr:<name>); default: the shipped default model")
    ap.add_argument("--rate", type=float, default=None, help="injected CRs per pixel (default ITL 1,500 s)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-deepcr", action="store_true", help="skip the pip deepCR baseline")
    ap.add_argument("--methods", default=None,
                    help="comma-separated subset of model-auto, model-f32, model-compiled, dc-auto, dc-f32, "
                         "deepcr (default: all)")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    # Internal: one method in a child process.
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--image", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--precision", default="auto", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        run_child(args)
        return

    from crscale.train.inject import ITL_RATE_1500S

    rate = ITL_RATE_1500S if args.rate is None else args.rate
    with tempfile.TemporaryDirectory(prefix="crscale-detect-speed-") as tmpdir:
        tmp = Path(tmpdir)
        t0 = time.perf_counter()
        image, n_crs = build_image(args.size, rate, args.seed)
        image_path = tmp / "image.npy"
        np.save(image_path, image)
        model, model_line = resolve_model(args.model, tmp)
        mpix = image.size / 1e6
        print(f"image: {args.size}x{args.size} ({mpix:.1f} Mpix), mirror-tiled LCO BANZAI frame (e-) "
              f"+ {n_crs} real ITL CR footprints (rate {rate:.2e}/px), "
              f"built in {time.perf_counter() - t0:.1f} s")
        print(model_line)
        print(f"device {args.device}, {args.threads} threads per method, best of {args.repeat} timed run(s) "
              f"after a {min(WARMUP_SIZE, args.size)}^2 warm-up; each method in its own process")

        short = Path(model).stem if model.endswith(".safetensors") else model
        methods = {
            "model-auto": ("crscale", f"crscale {short}", model, "auto"),
            "model-f32": ("crscale", f"crscale {short}", model, "float32"),
            "model-compiled": ("crscale", f"crscale {short}", model, "auto+compile"),
            "dc-auto": ("crscale", f"crscale deepcr:{DEEPCR_MODEL}", f"deepcr:{DEEPCR_MODEL}", "auto"),
            "dc-f32": ("crscale", f"crscale deepcr:{DEEPCR_MODEL}", f"deepcr:{DEEPCR_MODEL}", "float32"),
        }
        why_not = "skipped (--no-deepcr)" if args.no_deepcr else _deepcr_available()
        if why_not is None:
            methods["deepcr"] = ("deepcr", f"deepCR {DEEPCR_MODEL} (pip, patch=1024)", "-", "float32")
        if args.methods:
            keep = set(args.methods.split(","))
            methods = {k: v for k, v in methods.items() if k in keep}
        results: dict[str, dict] = {}
        for key, (kind, label, spec, precision) in methods.items():
            r = results[key] = spawn(kind, image_path, tmp / key, args, spec, precision)
            status = r.get("error") or f"{r['seconds'] / mpix:.3f} s/Mpix"
            print(f"  ran {label} {precision}: {status}", flush=True)

        deepcr_s = results.get("deepcr", {}).get("seconds")
        print()
        print(f"{'method':44s} {'precision':>16s} {'s/Mpix':>8s} {'peak GB':>8s} {'base GB':>8s} "
              f"{'GPU GB':>7s} {'deepCR/this':>11s}")
        for key, r in results.items():
            label = methods[key][1]
            if "error" in r:
                print(f"{label:44s} failed: {r['error']}")
                continue
            ratio = f"{deepcr_s / r['seconds']:.2f}x" if deepcr_s else "-"
            gpu = f"{r['gpu_peak_gb']:.2f}" if r["gpu_peak_gb"] is not None else "-"
            print(f"{label:44s} {r['precision']:>16s} {r['seconds'] / mpix:8.3f} {r['peak_rss_gb']:8.2f} "
                  f"{r['base_rss_gb']:8.2f} {gpu:>7s} {ratio:>11s}")
        if why_not is not None:
            print(f"deepCR baseline not run: {why_not}")
        print("peak GB: peak RSS of the method's process (image included); base GB: RSS after "
              "imports and loading the image")

        print()
        for low, high, label in (("model-auto", "model-f32", f"crscale {short}"),
                                 ("dc-auto", "dc-f32", f"crscale deepcr:{DEEPCR_MODEL}")):
            a, b = results.get(low, {}), results.get(high, {})
            if "mask" not in a or "mask" not in b:
                continue
            agree = float(np.mean(a["mask"] == b["mask"]))
            flag = "  [below the 99.99 % target]" if agree < 0.9999 else ""
            print(f"{label}: {a['precision']}-vs-float32 mask agreement at the model's threshold: "
                  f"{100 * agree:.4f} % ({int(np.sum(a['mask'] != b['mask']))} px differ; "
                  f"masks {a['n_mask']} / {b['n_mask']} px){flag}")

        side = args.size
        edge = np.zeros((side, side), bool)
        edge[:10], edge[-10:], edge[:, :10], edge[:, -10:] = True, True, True, True
        # deepCR runs its 1024 px patches without overlap: each patch edge is an image edge to it.
        seam = np.zeros((side, side), bool)
        for k in range(1024, side, 1024):
            seam[k - 4 : k + 4] = True
            seam[:, k - 4 : k + 4] = True
        seam &= ~edge
        theirs = results.get("deepcr", {}).get("mask")
        for key in ("dc-f32", "dc-auto"):
            ours = results.get(key, {})
            if theirs is None or "mask" not in ours:
                continue
            differ = (ours["mask"] != theirs).reshape(side, side)
            rest = differ & ~edge & ~seam
            print(f"crscale deepcr:{DEEPCR_MODEL} ({ours['precision']}) vs pip deepCR masks: "
                  f"{int(differ.sum())} px differ: {int(differ[edge].sum())} within 10 px of the image "
                  f"edge, {int(differ[seam].sum())} within 4 px of deepCR's patch seams, {int(rest.sum())} "
                  f"elsewhere; masks {ours['n_mask']} / {results['deepcr']['n_mask']} px")
        if args.json:
            clean = [{"method": methods[key][1], "key": key, **{k: v for k, v in r.items() if k != "mask"}}
                     for key, r in results.items()]
            Path(args.json).write_text(json.dumps({"size": args.size, "threads": args.threads,
                                                   "device": args.device, "model": model_line,
                                                   "results": clean}, indent=2))


if __name__ == "__main__":
    main()
