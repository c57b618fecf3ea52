"""The commands that make products of an archive: ``write-fits`` and ``defects``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from crscale.cli._args import add_archive_args, add_report_args
from crscale.cli._run import EXIT_FAILED, EXIT_OK, EXIT_USAGE, run_stage, silent
from crscale.cli.hpc_cmds import add_cluster_args

#: The calibration frames ``crscale defects`` takes a user map from (one option each).
CALIBRATIONS = ("bad_pixels", "dark", "bias")


def add_write_fits(sub: Any) -> None:
    """Register ``crscale write-fits``."""
    p = sub.add_parser(
        "write-fits",
        help="write detected exposures back as FITS, CRs flagged in each pipeline's convention",
        description="Write one FITS file per detected exposure into OUTDIR, named like its source "
        "file (.fits.fz stays tile-compressed): the source's HDUs, order, EXTNAME/EXTVER and every "
        "header card, plus crscale keywords and HISTORY. CRs are flagged in the pipeline's own plane "
        "(HST DQ |= 8192, DECam CP ood code 5 where 0, LCO BANZAI BPM |= 8) or in a uint8 CRMASK "
        "extension per image HDU. Up-to-date files are skipped (--force rewrites them); a failed "
        "exposure is recorded and the rest go on. See docs/pipeline-products.md.",
    )
    add_archive_args(p)
    p.add_argument("outdir", help="output folder (created); nothing is written outside it")
    p.add_argument(
        "--pixels",
        choices=("original", "clean"),
        default="original",
        help="science pixels: as in the source (default) or the archive's inpainted clean image",
    )
    p.add_argument(
        "--flags",
        choices=("native", "crmask"),
        default="native",
        help="native: in the pipeline's DQ plane where its convention has one (default); "
        "crmask: always a CRMASK extension",
    )
    p.add_argument("--prob", action="store_true", help="add a float32 CRPROB extension per image HDU")
    p.add_argument("--force", action="store_true", help="rewrite files that are up to date")
    add_cluster_args(p)
    add_report_args(p)
    p.set_defaults(handler=cmd_write_fits)


def cmd_write_fits(args: argparse.Namespace) -> int:
    """``crscale write-fits``; returns the exit status."""
    from crscale.engine.write_fits_stage import write_fits_archive

    return run_stage(
        "write-fits",
        lambda archive, **kw: write_fits_archive(archive, args.outdir, **kw),
        args,
        pixels=args.pixels,
        flags=args.flags,
        prob=args.prob,
    )


def add_defects(sub: Any) -> None:
    """Register ``crscale defects``."""
    p = sub.add_parser(
        "defects",
        help="per-detector defect maps: hot pixels, hot columns and rows, persistent artefacts",
        description="Reduce the CR masks of every detector over all its exposures (on the Dask "
        "cluster) to a map of persistent defects: pixels masked far more often than CRs allow "
        "(a binomial test with a false-alarm probability of crscale.defects.false_alarm per "
        "detector), hot columns and rows. Store the maps in ARCHIVE/defects/ and print them. "
        "--bad-pixels/--dark/--bias add a user-supplied map to the matching detectors. "
        "`crscale catalogue` runs the reduction itself and re-catalogues what a changed map affects.",
    )
    p.add_argument("archive", help="the Zarr archive")
    for kind in CALIBRATIONS:
        p.add_argument(f"--{kind.replace('_', '-')}", metavar="FITS", dest=kind,
                       help=f"a {kind.replace('_', ' ')} frame: "
                       + {"bad_pixels": "non-zero pixels are bad",
                          "dark": "pixels more than 8 robust sigma above the median are hot",
                          "bias": "pixels more than 8 robust sigma off the median are bad"}[kind])
    p.add_argument("--hdu", default=None, help="HDU of the frame (index or name; default: the first image)")
    p.add_argument("--detector", default="*",
                   help="fnmatch pattern of the detector keys the frame applies to "
                   "(default: every one of its shape)")
    add_cluster_args(p)
    add_report_args(p)
    p.set_defaults(handler=cmd_defects)


def _frame(path: str, hdu: str | None) -> Any:
    from astropy.io import fits

    from crscale.errors import InputError

    try:
        with fits.open(path) as hdul:
            if hdu is not None:
                data = hdul[int(hdu) if hdu.isdigit() else hdu].data
            else:
                data = next((h.data for h in hdul if h.data is not None and h.data.ndim == 2), None)
    except (OSError, KeyError, IndexError, ValueError) as exc:
        raise InputError(path, f"cannot read a calibration frame ({exc})", kind="calibration") from exc
    if data is None or data.ndim != 2:
        raise InputError(path, f"no 2-D image HDU{'' if hdu is None else f' {hdu}'}", kind="calibration")
    return data


def cmd_defects(args: argparse.Namespace) -> int:
    """``crscale defects``; returns the exit status."""
    from crscale.catalogue.defects import map_from_calibration
    from crscale.engine.defects_stage import set_user_map, update_defects
    from crscale.errors import CrscaleError

    try:
        report = update_defects(args.archive, scheduler=args.scheduler, n_workers=args.workers,
                                echo=silent)
        print(report.summary())
        for kind in CALIBRATIONS:
            path = getattr(args, kind)
            if path:
                bad = map_from_calibration(_frame(path, args.hdu), kind)
                keys = set_user_map(args.archive, bad, source=f"{kind}:{Path(path).resolve()}",
                                    detector=args.detector)
                print(f"{kind} {path}: {int(bad.sum())} bad pixel(s) added to {', '.join(keys)}")
    except CrscaleError as exc:
        print(f"crscale defects: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.report:
        Path(args.report).write_text(json.dumps(report.to_dict(), indent=2))
    return EXIT_OK if report.ok else EXIT_FAILED
