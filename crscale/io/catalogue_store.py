"""The CR catalogue on disk: Parquet files inside the archive, one per exposure and table.

Layout (format 1.2)::

    archive.zarr/catalogue/crs/<exposure_id>.parquet        one row per CR
    archive.zarr/catalogue/exposures/<exposure_id>.parquet  one row per exposure x detector

Each exposure's two files are written whole by the catalogue stage (to a hidden temporary
file, then renamed), so a killed run never leaves half a file, a re-run replaces them, and
the same inputs give byte-identical files (nothing in them depends on the time or the
machine). Readers see the directories as partitioned Parquet data sets: pandas (here),
dask.dataframe (:func:`read_table_dask`), xarray (:func:`rates_dataset`) and FITS / ECSV through
astropy (:func:`export_table`).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from crscale.errors import ArchiveError, OutputExistsError, SettingsError
from crscale.io import storage
from crscale.io.catalogue_schema import CR_SCHEMA, EXPOSURE_SCHEMA

#: Tables of the catalogue and their schemas.
TABLES: dict[str, pa.Schema] = {"crs": CR_SCHEMA, "exposures": EXPOSURE_SCHEMA}

# Fixed writer settings: the same table must give the same bytes on every run.
_WRITE_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "compression_level": 3,
    "use_dictionary": ["exposure", "detector", "morphology", "instrument", "telescope", "profile", "kind"],
    "write_statistics": True,
    "row_group_size": 1 << 20,
    # A CRC per data page, checked on every read (PARQUET_FORMAT): without it a flipped byte in
    # a page decodes to wrong values silently.
    "write_page_checksum": True,
}
#: How the catalogue's files are read: every page's CRC verified.
PARQUET_FORMAT = pads.ParquetFileFormat(
    default_fragment_scan_options=pads.ParquetFragmentScanOptions(page_checksum_verification=True)
)


def _loc(path: str | os.PathLike) -> Any:
    # Local paths stay as given (relative ones too), URLs become RemotePath.
    return storage.location(path) if storage.is_url(path) else Path(path)


def catalogue_dir(archive: str | os.PathLike) -> Path:
    """Folder of the catalogue inside an archive (a :class:`~crscale.io.storage.RemotePath` for a URL)."""
    return _loc(archive) / "catalogue"


def table_dir(archive: str | os.PathLike, table: str) -> Path:
    """Folder of one table (``"crs"`` or ``"exposures"``)."""
    if table not in TABLES:
        raise SettingsError(f"unknown catalogue table {table!r}; one of {', '.join(TABLES)}")
    return catalogue_dir(archive) / table


def table_file(archive: str | os.PathLike, table: str, exposure_id: str) -> Path:
    """The Parquet file of one exposure in one table."""
    return table_dir(archive, table) / f"{exposure_id}.parquet"


def as_table(rows: dict[str, Any] | Sequence[dict[str, Any]], table: str) -> pa.Table:
    """Build a table with the catalogue's schema from columns or from rows.

    Parameters
    ----------
    rows : dict of array-like, or sequence of dict
        Columns by name, or one dict per row; every schema column must be given.
    table : str
        ``"crs"`` or ``"exposures"``.

    Returns
    -------
    pyarrow.Table
    """
    schema = TABLES[table]
    if isinstance(rows, dict):
        missing = [n for n in schema.names if n not in rows]
        if missing:
            raise ValueError(f"{table}: missing column(s) {', '.join(missing)}")
        arrays = [
            pa.array(np.asarray(rows[f.name]) if f.type != pa.string() else list(rows[f.name]), type=f.type)
            for f in schema
        ]
        return pa.Table.from_arrays(arrays, schema=schema)
    return pa.Table.from_pylist(list(rows), schema=schema)


def _atomic_write(table: pa.Table, path: Path) -> None:
    if storage.is_url(path):
        # An object store has no rename, and needs none: an uploaded object appears whole
        # when its upload completes, or not at all.
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, **_WRITE_OPTIONS)
        path.write_bytes(sink.getvalue().to_pybytes())
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        pq.write_table(table, tmp, **_WRITE_OPTIONS)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_exposure_tables(
    archive: str | os.PathLike, exposure_id: str, crs: pa.Table, exposures: pa.Table
) -> None:
    """Write (or replace) one exposure's rows in both tables.

    The CR rows are written first and the exposure rows last: an exposure row means its CR rows
    are complete. Callers mark the archive's ``catalogue`` status after this returns.

    Parameters
    ----------
    archive : str or path
        The archive.
    exposure_id : str
        The exposure.
    crs, exposures : pyarrow.Table
        Its rows, with :data:`CR_SCHEMA` and :data:`EXPOSURE_SCHEMA`.
    """
    for name, tab in (("crs", crs), ("exposures", exposures)):
        if not tab.schema.equals(TABLES[name], check_metadata=False):
            raise ValueError(f"{exposure_id}: the {name} rows do not have the catalogue schema")
        ids = set(tab.column("exposure").to_pylist())
        if ids - {exposure_id}:
            raise ValueError(f"{exposure_id}: {name} rows of other exposures {sorted(ids - {exposure_id})}")
    _atomic_write(crs.cast(CR_SCHEMA), table_file(archive, "crs", exposure_id))
    _atomic_write(exposures.cast(EXPOSURE_SCHEMA), table_file(archive, "exposures", exposure_id))


def remove_exposure_tables(archive: str | os.PathLike, exposure_id: str) -> bool:
    """Delete one exposure's rows (exposure table first). Returns True when something was removed."""
    removed = False
    for name in ("exposures", "crs"):
        path = table_file(archive, name, exposure_id)
        if storage.is_url(path) and not path.exists():
            continue  # deleting a missing object is no error on S3: say nothing was removed
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed = True
    return removed


