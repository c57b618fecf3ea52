"""The commands that read an archive: ``info``, ``stats``, ``export``, ``dashboard``, ``sample-data``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from crscale.cli._args import ARCHIVE_HELP, add_archive_args, add_exposures_arg
from crscale.cli._run import EXIT_OK, EXIT_USAGE, guarded, silent
from crscale.cli.hpc_cmds import add_cluster_args


def add_stats(sub: Any) -> None:
    """Register ``crscale stats``."""
    p = sub.add_parser(
        "stats",
        help="CR-rate statistics of an archive's catalogue: a table and plots (PNG)",
        description="Aggregate the catalogue with dask.dataframe (never all rows in one process): "
        "print CR rates per instrument (pooled, with Poisson errors) and morphology fractions, and "
        "write plots: rate vs time, rate distribution, CR size / length / energy histograms and "
        "class fractions.",
    )
    add_archive_args(p)
    p.add_argument(
        "--plots",
        metavar="DIR",
        help="folder for the PNG plots (default: ARCHIVE's name + '-stats', beside it)",
    )
    p.add_argument("--no-plots", action="store_true", help="only the table")
    p.add_argument("--json", metavar="FILE", help="also write the statistics as JSON")
    add_cluster_args(p)
    p.set_defaults(handler=cmd_stats)


def add_export(sub: Any) -> None:
    """Register ``crscale export``."""
    p = sub.add_parser(
        "export",
        help="write a catalogue table as FITS, ECSV, CSV or Parquet for other tools",
        description="Export the per-CR table (default) or the per-exposure table of an archive's "
        "catalogue; the format follows OUT's suffix (.fits, .ecsv, .csv, .parquet). Units and "
        "column descriptions travel with FITS and ECSV.",
    )
    p.add_argument("archive", help=ARCHIVE_HELP)
    p.add_argument("out", help="output file")
    p.add_argument("--table", choices=("crs", "exposures"), default="crs", help="which table (default crs)")
    add_exposures_arg(p)
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(handler=cmd_export)


def add_info(sub: Any) -> None:
    """Register ``crscale info``."""
    p = sub.add_parser(
        "info",
        help="summarise an archive",
        description="Print a readable summary of an archive: exposures, "
        "stages, guessed metadata, warnings and failures.",
    )
    p.add_argument("archive", help=ARCHIVE_HELP)
    p.add_argument("--exposure", "-e", help="details of one exposure")
    p.add_argument("--json", action="store_true", help="machine-readable JSON")
    p.set_defaults(handler=cmd_info)


def add_dashboard(sub: Any) -> None:
    """Register ``crscale dashboard``."""
    p = sub.add_parser(
        "dashboard",
        help="serve the live dashboard of the job on an archive (a web page)",
        description="Serve a live dashboard of the crscale job on ARCHIVE (Bokeh): progress per "
        "stage with rates and ETAs, throughput, workers, failures, CR rates and classes as the "
        "catalogue fills, and the Dask dashboard link. It reads only the archive and its job "
        "record, so it can be started before, during or after a job. Stop it with Ctrl-C.",
    )
    p.add_argument("archive", help="the Zarr archive (it need not exist yet)")
    p.add_argument("--port", type=int, default=0, help="port to serve on (default: a free one)")
    p.add_argument("--address", default="127.0.0.1",
                   help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--every", type=float, default=2.0, metavar="S",
                   help="seconds between updates (default 2)")
    p.add_argument("--no-scheduler", action="store_true",
                   help="do not ask the job's Dask scheduler for its workers")
    p.add_argument("--allow-origin", action="append", metavar="HOST[:PORT]",
                   help="another host the page may be loaded from, e.g. a reverse proxy (repeatable; "
                   "127.0.0.1 and localhost are always allowed)")
    p.set_defaults(handler=cmd_dashboard)


def add_sample_data(sub: Any) -> None:
    """Register ``crscale sample-data``."""
    p = sub.add_parser("sample-data", help="print the folder of the bundled real sample data")
    p.set_defaults(handler=cmd_sample_data)


def cmd_stats(args: argparse.Namespace) -> int:
    """``crscale stats``; returns the exit status."""
    from crscale.catalogue.plots import write_plots
    from crscale.catalogue.stats import exposure_rates, summarise
    from crscale.engine.cluster import client_or_new
    from crscale.io.storage import is_url, location

    archive = location(args.archive) if is_url(args.archive) else Path(args.archive)

    def aggregate() -> tuple[Any, Any]:
        with client_or_new(None, scheduler=args.scheduler, n_workers=args.workers, echo=silent):
            stats = summarise(str(archive), exposures=args.exposures)
            rates = None if args.no_plots else exposure_rates(str(archive), exposures=args.exposures)
        return stats, rates

    result, status = guarded("stats", aggregate)
    if status is not None:
        return status
    stats, rates = result
    print(stats.format_table())
    try:
        if not args.no_plots:
            default = archive.with_name(archive.name.removesuffix(".zarr") + "-stats")
            if not isinstance(default, Path):  # an archive on object storage: plots go to ./NAME-stats
                default = Path(default.name)
            folder = Path(args.plots) if args.plots else default
            paths = write_plots(stats, rates, folder)
            print(f"plots: {len(paths)} PNG file(s) in {folder}: {', '.join(p.name for p in paths)}")
        if args.json:
            Path(args.json).write_text(json.dumps(stats.to_dict(), indent=2))
    except OSError as exc:  # a plots folder that is a file, a JSON path in no folder ...
        print(f"crscale stats: cannot write {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    """``crscale export``; returns the exit status."""
    from crscale.io.catalogue_store import export_table

    out, status = guarded(
        "export",
        lambda: export_table(
            args.archive, args.out, table=args.table, exposures=args.exposures, overwrite=args.overwrite
        ),
    )
    if status is not None:
        return status
    print(f"wrote {out}")
    return EXIT_OK


def cmd_info(args: argparse.Namespace) -> int:
    """``crscale info``; returns the exit status."""
    from crscale.errors import ArchiveError
    from crscale.io.archive import Archive, dumps_summary

    try:
        archive = Archive(args.archive, mode="r")
    except ArchiveError as exc:
        print(f"crscale: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.exposure:
        if args.exposure not in archive:
            print(f"crscale: no exposure {args.exposure!r} in {archive.path}", file=sys.stderr)
            return EXIT_USAGE
        if args.json:
            print(json.dumps(archive.exposure_attrs(args.exposure), indent=2))
        else:
            print(format_exposure(archive, args.exposure))
        return EXIT_OK
    summary = archive.summary()
    print(dumps_summary(summary) if args.json else format_info(summary))
    return EXIT_OK


def cmd_dashboard(args: argparse.Namespace) -> int:
    """``crscale dashboard``: serve until interrupted; returns the exit status."""
    from crscale.errors import CrscaleError
    from crscale.monitor import dashboard

    if args.every <= 0 or not 0 <= args.port < 65536:
        print("crscale: --every must be positive and --port within 0-65535", file=sys.stderr)
        return EXIT_USAGE
    try:
        server = dashboard(args.archive, port=args.port, address=args.address, every=args.every,
                           scheduler=not args.no_scheduler, allow_origin=args.allow_origin)
    except CrscaleError as exc:
        print(f"crscale: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"crscale dashboard of {server.archive}: {server.url} (Ctrl-C stops it)", flush=True)
    server.wait()
    return EXIT_OK


def cmd_sample_data(args: argparse.Namespace) -> int:
    """``crscale sample-data``: print the folder of the bundled sample data."""
    from crscale import sample_data_dir

    print(sample_data_dir())
    return EXIT_OK


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"


def format_info(summary: dict) -> str:
    """Render :meth:`crscale.io.Archive.summary` as text."""
    sw = summary.get("software", {})
    lines = [
        f"crscale archive {summary['path']}",
        f"  format {summary['crscale_format']}, created {summary.get('created')} "
        f"with crscale {sw.get('crscale', '?')} (zarr {sw.get('zarr', '?')})",
        f"  {summary['n_exposures']} exposure(s), {summary['n_detectors']} detector(s), "
        f"{summary['n_pixels'] / 1e6:.2f} Mpix, {_fmt_bytes(summary['disk_bytes'])} on disk",
    ]
    rows = summary["exposures"]
    if rows:
        header = ("exposure", "instrument", "date_obs", "exptime", "det", "shape", "stages", "guessed")
        table = []
        for r in rows:
            shapes = sorted(set(r["shapes"]))
            shape = " ".join(f"{s[0]}x{s[1]}" for s in shapes)
            stages = ",".join(f"{k}:{v}" for k, v in r["status"].items())
            exptime = "-" if r["exptime"] is None else f"{r['exptime']:g}"
            table.append(
                (
                    r["exposure_id"],
                    r["instrument"] or "?",
                    (r["date_obs"] or "?")[:19],
                    exptime,
                    str(len(r["detectors"])),
                    shape,
                    stages,
                    ",".join(r.get("guessed", [])) or "-",
                )
            )
        widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(header)]
        lines.append("")
        for t in (header, *table):
            lines.append(("  " + "  ".join(c.ljust(w) for c, w in zip(t, widths, strict=True))).rstrip())
    warned = [r for r in rows if r["warnings"]]
    if warned:
        lines.append("")
        lines.append(f"Warnings ({len(warned)} exposure(s)):")
        for r in warned:
            for w in r["warnings"]:
                lines.append(f"  {r['exposure_id']}: {w}")
    failures = summary["failures"]
    failed = [f for f in failures if f.get("kind") != "duplicate"]
    dups = [f for f in failures if f.get("kind") == "duplicate"]
    lines.append("")
    lines.append(f"Failures: {len(failed)}" + ("" if failed else " (none)"))
    for f in failed:
        lines.append(f"  [{f.get('stage')}/{f.get('kind')}] {f.get('problem')}  ({f.get('time')})")
    if dups:
        lines.append(f"Duplicates skipped: {len(dups)}")
        for f in dups:
            lines.append(f"  {f.get('path')}: {f.get('problem')}")
    if summary.get("n_staging_leftovers"):
        lines.append(
            f"Interrupted writes left in staging/: {summary['n_staging_leftovers']} "
            "(a later ingest removes them once an hour old)"
        )
    return "\n".join(lines)


def format_exposure(archive, exposure_id: str) -> str:  # an Archive, imported lazily
    """Render one exposure's attributes and detectors as text."""
    attrs = archive.exposure_attrs(exposure_id)
    src = attrs["source"]
    lines = [
        f"exposure {exposure_id}",
        f"  source     {src['path']}",
        f"  sha256     {src['sha256']}  ({_fmt_bytes(src['size'])})",
    ]
    for key in ("instrument", "telescope", "date_obs", "exptime", "filter", "object"):
        lines.append(f"  {key:<10} {attrs.get(key)}")
    for stage, st in attrs.get("status", {}).items():
        lines.append(
            f"  {stage:<10} {st.get('state')} at {st.get('time')} (crscale {st.get('crscale_version')})"
        )
    for det in archive.detectors(exposure_id):
        ds = archive.open_detector(exposure_id, det)
        a = ds.attrs
        planes = ", ".join(f"{v} {ds[v].dtype} chunks {ds[v].encoding.get('chunks')}" for v in ds.data_vars)
        lines.append(
            f"  detector {det}: HDU {a.get('hdu_index')} "
            f"(EXTNAME={a.get('extname')!r}, EXTVER={a.get('extver')}), "
            f"{ds.sizes['y']}x{ds.sizes['x']}"
        )
        lines.append(f"    planes     {planes}")
        lines.append(
            f"    gain {a.get('gain'):.4g} e-/ADU, read noise {a.get('readnoise'):.4g} e-, "
            f"saturation {a.get('saturation')}, binning {a.get('binning')}, "
            f"detector {a.get('detector')!r}"
        )
        if a.get("dq_source"):
            lines.append(f"    dq from    {a['dq_source']}")
        lines.extend(_flag_agreement_lines(archive, exposure_id, det, attrs, a))
        if a.get("guessed"):
            lines.append(f"    guessed    {', '.join(a['guessed'])}")
        det_info = a.get("detect")
        if det_info:
            st = det_info.get("stats", {})
            lines.append(
                f"    detect     {det_info['n_cr_pixels']:,} CR pixels "
                f"({100 * det_info['cr_pixel_fraction']:.3f} %) "
                f"with {det_info['model']} at threshold {det_info['threshold']:g}; "
                f"sky {st.get('sky_e', float('nan')):.1f} e-, noise {st.get('noise_e', float('nan')):.2f} e-"
            )
    return "\n".join(lines)


def _flag_agreement_lines(archive, eid: str, det: str, exp: dict, attrs: dict) -> list[str]:  # an Archive
    """The DQ convention of a detector and, once detected, crscale's agreement with prior CR flags."""
    from crscale.io.archive import array_names
    from crscale.io.dq import convention_for, cr_flag_agreement

    group = archive.root[f"exposures/{eid}/{det}"]
    if "dq" not in array_names(group):
        return []
    conv = convention_for(exp, detector_attrs=attrs)
    lines = [f"    dq means   {conv.name} ({conv.kind}): {conv.description}"]
    if not conv.cosmic_ray or "mask" not in array_names(group):
        return lines
    g = cr_flag_agreement(group["dq"][...], group["mask"][...], conv)

    def share(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.1f} %"

    lines.append(
        f"    prior CRs  pipeline flagged {g['pipeline']:,} px, crscale {g['crscale']:,} px, both "
        f"{g['both']:,}: crscale found {share(g['recall'])} of the pipeline's, "
        f"{share(g['precision'])} of crscale's were flagged by it"
    )
    return lines
