"""Survey-scale statistics of a CR catalogue: what ``crscale stats ARCHIVE`` prints and plots.

Two sources, both read with dask in one :func:`dask.compute` call (so each Parquet file is
read once, on the active scheduler or distributed client), summed into the fixed histograms
of :mod:`crscale.catalogue.histograms`:

* the **CR table** (one row per CR, up to ~10⁹ rows): reduced partition by partition to
  histograms with *fixed* log-spaced bins, so the whole table is summarised in one pass and
  no process ever holds more than one partition's CRs (a group of exposure files);
* the **exposure table** (one row per exposure x detector, orders of magnitude smaller):
  brought back as a few columns and grouped by instrument, which gives exact per-row rate
  percentiles.

Rates are in CR cm⁻² s⁻¹. The pooled rate of a group is ``Σ n_cr / Σ (area_cm2 x
effective_exptime)`` with the Poisson error ``sqrt(Σ n_cr) / Σ (area x time)``; rows without an
effective exposure time, or with no area, are left out of the rates (and counted).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from crscale.catalogue.defects import KINDS

# DEFAULT_BINS and log_bins are imported from here too (docs/catalogue.md, the notebooks).
from crscale.catalogue.histograms import (  # noqa: F401
    DEFAULT_BINS,
    N_EXTRA,
    Histogram,
    bin_edges,
    log_bins,
    slots,
)
from crscale.io import storage
from crscale.io.catalogue_schema import CLASSES
from crscale.io.catalogue_store import rates_dataset, read_table_dask
from crscale.io.json_values import json_safe
from crscale.io.storage import is_url

#: Quantities of the CR table that are histogrammed, with their units.
CR_QUANTITIES: dict[str, str] = {"n_pixels": "pix", "length": "pix", "energy_ev": "eV"}

#: Label of CRs and rows whose instrument is unknown.
UNKNOWN = "unknown"

_EXPOSURE_COLUMNS = [
    "exposure", "instrument", "area_cm2", "effective_exptime",
    "n_cr", "n_dot", "n_spot", "n_track", "n_worm", "guessed",
    "n_defects", "n_unverified", "rate_corrected", "rate_corrected_err",
]
#: Kinds other than ``cr`` counted apart in the CR table (artefacts; not in the histograms).
_ARTEFACTS = tuple(k for k in KINDS if k != "cr")
_GROUPS = ("all", *CLASSES)
@dataclass
class InstrumentStats:
    """Rates and counts of one instrument (or of all: ``instrument="all"``)."""

    instrument: str
    n_exposures: int
    n_detectors: int  #: exposure x detector rows
    n_cr: int  #: CRs on all rows (from the exposure table)
    n_cr_rated: int  #: CRs on the rows that enter the rates
    exposure_cm2_s: float  #: Σ area_cm2 x effective_exptime over the rated rows (cm² s)
    rate: float  #: pooled rate (CR cm⁻² s⁻¹); NaN without rated rows
    rate_err: float  #: its Poisson error
    rate_median: float  #: median of the per-row rates
    rate_p16: float
    rate_p84: float
    class_counts: dict[str, int]
    n_no_rate: int  #: rows without effective exposure time or area: left out of the rates
    n_guessed_rows: int  #: rows whose profile values are partly guessed
    guessed_fields: list[str] = field(default_factory=list)
    n_defects: int = 0  #: regions on persistent defects (not in n_cr)
    n_unverified: int = 0  #: regions a defect could explain, on detectors with too few exposures
    rate_corrected: float = math.nan  #: pooled completeness-corrected rate of the rows that have one
    rate_corrected_err: float = math.nan  #: its error (Poisson and completeness)
    n_uncorrected: int = 0  #: rated rows without a completeness (left out of rate_corrected)

    @property
    def guessed(self) -> bool:
        """Some of the rows rely on guessed profile values."""
        return self.n_guessed_rows > 0

    @property
    def class_fractions(self) -> dict[str, float]:
        """Fraction of the classified CRs in each class (NaN without CRs)."""
        total = sum(self.class_counts.values())
        return {c: (n / total if total else math.nan) for c, n in self.class_counts.items()}

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            out[name] = json_safe(getattr(self, name))
        out["class_fractions"] = json_safe(self.class_fractions)
        out["guessed"] = self.guessed
        return out


@dataclass
class CatalogueStats:
    """Survey-scale summary of a CR catalogue (see :func:`summarise`)."""

    archive: str
    instruments: dict[str, InstrumentStats]  #: by instrument name, sorted ("unknown" last)
    total: InstrumentStats  #: all instruments together
    n_cr: int  #: rows of the CR table
    class_counts: dict[str, int]  #: CRs of each class in the CR table
    n_unclassified: int  #: CR rows with a morphology outside the classes
    histograms: dict[str, dict[str, Histogram]]  #: quantity -> "all" / class -> histogram
    rate_histograms: dict[str, Histogram]  #: "all" / instrument -> per-row rate histogram
    exposures: list[str] | None = None  #: the exposures asked for (None: all)
    artefacts: dict[str, int] = field(default_factory=dict)  #: rows of each non-cr kind in the CR table
    energy_incomplete_below_ev: float | None = None  #: the spectrum is incomplete below (completeness < 50 %)

    @property
    def medians(self) -> dict[str, dict[str, float]]:
        """Median of each CR quantity, from its histogram, for all CRs and each class."""
        return {q: {g: h.median for g, h in by.items()} for q, by in self.histograms.items()}

    @property
    def class_fractions(self) -> dict[str, float]:
        """Fraction of the classified CRs of the CR table in each class."""
        total = sum(self.class_counts.values())
        return {c: (n / total if total else math.nan) for c, n in self.class_counts.items()}

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (NaN becomes None)."""
        return {
            "archive": self.archive,
            "exposures": self.exposures,
            "n_cr": self.n_cr,
            "class_counts": dict(self.class_counts),
            "class_fractions": json_safe(self.class_fractions),
            "n_unclassified": self.n_unclassified,
            "artefacts": dict(self.artefacts),
            "energy_incomplete_below_ev": self.energy_incomplete_below_ev,
            "medians": json_safe(self.medians),
            "total": self.total.to_dict(),
            "instruments": {k: v.to_dict() for k, v in self.instruments.items()},
            "histograms": {q: {g: h.to_dict() for g, h in by.items()} for q, by in self.histograms.items()},
            "rate_histograms": {k: h.to_dict() for k, h in self.rate_histograms.items()},
        }

    def format_table(self) -> str:
        """Plain-text table: one line per instrument and a total line, with footnotes."""
        head = ["instrument", "exposures", "detectors", "CRs", "defects", "unverified",
                "rate (CR cm⁻² s⁻¹)", "corrected rate", *(f"{c} %" for c in CLASSES)]
        rows = [_table_row(s) for s in self.instruments.values()]
        rows.append(_table_row(self.total, name="total"))
        widths = [max(len(head[i]), *(len(r[i]) for r in rows)) for i in range(len(head))]

        def line(cells: Sequence[str]) -> str:
            first = cells[0].ljust(widths[0])
            return "  ".join([first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))])

        out = [line(head), "  ".join("-" * w for w in widths)]
        out += [line(r) for r in rows[:-1]]
        out += ["  ".join("-" * w for w in widths), line(rows[-1])]
        guessed = [s for s in self.instruments.values() if s.guessed]
        if guessed:
            which = "; ".join(
                f"{s.instrument}: {s.n_guessed_rows} of {s.n_detectors} rows"
                + (f" ({', '.join(s.guessed_fields)})" if s.guessed_fields else "")
                for s in guessed
            )
            out.append(f"* rates rely on guessed profile values, not measured ones: {which}")
        if self.total.n_no_rate:
            out.append(f"{self.total.n_no_rate} exposure x detector row(s) without effective exposure "
                       "time or area are left out of the rates (their CRs are counted)")
        if self.total.n_defects or self.total.n_unverified:
            out.append(f"CRs and rates count kind cr only: {self.total.n_defects} region(s) on persistent "
                       f"defects and {self.total.n_unverified} unverified (too few exposures of their "
                       "detector to tell a defect from a CR) are left out")
        if self.total.n_uncorrected:
            out.append(f"{self.total.n_uncorrected} row(s) without a completeness measurement are left out "
                       "of the corrected rates")
        if self.energy_incomplete_below_ev:
            out.append(f"energy spectrum incomplete (completeness < 50 %) below "
                       f"{self.energy_incomplete_below_ev:.3g} eV")
        if self.n_cr != self.total.n_cr:
            out.append(f"note: the CR table holds {self.n_cr} rows, the exposure table counts "
                       f"{self.total.n_cr} CRs")
        return "\n".join(out)


