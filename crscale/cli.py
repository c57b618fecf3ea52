"""The ``crscale`` command line. Thin: parses arguments and calls the layers below.

Exit status: 0 when everything asked for succeeded, 1 when some input or exposure failed (the
others were still processed), 2 for a usage error or an archive that cannot be opened, 130 when
interrupted (re-run to finish).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from crscale._version import __version__

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _chunks(text: str) -> list[int]:
    parts = [int(p) for p in text.replace("x", ",").split(",") if p.strip()]
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError("chunks are 'N' or 'NY,NX' with positive integers")
    return parts


#: The smallest --chunks side: one file per chunk, so tiny chunks make millions of files.
MIN_CHUNK_SIDE = 16


def _storage_chunks(text: str) -> list[int]:
    parts = _chunks(text)
    if min(parts) < MIN_CHUNK_SIDE:
        raise argparse.ArgumentTypeError(
            f"chunks of {parts[0]}x{parts[1]} px store one file per {parts[0] * parts[1]} px "
            f"(a 4k x 4k image would become {-(-4096 // parts[0]) * -(-4096 // parts[1]):,} files); "
            f"use at least {MIN_CHUNK_SIDE} px a side (default 1024)"
        )
    return parts


def _workers(text: str) -> int:
    import os

    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    limit = max(8, 4 * cores)
    if not 1 <= n <= limit:
        raise argparse.ArgumentTypeError(
            f"{n} worker processes: give 1 to {limit} ({cores} core(s) here; each worker is a "
            "process holding the model)"
        )
    return n


def _float_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, not {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def _name_list(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip() and x.strip() != "none")


def _add_ingest_args(p: argparse.ArgumentParser, *, inputs_required: bool) -> None:
    p.add_argument(
        "inputs",
        nargs="+" if inputs_required else "*",
        metavar="INPUT",
        help="FITS files, directories (searched recursively), glob patterns ('raw/**/*.fz'), "
        "or manifests (@list.txt: one file per line, optional dq=PATH weight=PATH); "
        "each may be an fsspec URL (s3://bucket/raw/, 's3://bucket/raw/*.fits.fz', https://...)",
    )
    p.add_argument("--archive", "-a", required=True,
                   help="the Zarr archive (created if missing): a folder or a URL (s3://bucket/survey.zarr)")
    p.add_argument("--force", action="store_true", help="redo files whose SHA-256 is already in the archive")
    _add_cluster_args(p)
    p.add_argument(
        "--chunks",
        type=_storage_chunks,
        metavar="NY,NX",
        help="Zarr chunk shape (default from config: crscale.archive.chunks)",
    )
    p.add_argument(
        "--hdu",
        action="append",
        metavar="SEL",
        dest="hdus",
        help="only these science HDUs: index, EXTNAME or EXTNAME,EXTVER (repeatable)",
    )
    p.add_argument(
        "--dq", metavar="PATH", help="separate data-quality / bad-pixel file for a single input file"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--report", metavar="JSON", help="also write the per-file results as JSON")
    p.add_argument("--strict", action="store_true", help="exit 1 on duplicates too, not only on failures")


def _add_cluster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="use a running Dask scheduler (address or scheduler-file.json) instead "
        "of starting a LocalCluster",
    )
    p.add_argument("--workers", type=_workers, metavar="N", help="LocalCluster worker processes")
    p.add_argument(
        "--cluster",
        choices=("local", "slurm", "pbs", "lsf", "sge"),
        help="where the workers come from without --scheduler: a LocalCluster, or worker jobs "
        "submitted to the batch system with dask-jobqueue, configured by the site's jobqueue and "
        "crscale.hpc settings (default: crscale.cluster.kind, local; see docs/hpc.md)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        metavar="N",
        help="worker jobs to submit with --cluster (default: crscale.hpc.jobs)",
    )


def _add_archive_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("archive", help="the Zarr archive (a folder or a URL, s3://bucket/survey.zarr)")
    p.add_argument(
        "--exposure",
        "-e",
        action="append",
        dest="exposures",
        metavar="ID",
        help="only this exposure (repeatable)",
    )


def _add_report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--report", metavar="JSON", help="also write the per-exposure results as JSON")


def _add_detect_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("detection (defaults from the dask config, crscale.detect.*)")
    g.add_argument(
        "--model", help="model name, .safetensors path or deepcr:NAME (default: the shipped default)"
    )
    g.add_argument("--threshold", type=float, help="mask threshold (default: the model card's)")
    g.add_argument("--device", help="auto (default), cpu, cuda")
    g.add_argument("--precision", choices=("auto", "float32", "bfloat16", "float16"))
    g.add_argument("--compile", action="store_true", default=None, help="torch.compile on every worker")
    g.add_argument(
        "--no-inpaint",
        dest="inpaint",
        action="store_false",
        default=None,
        help="do not write the cleaned image",
    )
    g.add_argument("--inpaint-method", choices=("median", "gaussian", "harmonic", "biharmonic"))
    g.add_argument(
        "--block",
        type=_chunks,
        metavar="NY,NX",
        help="target block shape, rounded to whole Zarr chunks (default 2048,2048)",
    )


def _detect_options(args: argparse.Namespace) -> dict:
    return {
        "model": args.model,
        "threshold": args.threshold,
        "device": args.device,
        "precision": args.precision,
        "compile": args.compile,
        "inpaint": args.inpaint,
        "inpaint_method": args.inpaint_method,
        "block": args.block,
    }


def _add_write_fits_parser(sub: Any) -> None:
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
    _add_archive_args(p)
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
    _add_cluster_args(p)
    _add_report_args(p)


def _cmd_write_fits(args: argparse.Namespace) -> int:
    from crscale.engine.write_fits_stage import write_fits_archive

    return _run_stage(
        "write-fits",
        lambda archive, **kw: write_fits_archive(archive, args.outdir, **kw),
        args,
        pixels=args.pixels,
        flags=args.flags,
        prob=args.prob,
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``crscale`` command."""
    parser = argparse.ArgumentParser(
        prog="crscale",
        description="Survey-scale cosmic-ray detection on Dask: FITS -> Zarr archive -> "
        "CR masks, cleaned images and CR catalogues.",
    )
    parser.add_argument("--version", action="version", version=f"crscale {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "ingest",
        help="ingest FITS exposures into a Zarr archive",
        description="Ingest FITS exposures into a crscale Zarr archive, in "
        "parallel on Dask. Re-running skips files already ingested.",
    )
    _add_ingest_args(p, inputs_required=True)

    p = sub.add_parser(
        "run",
        help="the whole pipeline over inputs: ingest, detect, catalogue",
        description="Ingest the inputs into the archive, detect, mask and inpaint the CRs of "
        "their exposures, and catalogue every CR (Parquet in the archive), on one Dask cluster. "
        "Re-running skips what is done; --force redoes it.",
    )
    _add_ingest_args(p, inputs_required=False)
    p.add_argument(
        "--sample", action="store_true", help="add the bundled real sample exposures to the inputs"
    )
    p.add_argument(
        "--stages",
        default="ingest,detect,catalogue",
        metavar="LIST",
        help="comma-separated stages to run (default: ingest,detect,catalogue)",
    )
    _add_detect_args(p)

    p = sub.add_parser(
        "detect",
        help="detect, mask and inpaint the CRs of an archive's exposures on Dask",
        description="Run the CNN over every ingested exposure of an archive (blocks with a halo on "
        "Dask workers) and write prob, mask and clean next to each image. Exposures already "
        "done are skipped (--force redoes them); a failed exposure is recorded and the rest go on.",
    )
    _add_archive_args(p)
    p.add_argument("--force", action="store_true", help="redo exposures whose detection is done")
    _add_cluster_args(p)
    _add_detect_args(p)
    _add_report_args(p)

    p = sub.add_parser(
        "catalogue",
        help="catalogue every CR of an archive's detected exposures (Parquet)",
        description="Label the CRs in each detected exposure's mask (8-connected, across block "
        "boundaries), measure them (centroid, size, length, charge, energy, morphology) and "
        "compute per-detector CR rates; write ARCHIVE/catalogue/{crs,exposures}/<exposure>.parquet. "
        "Up-to-date exposures are skipped (--force redoes them); a failed exposure is recorded, "
        "leaves no rows, and the rest go on.",
    )
    _add_archive_args(p)
    p.add_argument("--force", action="store_true", help="redo exposures whose catalogue is up to date")
    _add_cluster_args(p)
    _add_report_args(p)

    from crscale import cli_defects

    cli_defects.add_parser(sub, _add_cluster_args, _add_report_args)

    p = sub.add_parser(
        "stats",
        help="CR-rate statistics of an archive's catalogue: a table and plots (PNG)",
        description="Aggregate the catalogue with dask.dataframe (never all rows in one process): "
        "print CR rates per instrument (pooled, with Poisson errors) and morphology fractions, and "
        "write plots: rate vs time, rate distribution, CR size / length / energy histograms and "
        "class fractions.",
    )
    _add_archive_args(p)
    p.add_argument(
        "--plots",
        metavar="DIR",
        help="folder for the PNG plots (default: ARCHIVE's name + '-stats', beside it)",
    )
    p.add_argument("--no-plots", action="store_true", help="only the table")
    p.add_argument("--json", metavar="FILE", help="also write the statistics as JSON")
    _add_cluster_args(p)

    p = sub.add_parser(
        "export",
        help="write a catalogue table as FITS, ECSV, CSV or Parquet for other tools",
        description="Export the per-CR table (default) or the per-exposure table of an archive's "
        "catalogue; the format follows OUT's suffix (.fits, .ecsv, .csv, .parquet). Units and "
        "column descriptions travel with FITS and ECSV.",
    )
    p.add_argument("archive", help="the Zarr archive (a folder or a URL, s3://bucket/survey.zarr)")
    p.add_argument("out", help="output file")
    p.add_argument("--table", choices=("crs", "exposures"), default="crs", help="which table (default crs)")
    p.add_argument(
        "--exposure",
        "-e",
        action="append",
        dest="exposures",
        metavar="ID",
        help="only this exposure (repeatable)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")

    _add_write_fits_parser(sub)

    p = sub.add_parser(
        "info",
        help="summarise an archive",
        description="Print a readable summary of an archive: exposures, "
        "stages, guessed metadata, warnings and failures.",
    )
    p.add_argument("archive", help="the Zarr archive (a folder or a URL, s3://bucket/survey.zarr)")
    p.add_argument("--exposure", "-e", help="details of one exposure")
    p.add_argument("--json", action="store_true", help="machine-readable JSON")

    p = sub.add_parser(
        "verify",
        help="scrub an archive: every chunk of every array against its integrity record",
        description="Check every stored chunk of every array of the archive (or of the exposures "
        "given): present where the array records every chunk as stored, and decodable (crc32c "
        "checksum, compression); and the arrays each finished stage promises. Reports per "
        "exposure, marks the stages of damaged exposures 'damaged' (so that re-running them "
        "redoes exactly those), prints the commands that repair them, and exits 1 on damage.",
    )
    _add_archive_args(p)
    p.add_argument("--json", action="store_true", help="machine-readable JSON")
    p.add_argument(
        "--no-mark", dest="mark", action="store_false", help="only report: leave the statuses alone"
    )

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

    sub.add_parser("sample-data", help="print the folder of the bundled real sample data")

    p = sub.add_parser(
        "job-script",
        help="print the batch script of crscale's worker jobs (nothing is submitted)",
        description="Print the job script that `--cluster SYSTEM` would submit, generated by "
        "dask-jobqueue from the site's jobqueue and crscale.hpc settings (see docs/hpc.md). "
        "Nothing is submitted; the scheduler address in it is a placeholder of this run.",
    )
    p.add_argument("system", choices=("slurm", "pbs", "lsf", "sge"), help="the batch system")
    p.add_argument("--cpu", action="store_true", help="the CPU-only job (crscale.hpc.cpu_jobs) instead")

    p = sub.add_parser(
        "train",
        help="train a CR model (label-free: real images + injected real CRs)",
        description="Train a U-Net CR detector from a YAML config (see docs/training.md): "
        "real science images, real CR footprints (LSST ITL darks and/or your own dark "
        "frames), validation on held-out images. Resumes from the checkpoint in the "
        "work folder unless --fresh.",
    )
    p.add_argument("config", help="training config (YAML)")
    p.add_argument("--epochs", type=int, help="override the config's epochs")
    p.add_argument("--workdir", help="override the work folder (patches, checkpoints)")
    p.add_argument("--output", help="override the output weight file (.safetensors)")
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = sub.add_parser(
        "evaluate",
        help="measure CR detection quality: crscale models against astroscrappy, deepCR, Cosmic-CoNN",
        description="Evaluate CR detectors on labelled real images: image + CR mask FITS pairs "
        "(--masks, matched by name), or, without --masks, an injection set built on the fly "
        "(each image's own CRs found with astroscrappy and left out; real CR footprints from "
        "the bundled LSST ITL darks and/or --darks added at known places). Prints the pooled "
        "table and writes metrics.json, curves.json, run.json, PNG plots (ROC, precision-recall, "
        "per image, threshold scan) and report.md to --out. See docs/evaluation.md.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGES", help="FITS images or directories")
    p.add_argument(
        "--masks",
        nargs="+",
        metavar="MASKS",
        help="CR mask FITS files or directories; or 'pipeline': the CR flags the images' own "
        "pipeline left in their DQ planes (DECam CP code 5, HST DQ 4096/8192, BANZAI BPM 8) are the "
        "truth, which measures agreement with the pipeline",
    )
    p.add_argument("--out", "-o", required=True, help="report folder (created; files replaced)")
    p.add_argument(
        "--model",
        "-m",
        action="append",
        dest="models",
        metavar="NAME",
        help="crscale model (name or .safetensors; repeatable; default: the default model). "
        "The first is checked against the targets",
    )
    p.add_argument("--threshold", type=float, help="crscale models' threshold (default: each card's)")
    p.add_argument(
        "--baselines",
        default="astroscrappy,deepcr,cosmic-conn",
        help="comma-separated among astroscrappy, deepcr, cosmic-conn, or 'none' "
        "(default: all; those not installed are skipped with a message)",
    )
    p.add_argument(
        "--sigclips",
        type=_float_list,
        help="astroscrappy sigclip sweep, comma-separated (default 1,1.5,...,15,20)",
    )
    p.add_argument("--objlim", type=float, default=4.0, help="astroscrappy objlim (default 4)")
    p.add_argument("--sigfrac", type=float, default=0.3, help="astroscrappy sigfrac (default 0.3)")
    p.add_argument("--sigclip", type=float, default=4.5, help="astroscrappy operating point (default 4.5)")
    p.add_argument(
        "--deepcr-models", type=_name_list, help="deepCR models to run (default ACS-WFC,decam,WFC3-UVIS)"
    )
    p.add_argument(
        "--cosmic-conn-models",
        type=_name_list,
        help="Cosmic-CoNN models to run (default ground_imaging,NRES,HST_ACS_WFC)",
    )
    p.add_argument(
        "--dilate", action="store_true", help="3x3 dilation of truth and outputs (the paper's convention)"
    )
    p.add_argument(
        "--trained-dilated",
        action="append",
        default=[],
        metavar="METHOD",
        help="with --dilate: a method trained on dilated masks, whose output is not dilated (repeatable)",
    )
    p.add_argument("--darks", nargs="+", default=[], metavar="DARK", help="injection: your dark frames' CRs")
    p.add_argument(
        "--dark-nsigma",
        type=float,
        default=3.0,
        help="injection: dark-frame CR threshold in sigma (default 3)",
    )
    p.add_argument("--no-itl", action="store_true", help="injection: do not use the bundled ITL footprints")
    p.add_argument("--cr-rate", type=float, default=5e-4, help="injection: CRs per pixel (default 5e-4)")
    p.add_argument(
        "--repeats", type=int, default=1, help="injection: independent draws per image (default 1)"
    )
    p.add_argument("--seed", type=int, default=2026, help="injection: seed of the placements (default 2026)")
    p.add_argument("--device", default="auto", help="torch device of the crscale models (default auto)")
    p.add_argument("--precision", default="auto", help="crscale models' precision (default auto)")
    p.add_argument(
        "--update-card",
        action="store_true",
        help="write the figures of each --model given as a .safetensors path into its card "
        "(<model>.json, field 'evaluation'); shipped models' cards are left alone",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = sub.add_parser(
        "models",
        help="list the available CR models and their model cards",
        description="List shipped models (and pip deepCR models when deepCR is "
        "installed), or print one model card.",
    )
    p.add_argument("name", nargs="?", help="print this model's card as JSON")
    return parser


def _with_dq(args: argparse.Namespace, inputs: list) -> list | None:
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


def _cmd_ingest(args: argparse.Namespace, inputs: list) -> int:
    from crscale.engine.ingest import ingest
    from crscale.errors import CrscaleError

    inputs = _with_dq(args, inputs)
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


def _guarded(name: str, call: Callable[[], Any]) -> tuple[Any, int | None]:
    """``(call(), None)``; or ``(None, exit status)`` with the message printed, when it raises.

    Only crscale's own errors are the user's to act on (a setting, an input, the archive, an
    optional package a setting needs, ``--device cuda`` without a GPU); anything else is a bug
    and keeps its traceback.
    """
    from crscale.errors import CrscaleError

    try:
        return call(), None
    except CrscaleError as exc:
        print(f"crscale {name}: {exc}", file=sys.stderr)
        return None, EXIT_USAGE
    except KeyboardInterrupt:
        print(_INTERRUPTED, file=sys.stderr)
        return None, EXIT_INTERRUPTED


def _run_stage(name: str, stage: Callable[..., Any], args: argparse.Namespace, **options: Any) -> int:
    """Run one archive stage (detect, catalogue) for the CLI: summary, report file, exit status."""
    report, status = _guarded(
        name,
        lambda: stage(
            args.archive,
            scheduler=args.scheduler,
            n_workers=args.workers,
            exposures=args.exposures,
            force=args.force,
            progress=not args.no_progress,
            **options,
        ),
    )
    if status is not None:
        return status
    print(report.summary())
    if args.report:
        Path(args.report).write_text(json.dumps(report.to_dict(), indent=2))
    return EXIT_OK if report.ok else EXIT_FAILED


def _cmd_detect(args: argparse.Namespace) -> int:
    from crscale.engine.detect_stage import detect_archive

    return _run_stage("detect", detect_archive, args, **_detect_options(args))


def _cmd_catalogue(args: argparse.Namespace) -> int:
    from crscale.engine.catalogue_stage import catalogue_archive

    return _run_stage("catalogue", catalogue_archive, args, **_catalogue_options())


def _cmd_defects(args: argparse.Namespace) -> int:
    from crscale import cli_defects

    return cli_defects.run(args)


def _catalogue_options() -> dict[str, Any]:
    """The catalogue stage's completeness hook (crscale.evaluate sits above the engine)."""
    from crscale.evaluate.completeness import refresh_completeness

    return {"completeness": refresh_completeness}


def _cmd_stats(args: argparse.Namespace) -> int:
    from crscale.catalog.plots import write_plots
    from crscale.catalog.stats import exposure_rates, summarise
    from crscale.engine.cluster import client_or_new
    from crscale.io.storage import is_url, location

    archive = location(args.archive) if is_url(args.archive) else Path(args.archive)

    def aggregate() -> tuple[Any, Any]:
        with client_or_new(None, args.scheduler, n_workers=args.workers, echo=None):
            stats = summarise(archive, exposures=args.exposures)
            rates = None if args.no_plots else exposure_rates(archive, exposures=args.exposures)
        return stats, rates

    result, status = _guarded("stats", aggregate)
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


def _cmd_export(args: argparse.Namespace) -> int:
    from crscale.io.catalogue_store import export_table

    out, status = _guarded(
        "export",
        lambda: export_table(
            args.archive, args.out, table=args.table, exposures=args.exposures, overwrite=args.overwrite
        ),
    )
    if status is not None:
        return status
    print(f"wrote {out}")
    return EXIT_OK


def _cmd_job_script(args: argparse.Namespace) -> int:
    from crscale.engine import hpc

    def script() -> str:
        cluster = hpc.jobqueue_cluster(args.system, submit=False)
        try:
            if not args.cpu:
                return cluster.job_script()
            spec = hpc.cpu_job_spec(cluster, args.system)
            return spec["cls"](cluster.scheduler_address, name="cpu-0", **spec["options"]).job_script()
        finally:
            cluster.close()

    text, status = _guarded("job-script", script)
    if status is not None:
        return status
    print(text, end="")
    return EXIT_OK


def _cmd_dashboard(args: argparse.Namespace) -> int:
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


def _cmd_run(args: argparse.Namespace, inputs: list) -> int:
    from crscale.engine.pipeline import run_pipeline

    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    if "ingest" in stages and not inputs:
        print("crscale run: no inputs (give files, directories, patterns or --sample)", file=sys.stderr)
        return EXIT_USAGE
    inputs = _with_dq(args, inputs)
    if inputs is None:
        return EXIT_USAGE
    report, status = _guarded(
        "run",
        lambda: run_pipeline(
            inputs,
            args.archive,
            stages=stages,
            scheduler=args.scheduler,
            n_workers=args.workers,
            force=args.force,
            ingest_options={"hdus": args.hdus, "chunks": args.chunks},
            detect_options=_detect_options(args),
            progress=not args.no_progress,
            catalogue_options=_catalogue_options(),
        ),
    )
    if status is not None:
        return status
    if args.report:
        Path(args.report).write_text(json.dumps(report.to_dict(), indent=2))
    strict_fail = args.strict and report.ingest is not None and report.ingest.by_status("duplicate")
    return EXIT_OK if report.ok and not strict_fail else EXIT_FAILED


_INTERRUPTED = (
    "crscale: interrupted. Finished exposures are kept (their status is written last); "
    "re-run the same command to finish the rest."
)


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


def format_exposure(archive, exposure_id: str) -> str:  # noqa: ANN001 - Archive, imported lazily
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


def _flag_agreement_lines(archive, eid: str, det: str, exp: dict, attrs: dict) -> list[str]:  # noqa: ANN001
    """The DQ convention of a detector and, once detected, crscale's agreement with prior CR flags."""
    from crscale.io.dq import convention_for, cr_flag_agreement

    group = archive.root[f"exposures/{eid}/{det}"]
    if "dq" not in group.array_keys():
        return []
    conv = convention_for(exp, attrs)
    lines = [f"    dq means   {conv.name} ({conv.kind}): {conv.description}"]
    if not conv.cosmic_ray or "mask" not in group.array_keys():
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


def _cmd_info(args: argparse.Namespace) -> int:
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


def _cmd_verify(args: argparse.Namespace) -> int:
    from crscale.io.verify import verify_archive

    report, status = _guarded("verify", lambda: verify_archive(args.archive, args.exposures, mark=args.mark))
    if status is not None:
        return status
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.summary())
    return EXIT_OK if report.ok else EXIT_FAILED


