"""The live dashboard in a real browser (headless Debian Chromium) on a real ``crscale run``.

``crscale dashboard`` and ``crscale run`` are started together (the archive does not exist yet),
the job on two bundled real exposures and one corrupt file (a real file whose header was overwritten).
The page is loaded once and never reloaded. While the job runs, the counts the page shows must lie
between the archive's counts read just before and just after the page's own read (the counts only
grow in a fresh run); once it has ended they must equal the archive's, the corrupt file must be in
the failures table, and the CR total must be the catalogue's. A screenshot is kept in
``$CRSCALE_TEST_ARTEFACTS`` (default: the test's temporary folder).

Skipped, with the reason, where chromium, chromedriver or the selenium package are missing
(``.ci/run`` installs them).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import EMMI, GMOS, copy_to
from crscale.engine.jobs import read_job
from crscale.engine.monitor import archive_progress
from crscale.io.catalogue_store import read_table

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium browser on PATH (Debian package chromium)"),
    pytest.mark.skipif(CHROMEDRIVER is None,
                       reason="no chromedriver on PATH (Debian package chromium-driver)"),
]
webdriver = pytest.importorskip("selenium.webdriver", reason="the selenium package is not installed")

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1400,1700")
KEYS = ("ingested", "detected", "catalogued")
STAGE_OF = {"ingested": "ingest", "detected": "detect", "catalogued": "catalogue"}

# Bokeh renders each widget in its own shadow root: find the dashboard's elements through all of them.
READ_PAGE = """
function deep(root, sel) {
  const hit = root.querySelector(sel);
  if (hit) return hit;
  for (const el of root.querySelectorAll('*')) {
    if (el.shadowRoot) { const f = deep(el.shadowRoot, sel); if (f) return f; }
  }
  return null;
}
function deepAll(root, sel, out) {
  root.querySelectorAll(sel).forEach(e => out.push(e));
  for (const el of root.querySelectorAll('*')) if (el.shadowRoot) deepAll(el.shadowRoot, sel, out);
  return out;
}
const head = deep(document, '#crscale-header');
if (!head) return null;
const cells = {};
for (const td of deepAll(document, '#crscale-progress td[data-stage]', []))
  cells[td.dataset.stage + '.' + td.dataset.col] = td.textContent;
const failures = deepAll(document, 'tr.crscale-failure', []).map(tr => {
  const row = {path: tr.title};
  tr.querySelectorAll('td').forEach(td => row[td.dataset.col] = td.textContent);
  return row;
});
const num = (sel, attr) => { const e = deep(document, sel); return e ? Number(e.dataset[attr]) : null; };
return JSON.stringify({
  state: head.dataset.state, readAt: Number(head.dataset.readAt), tick: Number(head.dataset.tick),
  cells: cells, failures: failures,
  exposures: num('#crscale-exposures', 'value'), inputsFailed: num('#crscale-inputs-failed', 'value'),
  crs: num('#crscale-classes', 'total'), nFailures: num('#crscale-failures', 'n'),
  workers: num('#crscale-workers', 'n'),
});
"""


def read_page(driver) -> dict | None:
    text = driver.execute_script(READ_PAGE)
    return None if text is None else json.loads(text)


def page_counts(page: dict) -> dict[str, int]:
    return {k: int(page["cells"][f"{STAGE_OF[k]}.done"]) for k in KEYS}


def wait_for_page(driver, after: float, timeout: float = 30.0) -> dict:
    """The page's content once it shows a read made after ``after`` (epoch seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        page = read_page(driver)
        if page is not None and page["readAt"] > after:
            return page
        assert time.monotonic() < deadline, f"the page did not update after {after}: {page}"
        time.sleep(0.2)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    folder = tmp_path / "inputs"
    for src in (GMOS, EMMI):
        copy_to(src, folder)
    raw = bytearray(GMOS.read_bytes())
    raw[:2880] = b"\x00garbage, not a FITS header\x00".ljust(2880, b"\x7f")
    (folder / "corrupt_frame.fits").write_bytes(bytes(raw))
    return folder