def catalogued_exposures(archive: str | os.PathLike) -> list[str]:
    """Exposure ids that have rows in the exposure table, sorted."""
    folder = table_dir(archive, "exposures")
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(".parquet")] for p in folder.glob("*.parquet") if not p.name.startswith("."))


def _files(archive: str | os.PathLike, table: str, exposures: Sequence[str] | None) -> list[str]:
    folder = table_dir(archive, table)
    ids = catalogued_exposures(archive)
    if not ids:
        raise ArchiveError(
            f"{_loc(archive)}: no catalogue yet "
            f"(run `crscale catalogue {_loc(archive)}` first)"
        )
    if exposures is not None:
        unknown = sorted(set(exposures) - set(ids))
        if unknown:
            raise ArchiveError(
                f"{_loc(archive)}: no catalogue rows for exposure(s) {', '.join(unknown)}"
            )
        ids = [e for e in ids if e in set(exposures)]
    return [str(folder / f"{e}.parquet") for e in ids]


def _read_arrow(
    files: list[str], table: str, *, columns: list[str] | None = None, filter: Any = None
) -> pa.Table:
    """Rows of these files; a damaged file is an ArchiveError that names it and the way out."""
    try:
        fs, paths = storage.arrow_filesystem(files)
        return pads.dataset(paths, schema=TABLES[table], format=PARQUET_FORMAT, filesystem=fs).to_table(
            columns=columns, filter=filter
        )
    except (pa.ArrowInvalid, OSError) as exc:
        raise ArchiveError(
            f"{exc} (a damaged catalogue file: "
            "`crscale catalogue ARCHIVE -e EXPOSURE --force` writes it again)"
        ) from exc


