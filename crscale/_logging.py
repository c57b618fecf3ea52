"""How library code reports progress messages: to :mod:`logging`, or to a caller's callable.

Library functions take an optional ``echo`` (or ``log``) callable for callers that want the
messages themselves (tests, notebooks); without one the messages go to the module's logger,
and the CLI (see :mod:`crscale.cli`) installs the handler that shows them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

Reporter = Callable[[str], None]


def reporter(logger: logging.Logger, echo: Reporter | None = None) -> Reporter:
    """The callable that reports a message: ``echo`` when given, else ``logger.info``.

    Parameters
    ----------
    logger : logging.Logger
        The calling module's logger.
    echo : callable, optional
        The caller's own reporter.

    Returns
    -------
    callable
        Takes one message string.
    """
    return echo if echo is not None else logger.info
