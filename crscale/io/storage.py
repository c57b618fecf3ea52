"""Where archives and inputs live: local paths, or fsspec URLs on object storage.

A location is a local :class:`pathlib.Path` or, for a URL (``s3://bucket/survey.zarr``,
``gs://...``, ``https://...``), a :class:`RemotePath` with the part of the ``Path`` API that
crscale uses (``/``, ``name``, ``exists``, ``is_dir``, ``iterdir``, ``read_text`` ...) on an
fsspec filesystem. Code that handles files therefore reads the same for both; the few
operations whose meaning differs (an atomic rename, a recursive delete, the bytes under a
folder) are the functions here.

Endpoints and credentials come from each filesystem's own environment and configuration
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``~/.aws/config``; ``GOOGLE_APPLICATION_CREDENTIALS``
...), plus the options under ``crscale.storage.<protocol>`` in dask's config, which are passed
to ``fsspec.filesystem(protocol, **options)`` (see ``docs/object-storage.md``).
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from crscale import config
from crscale.errors import MissingDependencyError

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
#: Name of the metadata object that makes a folder a Zarr group or array.
ZARR_META = "zarr.json"
_LISTING_CACHED = ("s3", "s3a", "gs", "gcs")


def protocol_of(path: str | os.PathLike[str] | RemotePath) -> str | None:
    """The URL scheme of ``path`` (``"s3"``, ``"gs"``, ``"https"``), or None for a local path."""
    if not isinstance(path, str | RemotePath):
        return None
    match = _URL.match(str(path))
    if match is None or match.group(1).lower() == "file":
        return None
    return match.group(1).lower()


def is_url(path: Any) -> bool:
    """True when ``path`` names an object on an fsspec filesystem rather than a local file."""
    return isinstance(path, RemotePath) or protocol_of(path) is not None


def storage_options(path: str | os.PathLike[str] | RemotePath) -> dict[str, Any]:
    """The fsspec options for the filesystem of ``path``, from ``crscale.storage.<protocol>``.

    Returns an empty dict for local paths and for protocols without settings, so that each
    filesystem falls back to its own environment and configuration files.
    """
    protocol = protocol_of(path)
    if protocol is None:
        return {}
    # Any fsspec protocol may be configured; the yaml lists only the usual ones.
    section = config.get("storage") or {}
    options = section.get(protocol) or {}
    if protocol in ("http", "https") and not options:
        options = section.get("https" if protocol == "http" else "http") or {}
    options = dict(options)
    if protocol in _LISTING_CACHED:
        # Workers write the archive from other processes: a cached listing would hide them.
        options.setdefault("use_listings_cache", False)
    return options


def zarr_options(path: str | os.PathLike[str] | RemotePath) -> dict[str, Any] | None:
    """``storage_options`` for zarr, xarray and dask: None for a local path (they refuse it)."""
    return storage_options(path) if is_url(path) else None


def filesystem(url: str) -> tuple[Any, str]:
    """The fsspec filesystem of ``url`` and the path on it (without the protocol)."""
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(url, **storage_options(url))
    except ImportError as exc:
        raise MissingDependencyError(
            f"{url}: reading {protocol_of(url)}:// URLs needs its fsspec filesystem "
            f"(pip install 'crscale[s3]'): {exc}"
        ) from exc
    return fs, path


def location(path: str | os.PathLike[str] | RemotePath) -> Path | RemotePath:
    """A local absolute :class:`~pathlib.Path`, or a :class:`RemotePath` for a URL."""
    if isinstance(path, RemotePath):
        return path
    if is_url(path):
        return RemotePath(str(path))
    text = os.fspath(path)
    if text.startswith("file://"):
        text = text[len("file://"):]
    return Path(text).expanduser().absolute()


def normalize(path: str | os.PathLike[str]) -> str:
    """An absolute local path, or the URL unchanged (for records and comparisons)."""
    return str(path) if is_url(path) else os.path.abspath(os.path.expanduser(os.fspath(path)))


def _mtime(info: dict[str, Any]) -> float:
    for key in ("mtime", "LastModified", "last_modified", "updated", "modified"):
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            value = _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        if isinstance(value, _dt.datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=_dt.UTC)
            return value.timestamp()
    return 0.0


class _Stat:
    def __init__(self, size: int, mtime: float) -> None:
        self.st_size = size
        self.st_mtime = mtime


class RemotePath:
    """A file or folder (key prefix) on an fsspec filesystem, named by its URL.

    Parameters
    ----------
    url : str
        ``protocol://bucket/key`` (a trailing ``/`` is dropped).
    """

    def __init__(self, url: str) -> None:
        protocol = protocol_of(url)
        if protocol is None:
            raise ValueError(f"{url!r} is not a URL")
        self.protocol = protocol
        self._head = url[: len(protocol) + 3]
        self._key = url[len(protocol) + 3 :].rstrip("/")

    # -- naming
    def __str__(self) -> str:
        return self._head + self._key

    def __repr__(self) -> str:
        return f"RemotePath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemotePath) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __truediv__(self, part: str) -> RemotePath:
        return RemotePath(f"{self}/{str(part).strip('/')}")

    @property
    def name(self) -> str:
        """Last component."""
        return PurePosixPath(self._key).name

    @property
    def suffix(self) -> str:
        """Suffix of the last component (``".parquet"``)."""
        return PurePosixPath(self._key).suffix

    @property
    def parent(self) -> RemotePath:
        """The folder holding this entry."""
        return RemotePath(self._head + str(PurePosixPath(self._key).parent))

    def with_name(self, name: str) -> RemotePath:
        """The sibling called ``name``."""
        return self.parent / name

    def absolute(self) -> RemotePath:
        """Itself: a URL is absolute."""
        return self

    @property
    def fs(self) -> Any:
        """The fsspec filesystem (instances are cached by fsspec)."""
        return filesystem(str(self))[0]

    @property
    def fs_path(self) -> str:
        """The path on :attr:`fs`, without the protocol."""
        return filesystem(str(self))[1]

    # -- queries
    def exists(self) -> bool:
        """True for an object, or for a folder holding at least one object."""
        return bool(self.fs.exists(self.fs_path))

    def is_file(self) -> bool:
        """True for an object."""
        return bool(self.fs.isfile(self.fs_path))

    def is_dir(self) -> bool:
        """True for a folder (a prefix with objects below it)."""
        return bool(self.fs.isdir(self.fs_path))

    def iterdir(self) -> Iterator[RemotePath]:
        """Entries directly in this folder."""
        fs, path = self.fs, self.fs_path
        try:
            names = fs.ls(path, detail=False, refresh=True)
        except FileNotFoundError:
            return
        for name in sorted(names):
            child = PurePosixPath(str(name).rstrip("/")).name
            if child and str(name).rstrip("/") != path:
                yield self / child

    def glob(self, pattern: str) -> Iterator[RemotePath]:
        """Entries of this folder whose name matches ``pattern`` (no ``**``)."""
        import fnmatch

        for child in self.iterdir():
            if fnmatch.fnmatch(child.name, pattern):
                yield child

    def stat(self) -> _Stat:
        """Size and modification time; for a folder, its bytes and its newest object's time."""
        fs, path = self.fs, self.fs_path
        if fs.isfile(path):
            info = fs.info(path)
            return _Stat(int(info.get("size") or 0), _mtime(info))
        infos = fs.find(path, detail=True).values()
        if not infos:
            raise FileNotFoundError(str(self))
        return _Stat(sum(int(i.get("size") or 0) for i in infos), max(_mtime(i) for i in infos))

    # -- reading and writing
    def open(self, mode: str = "rb", **kwargs: Any) -> Any:
        """An fsspec file object; a written object appears whole when it is closed."""
        return self.fs.open(self.fs_path, mode, **kwargs)

    def read_bytes(self) -> bytes:
        """The object's bytes."""
        return bytes(self.fs.cat_file(self.fs_path))

    def read_text(self, encoding: str = "utf-8") -> str:
        """The object's text."""
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes) -> int:
        """Write the object in one PUT: readers see the old object or the new one."""
        self.fs.pipe_file(self.fs_path, data)
        return len(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> int:
        """Write the object's text in one PUT."""
        return self.write_bytes(text.encode(encoding))

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing to do: folders on object storage exist through the objects below them."""

    def unlink(self, missing_ok: bool = False) -> None:
        """Delete the object."""
        try:
            self.fs.rm_file(self.fs_path)
        except FileNotFoundError:
            if not missing_ok:
                raise


def rmtree(path: Path | RemotePath) -> None:
    """Delete a folder and everything in it; a missing folder is not an error."""
    if isinstance(path, RemotePath):
        fs, key = path.fs, path.fs_path
        keys = fs.find(key)
        meta = f"{key}/{ZARR_META}"
        if meta in keys:
            # The group's metadata first: a reader then no longer sees a group here.
            fs.rm_file(meta)
            keys.remove(meta)
        if keys:
            fs.rm(keys)
        return
    shutil.rmtree(path, ignore_errors=True)


def replace(src: Path | RemotePath, dst: Path | RemotePath) -> None:
    """Move a folder (or file) to ``dst``, which must not exist.

    On a local disk this is one atomic :func:`os.replace`. Object stores cannot rename: the
    objects are copied, the group metadata object (``zarr.json``) of the folder last, so that
    ``dst`` is seen as a Zarr group only once every object below it is in place; then the
    source is deleted, its ``zarr.json`` first.
    """
    if isinstance(src, Path) and isinstance(dst, Path):
        os.replace(src, dst)
        return
    if not (isinstance(src, RemotePath) and isinstance(dst, RemotePath)):
        raise ValueError(f"cannot move {src} to {dst}: both must be on the same storage")
    fs, skey, dkey = src.fs, src.fs_path, dst.fs_path
    if fs.isfile(skey):
        fs.copy(skey, dkey)
        fs.rm_file(skey)
        return
    keys = sorted(fs.find(skey))
    if not keys:
        raise FileNotFoundError(str(src))
    meta = f"{skey}/{ZARR_META}"
    body = [k for k in keys if k != meta]
    if body:
        fs.copy(body, [dkey + k[len(skey):] for k in body])
    if meta in keys:
        fs.copy(meta, f"{dkey}/{ZARR_META}")
    rmtree(src)


def du(path: Path | RemotePath) -> int:
    """Bytes of all files below ``path`` (0 when it does not exist)."""
    if isinstance(path, RemotePath):
        try:
            return path.stat().st_size
        except FileNotFoundError:
            return 0
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


def open_input(path: str, *, mode: str = "rb", block_size: int | None = None) -> Any:
    """Open an input file for reading: a local file, or an fsspec file object for a URL."""
    if is_url(path):
        fs, key = filesystem(path)
        kwargs = {"block_size": block_size} if block_size else {}
        return fs.open(key, mode, **kwargs)
    return open(path, mode)  # the caller closes it


def input_info(path: str) -> dict[str, Any] | None:
    """``{"type": "file"|"directory", "size": int}`` for an input, or None when it does not exist."""
    if not is_url(path):
        if os.path.isdir(path):
            return {"type": "directory", "size": 0}
        if os.path.exists(path):
            return {"type": "file", "size": os.path.getsize(path)}
        return None
    fs, key = filesystem(path)
    try:
        info = fs.info(key)
    except (FileNotFoundError, OSError):
        return None
    kind = "directory" if info.get("type") == "directory" else "file"
    return {"type": kind, "size": int(info.get("size") or 0)}


def arrow_filesystem(files: list[str]) -> tuple[Any, list[str]]:
    """``(filesystem, paths)`` for pyarrow: ``(None, files)`` locally, fsspec's for URLs."""
    if not files or not is_url(files[0]):
        return None, files
    fs, _ = filesystem(files[0])
    return fs, [filesystem(f)[1] for f in files]
