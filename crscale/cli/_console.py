"""The console handler that shows the ``crscale`` loggers' messages while a command runs."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator


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


def add_verbosity_args(p: argparse.ArgumentParser, *, default: object = logging.INFO) -> None:
    """``-v/--verbose`` and ``-q/--quiet``: the lowest level of the messages shown (``log_level``).

    Parameters
    ----------
    p : argparse.ArgumentParser
        The parser (the command's, and each subcommand's, so both ``crscale -q run`` and
        ``crscale run -q`` work).
    default : object
        INFO on the command; ``argparse.SUPPRESS`` on the subcommands, so that a subcommand
        given neither option keeps the command's.
    """
    g = p.add_mutually_exclusive_group()
    g.add_argument("-v", "--verbose", dest="log_level", action="store_const", const=logging.DEBUG,
                   default=default, help="also show debug messages")
    g.add_argument("-q", "--quiet", dest="log_level", action="store_const", const=logging.WARNING,
                   default=default, help="show only warnings and errors (and the results)")
