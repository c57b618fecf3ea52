"""crscale on a real SLURM: munged, slurmctld and slurmd started on localhost for the session.

The cluster (tests/slurm_local.py) has one node with 8 CPUs and two "gpu" generic resources, so
SLURM books GPUs and sets ``CUDA_VISIBLE_DEVICES`` as on a GPU node (the CNN itself runs on the
CPU here). Every job below is submitted with the real ``sbatch`` by dask-jobqueue or by the test,
and the results are compared with a LocalCluster run of the same real images.

Skipped with the reason where SLURM cannot start (not root, or slurm-wlm / munge missing: .ci/run
installs them). A site admin runs the same tests on a real cluster as an acceptance test: see
docs/hpc.md, "Acceptance test on your cluster".
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import dask.config
import numpy as np
import pandas as pd
import pytest
import yaml
from distributed.diagnostics.plugin import SchedulerPlugin
from slurm_local import LocalSlurm, SiteSlurm, SlurmClient, SlurmUnavailable

import crscale.engine.hpc  # noqa: F401 (first: registers dask-jobqueue's config defaults)
from conftest import DECAM, DECAM_DQ, EMMI, GMOS, copy_to
from crscale.engine.cluster import dask_client
from crscale.engine.hpc_watch import job_of_worker
from crscale.engine.jobs import read_job
from crscale.engine.pipeline import run_pipeline
from crscale.io import Archive
from crscale.io.catalogue_store import read_table

ROOT = Path(__file__).resolve().parents[1]
IMAGES = [GMOS, EMMI, DECAM]
CLI = [sys.executable, "-m", "crscale.cli"]


#: A site file: run these tests on the site's own SLURM instead (the acceptance test).
SITE_ENV = "CRSCALE_TEST_SLURM_SITE"


@pytest.fixture(scope="session")
def slurm():
    """A real single-node SLURM for the session, torn down by PID; or the site's (SITE_ENV)."""
    if os.environ.get(SITE_ENV):
        cluster = SiteSlurm(os.environ[SITE_ENV])
        reason = cluster.unavailable()
        if reason:
            pytest.skip(f"{SITE_ENV} is set but the SLURM commands are {reason}")
        yield cluster
        return
    reason = LocalSlurm.unavailable()
    if reason:
        pytest.skip(f"no local SLURM: {reason}")
    # Not under pytest's 0700 temp folders: another user (nobody) submits jobs to it too.
    folder = Path(tempfile.mkdtemp(prefix="crscale-slurm-"))
    os.chmod(folder, 0o755)
    cluster = LocalSlurm(folder)
    try:
        cluster.start()
    except SlurmUnavailable as exc:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.fail(f"the local SLURM did not start: {exc}")
    saved = os.environ.get("SLURM_CONF")
    os.environ.update(cluster.env)  # sbatch, squeue, scancel of this process and its children
    try:
        yield cluster
    finally:
        cluster.stop()
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def reference(client, tmp_path_factory) -> Path:
    """The same images through the LocalCluster: what every SLURM run must reproduce."""
    archive = tmp_path_factory.mktemp("slurm-ref") / "ref.zarr"
    report = run(archive, client)
    assert report.ok
    return archive


def run(archive: Path, client) -> object:
    """``crscale run`` of the test images through the Python API, on ``client``."""
    return run_pipeline([str(p) for p in IMAGES], str(archive), client=client, progress=False, echo=None)


#: What the tests take from a site's file in the acceptance test; the job shapes are theirs.
SITE_KEYS = {
    "jobqueue": ("queue", "account", "job-script-prologue", "job-extra-directives", "interface", "python"),
    "hpc": ("scheduler_interface", "gpu_directive"),
}


