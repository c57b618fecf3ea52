"""The model commands: ``train``, ``evaluate``, ``models``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from crscale.cli._args import float_list, name_list
from crscale.cli._run import EXIT_OK, EXIT_USAGE


def add_train(sub: Any) -> None:
    """Register ``crscale train``."""
    p = sub.add_parser(
        "train",
        help="train a CR model (label-free: real images + injected real CRs)",
        description="Train a U-Net CR detector from a YAML config (see docs/training.md): "
        "real science images, real CR footprints (LSST ITL darks and/or your own dark "
        "frames), validation on held-out images. Resumes from the checkpoint in the "
        "work folder unless --fresh.",
    )
    p.add_argument("config", help="training config (YAML)")
    p.add_argument("--epochs", type=int, help="override the config's epochs")
    p.add_argument("--workdir", help="override the work folder (patches, checkpoints)")
    p.add_argument("--output", help="override the output weight file (.safetensors)")
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=cmd_train)


def add_evaluate(sub: Any) -> None:
    """Register ``crscale evaluate``."""
    p = sub.add_parser(
        "evaluate",
        help="measure CR detection quality: crscale models against astroscrappy, deepCR, Cosmic-CoNN",
        description="Evaluate CR detectors on labelled real images: image + CR mask FITS pairs "
        "(--masks, matched by name), or, without --masks, an injection set built on the fly "
        "(each image's own CRs found with astroscrappy and left out; real CR footprints from "
        "the bundled LSST ITL darks and/or --darks added at known places). Prints the pooled "
        "table and writes metrics.json, curves.json, run.json, PNG plots (ROC, precision-recall, "
        "per image, threshold scan) and report.md to --out. See docs/evaluation.md.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGES", help="FITS images or directories")
    p.add_argument(
        "--masks",
        nargs="+",
        metavar="MASKS",
        help="CR mask FITS files or directories; or 'pipeline': the CR flags the images' own "
        "pipeline left in their DQ planes (DECam CP code 5, HST DQ 4096/8192, BANZAI BPM 8) are the "
        "truth, which measures agreement with the pipeline",
    )
    p.add_argument("--out", "-o", required=True, help="report folder (created; files replaced)")
    p.add_argument(
        "--model",
        "-m",
        action="append",
        dest="models",
        metavar="NAME",
        help="crscale model (name or .safetensors; repeatable; default: the default model). "
        "The first is checked against the targets",
    )
    p.add_argument("--threshold", type=float, help="crscale models' threshold (default: each card's)")
    p.add_argument(
        "--baselines",
        default="astroscrappy,deepcr,cosmic-conn",
        help="comma-separated among astroscrappy, deepcr, cosmic-conn, or 'none' "
        "(default: all; those not installed are skipped with a message)",
    )
    p.add_argument(
        "--sigclips",
        type=float_list,
        help="astroscrappy sigclip sweep, comma-separated (default 1,1.5,...,15,20)",
    )
    p.add_argument("--objlim", type=float, default=4.0, help="astroscrappy objlim (default 4)")
    p.add_argument("--sigfrac", type=float, default=0.3, help="astroscrappy sigfrac (default 0.3)")
    p.add_argument("--sigclip", type=float, default=4.5, help="astroscrappy operating point (default 4.5)")
    p.add_argument(
        "--deepcr-models", type=name_list, help="deepCR models to run (default ACS-WFC,decam,WFC3-UVIS)"
    )
    p.add_argument(
        "--cosmic-conn-models",
        type=name_list,
        help="Cosmic-CoNN models to run (default ground_imaging,NRES,HST_ACS_WFC)",
    )
    p.add_argument(
        "--dilate", action="store_true", help="3x3 dilation of truth and outputs (the paper's convention)"
    )
    p.add_argument(
        "--trained-dilated",
        action="append",
        default=[],
        metavar="METHOD",
        help="with --dilate: a method trained on dilated masks, whose output is not dilated (repeatable)",
    )
    p.add_argument("--darks", nargs="+", default=[], metavar="DARK", help="injection: your dark frames' CRs")
    p.add_argument(
        "--dark-nsigma",
        type=float,
        default=3.0,
        help="injection: dark-frame CR threshold in sigma (default 3)",
    )
    p.add_argument("--no-itl", action="store_true", help="injection: do not use the bundled ITL footprints")
    p.add_argument("--cr-rate", type=float, default=5e-4, help="injection: CRs per pixel (default 5e-4)")
    p.add_argument(
        "--repeats", type=int, default=1, help="injection: independent draws per image (default 1)"
    )
    p.add_argument("--seed", type=int, default=2026, help="injection: seed of the placements (default 2026)")
    p.add_argument("--device", default="auto", help="torch device of the crscale models (default auto)")
    p.add_argument("--precision", default="auto", help="crscale models' precision (default auto)")
    p.add_argument(
        "--update-card",
        action="store_true",
        help="write the figures of each --model given as a .safetensors path into its card "
        "(<model>.json, field 'evaluation'); shipped models' cards are left alone",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=cmd_evaluate)


def add_models(sub: Any) -> None:
    """Register ``crscale models``."""
    p = sub.add_parser(
        "models",
        help="list the available CR models and their model cards",
        description="List shipped models (and pip deepCR models when deepCR is "
        "installed), or print one model card.",
    )
    p.add_argument("name", nargs="?", help="print this model's card as JSON")
    p.set_defaults(handler=cmd_models)


def cmd_train(args: argparse.Namespace) -> int:
    """``crscale train``; returns the exit status."""
    from crscale.errors import CrscaleError, SettingsError
    from crscale.train import TrainConfig, train

    try:
        config = TrainConfig.from_yaml(
            args.config, epochs=args.epochs, workdir=args.workdir, output=args.output
        )
        result = train(config, resume=not args.fresh, progress=not args.no_progress)
    except SettingsError as exc:
        print(f"crscale train: {args.config}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CrscaleError as exc:  # an unreadable config or image (an InputError) ...
        print(f"crscale train: {exc}", file=sys.stderr)
        return EXIT_USAGE
    v = result.card.validation
    print(
        f"model: {result.model_path}\nvalidation: TPR@FPR=1e-3 {v['tpr@fpr=1e-3']:.4f}, "
        f"TPR@FPR=1e-4 {v['tpr@fpr=1e-4']:.4f}, F1 {v['f1']:.3f} "
        f"at threshold {result.card.recommended_threshold}"
    )
    return EXIT_OK


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``crscale evaluate``; returns the exit status."""
    import shlex

    from crscale.errors import CrscaleError
    from crscale.evaluate.api import evaluate
    from crscale.evaluate.report import format_table, format_targets

    try:
        report = evaluate(
            args.images,
            args.masks,
            args.out,
            models=tuple(args.models or ["default"]),
            threshold=args.threshold,
            baselines=name_list(args.baselines),
            **({"sigclips": args.sigclips} if args.sigclips else {}),
            objlim=args.objlim,
            sigfrac=args.sigfrac,
            sigclip=args.sigclip,
            **({"deepcr_models": args.deepcr_models} if args.deepcr_models is not None else {}),
            **(
                {"cosmic_conn_models": args.cosmic_conn_models} if args.cosmic_conn_models is not None else {}
            ),
            dilate=args.dilate,
            trained_dilated=tuple(args.trained_dilated),
            darks=tuple(args.darks),
            dark_nsigma=args.dark_nsigma,
            use_itl=not args.no_itl,
            cr_rate=args.cr_rate,
            repeats=args.repeats,
            seed=args.seed,
            device=args.device,
            precision=args.precision,
            progress=not args.no_progress,
            update_cards=args.update_card,
            command="crscale " + " ".join(map(shlex.quote, args.argv)),
        )
    except CrscaleError as exc:  # the report folder that cannot be written too (an OutputError)
        print(f"crscale evaluate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(format_table(report.metrics))
    lines = format_targets(report.run)
    if lines:
        print(lines)
    print(f"report: {Path(args.out) / 'report.md'} ({len(report.files)} files)")
    return EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    """``crscale models``; returns the exit status."""
    from crscale.errors import CrscaleError, MissingDependencyError
    from crscale.models import DEFAULT_MODEL, available_models, load_model

    if args.name:
        try:
            _, card = load_model(args.name)
        except CrscaleError as exc:
            print(f"crscale models: {exc}", file=sys.stderr)
            return EXIT_USAGE
        print(json.dumps(card.to_dict(), indent=2))
        return EXIT_OK
    print(f"{'model':<24} {'architecture':<37} {'params':>8} {'noise':<7} {'thr':>5} {'TPR@1e-3':>9} "
          f"{'TPR@1e-4':>9}")
    for name in available_models():
        _, card = load_model(name)
        a, v = card.architecture, card.validation
        norm = {'batch': 'BatchNorm', 'group': 'GroupNorm'}.get(a['norm'], a['norm'])
        arch = f"depth {a['depth']}, {a['width']} ch, {norm}{', attention' if a['attention'] else ''}"
        star = " (default)" if name == DEFAULT_MODEL else ""
        # the noise the input is scaled by (crscale.detection.normalise.input_noise)
        noise = card.normalisation.get("noise", "global")
        print(
            f"{name:<24} {arch:<37} {card.parameters:>8,} {noise:<7} {card.recommended_threshold:>5.2f} "
            f"{v.get('tpr@fpr=1e-3', float('nan')):>9.4f} {v.get('tpr@fpr=1e-4', float('nan')):>9.4f}{star}"
        )
    try:
        from crscale.models.deepcr import deepcr_model_names

        names = deepcr_model_names()
        print(f"pip deepCR models (use as deepcr:NAME): {', '.join(names)}")
    except MissingDependencyError:
        print("pip deepCR is not installed: its models are not available")
    return EXIT_OK
