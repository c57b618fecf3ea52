"""Errors raised for bad input, each naming the file and the problem."""

from __future__ import annotations

from pathlib import Path


class CrscaleError(Exception):
    """Base class of crscale's own errors."""


class InputError(CrscaleError):
    """An input file that cannot be used.

    Parameters
    ----------
    path : str or Path
        The offending file.
    problem : str
        What is wrong with it, in words a user can act on.
    kind : str, optional
        A short machine-readable class of the problem (``"missing"``, ``"corrupt"``,
        ``"truncated"``, ``"no-image"``, ``"no-finite-pixels"``, ``"dq-mismatch"``, ...).
    """

    def __init__(self, path: str | Path, problem: str, kind: str = "invalid") -> None:
        self.path = str(path)
        self.problem = problem
        self.kind = kind
        super().__init__(f"{self.path}: {problem}")


class ArchiveError(CrscaleError):
    """The archive cannot be opened or written."""


def describe(exc: BaseException) -> str:
    """``"TypeName: message"`` (or the type name alone) for messages shown and recorded."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
