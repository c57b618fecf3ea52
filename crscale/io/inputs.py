"""Turn command-line inputs (files, directories, glob patterns, manifests) into FITS files."""

from __future__ import annotations

import fnmatch
import glob
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from crscale import config

MANIFEST_SUFFIXES = (".txt", ".lst", ".list", ".manifest")
_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class InputSpec:
    """One FITS exposure to ingest, with its companion files.

    Attributes
    ----------
    path : str
        Absolute path of the image file.
    dq_path, weight_path : str or None
        Companion data-quality and weight files.
    """

    path: str
    dq_path: str | None = None
    weight_path: str | None = None


@dataclass(frozen=True)
class InputProblem:
    """An input that named nothing usable (a missing path, an empty pattern ...)."""

    path: str
    problem: str
    kind: str = "missing"


def _is_manifest(path: str) -> bool:
    if path.startswith("@"):
        return True
    if not path.lower().endswith(MANIFEST_SUFFIXES) or not os.path.isfile(path):
        return False
    with open(path, "rb") as fh:
        return not fh.read(6).startswith(b"SIMPLE")


def _walk(folder: str, patterns: Sequence[str]) -> list[str]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not d.endswith(".zarr"))
        for name in sorted(files):
            if any(fnmatch.fnmatch(name.lower(), p.lower()) for p in patterns):
                found.append(os.path.join(root, name))
    return found


def _read_manifest(path: str) -> tuple[list[tuple[str, str | None, str | None]], list[InputProblem]]:
    entries: list[tuple[str, str | None, str | None]] = []
    problems: list[InputProblem] = []
    base = os.path.dirname(os.path.abspath(path))
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        return [], [InputProblem(path, f"cannot read manifest ({exc})", kind="invalid")]
    for lineno, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        image, dq, weight = parts[0], None, None
        for extra in parts[1:]:
            key, _, value = extra.partition("=")
            if key == "dq" and value:
                dq = value
            elif key == "weight" and value:
                weight = value
            else:
                problems.append(
                    InputProblem(path, f"line {lineno}: cannot parse {extra!r} "
                                 "(expected dq=PATH or weight=PATH)", kind="invalid")
                )
        def resolve(p: str | None) -> str | None:
            return None if p is None else os.path.join(base, os.path.expanduser(p))
        entries.append((resolve(image), resolve(dq), resolve(weight)))
    return entries, problems


def _companion(path: str, rules: Iterable[Sequence[str]]) -> str | None:
    folder, name = os.path.split(path)
    for src, dst in rules:
        if src in name:
            candidate = os.path.join(folder, name.replace(src, dst, 1))
            if os.path.isfile(candidate):
                return candidate
    return None


def expand_inputs(
    inputs: Sequence[str | InputSpec],
    *,
    patterns: Sequence[str] | None = None,
    companions: dict[str, Sequence[Sequence[str]]] | None = None,
) -> tuple[list[InputSpec], list[InputProblem]]:
    """Expand inputs into the FITS files to ingest.

    Parameters
    ----------
    inputs : sequence of str or InputSpec
        An :class:`InputSpec` names one image and its companions. Strings are files;
        directories (searched recursively for ``patterns``); glob patterns
        (``"night1/**/*.fits.fz"``); manifests (``@list.txt``, or a ``.txt``/``.lst``
        file): one image per line, optionally followed by ``dq=PATH`` and
        ``weight=PATH``, ``#`` starts a comment, relative paths are relative to the
        manifest.
    patterns : sequence of str, optional
        File-name patterns taken from directories; default ``crscale.ingest.patterns``.
    companions : dict, optional
        ``{"dq": [[from, to], ...], "weight": [...]}`` name substitutions that find
        companion files beside an image; default ``crscale.ingest.companions``.
        A file found as a companion is not ingested on its own.

    Returns
    -------
    specs : list of InputSpec
        The exposures, each file once, in input order.
    problems : list of InputProblem
        Inputs that named no usable file.
    """
    patterns = patterns or config.get("ingest.patterns")
    companions = companions if companions is not None else config.get("ingest.companions")
    problems: list[InputProblem] = []
    named: list[tuple[str, str | None, str | None]] = []  # image, dq, weight

    def add(item: str, dq: str | None = None, weight: str | None = None) -> None:
        expanded = os.path.expanduser(item)
        if _GLOB_CHARS & set(expanded) and not os.path.exists(expanded):
            hits = sorted(glob.glob(expanded, recursive=True))
            files = []
            for hit in hits:
                files.extend(_walk(hit, patterns) if os.path.isdir(hit) else [hit])
            if not files:
                problems.append(InputProblem(item, "pattern matched no file"))
            named.extend((f, None, None) for f in files)
        elif os.path.isdir(expanded):
            files = _walk(expanded, patterns)
            if not files:
                problems.append(
                    InputProblem(item, f"directory holds no file matching {list(patterns)}",
                                 kind="no-image")
                )
            named.extend((f, None, None) for f in files)
        elif os.path.exists(expanded):
            named.append((expanded, dq, weight))
        else:
            problems.append(InputProblem(os.path.abspath(expanded), "file does not exist"))

    for item in inputs:
        if isinstance(item, InputSpec):
            add(item.path, item.dq_path, item.weight_path)
        elif _is_manifest(item):
            manifest = os.path.abspath(item[1:] if item.startswith("@") else item)
            if not os.path.isfile(manifest):
                problems.append(InputProblem(manifest, "manifest file does not exist"))
                continue
            entries, bad = _read_manifest(manifest)
            problems.extend(bad)
            for image, dq, weight in entries:
                add(image, dq, weight)
        else:
            add(item)

    specs: list[InputSpec] = []
    seen: set[str] = set()
    for path, dq, weight in named:
        real = os.path.realpath(path)
        if real in seen:
            continue
        seen.add(real)
        dq = dq or _companion(path, companions.get("dq", []))
        weight = weight or _companion(path, companions.get("weight", []))
        specs.append(
            InputSpec(
                os.path.abspath(path),
                os.path.abspath(dq) if dq else None,
                os.path.abspath(weight) if weight else None,
            )
        )
    taken = {os.path.realpath(p) for s in specs for p in (s.dq_path, s.weight_path) if p}
    specs = [s for s in specs if os.path.realpath(s.path) not in taken]
    return specs, problems