def _table_row(s: InstrumentStats, name: str | None = None) -> list[str]:
    rate = "n/a" if not math.isfinite(s.rate) else f"{s.rate:#.3g} ± {s.rate_err:#.3g}"
    corrected = ("n/a" if not math.isfinite(s.rate_corrected)
                 else f"{s.rate_corrected:#.3g} ± {s.rate_corrected_err:#.3g}")
    fractions = [("-" if math.isnan(f) else f"{100 * f:.1f}") for f in s.class_fractions.values()]
    label = (name or s.instrument) + ("*" if s.guessed else "")
    return [label, str(s.n_exposures), str(s.n_detectors), str(s.n_cr), str(s.n_defects),
            str(s.n_unverified), rate, corrected, *fractions]


# ---------------------------------------------------------------------------------------------
# The CR table: one small vector of counts per partition, summed over the partitions.


def _column_names(edges: Mapping[str, np.ndarray]) -> list[str]:
    names = ["n_rows", *(f"class|{c}" for c in CLASSES), "class|other", *(f"kind|{k}" for k in _ARTEFACTS)]
    for q, e in edges.items():
        for g in _GROUPS:
            names += [f"{q}|{g}|{i}" for i in range(e.size + N_EXTRA)]
    return names


def _cr_partition_counts(pdf: pd.DataFrame, edges: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """One exposure's CRs reduced to one row of counts (histogram slots of every group).

    Rows of a kind other than ``cr`` (defects, unverified) are only counted, by kind; rows
    without a kind (catalogues older than format 1.3) are CRs.
    """
    if "kind" in pdf:
        kind = pdf["kind"].astype(object).where(pdf["kind"].notna(), "cr").to_numpy()
    else:
        kind = np.full(len(pdf), "cr", dtype=object)
    artefacts = np.array([int(np.count_nonzero(kind == k)) for k in _ARTEFACTS], dtype=np.int64)
    pdf = pdf[kind == "cr"]
    morph = pdf["morphology"].astype(object).to_numpy()
    # Class code per CR: 0..3 the classes, 4 anything else; one bincount then fills all groups.
    code = np.full(len(pdf), len(CLASSES), dtype=np.intp)
    for k, c in enumerate(CLASSES):
        code[morph == c] = k
    per_class = np.bincount(code, minlength=len(CLASSES) + 1)
    parts = [np.array([len(pdf)], dtype=np.int64), per_class.astype(np.int64), artefacts]
    for q, e in edges.items():
        nslot = e.size + N_EXTRA
        values = pdf[q].to_numpy(dtype=np.float64, na_value=np.nan)
        by_class = np.bincount(code * nslot + slots(values, e), minlength=(len(CLASSES) + 1) * nslot)
        by_class = by_class.reshape(len(CLASSES) + 1, nslot)
        parts.append(by_class.sum(axis=0))  # "all", unclassified rows included
        parts.extend(by_class[: len(CLASSES)])
    row = np.concatenate(parts).astype(np.int64)[None, :]
    return pd.DataFrame(row, columns=_column_names(edges))


def _cr_counts(archive: str | os.PathLike, exposures: Sequence[str] | None,
               edges: Mapping[str, np.ndarray]) -> Any:
    """Lazy sum over the CR table's partitions of :func:`_cr_partition_counts`."""
    cr_edges = {q: edges[q] for q in CR_QUANTITIES}
    ddf = read_table_dask(archive, "crs", exposures=exposures, columns=[*CR_QUANTITIES, "morphology", "kind"])
    func = partial(_cr_partition_counts, edges=cr_edges)
    # Everything comes from this single map_partitions: several branches off the reader (e.g.
    # one dask.array.histogram per column and class) would each fuse their own read of every
    # file, and value_counts would shuffle. Here each file is read once and reduced at once.
    per_partition = ddf.map_partitions(func, meta=func(ddf._meta), enforce_metadata=False)
    return per_partition.sum()


def _unpack_cr_counts(sums: pd.Series, edges: Mapping[str, np.ndarray]) -> dict[str, Any]:
    v = np.asarray(sums.reindex(_column_names({q: edges[q] for q in CR_QUANTITIES})).fillna(0),
                   dtype=np.int64)
    pos = 1
    class_counts = {c: int(n) for c, n in zip(CLASSES, v[pos:pos + len(CLASSES)], strict=True)}
    pos += len(CLASSES)
    unclassified = int(v[pos])
    pos += 1
    artefacts = {k: int(n) for k, n in zip(_ARTEFACTS, v[pos:pos + len(_ARTEFACTS)], strict=True)}
    pos += len(_ARTEFACTS)
    histograms: dict[str, dict[str, Histogram]] = {}
    for q, unit in CR_QUANTITIES.items():
        e = edges[q]
        nslot = e.size + N_EXTRA
        histograms[q] = {}
        for g in _GROUPS:
            histograms[q][g] = Histogram.from_slots(q, unit, e, v[pos:pos + nslot])
            pos += nslot
    return {"n_cr": int(v[0]), "class_counts": class_counts, "n_unclassified": unclassified,
            "histograms": histograms, "artefacts": artefacts}


# ---------------------------------------------------------------------------------------------
# The exposure table.


def _instrument_labels(values: pd.Series) -> pd.Series:
    labels = values.astype(object).where(values.notna(), None)
    return labels.map(lambda s: s.strip() if isinstance(s, str) and s.strip() else UNKNOWN)


def _prepare_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Per-row rate inputs: which rows enter the rates, and their rate."""
    df = df.copy()
    df["instrument"] = _instrument_labels(df["instrument"])
    at = df["area_cm2"].astype("float64") * df["effective_exptime"].astype("float64")
    rated = at.notna() & np.isfinite(at) & (at > 0)
    df["rated"] = rated
    df["at"] = at.where(rated, 0.0)
    df["row_rate"] = (df["n_cr"].astype("float64") / at).where(rated)
    for col in ("n_defects", "n_unverified"):
        df[col] = df[col].fillna(0).astype("int64") if col in df else 0
    for col in ("rate_corrected", "rate_corrected_err"):
        df[col] = df[col].astype("float64") if col in df else np.nan
    guessed = df["guessed"].astype(object).where(df["guessed"].notna(), "")
    df["guessed"] = guessed.map(lambda s: str(s).strip())
    return df


def _instrument_stats(name: str, rows: pd.DataFrame) -> InstrumentStats:
    rated = rows[rows["rated"]]
    n_rated = int(rated["n_cr"].sum())
    at = float(rated["at"].sum())
    rates = rated["row_rate"].to_numpy(dtype=np.float64)
    if rates.size:
        p16, p50, p84 = (float(x) for x in np.percentile(rates, [16, 50, 84]))
    else:
        p16 = p50 = p84 = math.nan
    corr = rated[np.isfinite(rated["rate_corrected"])]
    at_c = float(corr["at"].sum())
    guessed_rows = rows["guessed"] != ""
    fields = sorted({f.strip() for s in rows.loc[guessed_rows, "guessed"] for f in s.split(",") if f.strip()})
    return InstrumentStats(
        instrument=name,
        n_exposures=int(rows["exposure"].nunique()),
        n_detectors=len(rows),
        n_cr=int(rows["n_cr"].sum()),
        n_cr_rated=n_rated,
        exposure_cm2_s=at,
        rate=n_rated / at if at > 0 else math.nan,
        rate_err=math.sqrt(n_rated) / at if at > 0 else math.nan,
        rate_median=p50,
        rate_p16=p16,
        rate_p84=p84,
        class_counts={c: int(rows[f"n_{c}"].sum()) for c in CLASSES},
        n_no_rate=int((~rows["rated"]).sum()),
        n_guessed_rows=int(guessed_rows.sum()),
        guessed_fields=fields,
        n_defects=int(rows["n_defects"].sum()),
        n_unverified=int(rows["n_unverified"].sum()),
        # pooled as the raw rate: Σ (n_i / C_i) / Σ (area x time)
        rate_corrected=float((corr["rate_corrected"] * corr["at"]).sum()) / at_c if at_c > 0 else math.nan,
        rate_corrected_err=float(np.sqrt(((corr["rate_corrected_err"] * corr["at"]) ** 2).sum())) / at_c
        if at_c > 0 else math.nan,
        n_uncorrected=int(len(rated) - len(corr)),
    )


def _sort_key(name: str) -> tuple[bool, str]:
    return (name == UNKNOWN, name.lower())


# ---------------------------------------------------------------------------------------------


def summarise(
    archive: str | os.PathLike,
    *,
    exposures: Sequence[str] | None = None,
    bins: Mapping[str, Any] | None = None,
) -> CatalogueStats:
    """Survey-scale statistics of an archive's CR catalogue.

    The CR table is reduced with dask.dataframe, partition by partition (consecutive exposure
    files of about :data:`crscale.io.catalogue_store.PARTITION_BYTES` each), to fixed-bin
    histograms: no process holds more than one partition's CRs. The CR and
    exposure tables are computed in one :func:`dask.compute` call, on the current scheduler
    (a :class:`distributed.Client` when one is active), so every file is read once.

    Parameters
    ----------
    archive : str or path
        The archive (the folder that holds ``catalogue/``).
    exposures : sequence of str, optional
        Only these exposures.
    bins : mapping, optional
        Bin edges (positive, increasing) replacing the defaults for ``"n_pixels"``,
        ``"length"``, ``"energy_ev"`` or ``"rate"``; the defaults are log-spaced with 10 bins
        per decade over 1–10⁴ pix, 1–10³ pix, 10²–10⁹ eV and 10⁻⁴–10² CR cm⁻² s⁻¹.

    Returns
    -------
    CatalogueStats

    Raises
    ------
    ArchiveError
        The archive has no catalogue, or no rows for an exposure asked for.
    """
    import dask

    edges = bin_edges(bins)
    exposures = list(exposures) if exposures is not None else None
    cr_sums = _cr_counts(archive, exposures, edges)
    # The exposure table is one row per exposure x detector: small enough to come back whole
    # (a few columns), which gives exact per-row rate percentiles.
    exp_ddf = read_table_dask(archive, "exposures", exposures=exposures, columns=_EXPOSURE_COLUMNS)
    sums, exp_rows = dask.compute(cr_sums, exp_ddf)

    cr = _unpack_cr_counts(sums, edges)
    rows = _prepare_rows(exp_rows.reset_index(drop=True))
    instruments = {
        name: _instrument_stats(name, grp)
        for name, grp in sorted(rows.groupby("instrument", sort=False), key=lambda kv: _sort_key(kv[0]))
    }
    total = _instrument_stats("all", rows)
    rate_histograms = {"all": Histogram.of_values("rate", "cm-2 s-1", edges["rate"], rows["row_rate"])}
    for name in instruments:
        rate_histograms[name] = Histogram.of_values(
            "rate", "cm-2 s-1", edges["rate"], rows.loc[rows["instrument"] == name, "row_rate"]
        )
    return CatalogueStats(
        archive=str(archive) if is_url(archive) else str(Path(archive)),
        instruments=instruments,
        total=total,
        n_cr=cr["n_cr"],
        class_counts=cr["class_counts"],
        n_unclassified=cr["n_unclassified"],
        histograms=cr["histograms"],
        rate_histograms=rate_histograms,
        exposures=exposures,
        artefacts=cr["artefacts"],
        energy_incomplete_below_ev=_energy_limit(archive),
    )


def _energy_limit(archive: str | os.PathLike) -> float | None:
    """The highest ``energy_50_ev`` of the archive's completeness measurements (None: none)."""
    import json

    limits = []
    folder = storage.location(archive) / "defects"
    # One level at a time: an object store's RemotePath.glob matches names, not nested patterns.
    groups: list[Path | storage.RemotePath] = sorted(folder.iterdir(), key=str) if folder.is_dir() else []
    for group in groups:
        try:
            meta = json.loads((group / "zarr.json").read_text())
        except (OSError, ValueError):
            continue
        comp = (meta.get("attributes") or {}).get("completeness") or {}
        if comp.get("energy_50_ev"):
            limits.append(float(comp["energy_50_ev"]))
    return max(limits) if limits else None


def exposure_rates(archive: str | os.PathLike, *, exposures: Sequence[str] | None = None) -> pd.DataFrame:
    """Per-exposure CR rates as a pandas DataFrame (for :func:`crscale.catalogue.plots.write_plots`).

    The rows of :func:`crscale.io.catalogue_store.rates_dataset` (``per="exposure"``: CRs and
    area x time summed over each exposure's detectors), sorted by time.

    Parameters
    ----------
    archive : str or path
        The archive.
    exposures : sequence of str, optional
        Only these exposures.

    Returns
    -------
    pandas.DataFrame
        Columns ``exposure``, ``instrument`` (``"unknown"`` where not known), ``time``
        (datetime64, NaT where unknown), ``mjd``, ``n_cr``, ``n_dot`` ... ``n_worm``,
        ``area_cm2``, ``effective_exptime``, ``rate``, ``rate_err`` (CR cm⁻² s⁻¹; NaN where the
        exposure has no area x time) and ``cr_pixel_fraction``.
    """
    df = rates_dataset(archive, per="exposure", exposures=exposures).to_dataframe().reset_index(drop=True)
    df["instrument"] = _instrument_labels(df["instrument"])
    for col in ("rate", "rate_err"):
        df[col] = df[col].astype("float64").where(np.isfinite(df[col].astype("float64")))
    return df
