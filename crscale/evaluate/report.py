"""Report folder of ``crscale evaluate``: tables and plots of detection metrics computed elsewhere.

:func:`write_report` turns three plain dicts (the metrics of each method, their curves and a
description of the run) into the files of one folder:

``metrics.json``, ``curves.json``, ``run.json``
    The dicts as given (NaN and infinities written as ``null``), so that a report can be redrawn
    or compared with another without evaluating again.
``roc.png``
    TPR against FPR on a log axis from 1e-6 to 1e-1, with the 0.01 % and 0.1 % FPR marks.
``precision_recall.png``
    Precision against recall (TPR), with the 95 % recall mark.
``tpr_per_image.png``
    TPR at 0.1 % FPR of each method on each image, as grouped horizontal bars.
``threshold_scan.png``
    TPR, precision and F1 against the threshold of each score method, with the chosen threshold
    marked; written only when there is a score method.
``report.md``
    The command, the data, the pooled table, the targets, the per-image table, what was skipped,
    and the plots above.

Score methods (a probability map) are drawn as curves, sweep methods (a parameter sweep such as
astroscrappy's sigclip) as markers joined by a thin line. A figure of None or NaN means "not
reached / not defined": it is written "–" and left out of the plots.

The figures are :class:`matplotlib.figure.Figure` objects on an Agg canvas: pyplot is never
touched, so this is safe in Jupyter and on machines without a display.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from crscale.io.json_values import json_safe

_DPI = 120
# No software version in the PNG: the same numbers give the same bytes.
_PNG_METADATA = {"Software": None}
_NONE = "–"
#: Pooled-table columns (header, metrics key) before the threshold column.
_COLUMNS = (
    ("TPR@0.01%FPR", "tpr@fpr=1e-4"),
    ("TPR@0.1%FPR", "tpr@fpr=1e-3"),
    ("precision@95%TPR", "precision@tpr=0.95"),
    ("F1", "f1"),
    ("IoU", "iou"),
    ("FDR", "fdr"),
)
_HEADERS = ["method", *(header for header, _ in _COLUMNS), "threshold"]
# Figures read off a curve: a sweep reaches each at its own parameter value, not at "threshold".
_CURVE_KEYS = {"tpr@fpr=1e-4", "tpr@fpr=1e-3", "precision@tpr=0.95"}
_FPR_RANGE = (1e-6, 1e-1)
_SWEEP_STYLE: dict[str, Any] = {"marker": "o", "markersize": 4, "linewidth": 0.8}
_NOTE_STYLE: dict[str, Any] = {"textcoords": "offset points", "xytext": (4, -10), "fontsize": "x-small"}
_QUANTITIES: tuple[tuple[str, str, Any], ...] = (
    ("tpr", "TPR", "-"), ("precision", "precision", "--"), ("f1", "F1", ":"),
)
_DATA_DETAILS = ("cr_rate", "repeats", "seed", "footprints")
_POOLED_NOTE = (
    "TPR at 0.01 % and 0.1 % FPR and precision at 95 % TPR are read off each method's curve (for a sweep, "
    "with the parameter where it is reached); F1, IoU and FDR are at the threshold of the last column. "
    f"{_NONE}: not reached or not defined."
)
_GOAL_SUFFIX = re.compile(r"\s*(>=|<=|≥|≤|>|<)\s*[-+]?[\d.]+(?:[eE][-+]?\d+)?\s*%?\s*$")


def _num(value: Any) -> float | None:
    """``value`` as a finite float; None for None, NaN, infinities and anything not a number."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _fmt(value: Any) -> str:
    x = _num(value)
    return _NONE if x is None else f"{x:.3f}"


def _param(value: Any) -> str:
    """A threshold or sigclip as people write it: 4.0, 4.5, 4.25, not 4.000."""
    x = _num(value)
    if x is None:
        return _NONE
    return f"{x:.1f}" if round(x, 1) == x else f"{x:g}"


def _count(value: Any) -> str:
    x = _num(value)
    return _NONE if x is None else f"{int(x):,}"


