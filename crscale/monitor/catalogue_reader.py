"""The catalogue as it fills, read one exposure at a time: CR rates, classes, and kinds.

:class:`CatalogueFollower` is told by the archive tracker which exposures were (re)catalogued
or un-catalogued since the last tick, and reads only their Parquet files: the exposure table
for the rate (CRs and area x time summed over the exposure's detectors, the same sums as
:func:`crscale.catalogue.stats.exposure_rates`) and the morphology counts, and, where the CR
table has a ``kind`` column (CRs told from detector defects), the counts per kind. Files of
many exposures are read in one Arrow dataset scan (a first look at a large catalogue).
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads

from crscale.io.catalogue_schema import CLASSES
from crscale.io.catalogue_store import table_file

log = logging.getLogger(__name__)

_EXPOSURE_COLUMNS = ["exposure", "instrument", "mjd", "n_cr", "area_cm2", "effective_exptime",
                     *(f"n_{c}" for c in CLASSES)]
#: Column of the CR table that tells CRs from other kinds of hits (defects), where present.
KIND_COLUMN = "kind"


@dataclass(slots=True)
class ExposureRate:
    """One catalogued exposure's CR rate (CR cm⁻² s⁻¹) and counts."""

    exposure: str
    instrument: str
    mjd: float
    n_cr: int
    rate: float
    rate_err: float
    classes: tuple[int, ...]  #: CRs per class of :data:`crscale.io.catalogue_schema.CLASSES`
    kinds: dict[str, int] | None  #: rows per ``kind``; None where the CR table has no such column


def _rates(table: pa.Table) -> dict[str, ExposureRate]:
    out: dict[str, ExposureRate] = {}
    rows = table.to_pydict()
    acc: dict[str, list] = {}
    for i, eid in enumerate(rows["exposure"]):
        a = acc.setdefault(eid, [rows["instrument"][i], rows["mjd"][i], 0, 0.0, [0] * len(CLASSES)])
        a[2] += int(rows["n_cr"][i] or 0)
        area, texp = rows["area_cm2"][i], rows["effective_exptime"][i]
        if area is not None and texp is not None and math.isfinite(area * texp) and area * texp > 0:
            a[3] += area * texp
        for k, c in enumerate(CLASSES):
            a[4][k] += int(rows[f"n_{c}"][i] or 0)
        if a[0] in (None, "") and rows["instrument"][i]:
            a[0] = rows["instrument"][i]
    for eid, (instrument, mjd, n, at, classes) in acc.items():
        name = instrument.strip() if isinstance(instrument, str) and instrument.strip() else "unknown"
        rate = n / at if at > 0 else math.nan
        err = math.sqrt(n) / at if at > 0 else math.nan
        out[eid] = ExposureRate(eid, name, math.nan if mjd is None else float(mjd), n, rate, err,
                                tuple(classes), None)
    return out


def _kinds(files: list[str]) -> dict[str, dict[str, int]] | None:
    ds = pads.dataset(files, format="parquet")
    names = set(ds.schema.names)
    if KIND_COLUMN not in names:
        # The schema is the first file's: a catalogue written across the change has the
        # column in its newer (later) files.
        last = next(iter(pads.dataset(files[-1:], format="parquet").get_fragments()), None)
        if last is None or KIND_COLUMN not in last.physical_schema.names:
            return None
        ds = pads.dataset(files, format="parquet", schema=last.physical_schema)
    table = ds.to_table(columns=["exposure", KIND_COLUMN])
    if not table.num_rows:
        return {}
    grouped = table.group_by(["exposure", KIND_COLUMN]).aggregate([([], "count_all")])
    out: dict[str, dict[str, int]] = {}
    for eid, kind, n in zip(*(grouped.column(c).to_pylist() for c in ("exposure", KIND_COLUMN, "count_all")),
                            strict=True):
        out.setdefault(eid, {})[str(kind) if kind is not None else "unclassified"] = int(n)
    return out


