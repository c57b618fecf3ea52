"""The dashboard's incremental readers on real archives on disk (no browser: see test_dashboard_browser)."""

from __future__ import annotations

import math
import socket
import urllib.request

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_catalog_stats import DOT, SPOT, TRACK, WORM, write_exposure

from conftest import EMMI, GMOS, SAAO
from crscale.catalogue.stats import exposure_rates
from crscale.cli import main
from crscale.engine.monitor import archive_progress
from crscale.io import Archive, read_exposure
from crscale.io.catalogue_store import read_table, table_file
from crscale.monitor import DashboardState, dashboard
from crscale.monitor.app import DashboardDocument, failures_html, progress_html
from crscale.monitor.catalogue_reader import CatalogueFollower
from crscale.monitor.scheduler_probe import SchedulerProbe, worker_use
from crscale.monitor.tracker import ArchiveTracker

PROGRESS = ("exposures", "ingested", "detected", "catalogued", "running", "failed", "inputs_failed")


@pytest.fixture
def archive(tmp_path):
    path = tmp_path / "a.zarr"
    arch = Archive(path, mode="a")
    arch.write_exposure(read_exposure(GMOS))
    arch.write_exposure(read_exposure(EMMI))
    return path


def test_tracker_reads_only_what_changed(archive) -> None:
    arch = Archive(archive, mode="a")
    tracker = ArchiveTracker(archive, settled_every=4)
    first = tracker.update()
    assert sorted(first.changed) == ["emmi_image_sum3", "gmos"] and first.reads == 2
    assert tracker.counts["ingest"]["done"] == 2
    again = tracker.update()
    assert again.changed == [] and again.reads == 0  # nothing changed: only stat calls

    arch.set_status("gmos", "detect", "running")
    step = tracker.update()
    assert step.changed == ["gmos"] and step.reads == 1
    assert tracker.counts["detect"]["running"] == 1 and tracker.any_stage["running"] == 1
    arch.set_status("gmos", "detect", "done")
    tracker.update()
    ny, nx = arch.open_detector("gmos", "SCI")["image"].shape
    assert tracker.exposures["gmos"].pixels == ny * nx
    assert tracker.counts["detect"] == {"done": 1, "none": 1, "running": 0}

    arch.record_exposure_failure("emmi_image_sum3", "detect", "exposure 'emmi_image_sum3': boom", "error")
    step = tracker.update()
    assert step.changed == ["emmi_image_sum3"] and step.failures_changed
    (record,) = tracker.failures.values()
    assert record["exposure_id"] == "emmi_image_sum3" and record["kind"] == "error"

    # A settled exposure (here: failed) is stat'ed only on every settled_every-th update.
    stats = [tracker.update().stat_calls for _ in range(4)]
    assert min(stats) < max(stats)

    arch.write_exposure(read_exposure(SAAO))  # a new exposure: the listing changed
    step = tracker.update()
    assert "a8280271" in step.changed and len(tracker.exposures) == 3
    view = DashboardState(archive, scheduler=False).tick()
    progress = archive_progress(archive)
    assert view.counts() == {k: progress[k] for k in PROGRESS}


def test_an_archive_that_does_not_exist_yet_reads_as_empty(tmp_path) -> None:
    view = DashboardState(tmp_path / "later.zarr", scheduler=False).tick()
    assert view.state == "none" and view.exposures == 0 and view.n_failures == 0
    assert all(s.done == 0 for s in view.stages)
    assert 'data-col="done">0<' in progress_html(view)


def test_failed_inputs_are_listed_with_what_to_do(archive, tmp_path) -> None:
    arch = Archive(archive, mode="a")
    bad = str(tmp_path / "corrupt.fits")
    arch.record_failure(bad, f"{bad}: not a readable FITS file", kind="corrupt")
    arch.record_failure(str(GMOS), "same bytes as gmos", kind="duplicate", duplicate_of="gmos")
    view = DashboardState(archive, scheduler=False).tick()
    assert view.inputs_failed == 1 and view.duplicates == 1 and view.n_failures == 1
    (row,) = view.failures
    assert (row["exposure"], row["stage"], row["kind"]) == ("corrupt.fits", "ingest", "corrupt")
    assert "fetch it again" in row["advice"]
    text = failures_html(view)
    assert "corrupt.fits" in text and "not a readable FITS file" in text
    assert view.stages[0].failed == 1 and view.stages[0].total == 3
    assert archive_progress(archive)["inputs_failed"] == view.inputs_failed