def _floats(values: Iterable[Any] | None) -> np.ndarray:
    return np.array([np.nan if (x := _num(v)) is None else x for v in values or ()], dtype=np.float64)


def _is_sweep(m: dict) -> bool:
    return m.get("kind") == "sweep"


def _cells(m: dict) -> list[str]:
    """The pooled-table cells of one method, after its name."""
    sweep = _is_sweep(m)
    parameter = m.get("parameter") or ("sigclip" if sweep else "threshold")
    points = m.get("operating_points") or {}
    cells = []
    for _, key in _COLUMNS:
        text = _fmt(m.get(key))
        if sweep and key in _CURVE_KEYS and text != _NONE and _num(points.get(key)) is not None:
            text += f" ({parameter} {_param(points[key])})"
        cells.append(text)
    threshold = m.get("threshold")
    cells.append(
        f"{parameter} {_param(threshold)}" if sweep and _num(threshold) is not None else _fmt(threshold)
    )
    return cells


def format_table(metrics: dict) -> str:
    """Pooled metrics of every method as an aligned plain-text table for the terminal.

    Parameters
    ----------
    metrics : dict
        Per-method metrics, keyed by method name, in display order.

    Returns
    -------
    str
        A header line, a rule line and one line per method (no trailing newline).
    """
    rows = [_HEADERS, *([name, *_cells(m)] for name, m in metrics.items())]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADERS))]

    def line(row: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )

    return "\n".join([line(rows[0]), "  ".join("-" * w for w in widths), *(line(r) for r in rows[1:])])


def _target_body(target: dict) -> str:
    text = str(target.get("text", "")).strip()
    goal = _num(target.get("goal"))
    if goal is None:
        return text
    # The text usually ends in its own "≥ goal": print the value and the goal from the numbers instead.
    match = _GOAL_SUFFIX.search(text)
    op = {"≥": ">=", "≤": "<="}.get(match.group(1), match.group(1)) if match else ">="
    head = text[: match.start()] if match else text
    # Four decimals: a value just under the goal must not print as equal to it.
    value = _num(target.get("value"))
    shown = _NONE if value is None else f"{value:.4f}"
    return f"{head} = {shown} (goal {op} {goal:.3f})"


def format_targets(run: dict) -> str:
    """One line per target of the run, saying whether it was met.

    Parameters
    ----------
    run : dict
        Run description; its ``"targets"`` list holds dicts with ``"text"``, ``"value"``,
        ``"goal"`` (None: the text alone is printed) and ``"met"``.

    Returns
    -------
    str
        Lines such as ``target met: <text> = 0.960 (goal >= 0.950)``; empty without targets.
    """
    targets = run.get("targets") or []
    return "\n".join(f"target {'met' if t.get('met') else 'NOT met'}: {_target_body(t)}" for t in targets)


def _figure(width: float = 7.0, height: float = 4.5) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _no_data(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="grey")


def _curves(ax: Axes, metrics: dict, curves: dict, xy: tuple[str, str], xlim: tuple[float, float]) -> None:
    """Each method's curve: score methods as lines, sweeps as markers with a few parameter values."""
    drawn = False
    for i, (name, m) in enumerate(metrics.items()):
        curve = curves.get(name) or {}
        x, y, t = (_floats(curve.get(key)) for key in (*xy, "threshold"))
        if x.size != y.size:
            continue
        ok = np.isfinite(x) & np.isfinite(y)
        if xy[0] == "fpr":
            ok &= x > 0  # a log axis has no FPR 0
        if not ok.any():
            continue
        colour, label = f"C{i % 10}", m.get("label") or name
        if not _is_sweep(m):
            ax.plot(x[ok], y[ok], color=colour, linewidth=1.5, label=label)
        else:
            parameter = m.get("parameter") or "sigclip"
            ax.plot(x[ok], y[ok], color=colour, label=f"{label} ({parameter} sweep)", **_SWEEP_STYLE)
            if t.size == x.size:
                shown = np.flatnonzero(ok & (x >= xlim[0]) & (x <= xlim[1]) & np.isfinite(t))
                pick = np.unique(np.linspace(0, shown.size - 1, min(4, shown.size)).round().astype(int))
                for k in shown[pick]:
                    ax.annotate(_param(t[k]), (x[k], y[k]), color=colour, **_NOTE_STYLE)
        drawn = True
    ax.set_xlim(*xlim)
    ax.set_ylim(0, 1)
    if drawn:
        ax.legend(fontsize="small", loc="best")
    else:
        _no_data(ax, "no curves")


