"""Deprecated spelling of :mod:`crscale.catalogue`, kept importable for a deprecation period.

crscale spells catalogue one way: the package is ``crscale.catalogue``. ``crscale.catalog``
and its modules (``crscale.catalog.stats``, ``crscale.catalog.profiles``, ...) are the same
module objects under the old name, so code written for it keeps working unchanged.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from typing import Any

import crscale.catalogue as _new

_OLD, _NEW = __name__ + ".", "crscale.catalogue."


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``crscale.catalog.X`` as the module ``crscale.catalogue.X`` itself (not a copy)."""

    def __init__(self) -> None:
        self._specs: dict[str, Any] = {}

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if not fullname.startswith(_OLD):
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Any:
        module = importlib.import_module(_NEW + spec.name[len(_OLD):])
        self._specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module: Any) -> None:
        # Already executed under its new name; the import system has just set the alias's
        # spec on it, so its own is put back.
        module.__spec__ = self._specs.pop(module.__spec__.name, module.__spec__)


if not any(isinstance(f, _Alias) for f in sys.meta_path):
    sys.meta_path.insert(0, _Alias())

__path__ = []  # a package, so that its submodules are looked up (by _Alias)
__all__ = list(_new.__all__)


def __getattr__(name: str) -> Any:
    return getattr(_new, name)


def __dir__() -> list[str]:
    return sorted(set(__all__) | set(globals()))
