"""The notebooks run top to bottom on the bundled real data, in a real Jupyter kernel (nbclient).

Each notebook runs in a temporary working folder, with a per-cell time limit; a cell that raises
fails the test (nbclient's ``CellExecutionError`` carries the cell and its traceback). Then one
property per notebook that matters is checked against the archive or the printed numbers.

One catalogued sample archive is made for the whole module: ``03_monitoring`` starts its demo
job (``crscale run --sample``) into ``CRSCALE_SAMPLE_ARCHIVE`` and follows it live, and
``04_cr_rate_study`` then reads that archive instead of running the sample again. Without the
variable, each notebook makes its own in a temporary folder.

Set ``CRSCALE_NOTEBOOK_OUT`` to a folder to keep the executed notebooks (outputs included), e.g.
as CI artefacts; the notebooks in the repository are never written.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from crscale.catalogue.stats import summarise
from crscale.engine.jobs import read_job, write_job
from crscale.engine.monitor import RateFollower, archive_progress, job_alive, rates_so_far, watch
from crscale.io import Archive
from crscale.io.catalogue_store import catalogued_exposures, read_table, table_file

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
MONITORING = NOTEBOOK_DIR / "03_monitoring.ipynb"
STUDY = NOTEBOOK_DIR / "04_cr_rate_study.ipynb"
#: Seconds one cell may take (the monitoring loop lasts as long as its job: ~20 s on 2 cores).
CELL_TIMEOUT = 480
#: Variables the notebooks read: the test sets them itself.
_NOTEBOOK_VARIABLES = ("CRSCALE_MONITOR_ARCHIVE", "CRSCALE_SAMPLE_ARCHIVE", "MPLBACKEND")


def execute(path: Path, workdir: Path, env: dict[str, str] | None = None) -> nbformat.NotebookNode:
    """Run a notebook top to bottom in ``workdir``; keep the result in ``$CRSCALE_NOTEBOOK_OUT``."""
    nb = nbformat.read(path, as_version=4)
    kernel_env = {k: v for k, v in os.environ.items() if k not in _NOTEBOOK_VARIABLES}
    kernel_env.update(env or {})
    client = NotebookClient(
        nb, timeout=CELL_TIMEOUT, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
    )
    try:
        client.execute(env=kernel_env)
    finally:
        out = os.environ.get("CRSCALE_NOTEBOOK_OUT")
        if out:
            Path(out).mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, Path(out) / path.name)
    return nb


def outputs(nb: nbformat.NotebookNode) -> list[dict]:
    return [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]


def stdout(nb: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for o in outputs(nb) if o.output_type == "stream" and o.name == "stdout")


def n_images(nb: nbformat.NotebookNode) -> int:
    return sum("image/png" in o.get("data", {}) for o in outputs(nb))


def number(pattern: str, text: str) -> float:
    found = re.search(pattern, text)
    assert found, f"{pattern!r} not in the notebook's output:\n{text}"
    return float(found.group(1))


def stop_leftover_job(archive: Path) -> None:
    """Stop the demo job of a monitoring run that broke off (it runs in its own process group)."""
    job = read_job(archive)
    if job and job.get("status") == "running" and job_alive(job):
        pid = int(job["pid"])
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGTERM)


@pytest.fixture(scope="module")
def monitored(tmp_path_factory) -> tuple[nbformat.NotebookNode, Path]:
    """03_monitoring, run once: its demo job makes the catalogued sample archive (kept for 04)."""
    root = tmp_path_factory.mktemp("notebooks")
    archive = root / "sample.zarr"
    try:
        nb = execute(MONITORING, root, {"CRSCALE_SAMPLE_ARCHIVE": str(archive)})
    finally:
        stop_leftover_job(archive)
    return nb, archive


def check_archive_tour(nb: nbformat.NotebookNode, archive: Path | None) -> None:
    assert n_images(nb) >= 1
    assert "ingested" in stdout(nb)


def check_quickstart(nb: nbformat.NotebookNode, archive: Path | None) -> None:
    text = stdout(nb)
    assert number(r"CR pixels: (\d+)", text) > 0
    assert number(r"CRs \(8-connected regions\): (\d+)", text) > 0
    assert n_images(nb) >= 2


def check_monitoring(nb: nbformat.NotebookNode, archive: Path | None) -> None:
    assert archive is not None
    text = stdout(nb)
    assert "final job status: finished" in text
    assert "job exit status: 0" in text
    job = read_job(archive)
    assert job is not None and job["status"] == "finished"
    assert job_alive(job) is False  # the notebook waited for its job
    # The monitor saw the job at work, not only its end.
    assert re.search(r"job running \| \d+ exposure\(s\)", text), text
    # The rate table: one row per catalogued exposure x detector.
    rows = int(number(r"rate table: (\d+) rows", text))
    assert rows == int(number(r"catalogue exposure table: (\d+) rows", text))
    catalogued = catalogued_exposures(archive)
    arch = Archive(archive)
    assert len(catalogued) == len(arch.exposure_ids()) == 6
    assert rows == len(read_table(archive, "exposures")) == sum(len(arch.detectors(e)) for e in catalogued)
    # The dashboard: served, shown in the notebook, and showing what the archive holds at the end.
    assert "HTTP 200" in text
    assert any("<iframe" in o.get("data", {}).get("text/html", "") for o in outputs(nb))
    shown = re.search(r"dashboard counts: (\{.*\})", text).group(1)
    assert shown == re.search(r"archive counts: +(\{.*\})", text).group(1)
    progress = archive_progress(archive)
    assert ast.literal_eval(shown) == {k: v for k, v in progress.items() if k != "unreadable"}
    assert "dashboard: job finished" in text


def check_study(nb: nbformat.NotebookNode, archive: Path | None) -> None:
    assert archive is not None
    assert "reusing the catalogue" in stdout(nb)
    total = summarise(archive).total
    assert number(r"all instruments: ([\d.]+) ±", stdout(nb)) == pytest.approx(total.rate, abs=1e-4)
    assert n_images(nb) >= 4


CHECKS: dict[str, Callable[[nbformat.NotebookNode, Path | None], None]] = {
    "01_archive_tour.ipynb": check_archive_tour,
    "02_quickstart.ipynb": check_quickstart,
    "03_monitoring.ipynb": check_monitoring,
    "04_cr_rate_study.ipynb": check_study,
}


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path: Path, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    archive = None
    if path == MONITORING:
        nb, archive = request.getfixturevalue("monitored")
    elif path == STUDY:
        _, archive = request.getfixturevalue("monitored")
        nb = execute(path, tmp_path, {"CRSCALE_SAMPLE_ARCHIVE": str(archive)})
    else:
        nb = execute(path, tmp_path)
    assert not [o for o in outputs(nb) if o.output_type == "error"]
    CHECKS.get(path.name, lambda nb, archive: None)(nb, archive)


def test_every_notebook_has_a_check() -> None:
    assert {p.name for p in NOTEBOOKS} == set(CHECKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_are_committed_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: clear the outputs"


# ---------------------------------------------------------------------------------------------
# The monitoring helpers the notebook uses (crscale.engine.monitor), on what a job leaves behind.


def test_nothing_yet_reads_as_empty(tmp_path: Path) -> None:
    missing = tmp_path / "not-yet.zarr"
    assert archive_progress(missing) == dict.fromkeys(archive_progress(missing), 0)
    rates = rates_so_far(missing)
    assert len(rates) == 0 and {"exposure", "rate", "rate_err", "seen_s"} <= set(rates.columns)
    assert "detector" in rates_so_far(missing, per="detector").columns


def test_watch_stops_on_a_finished_or_dead_job(tmp_path: Path) -> None:
    archive = tmp_path / "a.zarr"
    write_job(archive, {"status": "finished", "scheduler": None, "pid": 1})
    snaps = list(watch(archive, every=0.0))
    assert [s.state for s in snaps] == ["finished"] and snaps[0].over
    # A record left "running" by a process that no longer exists: the watch ends too.
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    record = {"status": "running", "scheduler": None, "pid": gone.pid, "host": socket.gethostname()}
    write_job(archive, record)
    snaps = list(watch(archive, every=0.0))
    assert [s.state for s in snaps] == ["died"]


@pytest.mark.slow
def test_rates_follow_a_catalogue_being_rewritten(monitored, tmp_path: Path) -> None:
    _, source = monitored
    archive = tmp_path / "copy.zarr"
    shutil.copytree(source, archive)
    progress = archive_progress(archive)
    assert progress["exposures"] == progress["catalogued"] == 6 and progress["failed"] == 0

    follower = RateFollower(archive)
    first = follower.update()
    assert len(first) == 6 and first["rate"].notna().all()
    assert len(RateFollower(archive, per="detector").update()) == len(read_table(archive, "exposures"))
    # An exposure catalogued again: its file vanishes, then comes back (a new file).
    eid = first["exposure"].iloc[0]
    path = table_file(archive, "exposures", eid)
    saved = path.read_bytes()
    path.unlink()
    assert eid not in set(follower.update()["exposure"])
    path.write_bytes(saved)
    again = follower.update()
    assert len(again) == 6
    assert again.set_index("exposure")["rate"].to_dict() == first.set_index("exposure")["rate"].to_dict()
    # A file that cannot be read right now is left out and named; the others still come.
    path.write_bytes(saved[: len(saved) // 2])
    partial = follower.update()
    assert follower.unreadable == [eid] and len(partial) == 5
