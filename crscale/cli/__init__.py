"""The ``crscale`` command line. Thin: parses arguments and calls the layers below.

Exit status: 0 when everything asked for succeeded, 1 when some input or exposure failed (the
others were still processed), 2 for a usage error or an archive that cannot be opened, 130 when
interrupted (re-run to finish).

One module per command group (:mod:`~crscale.cli.archive_cmds`, :mod:`~crscale.cli.info_cmds`,
:mod:`~crscale.cli.products`, :mod:`~crscale.cli.model_cmds`, :mod:`~crscale.cli.hpc_cmds`),
each with its commands' parser builders and the functions that run them; the parser is
assembled in :mod:`crscale.cli._parser`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from crscale.cli._console import console_logging
from crscale.cli._parser import build_parser
from crscale.cli._run import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, INTERRUPTED
from crscale.cli.info_cmds import format_exposure, format_info

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "build_parser",
    "console_logging",
    "format_exposure",
    "format_info",
    "main",
]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``crscale`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    from crscale.interrupts import handle_signals

    # SIGTERM (a batch job's walltime), SIGHUP and Ctrl-C: the same clean stop, exit 130.
    try:
        with handle_signals(), console_logging(args.log_level):
            return _main(args)
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`crscale info A | head`): not an error of crscale's. Point
        # stdout at /dev/null so that the interpreter's final flush cannot fail again.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _main(args: argparse.Namespace) -> int:
    from crscale.cli.hpc_cmds import cluster_settings

    overrides = cluster_settings(args)
    if overrides is None:
        return EXIT_USAGE
    if overrides:
        import dask.config

        with dask.config.set(overrides):
            return args.handler(args)
    return args.handler(args)