def test_catalogue_follower_matches_the_catalogue_and_counts_kinds(tmp_path) -> None:
    path = tmp_path / "c.zarr"
    write_exposure(path, "d1", {"N1": [DOT, DOT, SPOT, TRACK], "N2": [WORM, SPOT]}, "DECam",
                   area=10.0, efft=100.0, date="2020-01-01T00:00:00")
    write_exposure(path, "h1", {"WFC1": [DOT, TRACK]}, "ACS", area=2.0, efft=50.0, date="2021-01-01T00:00:00")
    # d1's CR table as written before CRs were told from defects (no kind column) ...
    crs_d1 = pq.read_table(table_file(path, "crs", "d1"))
    if "kind" in crs_d1.column_names:
        pq.write_table(crs_d1.drop_columns(["kind"]), table_file(path, "crs", "d1"))
    # ... and h1's with one: one CR and one defect.
    crs_h1 = pq.read_table(table_file(path, "crs", "h1"))
    kinds = pa.array(["cr", "defect"])
    crs_h1 = (crs_h1.set_column(crs_h1.column_names.index("kind"), "kind", kinds)
              if "kind" in crs_h1.column_names else crs_h1.append_column("kind", kinds))
    pq.write_table(crs_h1, table_file(path, "crs", "h1"))

    follower = CatalogueFollower(path)
    assert follower.update(["d1"]) == ["d1"]
    assert not follower.has_kinds and follower.rates["d1"].kinds is None
    assert follower.update(["h1"]) == ["h1"]
    assert follower.has_kinds and dict(follower.kinds) == {"cr": 1, "defect": 1}
    expected = exposure_rates(path).set_index("exposure")
    for eid, rate in follower.rates.items():
        assert rate.rate == pytest.approx(expected.loc[eid, "rate"])
        assert rate.rate_err == pytest.approx(expected.loc[eid, "rate_err"])
        assert rate.n_cr == expected.loc[eid, "n_cr"] and rate.instrument == expected.loc[eid, "instrument"]
    crs = read_table(path, "crs")
    assert dict(follower.classes) == crs["morphology"].value_counts().to_dict()
    assert follower.order == ["d1", "h1"]

    generation = follower.generation
    follower.update(["h1"])  # h1 catalogued again: its rows replaced, not added twice
    assert dict(follower.kinds) == {"cr": 1, "defect": 1} and follower.generation == generation + 1
    follower.update([], uncatalogued=["d1"])  # d1 detected again: its rows are gone
    assert list(follower.rates) == ["h1"] and follower.classes["worm"] == 0
    assert sum(follower.classes.values()) == 2


def test_rates_plot_streams_new_exposures_only(tmp_path) -> None:
    path = tmp_path / "c.zarr"
    write_exposure(path, "d1", {"N1": [DOT, SPOT]}, "DECam", area=10.0, efft=100.0, date=None)
    state = DashboardState(path, scheduler=False)
    state.catalogue.update(["d1"])
    page = DashboardDocument(lambda: view)
    view = state.tick()
    page.refresh()
    assert page.rates_src.data["exposure"] == ["d1"]
    write_exposure(path, "d2", {"N1": [TRACK]}, "DECam", area=10.0, efft=100.0, date=None)
    state.catalogue.update(["d2"])
    view = state.tick()
    page.refresh()
    assert page.rates_src.data["exposure"] == ["d1", "d2"]
    assert page.rates_src.data["rate"][1] == pytest.approx(1 / 1000)
    assert math.isnan(page.rates_src.data["time"][1])  # no date: not drawn, still listed


def test_dashboard_serves_its_page_on_localhost(archive) -> None:
    server = dashboard(archive, every=0.5, scheduler=False)
    try:
        assert server.url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(server.url, timeout=30) as response:
            assert response.status == 200 and b"bokeh" in response.read().lower()
        assert server.url in server._repr_html_()
    finally:
        server.stop()


def test_scheduler_probe_reports_workers_and_gives_up_on_a_dead_address(client) -> None:
    probe = SchedulerProbe(timeout=2, retry_s=60)
    try:
        workers, tasks = probe.poll(client.scheduler.address, running=True)
        assert probe.error is None and len(workers) == len(client.scheduler_info()["workers"])
        assert all(w.nthreads >= 1 and w.memory_limit_gib > 0 for w in workers)
        assert isinstance(tasks, dict)
        assert probe.poll(client.scheduler.address, running=False) == ([], {})  # an ended job
        assert probe.client is None and probe.error == "the job is not running"
    finally:
        probe.close()
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    assert probe.poll(dead, running=True) == ([], {}) and "not reachable" in probe.error
    retry_at = probe._retry_at
    assert probe.poll(dead, running=True) == ([], {})
    assert probe._retry_at == retry_at  # not tried again before retry_s (a new try moves it on)


def test_gpu_use_is_read_in_both_of_distributeds_shapes() -> None:
    # What a worker with NVML reports (distributed.system_monitor and distributed.worker's metric):
    # no GPU is on these machines, so the two shapes are written out here.
    gib = 2**30
    flat = {"nthreads": 1, "memory_limit": 8 * gib, "gpu": {"memory-total": 80 * gib, "name": "H100"},
            "metrics": {"cpu": 50.0, "memory": gib, "task_counts": {"executing": 1},
                        "gpu_utilization": 93, "gpu_memory_used": 20 * gib}}
    nested = {"nthreads": 1, "memory_limit": 8 * gib, "gpu": {"memory-total": 40 * gib},
              "metrics": {"gpu": {"utilization": 50, "memory-used": 10 * gib}}}
    a, b, c = worker_use({"workers": {"tcp://a": flat, "tcp://b": nested, "tcp://c": {"nthreads": 2}}})
    assert (a.gpu_utilization, a.gpu_memory_gib, a.gpu_memory_total_gib, a.executing) == (93, 20, 80, 1)
    assert (b.gpu_utilization, b.gpu_memory_gib, b.gpu_memory_total_gib) == (50, 10, 40)
    assert c.gpu_utilization is None and c.nthreads == 2  # a CPU worker


def test_cli_refuses_bad_settings_and_a_port_in_use(capsys, tmp_path) -> None:
    assert main(["dashboard", "x.zarr", "--every", "0"]) == 2
    assert "--every" in capsys.readouterr().err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["dashboard", str(tmp_path / "x.zarr"), "--port", str(port), "--no-scheduler"]) == 2
    assert f"cannot serve the dashboard on 127.0.0.1:{port}" in capsys.readouterr().err
    assert main(["dashboard", "s3://bucket/survey.zarr", "--no-scheduler"]) == 2  # no stat on a bucket
    assert "local or mounted archive" in capsys.readouterr().err
