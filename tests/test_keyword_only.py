"""Public functions take their options keyword-only (issue #16; photutils' test_positional_kwargs).

An option is a parameter with a default. Passed by position (``f(x, 3, True)``), an option
silently takes another meaning when a parameter is added or reordered, and the call does not say
what ``3`` or ``True`` is. So every public function, method and constructor of crscale declares
its options after ``*``. Public means: defined in a module none of whose dotted parts starts
with ``_``, or named in a subpackage's ``__all__``; and not itself named with a leading ``_``.

Not checked: the ``__init__`` that ``@dataclass`` generates (records are built by field name by
their own convention), and exceptions (built-in exceptions take positional arguments, and
:meth:`~crscale.errors.InputError.__reduce__` unpickles them positionally).

Exempt:

- the first parameter, default or not: it is what the call is about, not an option
  (``load_model(spec="default")``, ``dask_client(scheduler=None)``, ``main(argv=None)``);
- the names in :data:`ALLOWED`, whose positional options are established API, each with why.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
from collections.abc import Callable, Iterator

import crscale

P = inspect.Parameter

#: Public name -> why its options may stay positional.
ALLOWED = {
    "crscale.config.get": "mirrors dask.config.get(key, default), which it wraps",
    "crscale.io.catalogue_store.read_table": (
        "documented as read_table(archive, table='crs', *, ...): the table is named positionally "
        "throughout the docs and notebooks, as in read_table('demo.zarr', 'crs')"
    ),
    "crscale.io.catalogue_store.read_table_dask": "the same signature as read_table",
    "crscale.evaluate.api.evaluate": (
        "documented as evaluate(images, masks=None, out=None, *, ...): the three inputs of an "
        "evaluation, positional in docs/api.md's example"
    ),
    "crscale.catalogue.histograms.log_bins": (
        "log_bins(low, high, per_decade): the bins settings spell a binning as that triple, "
        "applied as log_bins(*spec)"
    ),
    "crscale.engine.blocks.detect_block": (
        "a dask.array block function: map_overlap passes the image and dq blocks positionally"
    ),
    "crscale.engine.catalogue_stage.catalogue_detector_task": (
        "a Dask task: client.submit passes its arguments positionally"
    ),
    # RemotePath stands in for pathlib.Path on object storage: same methods, same signatures.
    "crscale.io.storage.RemotePath.mkdir": "pathlib.Path.mkdir(mode, parents, exist_ok)",
    "crscale.io.storage.RemotePath.open": "pathlib.Path.open(mode, ...)",
    "crscale.io.storage.RemotePath.read_text": "pathlib.Path.read_text(encoding, ...)",
    "crscale.io.storage.RemotePath.write_text": "pathlib.Path.write_text(data, encoding, ...)",
    "crscale.io.storage.RemotePath.unlink": "pathlib.Path.unlink(missing_ok)",
}


def _public_modules() -> Iterator[object]:
    yield crscale
    for info in pkgutil.walk_packages(crscale.__path__, "crscale."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            yield importlib.import_module(info.name)


def _callables(cls: type) -> Iterator[tuple[str, Callable]]:
    if issubclass(cls, BaseException):
        return
    if "__init__" in vars(cls) and not dataclasses.is_dataclass(cls):
        yield "__init__", cls.__init__
    for name, member in vars(cls).items():
        if isinstance(member, staticmethod | classmethod):
            member = member.__func__
        if not name.startswith("_") and inspect.isfunction(member):
            yield name, member


def public_functions() -> dict[str, Callable]:
    """Every public function and method of crscale, by one public dotted name."""
    found: dict[str, Callable] = {}
    for module in _public_modules():
        names = set(getattr(module, "__all__", ()))
        for name, obj in vars(module).items():
            if name.startswith("_"):
                continue
            ours = getattr(obj, "__module__", None) == module.__name__
            if not (ours or name in names) or not str(getattr(obj, "__module__", "")).startswith("crscale"):
                continue
            if inspect.isfunction(obj):
                found.setdefault(f"{module.__name__}.{name}", obj)
            elif inspect.isclass(obj):
                for member, func in _callables(obj):
                    found.setdefault(f"{module.__name__}.{name}.{member}", func)
    return found


def positional_options(func: Callable) -> list[str]:
    """The parameters of ``func`` with a default that a caller may pass by position."""
    params = list(inspect.signature(func).parameters.values())
    if params and params[0].name in ("self", "cls"):
        params = params[1:]
    return [
        p.name
        for p in params[1:]  # the first parameter is what the call is about
        if p.kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD) and p.default is not P.empty
    ]


def _is_allowed(name: str, func: Callable) -> bool:
    # A name may be reached through a subpackage's __all__ as well as its own module.
    return name in ALLOWED or f"{func.__module__}.{func.__qualname__}" in ALLOWED


def test_the_walk_finds_the_public_api():
    found = public_functions()
    # A broken walk must not pass the check below by finding nothing.
    assert len(found) > 200
    for name in ("crscale.detection.detect", "crscale.engine.ingest", "crscale.io.archive.Archive.__init__",
                 "crscale.models.store.load_model", "crscale.catalogue.rates.corrected_rate"):
        assert name in found, name


def test_options_are_keyword_only():
    offenders = {
        name: options
        for name, func in sorted(public_functions().items())
        if (options := positional_options(func)) and not _is_allowed(name, func)
    }
    assert not offenders, (
        "options (parameters with defaults) must come after `*`, or the name goes into ALLOWED "
        f"with the reason: {offenders}"
    )


def test_positional_options_are_found():
    def f(image, gain=1.0, *, dq=None):
        return image

    def g(image=None, *, dq=None):
        return image

    class Probe:
        def method(self, first, second=2):
            return first

    assert positional_options(f) == ["gain"]
    assert positional_options(g) == []
    assert positional_options(Probe.method) == ["second"]
