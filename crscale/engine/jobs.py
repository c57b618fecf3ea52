"""The record of the job working on an archive (``ARCHIVE/jobs/current.json``), for monitoring.

``crscale run`` writes, when it starts, the address of its Dask scheduler and dashboard into
the archive, and marks the record finished or failed when it ends. A notebook or another
process finds the job from the archive alone (:func:`read_job`) and connects to the same
scheduler to watch it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from crscale.io import storage
from crscale.io.archive import JOBS_GROUP, Archive, utcnow
from crscale.io.errors import CrscaleError

#: File name of the job record in the archive's ``jobs`` group folder.
JOB_FILE = "current.json"


def job_path(archive: str | os.PathLike[str]) -> Path | storage.RemotePath:
    """Path of the job record of ``archive`` (a :class:`~crscale.io.storage.RemotePath` for a URL)."""
    return storage.location(archive) / JOBS_GROUP / JOB_FILE


def write_job(archive: str | os.PathLike[str], record: dict[str, Any]) -> Path | storage.RemotePath:
    """Write the job record of ``archive`` atomically (readers never see half a file)."""
    path = job_path(archive)
    if isinstance(path, storage.RemotePath):
        path.write_text(json.dumps(record, indent=2) + "\n")  # one PUT: whole or not at all
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{JOB_FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def read_job(archive: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The job record of ``archive``, or None when no job has run on it.

    Returns
    -------
    dict or None
        Keys: ``status`` ("running", "finished" or "failed"), ``scheduler`` (the Dask
        scheduler's address), ``dashboard`` (its dashboard link), ``command``, ``stages``,
        ``host``, ``pid``, ``started`` and, once over, ``ended`` and ``error``.
    """
    path = job_path(archive)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None  # being replaced right now, or damaged: no usable record


@contextlib.contextmanager
def job_record(
    archive: str | Path, client: Any, stages: Sequence[str], *, command: str | None = None
) -> Iterator[dict[str, Any]]:
    """Record the job for its duration: "running" now, "finished" or "failed" at the end.

    Parameters
    ----------
    archive : path
        The archive the job works on.
    client : distributed.Client
        The job's client (its scheduler and dashboard are recorded).
    stages : sequence of str
        The stages the job runs.
    command : str, optional
        The command line (default: this process's ``sys.argv``).

    Yields
    ------
    dict
        The record as written.
    """
    record: dict[str, Any] = {
        "status": "running",
        "scheduler": client.scheduler.address,
        "dashboard": client.dashboard_link,
        "command": command if command is not None else _command_line(),
        "stages": list(stages),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": utcnow(),
    }
    # Monitoring is a convenience: an archive that cannot be opened or created fails in the
    # stages themselves, with their messages, not here. Only ingest creates an archive.
    try:
        if "ingest" in stages or (storage.location(archive) / "zarr.json").exists():
            Archive(archive, mode="a")  # creates the archive, or the jobs/ group of an older one
            write_job(archive, record)
    except (CrscaleError, OSError):
        pass
    try:
        yield record
    except BaseException as exc:
        record.update(status="failed", ended=utcnow(), error=f"{type(exc).__name__}: {exc}")
        with contextlib.suppress(OSError):
            write_job(archive, record)
        raise
    record.update(status="finished", ended=utcnow())
    with contextlib.suppress(OSError):
        write_job(archive, record)


def _command_line() -> str:
    # `crscale run ...` and `python -m crscale.cli run ...` are the same command to a reader.
    head = Path(sys.argv[0]).name if sys.argv else ""
    if head in ("crscale", "cli.py", "__main__.py"):
        return " ".join(["crscale", *sys.argv[1:]])
    return " ".join(sys.argv)
