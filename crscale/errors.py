"""crscale's exceptions and warnings, in one place.

Every error crscale raises on purpose derives from :class:`CrscaleError`, so a caller (the CLI
first of all) catches that one class. The classes that stand for an OS-level or a value problem
also derive from the matching built-in (:class:`ArchiveError` is an :class:`OSError`,
:class:`SettingsError` a :class:`ValueError`), so code written against the built-ins keeps
working. Modelled on zarr-python's ``zarr.errors``.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = [
    "ArchiveError",
    "ChunkIntegrityError",
    "ClusterError",
    "CrscaleError",
    "CrscaleWarning",
    "DeviceError",
    "FallbackWarning",
    "HPCConfigError",
    "InputError",
    "InputWarning",
    "MissingDependencyError",
    "OutputError",
    "OutputExistsError",
    "SettingsError",
    "error_text",
]


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

    def __init__(self, path: str | os.PathLike[str], problem: str, kind: str = "invalid") -> None:
        self.path = str(path)
        self.problem = problem
        self.kind = kind
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Raised on Dask workers and sent back pickled: keep the three fields.
        return (type(self), (self.path, self.problem, self.kind))


class ArchiveError(CrscaleError, OSError):
    """The archive cannot be opened, read or written."""

    def __str__(self) -> str:
        # OSError formats (errno, strerror) pairs its own way; keep the plain message.
        return " ".join(str(a) for a in self.args)


class ChunkIntegrityError(ArchiveError):
    """A chunk of an archive array is missing or does not decode.

    Parameters
    ----------
    array : str
        The array (``<archive>/exposures/<id>/<detector>/<name>``).
    chunk : str
        The chunk's key inside the array (``c/0/1``).
    problem : str
        ``"missing"`` or ``"corrupt"``.
    detail : str
        More about it (the decoder's message, how many more chunks are missing).
    """

    def __init__(self, array: str, chunk: str, problem: str, detail: str = "") -> None:
        self.array, self.chunk, self.problem, self.detail = array, chunk, problem, detail
        what = (
            "is missing (the array records every chunk as stored: it was written and is gone; "
            "reading it would give fill values, not data)"
            if problem == "missing"
            else "is corrupt (it does not decode)"
        )
        super().__init__(f"{array}: chunk {chunk} {what}" + (f"; {detail}" if detail else ""))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.array, self.chunk, self.problem, self.detail))

    @property
    def array_name(self) -> str:
        """The array's own name (``image``, ``mask`` ...)."""
        return self.array.rstrip("/").rsplit("/", 1)[-1]


class SettingsError(CrscaleError, ValueError):
    """A setting (configuration value, option or argument) that crscale cannot use."""


class DeviceError(SettingsError):
    """The compute device asked for (``--device cuda``) is not there."""


class MissingDependencyError(CrscaleError, ImportError):
    """An optional package that a setting needs is not installed (``deepcr:NAME`` without deepCR)."""


class OutputError(CrscaleError, OSError):
    """An output (a report folder, a served port) cannot be written or opened."""

    def __str__(self) -> str:
        return " ".join(str(a) for a in self.args)


class OutputExistsError(OutputError, FileExistsError):
    """An output file exists and replacing it was not asked for."""


class ClusterError(CrscaleError):
    """No Dask cluster could be reached or started."""


class HPCConfigError(SettingsError):
    """The site's batch-system configuration is missing something crscale needs."""


class CrscaleWarning(UserWarning):
    """Base class of crscale's warnings."""


class InputWarning(CrscaleWarning):
    """An input file is usable, but something in it was replaced by a fallback."""


class FallbackWarning(CrscaleWarning):
    """A setting could not be used as given and crscale fell back (``compile``: eager mode)."""


def error_text(exc: BaseException) -> str:
    """``"TypeName: message"`` (or the type name alone) for messages shown and recorded.

    Parameters
    ----------
    exc : BaseException
        The exception.

    Returns
    -------
    str
        The text to show and to record.
    """
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
