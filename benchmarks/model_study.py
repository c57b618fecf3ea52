"""The model study's held-out evaluation, speed x quality, and the issue's targets (docs/model-study.md).

Two held-out sets:

- ``--set archive`` (default, issue 15): the 9 held-out frames of docs/training/archive-frames.yaml,
  6 kinds of frame an archive holds (star fields, a spectrum, an arc, a bright flat, an IR array, a
  crowded undersampled field), never trained on and never used to choose an epoch. They are
  written first (``python -m crscale.train.frames``), then real ITL CR footprints are injected
  once per frame (seed 2026, 5e-4 CRs per pixel).
- ``--set external``: the 3 frames of docs/evaluation/external-frames.yaml, of an instrument no
  model was trained on (Liverpool Telescope SPRAT: an arc, two spectra), injected the same way.
- ``--set survey``: the 33 survey cutouts of docs/evaluation/heldout-images.txt (the study of
  issue 6), with astroscrappy also at the paper's other settings.

For every model it prints the pooled table (TPR at 0.01 % / 0.1 % FPR, precision at 95 % TPR),
then, per frame and at each method's operating point, the TPR and the false-positive pixels per
Mpix, the per-frame targets (TPR >= 0.95, <= 100 FP px/Mpix), and the CPU time of each model
(``crscale.detect``, mask only, on a 2048 x 2048 real frame, ``--threads`` threads, best of 2),
and draws held-out quality against s/Mpix (``speed_quality.png`` in ``--out``).

    python benchmarks/model_study.py [--set archive|external|survey] [--out DIR] [--model NAME ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SURVEY = ROOT / "docs" / "evaluation" / "heldout-images.txt"
FRAMES = ROOT / "docs" / "training" / "archive-frames.yaml"
EXTERNAL = ROOT / "docs" / "evaluation" / "external-frames.yaml"
STUDY = ("crscale-bn-3-32", "crscale-bn-3-32-att", "crscale-gn-3-32", "crscale-gn-3-32-att")
KEYS = (("tpr@fpr=1e-4", "0.01 %"), ("tpr@fpr=1e-3", "0.1 %"))


def frames_table(metrics: dict) -> str:
    """Per frame (repeats pooled by name), per method: ``TPR / FP px per Mpix`` at its operating point.

    In brackets, where known: the false pixels on neither the frame's own lone spikes nor its own
    CRs' tails (crscale.evaluate.false_positives).
    """
    names = list(metrics)
    frames = sorted({k.split("#")[0] for m in metrics.values() for k in m.get("per_image", {})})
    width = max(len(f) for f in frames) if frames else 5
    head = f"{'frame':<{width}}  " + "  ".join(f"{n[-24:]:>24}" for n in names)
    lines = ["per frame at the operating point: TPR / FP px per Mpix (not on own spikes or CR tails)", head]
    for f in frames:
        cells = []
        for n in names:
            rows = [v for k, v in metrics[n]["per_image"].items() if k.split("#")[0] == f]
            if not rows:
                cells.append(f"{'-':>24}")
                continue
            tpr = sum(r["tpr"] for r in rows) / len(rows)
            fp = sum(r["fp_per_mpix"] for r in rows) / len(rows)
            text = f"{tpr:.3f} / {fp:,.0f}"
            if all(r.get("fp_kinds") for r in rows):
                text += f" ({sum(r['fp_kinds']['other'] for r in rows) / len(rows):,.0f})"
            cells.append(f"{text:>24}")
        lines.append(f"{f:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)


def time_models(models: list[str], size: int, threads: int) -> dict[str, float]:
    """CPU s/Mpix of ``crscale.detect`` (mask only) per model, on the same real 2048² frame."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from detect_speed import build_image

    from crscale.detection import detect, get_predictor

    torch.set_num_threads(threads)
    image, _ = build_image(size, 1764 / 16.288e6, 0)
    out = {}
    for m in models:
        pred = get_predictor(m, device="cpu")
        detect(image[:512, :512], model=pred, inpaint=False)  # warm-up
        best = float("inf")
        for _ in range(2):
            t0 = time.perf_counter()
            detect(image, model=pred, inpaint=False)
            best = min(best, time.perf_counter() - t0)
        out[pred.name] = best / (image.size / 1e6)
    return out