def site(slurm: SlurmClient, tmp_path: Path, hpc: dict | None = None, jobqueue: dict | None = None) -> dict:
    """A small site config: jobs of 1 CPU per GPU and 2 GiB (on a site's SLURM, in its queue)."""
    (tmp_path / "scratch").mkdir(exist_ok=True)
    theirs: dict = {"jobqueue": {}, "hpc": {}}
    if isinstance(slurm, SiteSlurm):
        given = {"jobqueue": slurm.site.get("jobqueue", {}).get("slurm", {}),
                 "hpc": slurm.site.get("crscale", {}).get("hpc", {})}
        theirs = {
            part: {k: given[part][k] for k in keys if k in given[part]} for part, keys in SITE_KEYS.items()
        }
        theirs["hpc"].setdefault("scheduler_interface", None)
    return {
        "crscale": {
            "hpc": {
                "jobs": 1,
                "gpus_per_job": 2,
                "cpus_per_gpu": 1,
                "scratch": str(tmp_path / "scratch"),
                "scheduler_interface": "lo",
                "dashboard_address": "127.0.0.1:0",
                "wait_for_workers": 2,
                "wait_timeout": 300,
                "watch_interval": 2,
                "max_resubmits": 3,
                **theirs["hpc"],
                **(hpc or {}),
            }
        },
        "jobqueue": {
            "slurm": {
                "name": "crscale-worker",
                "memory": "2GiB",
                "walltime": "00:10:00",
                "death-timeout": 30,
                "log-directory": str(tmp_path / "logs"),
                **theirs["jobqueue"],
                **(jobqueue or {}),
            }
        },
    }


def write_site(slurm: SlurmClient, tmp_path: Path, **kwargs) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(site(slurm, tmp_path, **kwargs)))
    return path


def flat(config: dict, prefix: str = "") -> dict:
    """Nested config -> dotted keys, so that dask.config.set merges instead of replacing."""
    out: dict = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def outputs(archive: Path) -> dict:
    arch = Archive(archive)
    out = {}
    for eid in arch.exposure_ids():
        for det in arch.detectors(eid):
            group = arch.root[f"exposures/{eid}/{det}"]
            out[eid, det] = {k: group[k][:] for k in ("prob", "mask", "clean")}
    return out


def assert_same_results(archive: Path, reference: Path) -> None:
    """Every exposure detected and catalogued, with the reference's pixels and CRs."""
    arch = Archive(archive)
    for eid in arch.exposure_ids():
        status = arch.status(eid)
        assert status["detect"]["state"] == "done" and status["catalogue"]["state"] == "done", (eid, status)
    got, want = outputs(archive), outputs(reference)
    assert got.keys() == want.keys() and len(got) == len(IMAGES)
    for key in want:
        for plane in want[key]:
            np.testing.assert_array_equal(got[key][plane], want[key][plane], err_msg=f"{key} {plane}")
    order = ["exposure", "detector", "id"]
    crs, ref = (read_table(a, "crs").sort_values(order).reset_index(drop=True) for a in (archive, reference))
    assert len(ref) > 0
    pd.testing.assert_frame_equal(crs, ref)


def wait_until(condition, timeout: float, what: str, step: float = 0.5):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def assert_queue_empties(slurm: LocalSlurm, timeout: float = 30) -> None:
    wait_until(lambda: not slurm.queue(), timeout, f"an empty squeue (still {slurm.queue()})")


def worker_job_ids(tmp_path: Path) -> list[str]:
    """Ids of the worker jobs dask-jobqueue submitted (their log files are named after them)."""
    logs = (tmp_path / "logs").glob("crscale-worker-*.err")
    return sorted({p.stem.rsplit("-", 1)[1] for p in logs}, key=int)


# ------------------------------------------------------------------ crscale run, job-script


