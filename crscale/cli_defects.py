"""``crscale defects ARCHIVE``: the per-detector defect maps (kept apart from cli.py to stay small)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

CALIBRATIONS = ("bad_pixels", "dark", "bias")


def add_parser(
    sub: Any, add_cluster_args: Callable[[Any], None], add_report_args: Callable[[Any], None]
) -> None:
    """Register the ``defects`` command."""
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
        raise InputError(f"{path}: cannot read a calibration frame ({exc})") from exc
    if data is None or data.ndim != 2:
        raise InputError(f"{path}: no 2-D image HDU{'' if hdu is None else f' {hdu}'}")
    return data


def run(args: argparse.Namespace) -> int:
    """The ``defects`` command; returns the exit status."""
    from crscale.catalog.defects import map_from_calibration
    from crscale.engine.defects_stage import set_user_map, update_defects
    from crscale.errors import CrscaleError

    try:
        report = update_defects(args.archive, scheduler=args.scheduler, n_workers=args.workers,
                                echo=None)
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
        return 2
    if args.report:
        Path(args.report).write_text(json.dumps(report.to_dict(), indent=2))
    return 0 if report.ok else 1
