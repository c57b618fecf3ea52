"""Per-exposure leases: which run is working on an exposure, so that a concurrent run skips it.

A run takes the lease of an exposure before a stage works on it and gives it back when that
exposure is done (or failed, or the run is interrupted). A second run on the same archive that
finds the lease held by a live run skips that exposure instead of doing the work again, and
records nothing about it (no false failure). A lease held by a run that died (``kill -9``, a
node lost) does not block forever: it expires :data:`LEASE_SECONDS` after its holder last
renewed it (the holder renews its leases from a background thread), and on the holder's own
host it is taken over at once when the holder's process is gone.

Leases are small JSON files in ``ARCHIVE/jobs/leases/<scope>/`` (``exposures``, ``defects``),
one per generation of a lease: ``<name>.<generation>.json``. Taking a free lease creates
generation 0; taking over an expired one creates the next generation. Both are an *exclusive
create*, the one atomic operation needed, so that of two runs racing for one lease exactly
one wins:

- on a local or shared POSIX file system, a hard link of a fully written temporary file to
  the lease's name (:func:`os.link` fails when the name exists; atomic on NFS too, unlike
  ``O_EXCL`` on NFSv2);
- on S3 (and S3-compatible stores that implement conditional writes), a PUT with
  ``If-None-Match: *``;
- on other fsspec stores, the store's ``pipe_file(mode="create")`` where it has one; a
  store without an exclusive create gets a check-then-write, which can let two runs work on
  one exposure at the same time (their results are identical; the work is done twice).

The holder of generation *n* holds the lease while no generation above *n* exists; whoever
creates generation *n + 1* removes the older ones. Expiry compares the holder's recorded time
with the reader's clock, so the hosts of concurrent runs need clocks that agree to well under
:data:`LEASE_SECONDS` (NTP does).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crscale.io import storage

logger = logging.getLogger(__name__)

#: A lease not renewed for this long is free (its run is taken to be dead).
LEASE_SECONDS = 120.0
#: Folder of the lease files, under the archive's ``jobs`` group.
LEASES_FOLDER = "leases"


@dataclass(kw_only=True)
class Lease:
    """One lease this process holds."""

    name: str
    generation: int
    token: str
    path: Any  #: the lease file (a Path, or a RemotePath on object storage)
    detail: dict[str, Any] = field(default_factory=dict)


def _host_pid_alive(record: dict[str, Any]) -> bool:
    """False only when the holder ran on this host and its process is gone (or was replaced)."""
    if record.get("host") != socket.gethostname():
        return True
    pid = int(record.get("pid") or 0)
    if pid <= 0:
        return True
    try:
        import psutil  # a dependency of distributed
    except ImportError:
        return True
    try:
        proc = psutil.Process(pid)
        started = record.get("pid_started")
        return started is None or abs(proc.create_time() - float(started)) < 1.0
    except psutil.NoSuchProcess:  # the holder is gone
        return False
    except psutil.Error:  # not ours to inspect: take it to be alive
        return True


class Leases:
    """The leases one run holds on one archive, renewed in the background until released.

    Parameters
    ----------
    archive : path or URL
        The archive (local, or on object storage).
    scope : str
        What the names are: ``"exposures"`` (exposure ids), ``"defects"`` (detector keys).
    seconds : float
        How long a lease lasts without renewal (:data:`LEASE_SECONDS`).
    """

    def __init__(self, archive: Any, *, scope: str = "exposures", seconds: float = LEASE_SECONDS) -> None:
        self.folder = storage.location(archive) / "jobs" / LEASES_FOLDER / scope
        self.seconds = float(seconds)
        self._held: dict[str, Lease] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._me = {"host": socket.gethostname(), "pid": os.getpid(), "pid_started": _process_start()}

    # ------------------------------------------------------------------ the files
    def _file(self, name: str, generation: int) -> Any:
        return self.folder / f"{name}.{generation}.json"

    def _generations(self, name: str) -> list[int]:
        """Generations of ``name``'s lease files present now, lowest first."""
        found = []
        try:
            entries: list[Any] = list(self.folder.iterdir())  # Paths or RemotePaths
        except (FileNotFoundError, NotADirectoryError):
            return []
        for entry in entries:
            if not entry.name.endswith(".json"):
                continue
            base, dot, gen = entry.name.removesuffix(".json").rpartition(".")
            if dot and base == name and gen.isdigit():
                found.append(int(gen))
        return sorted(found)

    def _record(self, name: str, generation: int, token: str, detail: dict[str, Any]) -> bytes:
        now = time.time()
        return json.dumps({
            "name": name, "generation": generation, "token": token, **self._me,
            "renewed": now, "expires": now + self.seconds, "detail": detail,
        }).encode()

    def _create(self, path: Any, data: bytes) -> bool:
        """Create ``path`` holding ``data`` if it does not exist; True when this call created it."""
        if isinstance(path, Path):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
            tmp.write_bytes(data)
            try:
                os.link(tmp, path)  # atomic, and fails when the name exists (NFS-safe)
                return True
            except FileExistsError:
                return False
            finally:
                tmp.unlink(missing_ok=True)
        fs, key = path.fs, path.fs_path
        try:
            fs.pipe_file(key, data, mode="create")  # S3: If-None-Match: *
            return True
        except FileExistsError:
            return False
        except (TypeError, NotImplementedError):  # no exclusive create on this store
            if fs.exists(key):
                return False
            fs.pipe_file(key, data)
            return True

    def _read(self, path: Any) -> dict[str, Any] | None:
        try:
            return json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):  # being written on a store without atomic PUT: treat as held
            return {"expires": time.time() + self.seconds}

    def _write(self, path: Any, data: bytes) -> None:
        """Replace the holder's own lease file (renewal): atomic replace, or one PUT."""
        if isinstance(path, Path):
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        else:
            path.write_bytes(data)

    # ------------------------------------------------------------------ taking and giving back
    def holder(self, name: str) -> dict[str, Any] | None:
        """The record of the live lease on ``name`` held by another run, or None when it is free."""
        for _attempt in range(3):
            gens = self._generations(name)
            if not gens:
                return None
            record = self._read(self._file(name, gens[-1]))
            if record is None:
                continue  # released meanwhile: look again
            if record.get("token") in {lease.token for lease in self._held.values()}:
                return None
            if float(record.get("expires", 0)) > time.time() and _host_pid_alive(record):
                return record
            return None
        return None

    def acquire(self, name: str, **detail: Any) -> Lease | None:
        """Take the lease on ``name``; None when another live run holds it.

        ``detail`` (JSON-safe) is recorded in the lease for the other runs to read.
        """
        with self._lock:
            if name in self._held:
                return self._held[name]
        for _attempt in range(5):
            gens = self._generations(name)
            generation = 0
            if gens:
                record = self._read(self._file(name, gens[-1]))
                if record is None:
                    continue  # released meanwhile: look again
                alive = float(record.get("expires", 0)) > time.time() and _host_pid_alive(record)
                if alive:
                    return None
                generation = gens[-1] + 1
            token = uuid.uuid4().hex
            path = self._file(name, generation)
            if not self._create(path, self._record(name, generation, token, detail)):
                return None  # another run took it first
            for old in gens:  # the expired generations below ours
                with contextlib.suppress(OSError):
                    self._file(name, old).unlink(missing_ok=True)
            lease = Lease(name=name, generation=generation, token=token, path=path, detail=detail)
            with self._lock:
                self._held[name] = lease
            self._start_heartbeat()
            return lease
        return None

    def release(self, name: str) -> None:
        """Give the lease on ``name`` back (nothing happens when this run does not hold it)."""
        with self._lock:
            lease = self._held.pop(name, None)
        if lease is None:
            return
        with contextlib.suppress(OSError):
            record = self._read(lease.path)
            if record is not None and record.get("token") == lease.token:
                lease.path.unlink(missing_ok=True)

    def release_all(self) -> None:
        """Give every lease back and stop renewing (a later :meth:`acquire` starts again)."""
        self._stop.set()
        self._thread, self._stop = None, threading.Event()
        for name in list(self._held):
            self.release(name)

    def renew(self) -> None:
        """Push the expiry of every lease held forward (the background thread calls this)."""
        with self._lock:
            held = list(self._held.values())
        for lease in held:
            try:
                if self._generations(lease.name)[-1:] != [lease.generation]:
                    logger.warning("lease on %r was taken over by another run", lease.name)
                    with self._lock:
                        self._held.pop(lease.name, None)
                    continue
                self._write(lease.path, self._record(lease.name, lease.generation, lease.token, lease.detail))
            except OSError as exc:  # a transient store error: the next beat tries again
                logger.debug("lease on %r not renewed: %s", lease.name, exc)

    def _start_heartbeat(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._beat, args=(self._stop,), name="crscale-leases",
                                        daemon=True)
        self._thread.start()

    def _beat(self, stop: threading.Event) -> None:
        while not stop.wait(self.seconds / 4):
            self.renew()

    def held_by_others(self) -> list[str]:
        """Names whose lease another live run holds now."""
        try:
            entries: list[Any] = list(self.folder.iterdir())  # Paths or RemotePaths
        except (FileNotFoundError, NotADirectoryError):
            return []
        names = {e.name.removesuffix(".json").rpartition(".")[0] for e in entries if e.name.endswith(".json")}
        return sorted(n for n in names if n and self.holder(n) is not None)

    def wait_while_held(self, name: str, *, poll: float = 0.5) -> None:
        """Return once no other live run holds the lease on ``name``."""
        while self.holder(name) is not None:
            time.sleep(poll)

    def __enter__(self) -> Leases:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release_all()


def _process_start() -> float | None:
    with contextlib.suppress(Exception):
        import psutil

        return float(psutil.Process(os.getpid()).create_time())
    return None


def describe_holder(record: dict[str, Any]) -> str:
    """``host:pid`` of a lease's holder, for messages."""
    return f"{record.get('host', '?')}:{record.get('pid', '?')}"
