"""``crscale evaluate`` as a function: build the evaluation set, run the methods, write the report."""

from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import dataclass, field
from pathlib import Path

from crscale._logging import Reporter, reporter
from crscale.errors import OutputError, SettingsError
from crscale.evaluate.dataset import (
    EVAL_CR_RATE,
    image_files,
    injected_set,
    load_labelled,
    load_pipeline_flagged,
    pair_files,
)
from crscale.evaluate.methods import (
    BASELINES,
    COSMIC_CONN_MODELS,
    DEEPCR_MODELS,
    DEFAULT_SIGCLIPS,
    CrscaleMethod,
    Method,
    baseline_methods,
    crscale_method,
)
from crscale.evaluate.runner import evaluate_methods, frame_targets, targets

logger = logging.getLogger(__name__)


@dataclass
class EvaluationReport:
    """What :func:`evaluate` produced.

    Attributes
    ----------
    metrics, curves, run : dict
        The contents of ``metrics.json``, ``curves.json`` and ``run.json``.
    files : list of Path
        The files written (empty without ``out``).
    """

    metrics: dict
    curves: dict
    run: dict
    files: list = field(default_factory=list)


#: ``masks`` value that takes each image's pipeline CR flags (its DQ plane) as the truth.
PIPELINE_MASKS = "pipeline"


