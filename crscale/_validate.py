"""Checks of settings and arguments shared across crscale; each raises a ``SettingsError``.

One implementation per check, so that a threshold or a method name is refused with the same
message whichever layer meets it first (photutils keeps its own in ``utils/_parameters.py``).
``SettingsError`` is a ``ValueError``: callers that catch ``ValueError`` still do.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from crscale.errors import SettingsError


def threshold(value: Any, name: str = "threshold") -> float:
    """``value`` as a float in [0, 1] (a probability threshold).

    Parameters
    ----------
    value : float
        The threshold.
    name : str, optional
        Its name in the error message.

    Returns
    -------
    float
        The threshold.

    Raises
    ------
    crscale.errors.SettingsError
        Outside [0, 1] (NaN included).
    """
    number = float(value)
    if not 0.0 <= number <= 1.0:
        raise SettingsError(f"{name} must lie in [0, 1], not {value}")
    return number


def one_of(value: Any, choices: Iterable[Any], name: str) -> Any:
    """``value`` if it is one of ``choices``.

    Parameters
    ----------
    value : Any
        The value given.
    choices : iterable
        The values allowed (shown in the message as given, e.g. a tuple).
    name : str
        The setting's name in the error message.

    Returns
    -------
    Any
        ``value``.

    Raises
    ------
    crscale.errors.SettingsError
        When ``value`` is not among ``choices``.
    """
    if value not in tuple(choices):
        raise SettingsError(f"{name} must be one of {choices}, not {value!r}")
    return value


def known(value: Any, choices: Iterable[Any], what: str) -> Any:
    """As :func:`one_of`, for names looked up in a table: "unknown <what> 'x'; choose one of ...".

    ``what`` says what the names are, e.g. ``"inpainting method"``; raises
    :class:`~crscale.errors.SettingsError` for a name not among ``choices``.
    """
    if value not in tuple(choices):
        raise SettingsError(f"unknown {what} {value!r}; choose one of {choices}")
    return value