def _mark(ax: Axes, x: float, text: str) -> None:
    ax.axvline(x, color="grey", linestyle="--", linewidth=0.8)
    ax.text(x, 0.02, text, rotation=90, ha="right", va="bottom", fontsize="small", color="grey")


def _roc(metrics: dict, curves: dict) -> Figure:
    fig, ax = _figure()
    ax.set_xscale("log")
    _curves(ax, metrics, curves, ("fpr", "tpr"), _FPR_RANGE)
    _mark(ax, 1e-4, "0.01 %")
    _mark(ax, 1e-3, "0.1 %")
    ax.set(xlabel="false-positive rate (FPR)", ylabel="true-positive rate (TPR)", title="ROC (pooled pixels)")
    return fig


def _precision_recall(metrics: dict, curves: dict) -> Figure:
    fig, ax = _figure()
    _curves(ax, metrics, curves, ("tpr", "precision"), (0.0, 1.0))
    _mark(ax, 0.95, "95 % recall")
    ax.set(xlabel="recall (TPR)", ylabel="precision", title="Precision-recall (pooled pixels)")
    return fig


def _tpr_per_image(metrics: dict, images: dict[str, Any]) -> Figure:
    names, n_methods = list(images), max(len(metrics), 1)
    # Height grows with images x methods so that 40 images of 5 methods stay readable.
    fig, ax = _figure(8.0, max(3.0, 1.5 + len(names) * (0.12 * n_methods + 0.15)))
    y, height = np.arange(len(names)), 0.8 / n_methods
    for i, (name, m) in enumerate(metrics.items()):
        per_image = m.get("per_image") or {}
        value = _floats([(per_image.get(n) or {}).get("tpr@fpr=1e-3") for n in names])
        ok = np.isfinite(value)
        if ok.any():
            at = y[ok] - 0.4 + (i + 0.5) * height
            ax.barh(at, value[ok], height=height, color=f"C{i % 10}", label=m.get("label") or name)
    ax.set_yticks(y, [f"{n} ({_count(images[n])} CR px)" for n in names], fontsize="small")
    ax.invert_yaxis()  # first image on top, as in the tables
    ax.set_xlim(0, 1)
    ax.set(xlabel="TPR at 0.1 % FPR (no bar: not reached)", title="TPR at 0.1 % FPR per image")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    else:
        _no_data(ax, "no per-image results")
    return fig


def _threshold_scan(metrics: dict) -> Figure:
    fig, ax = _figure(8.5)
    handles = []
    for i, (name, m) in enumerate(metrics.items()):
        if _is_sweep(m):
            continue
        colour, table = f"C{i % 10}", m.get("threshold_table") or []
        t = _floats(row.get("threshold") for row in table)
        for key, _, style in _QUANTITIES:
            ax.plot(t, _floats(row.get(key) for row in table), color=colour, linestyle=style, linewidth=1.2)
        if (chosen := _num(m.get("threshold"))) is not None:
            ax.axvline(chosen, color=colour, linestyle="-.", linewidth=0.8)
        handles.append(Line2D([], [], color=colour, label=m.get("label") or name))
    handles += [Line2D([], [], color="black", linestyle=style, label=q) for _, q, style in _QUANTITIES]
    handles.append(Line2D([], [], color="grey", linestyle="-.", linewidth=0.8, label="chosen threshold"))
    ax.legend(handles=handles, fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    # A little headroom: TPR and precision often sit at 1 at the ends of the scan.
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="threshold", ylabel="rate", title="Metrics against threshold")
    return fig