def read_table(
    archive: str | os.PathLike,
    table: str = "crs",
    *,
    exposures: Sequence[str] | None = None,
    columns: Sequence[str] | None = None,
    filter: Any = None,
) -> Any:
    """Read a catalogue table into one pandas DataFrame.

    For whole surveys prefer :func:`read_table_dask`, which never holds every row at once.

    Parameters
    ----------
    archive : str or path
        The archive.
    table : str
        ``"crs"`` (one row per CR) or ``"exposures"`` (one row per exposure x detector).
    exposures : sequence of str, optional
        Only these exposures.
    columns : sequence of str, optional
        Only these columns.
    filter : pyarrow.compute.Expression, optional
        Row filter, e.g. ``pyarrow.compute.field("n_pixels") > 10``.

    Returns
    -------
    pandas.DataFrame

    Raises
    ------
    ArchiveError
        The archive has no catalogue, or no rows for an exposure asked for.
    """
    files = _files(archive, table, exposures)
    return _read_arrow(files, table, columns=list(columns) if columns else None, filter=filter).to_pandas()


#: Compressed bytes of Parquet per dask partition: files are grouped up to about this size, so
#: a survey's thousands of small per-exposure files make a few dozen tasks, not one task each.
PARTITION_BYTES = 16 * 2**20


def _read_files(files: list[str], table: str, columns: list[str] | None) -> Any:
    return _read_arrow(files, table, columns=columns).to_pandas()


def read_table_dask(
    archive: str | os.PathLike,
    table: str = "crs",
    *,
    exposures: Sequence[str] | None = None,
    columns: Sequence[str] | None = None,
    partition_bytes: int = PARTITION_BYTES,
) -> Any:
    """The same as a lazy dask.dataframe, for catalogues of any size.

    Consecutive exposure files are grouped into partitions of about ``partition_bytes``
    compressed bytes, each read by one task with pyarrow: per-file overhead stays off the
    scheduler, and no process holds more than a partition.

    Parameters
    ----------
    archive, table, exposures, columns
        As for :func:`read_table`.
    partition_bytes : int
        Target compressed size of a partition.

    Returns
    -------
    dask.dataframe.DataFrame
    """
    import dask.dataframe as dd

    files = _files(archive, table, exposures)
    groups: list[list[str]] = [[]]
    size = 0
    for f in files:
        n = _loc(f).stat().st_size
        if groups[-1] and size + n > partition_bytes:
            groups.append([])
            size = 0
        groups[-1].append(f)
        size += n
    cols = list(columns) if columns else None
    meta = TABLES[table].empty_table().to_pandas()
    if cols:
        meta = meta[cols]
    return dd.from_map(
        _read_files,
        groups,
        table=table,
        columns=cols,
        meta=meta,
        label=f"read-{table}",
        enforce_metadata=False,
    )