def test_dashboard_follows_a_real_run_in_chromium(inputs: Path, tmp_path: Path) -> None:
    archive = tmp_path / "job.zarr"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    dash_log = open(tmp_path / "dashboard.log", "w+")
    job_log = open(tmp_path / "job.log", "w+")
    # Both at once, to keep the test short: the dashboard starts on an archive that the job's
    # ingest has not created yet, and fills in without being reloaded.
    dash = subprocess.Popen(
        [sys.executable, "-m", "crscale.cli", "dashboard", str(archive), "--every", "0.5"],
        stdout=dash_log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    job = subprocess.Popen(
        [sys.executable, "-m", "crscale.cli", "run", str(inputs), "--archive", str(archive),
         "--no-progress", "--workers", "2"],
        stdout=job_log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    driver = None
    try:
        url = None
        deadline = time.monotonic() + 60
        while url is None:
            assert dash.poll() is None, f"the dashboard exited:\n{Path(dash_log.name).read_text()}"
            assert time.monotonic() < deadline, Path(dash_log.name).read_text()
            for word in Path(dash_log.name).read_text().split():
                if word.startswith("http://127.0.0.1:"):
                    url = word
            time.sleep(0.2)

        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path, prefix='chromium-')}")
        driver = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)
        driver.set_script_timeout(20)
        driver.get(url.replace("127.0.0.1", "localhost"))  # either name of this machine is allowed
        wait_for_page(driver, 0)

        checked_running, workers_seen = [], set()
        while job.poll() is None:
            before_t = time.time()
            before = archive_progress(archive)
            page = wait_for_page(driver, before_t)
            after = archive_progress(archive)
            record = read_job(archive)
            for k in KEYS:
                assert before[k] <= page_counts(page)[k] <= after[k], (k, before, page, after)
            if page["state"] == "running" and record and record["status"] == "running":
                checked_running.append(page_counts(page))
                workers_seen.add(page["workers"])
            time.sleep(0.3)
        assert job.returncode == 1, Path(job_log.name).read_text()  # 1: an input failed
        assert checked_running, "the page never showed the job running"
        assert 2 in workers_seen, workers_seen  # the job's two workers, from its scheduler

        # Ended: the page shows what the archive holds, without having been reloaded.
        final = archive_progress(archive)
        page = wait_for_page(driver, time.time())
        deadline = time.monotonic() + 20
        while page["state"] != "finished" or page_counts(page) != {k: final[k] for k in KEYS}:
            assert time.monotonic() < deadline, (page, final)
            page = wait_for_page(driver, page["readAt"])
        assert final["exposures"] == page["exposures"] == 2
        assert final["catalogued"] == 2 and final["inputs_failed"] == page["inputsFailed"] == 1
        assert int(page["cells"]["ingest.failed"]) == 1
        # The class total counts kind-`cr` rows only (defects and unverified hits are shown apart).
        kinds = read_table(archive, "crs", columns=["kind"])["kind"]
        assert page["crs"] == int((kinds.isna() | (kinds == "cr")).sum())
        assert page["nFailures"] == 1 and len(page["failures"]) == 1
        failure = page["failures"][0]
        assert failure["exposure"] == "corrupt_frame.fits" and failure["path"].endswith("corrupt_frame.fits")
        assert failure["stage"] == "ingest" and failure["kind"] == "corrupt"
        assert "corrupt_frame.fits" in failure["message"] and failure["what to do"]

        out = Path(os.environ.get("CRSCALE_TEST_ARTEFACTS") or tmp_path)
        out.mkdir(parents=True, exist_ok=True)
        shot = out / "dashboard.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        print(f"screenshot: {shot}; {len(checked_running)} checks while running: {checked_running}")
    finally:
        if driver is not None:
            driver.quit()
        stop(job)
        stop(dash)
        dash_log.close()
        job_log.close()
