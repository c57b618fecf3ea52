"""The commands that fill an archive: ``ingest``, ``run``, ``detect``, ``catalogue``; and ``verify``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from crscale.cli._args import (
    add_archive_args,
    add_detect_args,
    add_ingest_args,
    add_report_args,
    detect_options,
)
from crscale.cli._run import EXIT_FAILED, EXIT_OK, EXIT_USAGE, guarded, run_stage
from crscale.cli.hpc_cmds import add_cluster_args


def add_ingest(sub: Any) -> None:
    """Register ``crscale ingest``."""
    p = sub.add_parser(
        "ingest",
        help="ingest FITS exposures into a Zarr archive",
        description="Ingest FITS exposures into a crscale Zarr archive, in "
        "parallel on Dask. Re-running skips files already ingested.",
    )
    add_ingest_args(p, inputs_required=True)
    p.set_defaults(handler=cmd_ingest)


def add_run(sub: Any) -> None:
    """Register ``crscale run``."""
    p = sub.add_parser(
        "run",
        help="the whole pipeline over inputs: ingest, detect, catalogue",
        description="Ingest the inputs into the archive, detect, mask and inpaint the CRs of "
        "their exposures, and catalogue every CR (Parquet in the archive), on one Dask cluster. "
        "Re-running skips what is done; --force redoes it.",
    )
    add_ingest_args(p, inputs_required=False)
    p.add_argument(
        "--sample", action="store_true", help="add the bundled real sample exposures to the inputs"
    )
    p.add_argument(
        "--stages",
        default="ingest,detect,catalogue",
        metavar="LIST",
        help="comma-separated stages to run (default: ingest,detect,catalogue)",
    )
    add_detect_args(p)
    p.set_defaults(handler=cmd_run)


def add_detect(sub: Any) -> None:
    """Register ``crscale detect``."""
    p = sub.add_parser(
        "detect",
        help="detect, mask and inpaint the CRs of an archive's exposures on Dask",
        description="Run the CNN over every ingested exposure of an archive (blocks with a halo on "
        "Dask workers) and write prob, mask and clean next to each image. Exposures already "
        "done are skipped (--force redoes them); a failed exposure is recorded and the rest go on.",
    )
    add_archive_args(p)
    p.add_argument("--force", action="store_true", help="redo exposures whose detection is done")
    add_cluster_args(p)
    add_detect_args(p)
    add_report_args(p)
    p.set_defaults(handler=cmd_detect)


def add_catalogue(sub: Any) -> None:
    """Register ``crscale catalogue``."""
    p = sub.add_parser(
        "catalogue",
        help="catalogue every CR of an archive's detected exposures (Parquet)",
        description="Label the CRs in each detected exposure's mask (8-connected, across block "
        "boundaries), measure them (centroid, size, length, charge, energy, morphology) and "
        "compute per-detector CR rates; write ARCHIVE/catalogue/{crs,exposures}/<exposure>.parquet. "
        "Up-to-date exposures are skipped (--force redoes them); a failed exposure is recorded, "
        "leaves no rows, and the rest go on.",
    )
    add_archive_args(p)
    p.add_argument("--force", action="store_true", help="redo exposures whose catalogue is up to date")
    add_cluster_args(p)
    add_report_args(p)
    p.set_defaults(handler=cmd_catalogue)


def add_verify(sub: Any) -> None:
    """Register ``crscale verify``."""
    p = sub.add_parser(
        "verify",
        help="scrub an archive: every chunk of every array against its integrity record",
        description="Check every stored chunk of every array of the archive (or of the exposures "
        "given): present where the array records every chunk as stored, and decodable (crc32c "
        "checksum, compression); and the arrays each finished stage promises. Reports per "
        "exposure, marks the stages of damaged exposures 'damaged' (so that re-running them "
        "redoes exactly those), prints the commands that repair them, and exits 1 on damage.",
    )
    add_archive_args(p)
    p.add_argument("--json", action="store_true", help="machine-readable JSON")
    p.add_argument(
        "--no-mark", dest="mark", action="store_false", help="only report: leave the statuses alone"
    )
    p.set_defaults(handler=cmd_verify)


def with_dq(args: argparse.Namespace, inputs: list) -> list | None:
    """The inputs, with ``--dq`` attached to the single input file; None (message printed) if misused."""
    if not args.dq:
        return inputs
    from crscale.io.inputs import InputSpec

    if len(inputs) != 1:
        print(
            "crscale: --dq needs exactly one input file; use a manifest (image dq=PATH per line) for many",
            file=sys.stderr,
        )
        return None
    return [InputSpec(str(Path(inputs[0]).absolute()), str(Path(args.dq).absolute()))]


def cmd_ingest(args: argparse.Namespace) -> int:
    """``crscale ingest``; returns the exit status."""
    from crscale.engine.ingest import ingest
    from crscale.errors import CrscaleError

    inputs = with_dq(args, list(args.inputs))
    if inputs is None:
        return EXIT_USAGE
    if not inputs:
        print("crscale: no inputs (give files, directories, patterns or --sample)", file=sys.stderr)
        return EXIT_USAGE
    try:
        report = ingest(
            inputs,
            args.archive,
            scheduler=args.scheduler,
            n_workers=args.workers,
            force=args.force,
            hdus=args.hdus,
            chunks=args.chunks,
            progress=not args.no_progress,
        )
    except CrscaleError as exc:
        # The archive cannot be created or the cluster reached: nothing was processed.
        print(f"crscale: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(report.summary())
    if args.report:
        Path(args.report).write_text(json.dumps(report.to_dict(), indent=2))
    if not report.ok or (args.strict and report.by_status("duplicate")):
        return EXIT_FAILED
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    """``crscale run``; returns the exit status."""
    from crscale.engine.pipeline import run_pipeline

    inputs = list(args.inputs)
    if args.sample:
        from crscale import sample_data_dir

        inputs.append(str(sample_data_dir() / "images"))
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    if "ingest" in stages and not inputs:
        print("crscale run: no inputs (give files, directories, patterns or --sample)", file=sys.stderr)
        return EXIT_USAGE
    given = with_dq(args, inputs)
    if given is None:
        return EXIT_USAGE
    inputs = given
    report, status = guarded(
        "run",
        lambda: run_pipeline(
            inputs,
            args.archive,
            stages=stages,
            scheduler=args.scheduler,
            n_workers=args.workers,
            force=args.force,
            ingest_options={"hdus": args.hdus, "chunks": args.chunks},
            detect_options=detect_options(args),
            progress=not args.no_progress,
            catalogue_options=catalogue_options(),
        ),
    )
    if status is not None:
        return status
    if args.report:
        Path(args.report).write_text(json.dumps(report.to_dict(), indent=2))
    strict_fail = args.strict and report.ingest is not None and report.ingest.by_status("duplicate")
    return EXIT_OK if report.ok and not strict_fail else EXIT_FAILED


def cmd_detect(args: argparse.Namespace) -> int:
    """``crscale detect``; returns the exit status."""
    from crscale.engine.detect_stage import detect_archive

    return run_stage("detect", detect_archive, args, **detect_options(args))


def cmd_catalogue(args: argparse.Namespace) -> int:
    """``crscale catalogue``; returns the exit status."""
    from crscale.engine.catalogue_stage import catalogue_archive

    return run_stage("catalogue", catalogue_archive, args, **catalogue_options())


def catalogue_options() -> dict[str, Any]:
    """The catalogue stage's completeness hook (crscale.evaluate sits above the engine)."""
    from crscale.evaluate.completeness import refresh_completeness

    return {"completeness": refresh_completeness}


def cmd_verify(args: argparse.Namespace) -> int:
    """``crscale verify``; returns the exit status."""
    from crscale.io.verify import verify_archive

    report, status = guarded(
        "verify", lambda: verify_archive(args.archive, exposures=args.exposures, mark=args.mark)
    )
    if status is not None:
        return status
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.summary())
    return EXIT_OK if report.ok else EXIT_FAILED
