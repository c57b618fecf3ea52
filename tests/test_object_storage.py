"""Inputs and archives on object storage, against a real S3 server (moto) on localhost.

The server speaks the S3 HTTP API on 127.0.0.1 (a random port); s3fs, zarr's FsspecStore,
astropy's fsspec reader and pyarrow talk to it exactly as to AWS. Endpoint and credentials come
from the standard AWS environment variables, set before the cluster's workers start.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from conftest import DECAM, DECAM_DQ, FZ, GMOS, MEF, SAMPLE, copy_to
from crscale.cli import main
from crscale.engine.catalogue_stage import catalogue_archive
from crscale.engine.detect_stage import detect_archive
from crscale.engine.ingest import ingest
from crscale.evaluate.completeness import refresh_completeness
from crscale.io import storage
from crscale.io.archive import Archive
from crscale.io.catalogue_store import read_table
from crscale.io.errors import InputError
from crscale.io.inputs import expand_inputs

pytestmark = pytest.mark.timeout(600)

BUCKET = "survey"
RAW = [DECAM, DECAM_DQ, GMOS]
REMOTE_ARCHIVE = f"s3://{BUCKET}/reduced/survey.zarr"
PLANES = ("image", "dq", "prob", "mask", "clean")


def _truncated(folder: Path) -> Path:
    path = folder / "truncated.fits"
    raw = MEF.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on localhost holding the raw files, and a cluster whose workers reach it."""
    from distributed import Client, LocalCluster
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    # s3fs keeps one filesystem per set of options, and the endpoint is not one of them (it comes
    # from the environment): an instance left by another module's server would call a dead port.
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "crscale-test",
        "AWS_SECRET_ACCESS_KEY": "crscale-test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    cluster = client = None
    try:
        fs, _ = storage.filesystem(f"s3://{BUCKET}")
        fs.mkdir(BUCKET)
        local_raw = tmp_path_factory.mktemp("raw")
        for src in [*RAW, _truncated(local_raw)]:
            dst = src if src.parent == local_raw else copy_to(src, local_raw)
            fs.put_file(str(dst), f"{BUCKET}/raw/{dst.name}")
        fs.pipe_file(f"{BUCKET}/raw/README.txt", b"not FITS: skipped by the patterns")
        cluster = LocalCluster(
            n_workers=1, threads_per_worker=2, processes=True, host="127.0.0.1",
            dashboard_address=None, memory_limit="4GiB",
        )
        client = Client(cluster)
        yield {"env": env, "client": client, "fs": fs, "raw": local_raw}
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