def kflops_per_pixel(model: str) -> float:
    """Convolution FLOPs per input pixel of a model (multiply-add = 2), counted on a 256² input."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from crscale.models import load_model
    from crscale.models.unet import fold_batchnorm

    net, _ = load_model(model, device="cpu")
    net = fold_batchnorm(net.eval())
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        net(torch.zeros(1, 1, 256, 256))
    return counter.get_total_flops() / 256**2 / 1e3


def plot(metrics: dict, speed: dict[str, float], path: Path) -> None:
    """Held-out TPR at 0.01 % FPR and worst-frame FP/Mpix against CPU s/Mpix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, sec in speed.items():
        m = metrics.get(f"crscale:{name}")
        if not m:
            continue
        worst = max(r["fp_per_mpix"] for r in m["per_image"].values())
        label = name.replace("crscale-", "")
        tpr = m["tpr@fpr=1e-4"]
        dot = axes[0].scatter(sec, tpr, marker="o")
        axes[0].annotate(label, (sec, tpr), fontsize=7, xytext=(3, 3), textcoords="offset points")
        if m.get("significant"):
            # The same model's figure on significant CR pixels, in its colour: a triangle.
            axes[0].scatter(sec, m["significant"]["tpr@fpr=1e-4"], marker="^", color=dot.get_facecolor())
        axes[1].scatter(sec, worst, color=dot.get_facecolor())
        axes[1].annotate(label, (sec, worst), fontsize=7, xytext=(3, 3), textcoords="offset points")
    axes[0].set(
        xlabel="CPU s/Mpix (2 threads, 2048², mask only)",
        ylabel="pooled TPR at 0.01 % FPR (o all, ^ significant CR px)",
        title="held-out quality vs speed",
    )
    axes[1].set(
        xlabel="CPU s/Mpix",
        ylabel="worst frame: FP px/Mpix at threshold",
        yscale="log",
        title="worst held-out frame vs speed",
    )
    for ax in axes:
        ax.axvline(0.30, color="grey", ls=":", lw=0.8)
    axes[1].axhline(100, color="grey", ls=":", lw=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", choices=("archive", "external", "survey"), default="archive")
    ap.add_argument("--out", default="benchmarks/out/model-study")
    ap.add_argument(
        "--model", action="append", help="models (default: crscale-default + the study's shipped ones)"
    )
    ap.add_argument("--baselines", default="astroscrappy,deepcr,cosmic-conn")
    ap.add_argument("--repeats", type=int, help="injections per image (default: archive 1, survey 2)")
    ap.add_argument("--threshold", type=float, help="threshold of every model (default: its card's)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=2048, help="side of the timing frame")
    ap.add_argument("--no-speed", action="store_true", help="skip the timing")
    args = ap.parse_args()

    from crscale.evaluate import evaluate
    from crscale.evaluate.report import format_table, format_targets, significant_view
    from crscale.models.store import available_models

    models = args.model or ["default", *(m for m in STUDY if m in available_models())]
    repeats = args.repeats or (2 if args.set == "survey" else 1)
    quiet = {"progress": False, "repeats": repeats, "log": lambda *_: None}
    baselines = tuple(b for b in args.baselines.split(",") if b and b != "none")
    if args.set in ("archive", "external"):
        from crscale.train.frames import write_frames

        spec = FRAMES if args.set == "archive" else EXTERNAL
        images = [str(p) for p in write_frames(spec, ROOT / "runs" / f"{args.set}-frames")["heldout"]]
    else:
        images = [f"@{SURVEY}"]
    report = evaluate(
        images, out=args.out, models=tuple(models), baselines=baselines, threshold=args.threshold, **quiet
    )
    print(format_table(report.metrics))
    print(format_targets(report.run))
    print()
    print(frames_table(report.metrics))
    print()
    for t in report.run.get("frame_targets", []):
        print(f"frame target {'met' if t['met'] else 'NOT met'}: {t['text']}")
    other = [t for t in report.run.get("frame_targets", []) if "met_other" in t]
    if other:
        n_met = sum(t["met"] for t in other)
        n_other = sum(t["met_other"] for t in other)
        print(
            f"frame targets met: {n_met} of {len(other)} frames counting every false pixel, "
            f"{n_other} of {len(other)} counting those not on the frames' own lone spikes or CR tails"
        )
    sig = significant_view(report.metrics)
    if sig:
        nsigma = next(iter(sig.values()))["nsigma"]
        print(f"\non significant CR pixels only (injected charge >= {nsigma:g} sigma of the pixel's noise)")
        print(format_table(sig))
        print()
        print(frames_table(sig))
    default = report.run["default_model"]
    d = report.metrics[default]
    scrappy = {("4", "0.3"): report.metrics.get("astroscrappy")}
    if args.set == "survey" and "astroscrappy" in baselines:
        for objlim, sigfrac in (("2", "0.1"), ("1", "0.1")):
            r = evaluate(
                images,
                models=("default",),
                baselines=("astroscrappy",),
                objlim=float(objlim),
                sigfrac=float(sigfrac),
                **quiet,
            )
            scrappy[(objlim, sigfrac)] = r.metrics["astroscrappy"]
    for key, words in KEYS:
        ok = [(m[key], s) for s, m in scrappy.items() if m]
        if ok:
            best = max(ok)
            print(
                f"{default} vs astroscrappy's best setting at {words} FPR: {d[key]:.4f} vs {best[0]:.4f} "
                f"(objlim {best[1][0]}, sigfrac {best[1][1]}): margin {d[key] - best[0]:+.4f}"
            )
    if not args.no_speed:
        speed = time_models(models, args.size, args.threads)
        print(f"\nCPU s/Mpix ({args.threads} threads, {args.size}², crscale.detect mask only, best of 2)")
        for (name, sec), model in zip(speed.items(), models, strict=True):
            m = report.metrics.get(f"crscale:{name}", {})
            worst = max((r["fp_per_mpix"] for r in m.get("per_image", {}).values()), default=float("nan"))
            print(
                f"  {name:<28} {sec:.3f} s/Mpix   {kflops_per_pixel(model):6.1f} kFLOP/px   "
                f"TPR@0.01%FPR {m.get('tpr@fpr=1e-4', float('nan')):.3f}"
                f"   worst frame {worst:,.0f} FP px/Mpix"
            )
        out = Path(args.out)
        plot(report.metrics, speed, out / "speed_quality.png")
        (out / "speed.json").write_text(json.dumps(speed, indent=2) + "\n")
        print(f"plot: {out / 'speed_quality.png'}")


if __name__ == "__main__":
    main()
