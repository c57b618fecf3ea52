"""Exit statuses, and running a library call for a command: its message and status when it fails."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def silent(message: str) -> None:
    """A library function's reporter that drops its messages (the command prints its own output)."""

INTERRUPTED = (
    "crscale: interrupted. Finished exposures are kept (their status is written last); "
    "re-run the same command to finish the rest."
)


def guarded(name: str, call: Callable[[], Any]) -> tuple[Any, int | None]:
    """``(call(), None)``; or ``(None, exit status)`` with the message printed, when it raises.

    Only crscale's own errors are the user's to act on (a setting, an input, the archive, an
    optional package a setting needs, ``--device cuda`` without a GPU); anything else is a bug
    and keeps its traceback.
    """
    from crscale.errors import CrscaleError
    from crscale.interrupts import mark_handled

    try:
        return call(), None
    except CrscaleError as exc:
        print(f"crscale {name}: {exc}", file=sys.stderr)
        return None, EXIT_USAGE
    except KeyboardInterrupt:
        mark_handled()
        print(INTERRUPTED, file=sys.stderr)
        return None, EXIT_INTERRUPTED


def run_stage(name: str, stage: Callable[..., Any], args: argparse.Namespace, **options: Any) -> int:
    """Run one archive stage (detect, catalogue) for the CLI: summary, report file, exit status."""
    report, status = guarded(
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
