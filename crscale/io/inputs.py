"""Turn command-line inputs (files, directories, glob patterns, manifests) into FITS files.

Each may also be an fsspec URL (``s3://bucket/raw/``, ``s3://bucket/raw/**/*.fits.fz``,
``https://host/x.fits``): a URL prefix is listed recursively like a directory and a URL
glob is expanded on its store (:mod:`crscale.io.storage`).
"""

from __future__ import annotations

import fnmatch
import glob
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from crscale import config
from crscale.errors import InputError
from crscale.io import storage

MANIFEST_SUFFIXES = (".txt", ".lst", ".list", ".manifest")
#: Name endings of FITS files, longest first where one ends another: what an exposure id or a
#: file's stem leaves out. Which files a directory yields is ``crscale.ingest.patterns``.
FITS_SUFFIXES = (
    ".fits", ".fit", ".fts", ".fz", ".gz",
    ".fits.fz", ".fits.gz", ".fit.fz", ".fit.gz", ".fts.fz", ".fts.gz",
)
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


def _walk_url(folder: str, patterns: Sequence[str]) -> list[str]:
    fs, key = storage.filesystem(folder)
    head = folder[: folder.index("://") + 3]
    found = []
    for hit in sorted(fs.find(key)):
        parts = hit[len(key):].strip("/").split("/")
        if any(p.startswith(".") or p.endswith(".zarr") for p in parts[:-1]):
            continue  # the same folders _walk skips: hidden ones and archives
        if any(fnmatch.fnmatch(parts[-1].lower(), p.lower()) for p in patterns):
            found.append(head + hit)
    return found


def _add_url(item: str, patterns: Sequence[str]) -> tuple[list[str], InputProblem | None]:
    """Files named by a URL: one object, every match of a glob, or every pattern match below a prefix."""
    fs, key = storage.filesystem(item)
    head = item[: item.index("://") + 3]
    try:
        if _GLOB_CHARS & set(key) and not fs.exists(key):
            files: list[str] = []
            for hit in sorted(fs.glob(key)):
                url = head + hit
                files.extend(_walk_url(url, patterns) if fs.isdir(hit) else [url])
            return files, None if files else InputProblem(item, "pattern matched no file")
        # An object first: over HTTP, isdir() would download the file to look for links.
        if fs.isfile(key):
            return [item], None
        if fs.isdir(key):
            files = _walk_url(item, patterns)
            problem = None if files else InputProblem(
                item, f"prefix holds no file matching {list(patterns)}", kind="no-image"
            )
            return files, problem
    except (OSError, ValueError) as exc:  # no such bucket, denied, unreachable endpoint
        return [], InputProblem(item, f"cannot list ({exc})", kind="unreadable")
    return [], InputProblem(item, "file does not exist")


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
            if p is None or storage.is_url(p):
                return p
            return os.path.join(base, os.path.expanduser(p))
        entries.append((cast(str, resolve(image)), resolve(dq), resolve(weight)))  # str in, str out
    return entries, problems


def _companion(path: str, rules: Iterable[Sequence[str]]) -> str | None:
    url = storage.is_url(path)
    folder, name = path.rsplit("/", 1) if url else os.path.split(path)
    for src, dst in rules:
        if src in name:
            candidate = (f"{folder}/" if url else os.path.join(folder, "")) + name.replace(src, dst, 1)
            info = storage.input_info(candidate)
            if info is not None and info["type"] == "file":
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
        if storage.is_url(item):
            files, problem = _add_url(item, patterns)
            if problem is not None:
                problems.append(problem)
            if files == [item]:
                named.append((item, dq, weight))
            else:
                named.extend((f, None, None) for f in files)
            return
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
        real = _real(path)
        if real in seen:
            continue
        seen.add(real)
        dq = dq or _companion(path, companions.get("dq", []))
        weight = weight or _companion(path, companions.get("weight", []))
        specs.append(
            InputSpec(
                storage.normalize(path),
                storage.normalize(dq) if dq else None,
                storage.normalize(weight) if weight else None,
            )
        )
    taken = {_real(p) for s in specs for p in (s.dq_path, s.weight_path) if p}
    specs = [s for s in specs if _real(s.path) not in taken]
    return specs, problems


def _real(path: str) -> str:
    return path if storage.is_url(path) else os.path.realpath(path)


def fits_stem(name: str) -> str:
    """A file name without its FITS suffix (:data:`FITS_SUFFIXES`; the longest that matches)."""
    lowered = name.lower()
    for suffix in sorted(FITS_SUFFIXES, key=len, reverse=True):
        if lowered.endswith(suffix):
            return name[: -len(suffix)]
    return name


def fits_files(
    entries: Sequence[str | os.PathLike[str]], *, missing: str = "no such file or directory"
) -> list[Path]:
    """The FITS files named by files, directories and glob patterns, each entry's files sorted.

    :func:`expand_inputs` finds them (directories searched recursively for
    ``crscale.ingest.patterns``), without companion rules: every file found is returned, a
    data-quality file too. Used where files are taken as they are (training images, darks,
    masks); an entry that matches nothing but exists (an empty folder) yields no file.

    Parameters
    ----------
    entries : sequence of str or path
        Files, directories and glob patterns.
    missing : str, optional
        The problem named when an entry does not exist.

    Returns
    -------
    list of pathlib.Path
        The files: a named file as given, the files of a directory or pattern sorted.

    Raises
    ------
    crscale.errors.InputError
        For an entry that is neither a file, a directory nor a glob pattern.
    """
    out: list[Path] = []
    for entry in entries:
        path = Path(entry).expanduser()
        if _GLOB_CHARS & set(str(entry)) or path.is_dir():
            specs, _ = expand_inputs([str(path)], companions={})
            out += sorted(Path(s.path) for s in specs)
        elif path.exists():
            out.append(path)
        else:
            raise InputError(path, missing, kind="missing")
    return out

