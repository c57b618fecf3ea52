"""The model study's held-out evaluation and the issue's targets (docs/model-study.md).

Runs ``crscale evaluate`` on the 33 held-out real images of docs/evaluation/heldout-images.txt
(real ITL CR footprints injected twice per image, seed 2026) for the study's models and every
baseline installed, then astroscrappy again at the paper's other settings (objlim 2 and 1,
sigfrac 0.1), and prints the comparison table and the targets: the default model's TPR at
0.1 % FPR >= 0.95, and its margin over the best astroscrappy setting, deepCR and Cosmic-CoNN
at 0.01 % and 0.1 % FPR. Needs ../shared/data/real beside the repository.

    python benchmarks/model_study.py [--out benchmarks/out/model-study] [--model NAME ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from crscale.evaluate import evaluate
from crscale.evaluate.report import format_table, format_targets
from crscale.models.store import available_models

MANIFEST = Path(__file__).resolve().parents[1] / "docs" / "evaluation" / "heldout-images.txt"
STUDY = ("crscale-bn-3-32", "crscale-bn-3-32-att", "crscale-gn-3-32", "crscale-gn-3-32-att")
KEYS = (("tpr@fpr=1e-4", "0.01 %"), ("tpr@fpr=1e-3", "0.1 %"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/out/model-study")
    ap.add_argument(
        "--model", action="append", help="models (default: crscale-default + the study's shipped ones)"
    )
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    models = args.model or ["default", *(m for m in STUDY if m in available_models())]
    quiet = {"progress": False, "repeats": args.repeats, "log": lambda *_: None}
    report = evaluate([f"@{MANIFEST}"], out=args.out, models=tuple(models), **quiet)
    print(format_table(report.metrics))
    print(format_targets(report.run))
    default = report.run["default_model"]
    d = report.metrics[default]
    scrappy = {("4", "0.3"): report.metrics.get("astroscrappy")}
    for objlim, sigfrac in (("2", "0.1"), ("1", "0.1")):
        r = evaluate(
            [f"@{MANIFEST}"],
            models=("default",),
            baselines=("astroscrappy",),
            objlim=float(objlim),
            sigfrac=float(sigfrac),
            **quiet,
        )
        scrappy[(objlim, sigfrac)] = r.metrics["astroscrappy"]
    print("\nastroscrappy settings (objlim, sigfrac): TPR at 0.01 % / 0.1 % FPR (sigclip)")
    for (objlim, sigfrac), m in scrappy.items():
        if m:
            ops = m["operating_points"]
            print(
                f"  objlim {objlim}, sigfrac {sigfrac}: {m['tpr@fpr=1e-4']:.3f} ({ops['tpr@fpr=1e-4']}) / "
                f"{m['tpr@fpr=1e-3']:.3f} ({ops['tpr@fpr=1e-3']})"
            )
    for key, words in KEYS:
        best = max((m[key], s) for s, m in scrappy.items() if m)
        print(
            f"{default} vs astroscrappy's best setting at {words} FPR: {d[key]:.4f} vs {best[0]:.4f} "
            f"(objlim {best[1][0]}, sigfrac {best[1][1]}): margin {d[key] - best[0]:+.4f}"
        )


if __name__ == "__main__":
    main()