def _cmd_train(args: argparse.Namespace) -> int:
    from crscale.errors import CrscaleError, SettingsError
    from crscale.train import TrainConfig, train

    try:
        config = TrainConfig.from_yaml(
            args.config, epochs=args.epochs, workdir=args.workdir, output=args.output
        )
        result = train(config, resume=not args.fresh, progress=not args.no_progress)
    except SettingsError as exc:
        print(f"crscale train: {args.config}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CrscaleError as exc:  # an unreadable config or image (an InputError) ...
        print(f"crscale train: {exc}", file=sys.stderr)
        return EXIT_USAGE
    v = result.card.validation
    print(
        f"model: {result.model_path}\nvalidation: TPR@FPR=1e-3 {v['tpr@fpr=1e-3']:.4f}, "
        f"TPR@FPR=1e-4 {v['tpr@fpr=1e-4']:.4f}, F1 {v['f1']:.3f} "
        f"at threshold {result.card.recommended_threshold}"
    )
    return EXIT_OK


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import shlex

    from crscale.errors import CrscaleError
    from crscale.evaluate.api import evaluate
    from crscale.evaluate.report import format_table, format_targets

    try:
        report = evaluate(
            args.images,
            args.masks,
            args.out,
            models=tuple(args.models or ["default"]),
            threshold=args.threshold,
            baselines=_name_list(args.baselines),
            **({"sigclips": args.sigclips} if args.sigclips else {}),
            objlim=args.objlim,
            sigfrac=args.sigfrac,
            sigclip=args.sigclip,
            **({"deepcr_models": args.deepcr_models} if args.deepcr_models is not None else {}),
            **(
                {"cosmic_conn_models": args.cosmic_conn_models} if args.cosmic_conn_models is not None else {}
            ),
            dilate=args.dilate,
            trained_dilated=tuple(args.trained_dilated),
            darks=tuple(args.darks),
            dark_nsigma=args.dark_nsigma,
            use_itl=not args.no_itl,
            cr_rate=args.cr_rate,
            repeats=args.repeats,
            seed=args.seed,
            device=args.device,
            precision=args.precision,
            progress=not args.no_progress,
            update_cards=args.update_card,
            command="crscale " + " ".join(map(shlex.quote, args.argv)),
        )
    except CrscaleError as exc:  # the report folder that cannot be written too (an OutputError)
        print(f"crscale evaluate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(format_table(report.metrics))
    lines = format_targets(report.run)
    if lines:
        print(lines)
    print(f"report: {Path(args.out) / 'report.md'} ({len(report.files)} files)")
    return EXIT_OK


def _cmd_models(args: argparse.Namespace) -> int:
    from crscale.errors import CrscaleError, MissingDependencyError
    from crscale.models import DEFAULT_MODEL, available_models, load_model

    if args.name:
        try:
            _, card = load_model(args.name)
        except CrscaleError as exc:
            print(f"crscale models: {exc}", file=sys.stderr)
            return EXIT_USAGE
        print(json.dumps(card.to_dict(), indent=2))
        return EXIT_OK
    print(f"{'model':<24} {'architecture':<37} {'params':>8} {'thr':>5} {'TPR@1e-3':>9} {'TPR@1e-4':>9}")
    for name in available_models():
        _, card = load_model(name)
        a, v = card.architecture, card.validation
        norm = {'batch': 'BatchNorm', 'group': 'GroupNorm'}.get(a['norm'], a['norm'])
        arch = f"depth {a['depth']}, {a['width']} ch, {norm}{', attention' if a['attention'] else ''}"
        star = " (default)" if name == DEFAULT_MODEL else ""
        print(
            f"{name:<24} {arch:<37} {card.parameters:>8,} {card.recommended_threshold:>5.2f} "
            f"{v.get('tpr@fpr=1e-3', float('nan')):>9.4f} {v.get('tpr@fpr=1e-4', float('nan')):>9.4f}{star}"
        )
    try:
        from crscale.models.deepcr import deepcr_model_names

        names = deepcr_model_names()
        print(f"pip deepCR models (use as deepcr:NAME): {', '.join(names)}")
    except MissingDependencyError:
        print("pip deepCR is not installed: its models are not available")
    return EXIT_OK


class _ConsoleHandler(logging.Handler):
    """Library messages for the terminal: INFO on stdout (they are the command's output), the rest on stderr.

    The streams are looked up at each message, so a caller that swaps ``sys.stdout`` (pytest's
    capture, a notebook) gets them too.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stdout if record.levelno < logging.WARNING else sys.stderr
            stream.write(self.format(record) + "\n")
            stream.flush()
        except BrokenPipeError:
            raise
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def console_logging(level: int = logging.INFO) -> Iterator[None]:
    """Show the ``crscale`` loggers' messages at ``level`` and above on the console while the command runs.

    Parameters
    ----------
    level : int
        The lowest level shown.
    """
    logger = logging.getLogger("crscale")
    handler = _ConsoleHandler(level)
    handler.setFormatter(logging.Formatter("%(message)s"))
    old_level, old_propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        logger.propagate = old_propagate


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``crscale`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    from crscale.interrupts import handle_signals

    # SIGTERM (a batch job's walltime), SIGHUP and Ctrl-C: the same clean stop, exit 130.
    try:
        with handle_signals(), console_logging():
            return _main(args)
    except KeyboardInterrupt:
        print(_INTERRUPTED, file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`crscale info A | head`): not an error of crscale's. Point
        # stdout at /dev/null so that the interpreter's final flush cannot fail again.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _main(args: argparse.Namespace) -> int:
    overrides = {}
    if getattr(args, "cluster", None):
        overrides["crscale.cluster.kind"] = args.cluster
    if getattr(args, "jobs", None) is not None:
        if args.jobs < 1:
            print("crscale: --jobs must be at least 1", file=sys.stderr)
            return EXIT_USAGE
        overrides["crscale.hpc.jobs"] = args.jobs
    if overrides:
        import dask.config

        with dask.config.set(overrides):
            return _dispatch(args)
    return _dispatch(args)


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "ingest":
        return _cmd_ingest(args, list(args.inputs))
    if args.command == "run":
        inputs = list(args.inputs)
        if args.sample:
            from crscale import sample_data_dir

            inputs.append(str(sample_data_dir() / "images"))
        return _cmd_run(args, inputs)
    commands = {
        "detect": _cmd_detect,
        "catalogue": _cmd_catalogue,
        "defects": _cmd_defects,
        "stats": _cmd_stats,
        "export": _cmd_export,
        "info": _cmd_info,
        "verify": _cmd_verify,
        "train": _cmd_train,
        "models": _cmd_models,
        "evaluate": _cmd_evaluate,
        "write-fits": _cmd_write_fits,
        "dashboard": _cmd_dashboard,
    }
    if args.command in commands:
        return commands[args.command](args)
    if args.command == "job-script":
        return _cmd_job_script(args)
    if args.command == "sample-data":
        from crscale import sample_data_dir

        print(sample_data_dir())
        return EXIT_OK
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
