"""Argument types and the option groups that several ``crscale`` commands share."""

from __future__ import annotations

import argparse
import ast
import functools
from pathlib import Path

from crscale.cli.hpc_cmds import add_cluster_args


def chunk_shape(text: str) -> list[int]:
    """``N`` or ``NY,NX`` (also ``NYxNX``): a 2-D shape of positive integers."""
    parts = [int(p) for p in text.replace("x", ",").split(",") if p.strip()]
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError("chunks are 'N' or 'NY,NX' with positive integers")
    return parts


#: The smallest --chunks side: one file per chunk, so tiny chunks make millions of files.
MIN_CHUNK_SIDE = 16


def storage_chunk_shape(text: str) -> list[int]:
    """A Zarr chunk shape: :func:`chunk_shape`, at least :data:`MIN_CHUNK_SIDE` a side."""
    parts = chunk_shape(text)
    if min(parts) < MIN_CHUNK_SIDE:
        raise argparse.ArgumentTypeError(
            f"chunks of {parts[0]}x{parts[1]} px store one file per {parts[0] * parts[1]} px "
            f"(a 4k x 4k image would become {-(-4096 // parts[0]) * -(-4096 // parts[1]):,} files); "
            f"use at least {MIN_CHUNK_SIDE} px a side (default 1024)"
        )
    return parts



def float_list(text: str) -> tuple[float, ...]:
    """Comma-separated numbers, at least one."""
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, not {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def name_list(text: str) -> tuple[str, ...]:
    """Comma-separated names; ``none`` means none."""
    return tuple(x.strip() for x in text.split(",") if x.strip() and x.strip() != "none")


def add_ingest_args(p: argparse.ArgumentParser, *, inputs_required: bool) -> None:
    """The inputs and ingest options of ``ingest`` and ``run``."""
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
    add_cluster_args(p)
    p.add_argument(
        "--chunks",
        type=storage_chunk_shape,
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



#: The help of the ``ARCHIVE`` argument of the commands that read an archive.
ARCHIVE_HELP = "the Zarr archive (a folder or a URL, s3://bucket/survey.zarr)"


def add_archive_args(p: argparse.ArgumentParser) -> None:
    """The ``ARCHIVE`` argument and ``--exposure``."""
    p.add_argument("archive", help=ARCHIVE_HELP)
    add_exposures_arg(p)


def add_exposures_arg(p: argparse.ArgumentParser) -> None:
    """``--exposure ID`` (repeatable): only these exposures."""
    p.add_argument(
        "--exposure",
        "-e",
        action="append",
        dest="exposures",
        metavar="ID",
        help="only this exposure (repeatable)",
    )


def add_report_args(p: argparse.ArgumentParser) -> None:
    """``--no-progress`` and ``--report``."""
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--report", metavar="JSON", help="also write the per-exposure results as JSON")


def add_detect_args(p: argparse.ArgumentParser) -> None:
    """The detection options of ``detect`` and ``run``."""
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
    g.add_argument("--inpaint-method", choices=inpaint_methods())
    g.add_argument(
        "--block",
        type=chunk_shape,
        metavar="NY,NX",
        help="target block shape, rounded to whole Zarr chunks (default 2048,2048)",
    )


@functools.cache
def inpaint_methods() -> tuple[str, ...] | None:
    """``INPAINT_METHODS`` of :mod:`crscale.detection.inpaint`, read from that module's source.

    Importing the module imports the detection layer, and torch with it: seconds that building
    the parser for every command (``crscale info``, ``--help``) must not cost. None (the stage
    then checks the name) if the constant is no longer a literal there; tests/test_cli_parser.py
    checks that the two agree.
    """
    source = Path(__file__).parents[1] / "detection" / "inpaint.py"
    for node in ast.parse(source.read_text(encoding="utf-8")).body:
        targets = [node.target] if isinstance(node, ast.AnnAssign) else getattr(node, "targets", [])
        named = any(isinstance(t, ast.Name) and t.id == "INPAINT_METHODS" for t in targets)
        if named and isinstance(node, ast.Assign | ast.AnnAssign) and node.value:
            try:
                return tuple(ast.literal_eval(node.value))
            except ValueError:
                return None
    return None


def detect_options(args: argparse.Namespace) -> dict:
    """The detection options given on the command line, as keyword arguments of the stage."""
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