def _images(metrics: dict, run: dict) -> dict[str, Any]:
    """Image names, in the run's order then any only in the metrics, with their CR pixel counts."""
    images = {str(im["name"]): im.get("n_cr_pixels") for im in run.get("images") or [] if im.get("name")}
    for m in metrics.values():
        for name, row in (m.get("per_image") or {}).items():
            if images.get(name) is None:
                images[name] = (row or {}).get("n_cr_pixels")
    return images


def _md_table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    """A Markdown table with the first column as text and the others right-aligned as numbers."""
    rule = ["---"] + ["---:"] * (len(header) - 1)
    return ["| " + " | ".join(row) + " |" for row in (header, rule, *rows)]


_OPERATING_NOTE = (
    "Each method at its own operating point (a crscale model's threshold, astroscrappy's chosen "
    "sigclip): the fraction of the image's CR pixels it finds, and the pixels it flags that are "
    "not CRs, per million pixels that count. This is what a user of that setting gets on that frame. "
    "In brackets, where the set knows them: the false pixels on neither the frame's own lone spikes "
    "(hot pixels or one-pixel CRs of its own, which one exposure cannot tell apart) nor its own CRs' "
    "tails (crscale.evaluate.false_positives), that is those on the frame's real structure or noise."
)


def _operating_cell(row: dict | None) -> str:
    """``TPR / FP per Mpix`` of one method on one image."""
    if not row:
        return "–"
    fp = _num(row.get("fp_per_mpix"))
    cell = f"{_fmt(row.get('tpr'))} / {'–' if fp is None else f'{fp:,.0f}'}"
    other = _num((row.get("fp_kinds") or {}).get("other"))
    return cell if other is None else f"{cell} ({other:,.0f})"


_SIGNIFICANT_NOTE = (
    "The same figures with the faint CR pixels left out: those whose injected charge is below "
    "{nsigma:g} times the pixel's noise (crscale.injection.faint). They count neither as "
    "found nor as missed. On a bright flat most CR pixels are faint: no pixel-wise method finds "
    "them at a low false-positive rate. Per image: TPR / FP px per Mpix at the operating point, "
    "and the significant CR pixels."
)


def significant_view(metrics: dict) -> dict:
    """The metrics of the methods that have figures on significant CR pixels, as those figures.

    Same layout as ``metrics`` (pooled keys at the top, ``per_image`` rows), so that
    :func:`format_table` and the per-image tables read it unchanged; methods without
    ``significant`` figures (a labelled set) are left out.
    """
    out = {}
    for name, m in metrics.items():
        if not m.get("significant"):
            continue
        rows = {k: v["significant"] for k, v in (m.get("per_image") or {}).items() if v.get("significant")}
        out[name] = {**m, **m["significant"], "per_image": rows}
    return out


def _significant_section(metrics: dict, images: dict[str, Any]) -> list[str]:
    """Pooled and per-image figures on significant CR pixels; empty when the run has none."""
    sig = significant_view(metrics)
    if not sig:
        return []
    nsigma = next(iter(sig.values())).get("nsigma", 5.0)
    rows = []
    for name in images:
        cells = [m["per_image"].get(name) for m in sig.values()]
        count = next((c.get("n_cr_pixels") for c in cells if c), None)
        rows.append([name, _count(count), *(_operating_cell(c) for c in cells)])
    return [
        _SIGNIFICANT_NOTE.format(nsigma=nsigma),
        "",
        *_md_table(_HEADERS, [[n, *_cells(m)] for n, m in sig.items()]),
        "",
        *_md_table(["image", "significant CR pixels", *sig], rows),
    ]