def evaluate(
    images: list[str | Path],
    masks: list[str | Path] | None = None,
    out: str | Path | None = None,
    *,
    models: tuple[str, ...] = ("default",),
    threshold: float | None = None,
    baselines: tuple[str, ...] = BASELINES,
    sigclips: tuple[float, ...] = DEFAULT_SIGCLIPS,
    objlim: float = 4.0,
    sigfrac: float = 0.3,
    sigclip: float = 4.5,
    deepcr_models: tuple[str, ...] = DEEPCR_MODELS,
    cosmic_conn_models: tuple[str, ...] = COSMIC_CONN_MODELS,
    dilate: bool = False,
    trained_dilated: tuple[str, ...] = (),
    darks: tuple[str | Path, ...] = (),
    dark_nsigma: float = 3.0,
    use_itl: bool = True,
    cr_rate: float = EVAL_CR_RATE,
    repeats: int = 1,
    seed: int = 2026,
    device: str = "auto",
    precision: str = "auto",
    progress: bool = True,
    update_cards: bool = False,
    command: str = "",
    log: Reporter | None = None,
) -> EvaluationReport:
    """Evaluate crscale models and baselines on labelled real images.

    Parameters
    ----------
    images : list of str or Path
        FITS image files or directories.
    masks : list of str or Path, optional
        CR mask files or directories, matched to the images by name
        (:func:`~crscale.evaluate.dataset.pair_files`). Without masks, an injection set is built
        from the images (:func:`~crscale.evaluate.dataset.injected_set`: real CR footprints of
        the bundled ITL darks and/or ``darks``, at ``cr_rate`` per pixel, ``repeats`` draws per
        image, placed with ``seed``). ``["pipeline"]``: the CR flags that each image's pipeline
        left in its DQ plane are the truth, which measures agreement with the pipeline
        (:func:`~crscale.evaluate.dataset.load_pipeline_flagged`).
    out : str or Path, optional
        Report folder (``metrics.json``, ``curves.json``, ``run.json``, PNG plots, ``report.md``).
    models : tuple of str
        crscale models: shipped names, ``"default"`` or ``.safetensors`` paths. The first is
        the one the targets are checked for.
    threshold : float, optional
        Operating threshold of the crscale models (default: each card's recommendation).
    baselines : tuple of str
        Among ``"astroscrappy"``, ``"deepcr"``, ``"cosmic-conn"``; missing packages are skipped
        with a message.
    sigclips, objlim, sigfrac, sigclip : optional
        astroscrappy's sweep, its fixed parameters, and the sweep point F1/IoU/FDR are given at.
    dilate : bool
        The 3×3 dilation convention of the attention-gate paper (off by default).
    trained_dilated : tuple of str
        Methods (metrics names) trained on dilated masks, whose output is not dilated.
    darks, dark_nsigma, use_itl, cr_rate, repeats, seed : optional
        The injection set's footprints, rate, draws per image and seed (without ``masks``).
    deepcr_models, cosmic_conn_models : tuple of str
        Which shipped models of each package to run.
    device, precision : str
        Where and how the crscale models run (as :func:`crscale.detect`).
    progress : bool
        Progress bars.
    update_cards : bool
        Write the figures of each crscale model given as a file (and the other methods' on the
        same pixels) into the ``evaluation`` field of its model card (``<model>.json``).
        Shipped models' cards are left alone.
    command : str
        The command line, recorded in ``run.json`` and the report.
    log : callable, optional
        Receives the messages (skipped files and methods, the summary line); by default they
        are logged at INFO on ``crscale.evaluate.api`` (the CLI prints them).

    Returns
    -------
    EvaluationReport
    """
    log = reporter(logger, log)
    if cr_rate <= 0 or repeats < 1:
        raise SettingsError(f"--cr-rate must be > 0 and --repeats >= 1, not {cr_rate:g} and {repeats}")
    if threshold is not None and not 0 < threshold < 1:
        raise SettingsError(f"--threshold must be between 0 and 1 (a probability), not {threshold:g}")
    if not sigclips or min(sigclips) <= 0:
        raise SettingsError(f"astroscrappy sigclips must be positive numbers, not {list(sigclips)}")
    if out is not None:
        # Before the long part: a report folder that cannot be made should fail now, not at the end.
        try:
            Path(out).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot write the report to {out}: {exc}") from exc
    skipped: list[dict] = []
    if masks and [str(m) for m in masks] == [PIPELINE_MASKS]:
        data = load_pipeline_flagged(images, skipped=skipped)
        mode = "pipeline"
    elif masks:
        data = load_labelled(pair_files(images, masks), skipped=skipped, dq_paths=image_files(images)[1])
        mode = "masks"
    else:
        data = injected_set(
            images,
            darks=darks,
            use_itl=use_itl,
            rate=cr_rate,
            repeats=repeats,
            seed=seed,
            skipped=skipped,
            log=log,
        )
        mode = "injected"
    for s in skipped:
        log(f"skipping {s['path']}: {s['problem']}")
    if not data:
        raise SettingsError("no usable image in the evaluation set")
    n_cr = sum(im.n_cr_pixels for im in data)
    if n_cr == 0:
        raise SettingsError("the evaluation set holds no CR pixel: nothing to measure")
    methods: list[Method] = [
        crscale_method(m, threshold=threshold, device=device, precision=precision) for m in models
    ]
    extra, missing = baseline_methods(
        tuple(baselines),
        sigclips=tuple(sigclips),
        objlim=objlim,
        sigfrac=sigfrac,
        sigclip=sigclip,
        deepcr_models=tuple(deepcr_models),
        cosmic_conn_models=tuple(cosmic_conn_models),
    )
    for miss in missing:
        log(f"skipping baseline {miss['method']}: {miss['problem']}")
    methods += extra
    for m in methods:
        m.trained_dilated = m.name in trained_dilated
    n_px = sum(im.n_pixels for im in data)
    log(
        f"evaluating {len(methods)} method(s) on {len(data)} image(s) ({mode}): "
        f"{n_px:,} pixels, {n_cr:,} CR pixels{', 3x3 dilation' if dilate else ''}"
    )
    result = evaluate_methods(data, methods, dilate=dilate, progress=progress, log=log)
    from crscale._version import __version__

    default = methods[0].name if methods and methods[0].name in result.metrics else None
    footprints = ", ".join((["LSST ITL darks (bundled)"] if use_itl else []) + [str(d) for d in darks])
    run = {
        "command": command,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "crscale_version": __version__,
        "data": {
            "mode": mode,
            "n_images": len(data),
            "n_pixels": n_px,
            "n_cr_pixels": n_cr,
            "dilate": dilate,
            "cr_rate": cr_rate if mode == "injected" else None,
            "repeats": repeats if mode == "injected" else None,
            "seed": seed if mode == "injected" else None,
            "footprints": footprints if mode == "injected" else "",
            "dark_nsigma": dark_nsigma if mode == "injected" and darks else None,
        },
        "images": [im.provenance() for im in data],
        "skipped": skipped + missing + result.skipped,
        "settings": {
            "models": list(models),
            "threshold": threshold,
            "baselines": list(baselines),
            "objlim": objlim,
            "sigfrac": sigfrac,
            "sigclips": list(sigclips),
            "sigclip": sigclip,
            "dilate": dilate,
            "trained_dilated": list(trained_dilated),
            "device": device,
            "precision": precision,
        },
        "default_model": default,
        "targets": targets(result.metrics, default),
        "frame_targets": frame_targets(result.metrics, default) if default else [],
    }
    report = EvaluationReport(result.metrics, result.curves, run)
    if out is not None:
        from crscale.evaluate.report import write_report

        try:
            report.files = write_report(out, result.metrics, result.curves, run)
        except OSError as exc:
            raise OutputError(f"cannot write the report to {out}: {exc}") from exc
    if update_cards:
        from crscale.models.store import WEIGHTS_DIR, weights_file

        for m in methods:
            if not isinstance(m, CrscaleMethod) or m.name not in result.metrics:
                continue
            if m.model.startswith("deepcr:") or weights_file(m.model).parent == WEIGHTS_DIR:
                log(
                    f"not updating the card of the shipped model {m.model!r}: "
                    "only cards of model files given by path"
                )
                continue
            path = update_card(m.model, result.metrics, m.name, run)
            log(f"model card updated: {path}")
    return report


