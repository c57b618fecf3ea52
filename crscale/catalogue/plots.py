"""PNG plots of a catalogue's statistics (from :func:`crscale.catalogue.stats.summarise`).

The figures are :class:`matplotlib.figure.Figure` objects drawn on an Agg canvas directly:
pyplot and ``matplotlib.use`` are never touched, so calling this from a Jupyter session leaves
its backend and its open figures alone, and nothing is kept alive after a file is written.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from crscale.catalogue.stats import CatalogueStats, Histogram
from crscale.io.catalogue_schema import CLASSES

#: The files :func:`write_plots` writes, in order.
PLOT_FILES = (
    "rate_vs_time.png",
    "rate_distribution.png",
    "cr_size_hist.png",
    "cr_length_hist.png",
    "cr_energy_hist.png",
    "class_fractions.png",
)

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")
_CLASS_COLOURS = {"all": "black", "dot": "tab:blue", "spot": "tab:orange", "track": "tab:green",
                  "worm": "tab:red"}
_DPI = 100
# No software version in the PNG: the same statistics give the same bytes.
_PNG_METADATA = {"Software": None}


def _figure(width: float = 7.0, height: float = 4.5) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=_DPI, format="png", metadata=_PNG_METADATA)
    return path


def _no_data(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="grey")


def _density(h: Histogram) -> tuple[np.ndarray, np.ndarray]:
    """DN / dlog10(x) per bin: independent of the bin width, so any bins compare."""
    width = np.diff(np.log10(h.edges))
    return h.edges, np.asarray(h.counts, dtype=np.float64) / width


def _outside_note(h: Histogram) -> str:
    parts = []
    if h.n_nonpositive:
        parts.append(f"{h.n_nonpositive} ≤ 0")
    if h.n_below:
        parts.append(f"{h.n_below} < {h.edges[0]:.3g}")
    if h.n_above:
        parts.append(f"{h.n_above} > {h.edges[-1]:.3g}")
    if h.n_missing:
        parts.append(f"{h.n_missing} missing")
    return ", ".join(parts)


def _histogram_lines(ax: Axes, hists: dict[str, Histogram], xlabel: str, title: str) -> None:
    """One step line per group on log-log axes, with what fell outside the bins in the legend."""
    drawn = False
    lowest = math.inf
    for group, h in hists.items():
        edges, dens = _density(h)
        if not np.any(dens > 0):
            continue
        # Zero-count bins have no place on a log axis: leave them as gaps (NaN), not lines to 0.
        y = np.where(dens > 0, dens, np.nan)
        label = f"{group} (N={h.n}" + (f"; {note}" if (note := _outside_note(h)) else "") + ")"
        # baseline=None: no drop to y=0 at the ends, which a log axis cannot show.
        ax.stairs(y, edges, label=label, color=_CLASS_COLOURS.get(group), baseline=None,
                  linewidth=2.5 if group == "all" else 1.2)
        lowest = min(lowest, float(np.nanmin(y)))
        drawn = True
    ax.set_xscale("log")
    first = next(iter(hists.values()))
    ax.set_xlim(first.edges[0], first.edges[-1])
    if drawn:
        ax.set_yscale("log")
        ax.set_ylim(bottom=lowest / 2)
        ax.legend(fontsize="small")
    else:
        _no_data(ax, "no CRs")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("dN / dlog₁₀ x  (CRs per decade)")
    ax.set_title(title)


def _rate_vs_time(ax: Axes, rates: pd.DataFrame | None) -> None:
    ax.set_xlabel("date of observation (UTC)")
    ax.set_ylabel("CR rate (CR cm⁻² s⁻¹)")
    ax.set_title("CR rate per exposure (Poisson errors)")
    if rates is None or len(rates) == 0:
        _no_data(ax, "no per-exposure rates given")
        return
    df = rates.copy()
    df["time"] = pd.to_datetime(df["time"], errors="coerce")
    df["rate"] = pd.to_numeric(df["rate"], errors="coerce")
    df["rate_err"] = pd.to_numeric(df["rate_err"], errors="coerce")
    ok = df["time"].notna() & np.isfinite(df["rate"])
    n_undated = int((~df["time"].notna() & np.isfinite(df["rate"])).sum())
    df = df[ok]
    if df.empty:
        _no_data(ax, "no dated exposure with a rate")
        return
    positive = bool((df["rate"] > 0).all())
    for k, (name, grp) in enumerate(df.groupby("instrument", sort=True)):
        ax.errorbar(grp["time"].to_numpy(), grp["rate"].to_numpy(), yerr=grp["rate_err"].fillna(0).to_numpy(),
                    fmt=_MARKERS[k % len(_MARKERS)], color=f"C{k % 10}", markersize=4, capsize=2,
                    linestyle="none", label=f"{name} ({len(grp)})")
    if positive:
        # Rates of different sites and orbits differ by decades; a zero rate cannot go on log.
        ax.set_yscale("log")
    ax.legend(fontsize="small", title="instrument (exposures)")
    if n_undated:
        ax.text(0.01, 0.01, f"{n_undated} exposure(s) without a date not shown", transform=ax.transAxes,
                fontsize="small", color="grey")
    ax.figure.autofmt_xdate()


def _rate_distribution(ax: Axes, stats: CatalogueStats) -> None:
    groups = {k: h for k, h in stats.rate_histograms.items() if k != "all"}
    if len(groups) > 1 or not groups:
        groups = {"all": stats.rate_histograms["all"], **groups}
    drawn = False
    for k, (name, h) in enumerate(groups.items()):
        if not np.any(h.counts > 0):
            continue
        note = _outside_note(h)
        ax.stairs(h.counts, h.edges, color="black" if name == "all" else f"C{(k - 1) % 10}",
                  linewidth=2.0 if name == "all" else 1.2,
                  label=f"{name} ({h.n} rows" + (f"; {note}" if note else "") + ")")
        if name != "all":
            s = stats.instruments[name]
            if math.isfinite(s.rate) and s.rate > 0:
                ax.axvline(s.rate, color=f"C{(k - 1) % 10}", linestyle="--", linewidth=0.8)
        drawn = True
    ax.set_xscale("log")
    ax.set_xlim(stats.rate_histograms["all"].edges[0], stats.rate_histograms["all"].edges[-1])
    if drawn:
        ax.legend(fontsize="small", title="exposure x detector rows (dashed: pooled rate)")
    else:
        _no_data(ax, "no rows with a positive rate")
    ax.set_xlabel("CR rate per exposure x detector (CR cm⁻² s⁻¹)")
    ax.set_ylabel("rows per bin")
    ax.set_title("Distribution of the per-detector CR rates")


def _class_fractions(ax: Axes, stats: CatalogueStats) -> None:
    groups = {**{k: v for k, v in stats.instruments.items()}, "all": stats.total}
    names = list(groups)
    x = np.arange(len(names))
    bottom = np.zeros(len(names))
    for c in CLASSES:
        frac = np.array([groups[n].class_fractions[c] for n in names], dtype=np.float64)
        frac = np.nan_to_num(frac, nan=0.0)
        ax.bar(x, 100 * frac, bottom=100 * bottom, color=_CLASS_COLOURS[c], label=c, width=0.7)
        bottom += frac
    labels = [f"{n}{'*' if groups[n].guessed else ''}\n({groups[n].n_cr} CRs)" for n in names]
    ax.set_xticks(x, labels, fontsize="small")
    ax.set_ylim(0, 100)
    ax.set_ylabel("fraction of CRs (%)")
    ax.set_xlabel("instrument" + (" (* guessed profile values)" if stats.total.guessed else ""))
    ax.set_title("Morphology classes per instrument")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))


def write_plots(
    stats: CatalogueStats, rates: pd.DataFrame | None, out_dir: str | os.PathLike
) -> list[Path]:
    """Write the catalogue's summary plots as PNG files.

    Parameters
    ----------
    stats : CatalogueStats
        From :func:`crscale.catalogue.stats.summarise`.
    rates : pandas.DataFrame or None
        Per-exposure rates (:func:`crscale.catalogue.stats.exposure_rates`): columns
        ``time``, ``rate``, ``rate_err``, ``instrument``. None: the time series is drawn empty.
    out_dir : str or path
        Folder for the files (created if missing).

    Returns
    -------
    list of Path
        The files written: ``rate_vs_time.png``, ``rate_distribution.png``,
        ``cr_size_hist.png`` (n_pixels), ``cr_length_hist.png``, ``cr_energy_hist.png`` and
        ``class_fractions.png``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    cr_plots: Sequence[tuple[str, str, str, str]] = (
        ("cr_size_hist.png", "n_pixels", "CR size (pixels)", "CR sizes"),
        ("cr_length_hist.png", "length", "CR length (pixels)", "CR lengths"),
        ("cr_energy_hist.png", "energy_ev", "deposited energy (eV)", "Energy deposited by each CR"),
    )
    for name in PLOT_FILES:
        fig, ax = _figure(8.0 if name == "class_fractions.png" else 7.0)
        if name == "rate_vs_time.png":
            _rate_vs_time(ax, rates)
        elif name == "rate_distribution.png":
            _rate_distribution(ax, stats)
        elif name == "class_fractions.png":
            _class_fractions(ax, stats)
        else:
            _, quantity, xlabel, title = next(p for p in cr_plots if p[0] == name)
            n_art = sum(stats.artefacts.values())
            note = f"; {n_art} artefacts left out" if n_art else ""
            _histogram_lines(ax, stats.histograms[quantity], xlabel, f"{title} ({stats.n_cr} CRs{note})")
            if quantity == "energy_ev" and stats.energy_incomplete_below_ev:
                # the low end the completeness measurement says is less than half complete
                ax.axvspan(stats.histograms[quantity]["all"].edges[0], stats.energy_incomplete_below_ev,
                           color="grey", alpha=0.2, label="incomplete (< 50 %)")
                ax.legend(fontsize=8)
        written.append(_save(fig, out / name))
    return written