def test_crscale_run_cluster_slurm_behind_another_users_job(slurm, reference, tmp_path):
    """``crscale run --cluster slurm``: its worker job queues behind nobody's job, then reprocesses."""
    blocker = None
    if slurm.local:  # on a site's cluster (the acceptance test) there is no other user to be
        blocker = slurm.run(
            "sbatch", "--parsable", "--job-name=other-user", "--chdir=/tmp", "--output=/dev/null",
            "--gres=gpu:2", "--wrap", "sleep 600", user="nobody",
        ).stdout.strip()
        wait_until(lambda: slurm.job(blocker)["JobState"] == "RUNNING", 30, "the other user's job to start")
    env = {**os.environ, "DASK_CONFIG": str(write_site(slurm, tmp_path))}
    archive = tmp_path / "run.zarr"
    proc = subprocess.Popen(
        [*CLI, "run", *map(str, IMAGES), "--archive", str(archive), "--cluster", "slurm", "--no-progress"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    seen: list[tuple[str, str, str]] = []  # (our job's state, the blocker's state, reason) while it ran
    while proc.poll() is None:
        rows = {r["id"]: r for r in slurm.queue()}
        blocker_state = rows.get(blocker, {}).get("state", "GONE")
        ours = [(r["state"], blocker_state, r["name"]) for r in rows.values() if r["user"] != "nobody"]
        seen += ours
        if blocker and ("PENDING", "RUNNING", "crscale-worker") in ours:
            slurm.run("scancel", blocker)  # the other user's job ends: ours may start
        time.sleep(0.5)
    out = proc.stdout.read()
    print(out)
    assert proc.returncode == 0, out
    (job_id,) = worker_job_ids(tmp_path)
    job = slurm.job(job_id)
    assert job["TresPerNode"] == "gres:gpu:2" and job["JobState"] in ("CANCELLED", "COMPLETED"), job
    if blocker:  # the worker job waited for the other user's GPUs, then ran
        assert ("PENDING", "RUNNING", "crscale-worker") in seen, seen
        assert ("RUNNING", "GONE", "crscale-worker") in seen, seen
        assert job["StartTime"] >= slurm.job(blocker)["EndTime"]
    assert_same_results(archive, reference)
    assert_queue_empties(slurm)
    record = read_job(archive)
    assert record["status"] == "finished"
    assert record["scheduler"].startswith("tcp://127.0.0.1:") or not slurm.local
    # The dashboard link is where it is bound (127.0.0.1 here), with the tunnel to reach it.
    port = record["dashboard"].split(":")[2].split("/")[0]
    assert record["dashboard"] == f"http://127.0.0.1:{port}/status"
    assert f"dashboard http://127.0.0.1:{port}/status" in out
    assert f"ssh -N -L {port}:127.0.0.1:{port} " in out


def test_job_script_is_accepted_by_sbatch_test_only(slurm, tmp_path):
    path = write_site(slurm, tmp_path, hpc={"cpu_jobs": 1}, jobqueue={"cores": 1})
    env = {**os.environ, "DASK_CONFIG": str(path)}
    for extra in ([], ["--cpu"]):
        res = subprocess.run([*CLI, "job-script", "slurm", *extra], env=env, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        script = tmp_path / "job.sh"
        script.write_text(res.stdout)
        (tmp_path / "logs").mkdir(exist_ok=True)
        check = slurm.run("sbatch", "--test-only", str(script), check=False, cwd=tmp_path)
        # sbatch --test-only validates the script against the cluster and submits nothing.
        assert check.returncode == 0 and "to start at" in check.stderr, (extra, check.stderr)
    assert not slurm.queue()


# ------------------------------------------------------------------ GPU binding


class Placement(SchedulerPlugin):
    """A scheduler plugin recording where each task was sent: (key prefix, worker address)."""

    name = "crscale-test-placement"

    def __init__(self, scheduler, on_processing=None) -> None:
        self.scheduler = scheduler
        self.on_processing = on_processing
        self.sent: list[tuple[str, str]] = []

    def transition(self, key, start, finish, *args, **kwargs) -> None:
        if finish != "processing":
            return
        ts = self.scheduler.tasks.get(key)
        if ts is not None and ts.processing_on is not None:
            self.sent.append((key_split(key), ts.processing_on.address))
            if self.on_processing:
                self.on_processing(key_split(key), ts.processing_on)


def key_split(key) -> str:
    from dask.utils import key_split as split

    return split(key)


def test_gpu_binding_and_task_placement(slurm, reference, tmp_path):
    """A 2-gpu job: one device per worker; the CNN tasks go to its workers, not to the CPU job's."""
    config = site(
        slurm,
        tmp_path,
        hpc={"cpu_jobs": 1, "wait_for_workers": 3},
        jobqueue={"cores": 1, "processes": 1},
    )
    archive = tmp_path / "gpu.zarr"

    def worker_env(dask_worker) -> dict:  # defined here: sent by value to the workers
        return {
            "name": str(dask_worker.name),
            "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "SLURM_JOB_ID": os.environ.get("SLURM_JOB_ID"),
            "SLURM_JOB_GPUS": os.environ.get("SLURM_JOB_GPUS"),
            "resources": dict(dask_worker.state.total_resources),
        }

    with dask.config.set(flat(config)), dask_client(cluster="slurm", echo=None) as client:
        placement = Placement(client.cluster.scheduler)
        client.cluster.scheduler.add_plugin(placement)
        env = list(client.run(worker_env).values())
        report = run(archive, client)
        workers = client.scheduler_info(n_workers=-1)["workers"]
        addresses = {info["name"]: addr for addr, info in workers.items()}
    assert report.ok
    gpu = sorted((e for e in env if e["resources"]), key=lambda e: e["name"])
    cpu = [e for e in env if not e["resources"]]
    assert len(gpu) == 2 and len(cpu) == 1, env
    # One job, two workers, each pinned to its own device of the two SLURM gave the job.
    assert gpu[0]["SLURM_JOB_ID"] == gpu[1]["SLURM_JOB_ID"] != cpu[0]["SLURM_JOB_ID"]
    devices = [e["CUDA_VISIBLE_DEVICES"] for e in gpu]
    assert len(set(devices)) == 2 and all(d and "," not in d for d in devices), devices
    if slurm.local:  # SLURM gave the job both devices of the node, 0 and 1
        assert [e["SLURM_JOB_GPUS"] for e in gpu] == ["0,1", "0,1"] and devices == ["0", "1"]
    assert [e["name"].rsplit("-", 1)[1] for e in gpu] == ["0", "1"]
    assert all(e["resources"] == {"GPU": 1} for e in gpu)
    assert cpu[0]["CUDA_VISIBLE_DEVICES"] == "" and cpu[0]["SLURM_JOB_GPUS"] is None
    gpu_addresses = {addresses[e["name"]] for e in gpu}
    detect = [addr for prefix, addr in placement.sent if prefix == "detect_block"]
    assert detect and set(detect) <= gpu_addresses, placement.sent
    assert_same_results(archive, reference)
    assert_queue_empties(slurm)


# ------------------------------------------------------------------ what batch systems do to jobs


@pytest.mark.slow  # a real 1-minute walltime: SLURM ends the job 60-90 s after it starts
def test_cancelled_and_out_of_walltime_worker_jobs_are_replaced(slurm, reference, tmp_path, caplog):
    """One run, three jobs of 1-minute walltime: the first is scancelled while it runs the CNN, the
    second is killed by SLURM at its walltime, the third finishes the run: the reference results."""
    config = site(
        slurm, tmp_path, hpc={"gpus_per_job": 1, "wait_for_workers": 1}, jobqueue={"walltime": "00:01:00"}
    )
    flag = tmp_path / "held"
    events: dict[str, object] = {}
    archive = tmp_path / "survived.zarr"
    caplog.set_level("WARNING", logger="crscale.engine.hpc_watch")

    def hold_gpu(flag: str, spare_job: str) -> str:  # defined here: sent by value to the workers
        """Hold the worker's GPU for the rest of its job, the first time it runs outside spare_job."""
        job = os.environ.get("SLURM_JOB_ID", "")
        if job == spare_job or os.path.exists(flag):
            return job
        Path(flag).write_text(job)
        time.sleep(600)  # the job's walltime ends this
        return job

    with dask.config.set(flat(config)), dask_client(cluster="slurm", echo=None) as client:
        cluster = client.cluster

        def cancel_first_job(prefix: str, worker) -> None:
            # The first CNN task sent to a worker: cancel that worker's job while it runs. The
            # second job's GPU is then held by a task (a long computation) until its walltime.
            if prefix != "detect_block" or "cancelled" in events:
                return
            job = cluster.workers[job_of_worker(str(worker.name), cluster.workers)].job_id
            events["cancelled"] = job

            def act() -> None:  # not on the scheduler's event loop
                events["hold"] = client.submit(
                    hold_gpu, str(flag), job, resources={"GPU": 1}, priority=100, pure=False
                )
                slurm.run("scancel", job)

            threading.Thread(target=act).start()

        cluster.scheduler.add_plugin(Placement(cluster.scheduler, on_processing=cancel_first_job))
        report = run(archive, client)
        held_job = events["hold"].result(timeout=60)  # ran again on the third job, which it spares
    assert report.ok, report.to_dict()
    first, second = events["cancelled"], flag.read_text()
    jobs = worker_job_ids(tmp_path)
    assert len(jobs) == 3 and jobs[:2] == [first, second], (jobs, first, second)
    assert slurm.job(first)["JobState"] == "CANCELLED"
    timed_out = slurm.job(second)
    assert timed_out["JobState"] == "TIMEOUT" and timed_out["Reason"] == "TimeLimit", timed_out
    assert held_job == jobs[2]
    lost = [r.getMessage() for r in caplog.records if "lost" in r.getMessage()]
    assert len(lost) == 2 and all("submitting" in m for m in lost), lost
    assert_same_results(archive, reference)
    assert_queue_empties(slurm)


def test_run_gives_up_when_no_worker_can_come(slurm, tmp_path):
    """Every worker job dies at once and no replacement is left: a clear message, not a hang."""
    path = write_site(
        slurm,
        tmp_path,
        hpc={"gpus_per_job": 1, "wait_for_workers": 1, "max_resubmits": 1, "wait_timeout": 300},
        jobqueue={"job-script-prologue": ["exit 3  # a broken environment"]},
    )
    env = {**os.environ, "DASK_CONFIG": str(path)}
    # Times out (fails) long before wait_timeout if the run waits for workers that cannot come.
    res = subprocess.run(
        [*CLI, "run", str(GMOS), "--archive", str(tmp_path / "never.zarr"), "--cluster", "slurm"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=280,
    )
    assert res.returncode == 2, res.stdout + res.stderr
    assert "all slurm worker jobs were lost (2 lost" in res.stderr, res.stderr
    assert "crscale.hpc.max_resubmits" in res.stderr and "Traceback" not in res.stderr
    assert len(worker_job_ids(tmp_path)) == 2  # the job and its one replacement
    assert_queue_empties(slurm)


# ------------------------------------------------------------------ the driver job


def _detect_started(archive: Path) -> bool:
    try:
        arch = Archive(archive)
        return any(arch.status(e).get("detect", {}).get("state") for e in arch.exposure_ids())
    except Exception:  # not created yet, or being written
        return False


def _ended(slurm: LocalSlurm, job_id: str) -> dict | None:
    job = slurm.job(job_id)
    return None if job["JobState"] in ("PENDING", "RUNNING", "COMPLETING") else job


@pytest.mark.slow  # two driver jobs, each starting its own worker job
def test_driver_job_stopped_at_walltime_then_resubmitted(slurm, reference, tmp_path):
    """cluster/slurm/crscale-run.sbatch with real sbatch: SIGTERM to every process of the job
    (what SLURM sends at the walltime) mid-run, the re-run message; a second submission finishes."""
    inputs = tmp_path / "inputs"
    for path in [*IMAGES, DECAM_DQ]:
        copy_to(path, inputs)
    archive = tmp_path / "driver.zarr"
    env = {"SITE_CONFIG": str(write_site(slurm, tmp_path)), "CRSCALE_ACTIVATE": ""}  # crscale is here
    # The script's own partition and size are an example site's; here they are the tests'.
    partition = "debug"
    if isinstance(slurm, SiteSlurm):
        partition = slurm.site["crscale"]["hpc"].get("cpu_queue") or slurm.site["jobqueue"]["slurm"]["queue"]
    submit = [
        "sbatch", "--parsable", f"--partition={partition}", "--mem=2G", "--cpus-per-task=1",
        str(ROOT / "cluster" / "slurm" / "crscale-run.sbatch"), str(inputs), str(archive), "1",
    ]
    first = slurm.run(*submit, cwd=tmp_path, env=env).stdout.strip()
    wait_until(lambda: _detect_started(archive), 240, "the driver's run to start detecting")
    slurm.run("scancel", "--signal=TERM", "--full", first)
    job = wait_until(lambda: _ended(slurm, first), 120, "the driver to stop")
    log = (tmp_path / f"crscale-run-{first}.log").read_text()
    assert job["ExitCode"] == "130:0", (job, log)
    assert "re-run the same command" in log and "Traceback" not in log, log
    assert read_job(archive)["status"] == "failed"
    assert_queue_empties(slurm)  # the driver cancelled its worker job on the way out

    second = slurm.run(*submit, cwd=tmp_path, env=env).stdout.strip()
    job = wait_until(lambda: _ended(slurm, second), 300, "the second driver job to end")
    log = (tmp_path / f"crscale-run-{second}.log").read_text()
    assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", (job, log)
    assert "crscale archive" in log  # `crscale info` ran after the run
    assert read_job(archive)["status"] == "finished"
    assert_same_results(archive, reference)
    assert_queue_empties(slurm)
