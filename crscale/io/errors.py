"""Deprecated home of crscale's errors: use :mod:`crscale.errors`.

Kept importable for a deprecation period (see docs/api.md); the names here are the same
objects as in :mod:`crscale.errors`.
"""

from __future__ import annotations

from crscale.errors import ArchiveError, CrscaleError, InputError, error_text

#: The old name of :func:`crscale.errors.error_text`.
describe = error_text

__all__ = ["ArchiveError", "CrscaleError", "InputError", "describe"]