def card_path(model: str) -> Path:
    """The JSON model card of a crscale model given by shipped name, ``"default"`` or path."""
    from crscale.errors import InputError
    from crscale.models.store import weights_file

    card = weights_file(model).with_suffix(".json")
    if not card.exists():
        raise InputError(card, "no model card to update beside the weights", kind="model")
    return card


def update_card(model: str, metrics: dict, name: str, run: dict) -> Path:
    """Write the evaluation summary of ``name`` (and the baselines' figures) into its model card."""
    from crscale.models.card import ModelCard

    keys = ("tpr@fpr=1e-4", "tpr@fpr=1e-3", "precision@tpr=0.95", "f1", "iou", "fdr", "threshold")
    path = card_path(model)
    card = ModelCard.read(path)
    m = metrics[name]
    card.evaluation = {
        "command": run["command"],
        "created": run["created"],
        "data": run["data"],
        "images": [im["name"] for im in run["images"]],
        **{k: m[k] for k in keys},
        "best_f1": m["best_f1"],
        "per_image": {
            k: {
                "tpr@fpr=1e-3": v["tpr@fpr=1e-3"],
                "n_cr_pixels": v["n_cr_pixels"],
                "tpr": v.get("tpr"),
                "fp_per_mpix": v.get("fp_per_mpix"),
                **({"significant": v["significant"]} if v.get("significant") else {}),
            }
            for k, v in m["per_image"].items()
        },
        **({"significant": m["significant"]} if m.get("significant") else {}),
        "threshold_table": m["threshold_table"],
        "others": {
            other: {k: v[k] for k in ("tpr@fpr=1e-4", "tpr@fpr=1e-3", "precision@tpr=0.95", "f1")}
            for other, v in metrics.items()
            if other != name
        },
    }
    from crscale.io.json_values import json_safe

    card.evaluation = json_safe(card.evaluation)
    card.write(path)
    return path

