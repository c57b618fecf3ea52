"""Lazy re-exports for a package's ``__init__`` (PEP 562), as ``lazy_loader.attach`` does.

A subpackage names its public objects in ``__all__`` without importing the modules that hold
them until one is used: ``import crscale.catalogue.labels`` on a Dask worker must not pay for
pandas, dask.dataframe and torch that other parts of the package need.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def attach(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package`` that import ``exports`` on first use.

    Parameters
    ----------
    package : str
        The package's ``__name__``.
    exports : dict
        Public name -> the module that defines it.

    Returns
    -------
    tuple of callable
        The module-level ``__getattr__`` and ``__dir__``.
    """

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)  # later look-ups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