def _leftovers(fs, group: str) -> list[str]:
    """Objects in the archive's staging/ or trash/ group other than the group's own metadata."""
    folder = f"{BUCKET}/reduced/survey.zarr/{group}"
    return [k for k in fs.find(folder) if k != f"{folder}/zarr.json"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    """The crscale command line, in this process (its imports are paid once)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(["crscale", *args], code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def runs(s3, tmp_path_factory):
    """The same raw files through ingest -> detect -> catalogue: from and into the bucket
    (`crscale run` on the command line), and on local disk (the Python API), on one cluster."""
    client = s3["client"]
    address = client.scheduler.address
    proc = _cli("run", f"s3://{BUCKET}/raw/", "--archive", REMOTE_ARCHIVE, "--scheduler", address,
                "--no-progress")
    local = tmp_path_factory.mktemp("local") / "survey.zarr"
    report = ingest([str(s3["raw"])], local, client=client, progress=False, echo=None)
    assert [r.status for r in report.results].count("done") == 2
    assert detect_archive(local, client=client, progress=False, echo=None).ok
    # With the completeness hook that `crscale run` passes, so both catalogues are made alike.
    assert catalogue_archive(local, client=client, progress=False, echo=None,
                             completeness=refresh_completeness).ok
    return {"proc": proc, "remote": REMOTE_ARCHIVE, "local": local, "address": address}


def test_run_with_inputs_and_archive_in_a_bucket_equals_a_local_run(runs, s3):
    proc = runs["proc"]
    # The truncated file fails, is named by its URL, and does not stop the others.
    assert proc.returncode == 1, proc.stderr
    assert f"s3://{BUCKET}/raw/truncated.fits" in proc.stdout + proc.stderr
    remote, local = Archive(runs["remote"]), Archive(runs["local"])
    assert remote.exposure_ids() == local.exposure_ids() == ["c4d_170316_062107_ooi_z_ls9.N2", "gmos"]
    for eid in local.exposure_ids():
        r_attrs, l_attrs = remote.exposure_attrs(eid), local.exposure_attrs(eid)
        assert {k: v["state"] for k, v in r_attrs["status"].items()} == {
            "ingest": "done", "detect": "done", "catalogue": "done"
        }
        # The SHA-256 of the bytes in the bucket is that of the local file.
        local_path = Path(l_attrs["source"]["path"])
        assert r_attrs["source"]["sha256"] == hashlib.sha256(local_path.read_bytes()).hexdigest()
        assert r_attrs["source"]["sha256"] == l_attrs["source"]["sha256"]
        assert r_attrs["source"]["path"] == f"s3://{BUCKET}/raw/{local_path.name}"
        assert r_attrs["source"]["size"] == local_path.stat().st_size
        if eid.startswith("c4d"):  # the DQ companion was found beside the image in the bucket
            assert r_attrs["source"]["dq_path"] == f"s3://{BUCKET}/raw/{DECAM_DQ.name}"
        assert remote.detectors(eid) == local.detectors(eid)
        for det in local.detectors(eid):
            r_ds, l_ds = remote.open_detector(eid, det), local.open_detector(eid, det)
            assert set(r_ds.data_vars) == set(l_ds.data_vars)
            assert {"image", "prob", "mask", "clean"} <= set(r_ds.data_vars)
            for name in PLANES:
                if name in l_ds:
                    a, b = r_ds[name].values, l_ds[name].values
                    assert a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True), (eid, det, name)
    assert sum(read_table(runs["local"], "exposures")["n_cr"]) > 0
    # The catalogue files are byte for byte those of the local run.
    fs = s3["fs"]
    for table in ("crs", "exposures"):
        names = sorted(p.name for p in (runs["local"] / "catalogue" / table).glob("*.parquet"))
        assert names and names == sorted(
            Path(k).name for k in fs.find(f"{BUCKET}/reduced/survey.zarr/catalogue/{table}")
        )
        for name in names:
            remote_bytes = fs.cat_file(f"{BUCKET}/reduced/survey.zarr/catalogue/{table}/{name}")
            assert remote_bytes == (runs["local"] / "catalogue" / table / name).read_bytes()
    # The job record went to the same store.
    record = json.loads(fs.cat_file(f"{BUCKET}/reduced/survey.zarr/jobs/current.json"))
    assert record["status"] == "finished" and record["scheduler"] == runs["address"]
    # Nothing was left in staging/ or trash/, and the failure is recorded in the archive.
    assert _leftovers(fs, "staging") == [] and _leftovers(fs, "trash") == []
    assert [f["path"] for f in remote.failures()] == [f"s3://{BUCKET}/raw/truncated.fits"]


def test_info_stats_export_on_the_bucket_archive(runs, tmp_path):
    info = _cli("info", runs["remote"], "--json")
    assert info.returncode == 0, info.stderr
    summary = json.loads(info.stdout)
    assert summary["path"] == runs["remote"] and summary["n_exposures"] == 2 and summary["disk_bytes"] > 0
    one = _cli("info", runs["remote"], "-e", "gmos")
    assert one.returncode == 0 and "gmos" in one.stdout, one.stderr
    stats = _cli("stats", runs["remote"], "--scheduler", runs["address"], "--no-plots",
                 "--json", str(tmp_path / "stats.json"))
    assert stats.returncode == 0, stats.stderr
    local_stats = _cli("stats", str(runs["local"]), "--scheduler", runs["address"], "--no-plots",
                       "--json", str(tmp_path / "local.json"))
    assert local_stats.returncode == 0, local_stats.stderr
    got, want = (json.loads((tmp_path / n).read_text()) for n in ("stats.json", "local.json"))
    got.pop("archive"), want.pop("archive")
    assert got == want and got["n_cr"] > 0
    out = tmp_path / "crs.parquet"
    export = _cli("export", runs["remote"], str(out))
    assert export.returncode == 0, export.stderr
    import pyarrow.parquet as pq

    assert pq.read_table(out).to_pandas().equals(read_table(runs["local"], "crs"))


def test_write_fits_from_the_bucket_archive_equals_a_local_run(runs, tmp_path):
    """write-fits reads the archive and the source files (the DECam image and its ``ood``
    companion included) from the bucket, and writes the same files as from the local run."""
    address = runs["address"]
    remote = _cli("write-fits", runs["remote"], str(tmp_path / "remote"), "--prob", "--scheduler", address,
                  "--no-progress")
    assert remote.returncode == 0, remote.stdout + remote.stderr
    assert "2 exposure(s) written, 0 skipped, 0 failed; 3 file(s)" in remote.stdout, remote.stdout
    local = _cli("write-fits", str(runs["local"]), str(tmp_path / "local"), "--prob", "--scheduler", address,
                 "--no-progress")
    assert local.returncode == 0, local.stdout + local.stderr
    names = sorted(p.name for p in (tmp_path / "local").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "remote").iterdir())
    assert names == sorted([DECAM.name, DECAM_DQ.name, GMOS.name])
    # The same HDUs, headers and pixels; only the digest of the inputs differs, since it holds
    # the detection time of each run (and the checksums that cover it).
    volatile = {"CRSKEY", "CHECKSUM", "DATASUM"}
    for name in names:
        with fits.open(tmp_path / "remote" / name, disable_image_compression=True) as r, \
                fits.open(tmp_path / "local" / name, disable_image_compression=True) as lo:
            assert [(h.name, h.ver) for h in r] == [(h.name, h.ver) for h in lo], name
            for hr, hl in zip(r, lo, strict=True):
                cards_r = [c.image for c in hr.header.cards if c.keyword not in volatile]
                assert cards_r == [c.image for c in hl.header.cards if c.keyword not in volatile], name
                assert (hr.data is None) == (hl.data is None), name
                if hr.data is not None:
                    assert np.array_equal(np.asarray(hr.data), np.asarray(hl.data)), (name, hr.name)
    # Up to date on a re-run: the source's SHA-256 is read from the bucket again, nothing rewritten.
    again = _cli("write-fits", runs["remote"], str(tmp_path / "remote"), "--prob", "--scheduler", address,
                 "--no-progress")
    assert again.returncode == 0 and "0 exposure(s) written, 2 skipped" in again.stdout, again.stdout


def test_verify_and_defects_on_the_bucket_archive(runs):
    verify = _cli("verify", runs["remote"])
    assert verify.returncode == 0, verify.stdout + verify.stderr
    remote, local = (json.loads(_cli("verify", a, "--json", "--no-mark").stdout)["results"]
                     for a in (runs["remote"], str(runs["local"])))
    assert [r["ok"] for r in remote] == [True, True]
    # Every array and chunk checked, as many as on disk (the sources' paths differ).
    assert [(r["exposure_id"], r["arrays"], r["chunks"]) for r in remote] == [
        (r["exposure_id"], r["arrays"], r["chunks"]) for r in local]
    defects = _cli("defects", runs["remote"], "--scheduler", runs["address"], "--no-progress")
    assert defects.returncode == 0, defects.stdout + defects.stderr
    local = _cli("defects", str(runs["local"]), "--scheduler", runs["address"], "--no-progress")
    def shown(out: str, archive: str) -> str:
        return re.sub(r"\d+\.\d s\b", "T s", out.replace(archive, "A"))

    assert shown(defects.stdout, runs["remote"]) == shown(local.stdout, str(runs["local"]))
    assert ", 2 current, 0 failed" in defects.stdout  # `crscale run` made the maps, in the bucket
    from crscale.io import defect_store

    r_arch, l_arch = Archive(runs["remote"]), Archive(runs["local"])
    keys = defect_store.defect_keys(l_arch)
    assert len(keys) == 2 and defect_store.defect_keys(r_arch) == keys
    for key in keys:
        r_attrs, l_attrs = (defect_store.read_defect_attrs(a, key) for a in (r_arch, l_arch))
        assert r_attrs["status"] == l_attrs["status"] == "unverified"  # one exposure: too few, and said
        for name in ("counts", "codes"):
            assert np.array_equal(defect_store.read_array(r_arch, key, name),
                                  defect_store.read_array(l_arch, key, name)), (key, name)


def test_url_inputs_globs_prefixes_and_missing(s3):
    specs, problems = expand_inputs([f"s3://{BUCKET}/raw/*_ooi_*.fits"])
    assert problems == [] and [(s.path, s.dq_path) for s in specs] == [
        (f"s3://{BUCKET}/raw/{DECAM.name}", f"s3://{BUCKET}/raw/{DECAM_DQ.name}")
    ]
    specs, problems = expand_inputs([f"s3://{BUCKET}/raw/"])
    assert sorted(Path(s.path).name for s in specs) == sorted([DECAM.name, GMOS.name, "truncated.fits"])
    specs, problems = expand_inputs([f"s3://{BUCKET}/raw/nothing.fits", f"s3://{BUCKET}/raw/*.fz",
                                     f"s3://{BUCKET}/empty/"])
    assert specs == []
    assert [(p.path, p.problem) for p in problems] == [
        (f"s3://{BUCKET}/raw/nothing.fits", "file does not exist"),
        (f"s3://{BUCKET}/raw/*.fz", "pattern matched no file"),
        (f"s3://{BUCKET}/empty/", "file does not exist"),
    ]


def test_storage_options_from_dask_config(runs, s3, monkeypatch):
    """Without the AWS variables, crscale.storage.s3 in dask's config names endpoint and keys."""
    import dask

    for key in s3["env"]:
        if key != "AWS_DEFAULT_REGION":
            monkeypatch.delenv(key)
    options = {"endpoint_url": s3["env"]["AWS_ENDPOINT_URL"], "key": "crscale-test", "secret": "crscale-test"}
    client = s3["client"]
    names = [k for k in s3["env"] if k != "AWS_DEFAULT_REGION"]
    # The workers lose the variables too: what they know of the store must come from the client.
    saved = client.run(lambda: {k: os.environ.pop(k) for k in names})
    try:
        with dask.config.set({"crscale.storage.s3": options}):
            assert storage.storage_options(runs["remote"])["endpoint_url"] == options["endpoint_url"]
            arch = Archive(runs["remote"])
            assert arch.exposure_ids() == ["c4d_170316_062107_ooi_z_ls9.N2", "gmos"]
            assert len(read_table(runs["remote"], "crs")) == len(read_table(runs["local"], "crs"))
            # A stage on the workers: they read the masks and write Parquet with the shipped settings.
            report = catalogue_archive(runs["remote"], client=client, force=True, progress=False,
                                       echo=None, exposures=["c4d_170316_062107_ooi_z_ls9.N2"])
            assert report.ok and report.counts()["done"] == 1, report.summary()
        seen = client.run(lambda: dict(dask.config.get("crscale.storage.s3")))
        assert all(v["endpoint_url"] == options["endpoint_url"] for v in seen.values())
    finally:
        client.run(lambda: os.environ.update(next(iter(saved.values()))))


def test_forced_reingest_and_staging_leftovers_on_the_bucket(runs, s3):
    fs, address = s3["fs"], runs["address"]
    base = f"{BUCKET}/reduced/survey.zarr"
    before = Archive(runs["remote"]).open_detector("gmos", "SCI")["image"].values
    forced = _cli("ingest", f"s3://{BUCKET}/raw/gmos.fits", "--archive", runs["remote"], "--force",
                  "--scheduler", address, "--no-progress")
    assert forced.returncode == 0 and "1 ingested" in forced.stdout, forced.stdout + forced.stderr
    arch = Archive(runs["remote"], mode="a")
    assert "gmos" in arch.exposure_ids() and arch.status("gmos")["ingest"]["state"] == "done"
    assert np.array_equal(arch.open_detector("gmos", "SCI")["image"].values, before, equal_nan=True)
    # A re-ingest replaces the whole group: no array of the old detect stage survives.
    assert "prob" not in arch.open_detector("gmos", "SCI")
    assert _leftovers(fs, "staging") == [] and _leftovers(fs, "trash") == []
    # A write killed mid-way leaves objects in staging/ without a group's zarr.json at the top:
    # no exposure appears, and the next writer removes them.
    fs.pipe_file(f"{base}/staging/gmos-deadbeef0000/SCI/zarr.json", b"{}")
    assert arch.exposure_ids() == ["c4d_170316_062107_ooi_z_ls9.N2", "gmos"]
    assert arch.clean_staging() == 1 and _leftovers(fs, "staging") == []
    # A forced re-ingest killed between its two moves left the old copy only in trash/: it goes back.
    storage.replace(arch.path / "exposures" / "gmos", arch.path / "trash" / "gmos-0123456789ab")
    assert "gmos" not in arch.exposure_ids()
    assert arch.clean_staging() == 1 and "gmos" in arch.exposure_ids()
    assert np.array_equal(arch.open_detector("gmos", "SCI")["image"].values, before, equal_nan=True)
    # detect and catalogue, one command each, redo the re-ingested exposure as the local run did.
    for stage in ("detect", "catalogue"):
        res = _cli(stage, runs["remote"], "-e", "gmos", "--scheduler", address, "--no-progress")
        assert res.returncode == 0, res.stdout + res.stderr
    remote_ds = arch.open_detector("gmos", "SCI")
    local_ds = Archive(runs["local"]).open_detector("gmos", "SCI")
    for name in ("prob", "mask", "clean"):
        assert np.array_equal(remote_ds[name].values, local_ds[name].values, equal_nan=True), name
    for table in ("crs", "exposures"):
        assert fs.cat_file(f"{base}/catalogue/{table}/gmos.parquet") == (
            runs["local"] / "catalogue" / table / "gmos.parquet"
        ).read_bytes()


def test_remote_fz_gz_and_multi_extension_files_read_as_local(s3):
    from crscale.io.fits_reader import read_exposure, sha256_file

    fs = s3["fs"]
    for path in (FZ, MEF, SAMPLE / "darks" / "ntt_susi_bias_nttexample.fits.gz"):
        fs.put_file(str(path), f"{BUCKET}/more/{path.name}")
        remote, local = read_exposure(f"s3://{BUCKET}/more/{path.name}"), read_exposure(path)
        assert remote.sha256 == local.sha256 == sha256_file(path) == sha256_file(
            f"s3://{BUCKET}/more/{path.name}"
        )
        assert remote.size == local.size and len(remote.detectors) == len(local.detectors)
        for r, loc in zip(remote.detectors, local.detectors, strict=True):
            assert r.name == loc.name and r.header == loc.header
            assert np.array_equal(r.image, loc.image, equal_nan=True)
            assert (r.dq is None) == (loc.dq is None)
            assert r.dq is None or np.array_equal(r.dq, loc.dq)
    fs.pipe_file(f"{BUCKET}/more/cut.fits", MEF.read_bytes()[:-100_000])
    with pytest.raises(InputError, match=f"s3://{BUCKET}/more/cut.fits: .*FITS"):
        read_exposure(f"s3://{BUCKET}/more/cut.fits")


def test_inputs_over_http_read_as_local():
    """https:// (here http:// on localhost) inputs: found, companions included, read as local files."""
    import functools
    import http.server
    import threading

    from conftest import IMAGES
    from crscale.io.fits_reader import read_exposure, sha256_file

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request, client_address):
            pass  # fsspec closes connections once it has the bytes it asked for

    server = Server(("127.0.0.1", 0), functools.partial(Quiet, directory=str(IMAGES)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        specs, problems = expand_inputs([f"{base}/{DECAM.name}", f"{base}/nothing.fits"])
        assert [(s.path, s.dq_path) for s in specs] == [(f"{base}/{DECAM.name}", f"{base}/{DECAM_DQ.name}")]
        assert [(p.path, p.problem) for p in problems] == [(f"{base}/nothing.fits", "file does not exist")]
        for path, dq in ((FZ, None), (DECAM, DECAM_DQ)):
            remote = read_exposure(f"{base}/{path.name}", dq_path=dq and f"{base}/{dq.name}")
            local = read_exposure(path, dq_path=dq)
            assert remote.sha256 == local.sha256 == sha256_file(path)
            for r, loc in zip(remote.detectors, local.detectors, strict=True):
                assert np.array_equal(r.image, loc.image, equal_nan=True) and r.header == loc.header
                assert (r.dq is None and loc.dq is None) or np.array_equal(r.dq, loc.dq)
    finally:
        server.shutdown()
        server.server_close()
