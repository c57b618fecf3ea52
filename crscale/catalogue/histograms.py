"""Fixed log-spaced histograms of catalogue quantities, every value counted exactly once.

A value falls into one *slot* of a count vector ``[missing, <= 0, (0, lo), the bins..., > hi]``,
so that histograms of partitions of any size add up slot by slot
(:mod:`crscale.catalogue.stats` sums them over the CR table).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from crscale.errors import SettingsError
from crscale.io.json_values import json_safe

#: Default fixed bins: (low edge, high edge, bins per decade), log-spaced.
DEFAULT_BINS: dict[str, tuple[float, float, int]] = {
    "n_pixels": (1.0, 1e4, 10),
    "length": (1.0, 1e3, 10),
    "energy_ev": (1e2, 1e9, 10),
    "rate": (1e-4, 1e2, 10),
}

# Slots of a per-quantity count vector: missing (NaN), <= 0, (0, lo), the bins, > hi.
N_EXTRA = 3


def log_bins(low: float, high: float, per_decade: int = 10) -> np.ndarray:
    """Log-spaced bin edges from ``low`` to ``high`` (both included).

    Parameters
    ----------
    low, high : float
        First and last edge, ``0 < low < high``.
    per_decade : int
        Bins per factor of 10 (rounded so that the edges land on ``low`` and ``high``).

    Returns
    -------
    numpy.ndarray
        The edges, strictly increasing.
    """
    if not 0 < low < high:
        raise SettingsError(f"log bins need 0 < low < high, not {low}, {high}")
    n = max(1, round(per_decade * math.log10(high / low)))
    return np.logspace(math.log10(low), math.log10(high), n + 1)


def bin_edges(bins: Mapping[str, Any] | None) -> dict[str, np.ndarray]:
    """The edges of every quantity: :data:`DEFAULT_BINS`, replaced by those given in ``bins``."""
    out = {q: log_bins(*spec) for q, spec in DEFAULT_BINS.items()}
    for q, spec in (bins or {}).items():
        if q not in out:
            raise SettingsError(f"bins for unknown quantity {q!r}; one of {', '.join(out)}")
        edges = np.asarray(spec, dtype=np.float64)
        if edges.ndim != 1 or edges.size < 2 or not np.all(np.diff(edges) > 0) or edges[0] <= 0:
            raise SettingsError(f"bins[{q!r}]: edges must be positive and strictly increasing")
        out[q] = edges
    return out


@dataclass
class Histogram:
    """Counts of one quantity in fixed bins, with what fell outside them.

    ``counts[i]`` counts ``edges[i] <= v < edges[i + 1]`` (the last bin includes its upper
    edge, as :func:`numpy.histogram`). Every value is counted exactly once:
    ``n == counts.sum() + n_missing + n_nonpositive + n_below + n_above``.
    """

    quantity: str
    unit: str
    edges: np.ndarray
    counts: np.ndarray
    n_missing: int = 0  #: NaN / null values
    n_nonpositive: int = 0  #: values <= 0 (no place on a log axis)
    n_below: int = 0  #: 0 < v < edges[0]
    n_above: int = 0  #: v > edges[-1]

    @classmethod
    def from_slots(cls, quantity: str, unit: str, edges: np.ndarray, slots: np.ndarray) -> Histogram:
        """Build from the slot vector ``[missing, <= 0, below, bins..., above]``."""
        slots = np.asarray(slots, dtype=np.int64)
        return cls(quantity, unit, np.asarray(edges, dtype=np.float64), slots[N_EXTRA:-1].copy(),
                   int(slots[0]), int(slots[1]), int(slots[2]), int(slots[-1]))

    @classmethod
    def of_values(cls, quantity: str, unit: str, edges: np.ndarray, values: np.ndarray) -> Histogram:
        """Histogram of values held in memory (the small per-row rate columns)."""
        return cls.from_slots(quantity, unit, edges, slot_counts(np.asarray(values, np.float64), edges))

    @property
    def n(self) -> int:
        """All values, counted or not in the bins."""
        return int(self.counts.sum()) + self.n_missing + self.n_nonpositive + self.n_below + self.n_above

    @property
    def median(self) -> float:
        """Median of the positive values, interpolated log-linearly inside its bin.

        Values below / above the binned range take part in the ranks; a median that falls
        among them is returned as the first / last edge (a bound). NaN when there are no
        positive values.
        """
        below = self.n_below
        total = below + int(self.counts.sum()) + self.n_above
        if total == 0:
            return math.nan
        half = total / 2.0
        if half <= below:
            return float(self.edges[0])
        cum = below + np.cumsum(self.counts)
        i = int(np.searchsorted(cum, half, side="left"))
        if i >= self.counts.size:
            return float(self.edges[-1])
        before = cum[i] - self.counts[i]
        frac = (half - before) / self.counts[i]
        lo, hi = self.edges[i], self.edges[i + 1]
        return float(lo * (hi / lo) ** frac)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {
            "quantity": self.quantity,
            "unit": self.unit,
            "edges": [float(e) for e in self.edges],
            "counts": [int(c) for c in self.counts],
            "n": self.n,
            "n_missing": self.n_missing,
            "n_nonpositive": self.n_nonpositive,
            "n_below": self.n_below,
            "n_above": self.n_above,
            "median": json_safe(float(self.median)),
        }


def slot_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts in the slots ``[missing, <= 0, (0, lo), bins..., > hi]``."""
    return np.bincount(slots(values, edges), minlength=edges.size + N_EXTRA)


def slots(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The slot of each value (see the module documentation)."""
    nbins = edges.size - 1
    # searchsorted(side="right") - 1 is the bin of edges[i] <= v < edges[i+1]; v == edges[-1]
    # belongs to the last bin as in numpy.histogram.
    idx = np.searchsorted(edges, values, side="right") - 1
    idx = np.where(values == edges[-1], nbins - 1, idx)
    slot = idx + N_EXTRA
    slot = np.where(values > edges[-1], nbins + N_EXTRA, slot)
    slot = np.where(values < edges[0], 2, slot)
    slot = np.where(values <= 0, 1, slot)
    slot = np.where(np.isnan(values), 0, slot)
    return slot.astype(np.intp)