def _markdown(metrics: dict, run: dict, images: dict[str, Any], pngs: dict[str, str]) -> str:
    data, targets, skipped = run.get("data") or {}, run.get("targets") or [], run.get("skipped") or []
    n_pixels, n_cr = _num(data.get("n_pixels")), _num(data.get("n_cr_pixels"))
    share = f" ({100 * n_cr / n_pixels:.3g} %)" if n_pixels and n_cr is not None else ""
    extra = ", ".join(f"{k} {data[k]}" for k in _DATA_DETAILS if data.get(k) is not None)
    per_image = [m.get("per_image") or {} for m in metrics.values()]
    image_rows = [
        [n, _count(c), *(_fmt((p.get(n) or {}).get("tpr@fpr=1e-3")) for p in per_image)]
        for n, c in images.items()
    ]
    operating_rows = [
        [n, *(_operating_cell(p.get(n)) for p in per_image)] for n in images
    ]
    sections = {
        "Data": [
            f"- mode: {data.get('mode', '?')}" + (f" ({extra})" if extra else ""),
            f"- images: {data.get('n_images', len(images))}",
            f"- pixels: {_count(n_pixels)}, CR pixels: {_count(n_cr)}{share}",
            f"- CR masks dilated: {'yes' if data.get('dilate') else 'no'}",
            *([f"- default model: {run['default_model']}"] if run.get("default_model") else []),
        ],
        "Pooled metrics": [
            _POOLED_NOTE,
            "",
            *_md_table(_HEADERS, [[n, *_cells(m)] for n, m in metrics.items()]),
        ],
        "Targets": [f"- {'✅ met' if t.get('met') else '❌ NOT met'}: {_target_body(t)}" for t in targets],
        "TPR at 0.1 % FPR per image": _md_table(["image", "CR pixels", *metrics], image_rows),
        "At the operating threshold, per image: TPR / false-positive pixels per Mpix": [
            _OPERATING_NOTE,
            "",
            *_md_table(["image", *metrics], operating_rows),
        ],
        "On significant CR pixels": _significant_section(metrics, images),
        "Skipped": [f"- {s.get('method') or s.get('path') or '?'}: {s.get('problem', '')}" for s in skipped],
        "Figures": [f"![{title}]({png})\n" for png, title in pngs.items()],
    }
    command = ["```", str(run["command"]), "```", ""] if run.get("command") else []
    lines = ["# crscale evaluate report", "", *command]
    lines.append(f"Created {run.get('created', '?')} with crscale {run.get('crscale_version', '?')}.")
    for title, body in sections.items():
        if body:
            lines += ["", f"## {title}", "", *body]
    return "\n".join(lines)


def write_report(out_dir: str | Path, metrics: dict, curves: dict, run: dict) -> list[Path]:
    """Write the evaluation report folder: JSON copies of the inputs, plots and ``report.md``.

    Parameters
    ----------
    out_dir : str or Path
        Folder for the files (created with its parents if missing).
    metrics : dict
        Per-method metrics, keyed by method name; insertion order is display order.
    curves : dict
        Per-method curves (``"fpr"``, ``"tpr"``, ``"precision"``, ``"threshold"`` lists), same keys.
    run : dict
        Run description: command, data summary, images, skipped inputs, settings, targets.

    Returns
    -------
    list of Path
        The files written: ``metrics.json``, ``curves.json``, ``run.json``, ``roc.png``,
        ``precision_recall.png``, ``tpr_per_image.png``, ``threshold_scan.png`` (only with a
        score method) and ``report.md``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, obj in (("metrics.json", metrics), ("curves.json", curves), ("run.json", run)):
        text = json.dumps(json_safe(obj), indent=2, ensure_ascii=False, allow_nan=False, default=str)
        (out / name).write_text(text + "\n", encoding="utf-8")
        written.append(out / name)
    images = _images(metrics, run)
    # File name: (title in report.md, drawing); drawn one at a time so only one figure is alive.
    figures = {
        "roc.png": ("ROC", lambda: _roc(metrics, curves)),
        "precision_recall.png": ("Precision-recall", lambda: _precision_recall(metrics, curves)),
        "tpr_per_image.png": ("TPR at 0.1 % FPR per image", lambda: _tpr_per_image(metrics, images)),
    }
    if any(not _is_sweep(m) for m in metrics.values()):
        figures["threshold_scan.png"] = ("Threshold scan", lambda: _threshold_scan(metrics))
    for name, (_, draw) in figures.items():
        draw().savefig(out / name, dpi=_DPI, metadata=_PNG_METADATA)
        written.append(out / name)
    titles = {name: title for name, (title, _) in figures.items()}
    (out / "report.md").write_text(_markdown(metrics, run, images, titles), encoding="utf-8")
    written.append(out / "report.md")
    return written
