"""The ``crscale`` argument parser, assembled from each command group's builders."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from crscale._version import __version__
from crscale.cli import archive_cmds, hpc_cmds, info_cmds, model_cmds, products
from crscale.cli._console import add_verbosity_args

#: The subcommands' builders, in the order ``crscale --help`` and docs/cli.md list them.
COMMANDS: tuple[Callable[[Any], None], ...] = (
    archive_cmds.add_ingest,
    archive_cmds.add_run,
    archive_cmds.add_detect,
    archive_cmds.add_catalogue,
    products.add_defects,
    info_cmds.add_stats,
    info_cmds.add_export,
    products.add_write_fits,
    info_cmds.add_info,
    archive_cmds.add_verify,
    info_cmds.add_dashboard,
    info_cmds.add_sample_data,
    hpc_cmds.add_job_script,
    model_cmds.add_train,
    model_cmds.add_evaluate,
    model_cmds.add_models,
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``crscale`` command.

    Returns
    -------
    argparse.ArgumentParser
        Each subcommand's parser sets ``handler``, the function that runs it.
    """
    parser = argparse.ArgumentParser(
        prog="crscale",
        description="Survey-scale cosmic-ray detection on Dask: FITS -> Zarr archive -> "
        "CR masks, cleaned images and CR catalogues.",
    )
    parser.add_argument("--version", action="version", version=f"crscale {__version__}")
    add_verbosity_args(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    for command in dict.fromkeys(sub.choices.values()):  # aliases share a parser
        add_verbosity_args(command, default=argparse.SUPPRESS)
    return parser