class CatalogueFollower:
    """Per-exposure CR rates, class and kind totals of a catalogue that is being written.

    Parameters
    ----------
    archive : str or path
        The archive.
    batch : int
        Exposures read in one dataset scan at most.
    """

    def __init__(self, archive: str | os.PathLike, *, batch: int = 2000) -> None:
        self.path = Path(archive).absolute()
        self.batch = batch
        self.rates: dict[str, ExposureRate] = {}
        #: Total CRs per class over the exposures read.
        self.classes: Counter[str] = Counter()
        #: Total catalogue rows per ``kind``; empty while no CR table read has the column.
        self.kinds: Counter[str] = Counter()
        #: Whether any CR table read so far has a ``kind`` column.
        self.has_kinds = False
        #: Incremented whenever rows are removed or replaced (readers then redraw everything).
        self.generation = 0
        #: Exposures in the order their rows arrived (positions are stable within a generation).
        self.order: list[str] = []
        self.unreadable: list[str] = []

    def _drop(self, eid: str) -> bool:
        old = self.rates.pop(eid, None)
        if old is None:
            return False
        for c, n in zip(CLASSES, old.classes, strict=True):
            self.classes[c] -= n
        for k, n in (old.kinds or {}).items():
            self.kinds[k] -= n
        return True

    def update(self, catalogued: Iterable[str], *, uncatalogued: Iterable[str] = ()) -> list[str]:
        """Read the files of newly (re)catalogued exposures, drop those no longer catalogued.

        Parameters
        ----------
        catalogued : iterable of str
            Exposures whose catalogue stage became done (or was done again) since the last call.
        uncatalogued : iterable of str
            Exposures whose catalogue rows are gone or being redone.

        Returns
        -------
        list of str
            The exposures whose rows were added, in arrival order.
        """
        reset = False
        for eid in uncatalogued:
            reset |= self._drop(eid)
        todo = list(dict.fromkeys(catalogued))
        added: list[str] = []
        self.unreadable = []
        for start in range(0, len(todo), self.batch):
            chunk = todo[start:start + self.batch]
            for eid, rate in self._read(chunk).items():
                reset |= self._drop(eid)
                self.rates[eid] = rate
                for c, n in zip(CLASSES, rate.classes, strict=True):
                    self.classes[c] += n
                if rate.kinds is not None:
                    self.has_kinds = True
                    self.kinds.update(rate.kinds)
                added.append(eid)
        if reset:
            self.generation += 1
            self.order = list(self.rates)
        else:
            self.order.extend(added)
        return added

    def _read(self, ids: list[str]) -> dict[str, ExposureRate]:
        pairs = [(e, str(table_file(self.path, "exposures", e)), str(table_file(self.path, "crs", e)))
                 for e in ids]
        pairs = [p for p in pairs if os.path.exists(p[1])]
        try:
            rates = _rates(pads.dataset([p[1] for p in pairs], format="parquet")
                           .to_table(columns=_EXPOSURE_COLUMNS)) if pairs else {}
            crs = [p[2] for p in pairs if os.path.exists(p[2])]
            kinds = _kinds(crs) if crs else None
        except (OSError, pa.ArrowException) as exc:
            if len(ids) == 1:
                log.debug("catalogue of %s not readable now (%s)", ids[0], exc)
                self.unreadable.extend(ids)
                return {}
            out: dict[str, ExposureRate] = {}
            for e in ids:  # one file vanished or was replaced between listing and reading
                out.update(self._read([e]))
            return out
        if kinds is not None:
            for eid, rate in rates.items():
                rate.kinds = kinds.get(eid, {})
        return rates


def class_fractions(counts: Counter[str]) -> dict[str, float]:
    """Fraction of CRs per morphology class (NaN each while there is none)."""
    total = sum(counts[c] for c in CLASSES)
    return {c: (counts[c] / total if total else math.nan) for c in CLASSES}

