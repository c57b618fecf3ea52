"""A real single-node SLURM on localhost, for the tests: munged, slurmctld and slurmd.

Everything lives in one folder (configuration, munge key and socket, state, spool, logs), so
nothing under /etc is touched and two of them can run side by side; the client commands
(sbatch, squeue, scancel, scontrol) find it through ``SLURM_CONF``. The node has two "gpu"
generic resources backed by two device files (mknod), so SLURM books them and sets
``CUDA_VISIBLE_DEVICES`` for a job with ``--gres=gpu:N`` as it does on a GPU node.

Used by the session fixture in tests/conftest.py; by hand::

    python tests/slurm_local.py /tmp/slurm      # starts it, prints `export SLURM_CONF=...`
    kill $(cat /tmp/slurm/*.daemon.pid)          # stops it
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

#: The daemons and client commands this needs (Debian packages slurm-wlm and munge).
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "scontrol")
NODE = "crscale-node"
PARTITION = "debug"
#: CPUs the node declares (more than this machine has: jobs here mostly wait on each other).
NODE_CPUS = 8
NODE_MEMORY_MB = 16000

SLURM_CONF = """\
ClusterName=crscale-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={dir}/munge/munge.socket
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
SlurmdParameters=config_overrides
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
KillWait=5
MinJobAge=600
InactiveLimit=0
SchedulerParameters=sched_interval=2,bf_interval=2
NodeName={node} NodeAddr=127.0.0.1 NodeHostname={host} CPUs={cpus} RealMemory={memory} Gres=gpu:2
PartitionName={partition} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""

GRES_CONF = "NodeName={node} Name=gpu File={dir}/gpu[0-1]\n"


class SlurmUnavailable(RuntimeError):
    """This machine cannot run the local SLURM (the reason says why)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SlurmClient:
    """The client commands (sbatch, squeue, scontrol, scancel) of a SLURM cluster."""

    #: Whether this cluster is the local one started here (tests that need root on it check).
    local = False
    #: squeue shows only this user's jobs (a shared site cluster).
    mine_only = True

    def __init__(self) -> None:
        self.env: dict[str, str] = {}

    def run(
        self, *argv: str, check: bool = True, user: str | None = None, **kwargs: object
    ) -> subprocess.CompletedProcess:
        """Run a SLURM client command against this cluster (as ``user`` when given)."""
        command = list(argv) if user is None else ["runuser", "-u", user, "--", *argv]
        env = {**os.environ, **self.env, **kwargs.pop("env", {})}
        return subprocess.run(
            command, env=env, capture_output=True, text=True, check=check, timeout=60, **kwargs
        )

    def queue(self) -> list[dict[str, str]]:
        """The jobs in the queue (pending, running, completing): id, name, state, user."""
        mine = ["--me"] if self.mine_only else []
        res = self.run("squeue", "-h", "-o", "%i|%j|%T|%u", *mine, check=False)
        rows = [line.split("|") for line in res.stdout.splitlines() if line.strip()]
        return [dict(zip(("id", "name", "state", "user"), row, strict=True)) for row in rows]

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (JobState, Reason, TimeLimit, ...)."""
        res = self.run("scontrol", "show", "job", "-o", str(job_id))
        out: dict[str, str] = {}
        for word in res.stdout.split():
            key, sep, value = word.partition("=")
            if sep:
                out.setdefault(key, value)
        return out



class SiteSlurm(SlurmClient):
    """The site's own SLURM, for the acceptance test (``CRSCALE_TEST_SLURM_SITE=site.yaml``).

    Parameters
    ----------
    site_file : path
        The site's crscale/dask-jobqueue file (e.g. a copy of cluster/slurm.yaml): its
        ``jobqueue.slurm`` queue, account, prologue, directives and interface are used, with
        the tests' small job shapes on top.
    """

    def __init__(self, site_file: str | Path) -> None:
        super().__init__()
        import yaml

        self.site_file = Path(site_file)
        self.site = yaml.safe_load(self.site_file.read_text()) or {}

    @staticmethod
    def unavailable() -> str | None:
        """Why the site's SLURM cannot be used from here, or None."""
        missing = [b for b in BINARIES[3:] if shutil.which(b) is None]
        return f"not on PATH: {', '.join(missing)}" if missing else None