def rates_dataset(
    archive: str | os.PathLike, *, per: str = "exposure", exposures: Sequence[str] | None = None
) -> Any:
    """CR rates as an xarray time series.

    Parameters
    ----------
    archive : str or path
        The archive.
    per : {"exposure", "detector"}
        One point per exposure (CRs and area x time summed over its detectors) or per
        exposure x detector.
    exposures : sequence of str, optional
        Only these exposures.

    Returns
    -------
    xarray.Dataset
        Dimension ``obs`` sorted by time, with coordinate ``time`` (datetime64; NaT where the
        date is unknown), ``mjd``, ``exposure``, ``instrument`` (and ``detector`` with
        ``per="detector"``), and variables ``n_cr``, ``n_dot``, ``n_spot``, ``n_track``,
        ``n_worm``, ``area_cm2``, ``effective_exptime``, ``rate``, ``rate_err`` (CR cm⁻² s⁻¹),
        ``cr_pixel_fraction``.
    """
    import pandas as pd
    import xarray as xr

    if per not in ("exposure", "detector"):
        raise ValueError(f"per must be 'exposure' or 'detector', not {per!r}")
    df = read_table(archive, "exposures", exposures=exposures)
    counts = ["n_cr", "n_dot", "n_spot", "n_track", "n_worm", "n_cr_pixels", "n_pixels_usable"]
    df["exposure_cm2_s"] = df["area_cm2"] * df["effective_exptime"]
    if per == "exposure":
        first = {c: "first" for c in ("instrument", "telescope", "date_obs", "mjd", "effective_exptime")}
        df = (
            df.groupby("exposure", sort=True)
            .agg({**{c: "sum" for c in counts}, "area_cm2": "sum", "exposure_cm2_s": "sum", **first})
            .reset_index()
        )
    df["rate"] = df["n_cr"] / df["exposure_cm2_s"]
    df["rate_err"] = np.sqrt(df["n_cr"]) / df["exposure_cm2_s"]
    df["cr_pixel_fraction"] = df["n_cr_pixels"] / df["n_pixels_usable"]
    df["time"] = pd.to_datetime(df["date_obs"], errors="coerce", utc=True).dt.tz_localize(None)
    df = df.sort_values(["time", "exposure"] + (["detector"] if per == "detector" else []), kind="stable")
    coords = ["time", "mjd", "exposure", "instrument", "telescope"] + (
        ["detector"] if per == "detector" else []
    )
    variables = counts[:5] + ["area_cm2", "effective_exptime", "rate", "rate_err", "cr_pixel_fraction"]
    ds = xr.Dataset(
        {v: ("obs", df[v].to_numpy()) for v in variables},
        coords={c: ("obs", df[c].to_numpy()) for c in coords},
    )
    units = {f.name: (f.metadata or {}).get(b"unit", b"").decode() for f in EXPOSURE_SCHEMA}
    for v in variables:
        if units.get(v):
            ds[v].attrs["units"] = units[v]
    ds["rate"].attrs.update(units="cm-2 s-1", long_name="CR rate")
    ds["rate_err"].attrs.update(units="cm-2 s-1", long_name="Poisson error of the CR rate")
    ds.attrs.update(archive=str(_loc(archive)), per=per)
    return ds


def export_table(
    archive: str | os.PathLike,
    out: str | os.PathLike,
    *,
    table: str = "crs",
    exposures: Sequence[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a catalogue table for other tools: FITS, ECSV, CSV or one Parquet file.

    The format follows the suffix (``.fits``/``.fit``, ``.ecsv``, ``.csv``, ``.parquet``);
    units and descriptions travel with the FITS and ECSV columns.

    Parameters
    ----------
    archive : str or path
        The archive.
    out : str or path
        The file to write.
    table : str
        ``"crs"`` or ``"exposures"``.
    exposures : sequence of str, optional
        Only these exposures (the whole table otherwise: it is held in memory).
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    Path
        ``out``.
    """
    from astropy.table import Table

    out = Path(out)
    suffix = out.suffix.lower()
    formats = {".fits": "fits", ".fit": "fits", ".ecsv": "ascii.ecsv", ".csv": "ascii.csv", ".parquet": None}
    if suffix not in formats:
        raise SettingsError(f"{out}: unknown export format {suffix!r}; use one of {', '.join(formats)}")
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists (pass overwrite=True / --overwrite to replace it)")
    files = _files(archive, table, exposures)
    arrow = _read_arrow(files, table)
    if formats[suffix] is None:
        pq.write_table(arrow, out, **_WRITE_OPTIONS)
        return out
    tab = Table.from_pandas(arrow.to_pandas())
    for f in TABLES[table]:
        meta = {k.decode(): v.decode() for k, v in (f.metadata or {}).items()}
        column = tab[f.name]
        if meta.get("unit"):
            column.unit = meta["unit"]
        column.description = meta.get("doc", "")
    tab.meta["CRTABLE"] = table
    tab.meta["ARCHIVE"] = str(_loc(archive))
    with warnings.catch_warnings():
        # FITS has no 'electron' unit: it stays in the header as TUNITn all the same.
        warnings.filterwarnings("ignore", message=".*could not be saved in native FITS format.*")
        tab.write(out, format=formats[suffix], overwrite=overwrite)
    return out