class LocalSlurm(SlurmClient):
    """A single-node SLURM whose daemons run from ``folder`` (started by :meth:`start`).

    Attributes
    ----------
    folder : Path
        Configuration, state and logs.
    env : dict
        The environment variables a client needs (``SLURM_CONF``).
    pids : dict
        Daemon name -> PID, for :meth:`stop`.
    """

    local = True
    mine_only = False

    def __init__(self, folder: str | Path) -> None:
        super().__init__()
        self.folder = Path(folder).absolute()
        self.conf = self.folder / "slurm.conf"
        self.env = {"SLURM_CONF": str(self.conf)}
        self.pids: dict[str, int] = {}
        self._procs: list[subprocess.Popen] = []

    @staticmethod
    def unavailable() -> str | None:
        """Why SLURM cannot be started here, or None when it can."""
        if os.geteuid() != 0:
            return "the local SLURM needs root (slurmd starts jobs as their users)"
        missing = [b for b in BINARIES if shutil.which(b) is None]
        if missing:
            return f"not installed: {', '.join(missing)} (apt-get install slurm-wlm munge)"
        return None

    # ------------------------------------------------------------------ start / stop

    def start(self, timeout: float = 60) -> LocalSlurm:
        """Write the configuration and start munged, slurmctld and slurmd; wait until the node is idle."""
        reason = self.unavailable()
        if reason:
            raise SlurmUnavailable(reason)
        d = self.folder
        for sub in ("munge", "state", "spool"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o755)  # munged refuses folders that others may write to
        os.chmod(d / "munge", 0o755)
        for i in range(2):
            _device_file(d / f"gpu{i}")
        values = {
            "host": socket.gethostname(),
            "dir": d,
            "ctld_port": _free_port(),
            "slurmd_port": _free_port(),
            "node": NODE,
            "cpus": NODE_CPUS,
            "memory": NODE_MEMORY_MB,
            "partition": PARTITION,
        }
        self.conf.write_text(SLURM_CONF.format(**values))
        (d / "gres.conf").write_text(GRES_CONF.format(**values))
        key = d / "munge" / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        env = {**os.environ, **self.env}
        self._daemon(
            "munged",
            ["munged", "--force", "--foreground", f"--key-file={key}", f"--socket={d}/munge/munge.socket",
             f"--pid-file={d}/munged.pid", f"--log-file={d}/munged.log", f"--seed-file={d}/munge/seed"],
            env,
        )
        self._wait(lambda: (d / "munge" / "munge.socket").exists(), 20, "munged did not create its socket")
        self._daemon("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)], env)
        self._daemon("slurmd", ["slurmd", "-D", "-N", NODE, "-f", str(self.conf)], env)
        self._wait(self._node_idle, timeout, "the node did not become idle")
        return self

    def _daemon(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        log = open(self.folder / f"{name}.stderr", "ab")  # the daemon holds it
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.pids[name] = proc.pid
        self._procs.append(proc)
        (self.folder / f"{name}.daemon.pid").write_text(f"{proc.pid}\n")

    def _wait(self, ready, timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if ready():
                return
            dead = [n for n, pid in self.pids.items() if not _alive(pid)]
            if dead:
                break
            time.sleep(0.3)
        self.stop()
        raise SlurmUnavailable(f"{what}; logs:\n{self.logs()}")

    def _node_idle(self) -> bool:
        res = self.run("sinfo", "-h", "-N", "-o", "%T", check=False)
        return res.returncode == 0 and res.stdout.strip() == "idle"

    def stop(self) -> None:
        """Cancel every job, then end the daemons by PID (slurmd, slurmctld, munged)."""
        if self.pids.get("slurmctld") and _alive(self.pids["slurmctld"]):
            self.run("scancel", "--full", "--partition", PARTITION, check=False)
            self._wait_quiet(10)
        for name in ("slurmd", "slurmctld", "munged"):
            pid = self.pids.pop(name, None)
            if pid is None:
                continue
            _end(pid)
        for proc in self._procs:
            proc.poll()  # reap

    def _wait_quiet(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end and self.queue():
            time.sleep(0.5)

    def logs(self) -> str:
        """The tails of the daemons' logs."""
        parts = []
        for path in sorted(self.folder.glob("*.log")) + sorted(self.folder.glob("*.stderr")):
            lines = path.read_text(errors="replace").splitlines()[-15:]
            parts.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(parts)


def _device_file(path: Path) -> None:
    """A character device (the null device's numbers) standing for one GPU.

    slurmd takes the GPU's index from a device file (a plain file is refused: "not a valid
    character or block device") and only then sets CUDA_VISIBLE_DEVICES for the jobs.
    """
    if path.exists():
        return
    os.mknod(path, 0o644 | stat.S_IFCHR, os.makedev(1, 3))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A daemon that exited but was not reaped yet is a zombie, not alive.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _end(pid: int, timeout: float = 10) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not _alive(pid):
            return
        time.sleep(0.2)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


if __name__ == "__main__":
    slurm = LocalSlurm(sys.argv[1] if len(sys.argv) > 1 else "/tmp/crscale-slurm").start()
    print(f"export SLURM_CONF={slurm.conf}")
    print(f"# daemons: {slurm.pids}")
