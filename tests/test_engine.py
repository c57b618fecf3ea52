"""The distributed detection engine, on real clusters and real stores, against crscale.detect()."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

import crscale
from conftest import DECAM, DECAM_DQ, EMMI, GMOS, MEF, SAAO
from crscale.engine.blocks import axis_chunks, block_chunks, engine_halo
from crscale.engine.detect_stage import detect_archive
from crscale.engine.ingest import ingest
from crscale.io import integrity
from crscale.io.archive import FORMAT_VERSION, Archive
from crscale.io.dq import convention_for
from crscale.io.inputs import InputSpec

pytestmark = pytest.mark.timeout(600)

# Zarr chunks smaller than the halo (64 px), with odd sizes, so blocks cut CRs everywhere.
ODD_CHUNKS = [61, 53]
# Blocks of 2x2 such chunks: many blocks per detector, block edges through CRs.
SMALL_BLOCK = [122, 106]


def _saao_with_itl_crs(folder: Path) -> Path:
    """The real SAAO frame with 300 real LSST ITL CR footprints added (in its ADU, via its gain)."""
    from astropy.io import fits

    from crscale.train.footprints import load_itl_footprints
    from crscale.train.inject import inject_crs

    with fits.open(SAAO) as hdul:
        header = hdul[0].header.copy()
        data = hdul[0].data.astype(np.float32)
    gain = float(header["GAIN"])
    res = inject_crs(data * gain, load_itl_footprints(), np.random.default_rng(4), n=300)
    for key in ("BZERO", "BSCALE"):
        header.remove(key, ignore_missing=True)
    path = folder / "saao_itl_crs.fits"
    fits.PrimaryHDU((res.image / gain).astype(np.float32), header).writeto(path)
    return path


def _inputs(folder: Path) -> list:
    return [InputSpec(str(GMOS)), InputSpec(str(DECAM), str(DECAM_DQ)), InputSpec(str(SAAO)),
            InputSpec(str(EMMI)), InputSpec(str(_saao_with_itl_crs(folder)))]


def _outputs(archive: Path) -> dict[tuple[str, str], dict[str, np.ndarray]]:
    arch = Archive(archive)
    out = {}
    for eid in arch.exposure_ids():
        for det in arch.detectors(eid):
            group = arch.root[f"exposures/{eid}/{det}"]
            out[eid, det] = {k: group[k][:] for k in ("prob", "mask", "clean") if k in group}
    return out


def _assert_identical(a: Path, b: Path) -> None:
    oa, ob = _outputs(a), _outputs(b)
    assert oa.keys() == ob.keys() and oa
    for key in oa:
        assert oa[key].keys() == ob[key].keys() == {"prob", "mask", "clean"}, key
        for name in oa[key]:
            np.testing.assert_array_equal(oa[key][name], ob[key][name], err_msg=f"{key} {name}")


@pytest.fixture(scope="module")
def ingested(client, tmp_path_factory) -> Path:
    """Real exposures ingested with odd, small Zarr chunks (no detection yet)."""
    folder = tmp_path_factory.mktemp("engine")
    path = folder / "ingested.zarr"
    report = ingest(_inputs(folder), path, client=client, chunks=ODD_CHUNKS, progress=False, echo=None)
    assert report.ok, report.summary()
    return path


@pytest.fixture(scope="module")
def reference(client, ingested, tmp_path_factory) -> Path:
    """The ingested archive, detected once by the engine (float32, small blocks)."""
    path = tmp_path_factory.mktemp("engine") / "reference.zarr"
    shutil.copytree(ingested, path)
    report = detect_archive(path, client=client, precision="float32", block=SMALL_BLOCK,
                            progress=False, echo=None)
    assert report.ok and report.counts()["done"] == len(Archive(path).exposure_ids()), report.summary()
    return path


def test_block_geometry_is_aligned_and_never_thinner_than_the_halo():
    for length, unit, target, minimum in [(1000, 61, 122, 64), (1010, 50, 200, 64), (100, 128, 2048, 64),
                                          (4096, 1024, 2048, 64), (130, 61, 122, 64), (5, 3, 3, 64)]:
        sizes = axis_chunks(length, unit, target, minimum)
        assert sum(sizes) == length
        edges = np.cumsum(sizes)[:-1]
        assert all(e % unit == 0 for e in edges), (length, unit, sizes)  # whole chunks: no shared chunk
        assert len(sizes) == 1 or min(sizes) >= minimum, sizes  # map_overlap needs blocks >= halo
    assert block_chunks((4096, 3000), (1024, 1024), (2048, 2048), 64) == ((2048, 2048), (2048, 952))


def test_engine_equals_whole_image_detect_on_real_images(reference):
    """prob within 1e-5 of crscale.detect() on the whole image, same mask, same cleaned image."""
    arch = Archive(reference)
    cut_crs = 0
    for eid in arch.exposure_ids():
        assert arch.status(eid)["detect"]["state"] == "done"
        for det in arch.detectors(eid):
            group = arch.root[f"exposures/{eid}/{det}"]
            attrs = dict(group.attrs)
            image = group["image"][:]
            # The pipeline's DQ means what its convention says (a prior CR flag is not bad).
            conv = convention_for(arch.exposure_attrs(eid), detector_attrs=attrs)
            dq = conv.excluded(group["dq"][:]) if "dq" in group else None
            whole = crscale.detect(image, gain=attrs["gain"], readnoise=attrs["readnoise"], dq=dq,
                                   saturation=attrs["saturation"], precision="float32")
            prob, mask, clean = group["prob"][:], group["mask"][:].astype(bool), group["clean"][:]
            np.testing.assert_allclose(prob, whole.prob, atol=1e-5, rtol=0, err_msg=f"{eid}/{det}")
            near = np.abs(whole.prob - whole.threshold) < 1e-5
            assert not ((mask != whole.mask) & ~near).any(), f"{eid}/{det}"
            np.testing.assert_allclose(clean, whole.clean, rtol=1e-5, atol=1e-5 * whole.stats.noise,
                                       equal_nan=True, err_msg=f"{eid}/{det}")
            assert attrs["detect"]["n_cr_pixels"] == int(mask.sum())
            assert attrs["detect"]["stats"]["sky"] == pytest.approx(whole.stats.sky, rel=1e-12)
            # The test is only meaningful if block edges run through CRs.
            chunks = attrs["detect"]["blocks"]
            labels, _ = ndimage.label(mask, np.ones((3, 3)))
            for axis, sizes in enumerate(chunks):
                for edge in np.cumsum(sizes)[:-1]:
                    a = labels.take(edge - 1, axis=axis)
                    b = labels.take(edge, axis=axis)
                    cut_crs += len(set(a[(a > 0) & (a == b)]))
    assert cut_crs >= 10, f"only {cut_crs} CRs cross a block edge"


def test_a_rerun_skips_and_force_redoes_with_identical_output(client, reference, tmp_path):
    copy = tmp_path / "copy.zarr"
    shutil.copytree(reference, copy)
    before = {e: Archive(copy).status(e)["detect"]["time"] for e in Archive(copy).exposure_ids()}
    Archive(copy, mode="a").root.attrs["crscale_format"] = "1.0"  # as written before the detect stage
    report = detect_archive(copy, client=client, precision="float32", block=SMALL_BLOCK, progress=False,
                            echo=None)
    assert report.counts() == {"done": 0, "skipped": len(before), "failed": 0}
    gmos = next(e for e in before if e.startswith("gmos"))
    report = detect_archive(copy, client=client, precision="float32", block=SMALL_BLOCK, progress=False,
                            echo=None, force=True, exposures=[gmos])
    assert report.counts() == {"done": 1, "skipped": 0, "failed": 0}
    assert Archive(copy).format_version == FORMAT_VERSION  # raised to this crscale's format before writing
    _assert_identical(copy, reference)
    # The block shape does not change the result (other blocks, other cuts).
    report = detect_archive(copy, client=client, precision="float32", block=[61 * 5, 53 * 3],
                            progress=False, echo=None, force=True)
    assert report.ok
    for key, planes in _outputs(copy).items():
        ref = _outputs(reference)[key]
        np.testing.assert_allclose(planes["prob"], ref["prob"], atol=1e-5, rtol=0, err_msg=str(key))


def test_sharded_archive_loses_nothing(client, tmp_path):
    """Blocks are whole shards, so concurrent writes never share a shard: every pixel arrives."""
    import dask

    path = tmp_path / "sharded.zarr"
    with dask.config.set({"crscale.archive.shards": [128, 128]}):
        report = ingest([str(MEF)], path, client=client, chunks=[64, 64], progress=False, echo=None)
    assert report.ok
    # Settings come from dask's config under `crscale:` (a site file, env vars, or this).
    with dask.config.set({"crscale.detect.block": [100, 100], "crscale.detect.prob_dtype": "float16"}):
        det = detect_archive(path, client=client, progress=False, echo=None)
    assert det.ok and det.settings["block"] == [100, 100]
    arch = Archive(path)
    eid = arch.exposure_ids()[0]
    for name in arch.detectors(eid):
        group = arch.root[f"exposures/{eid}/{name}"]
        assert group["prob"].shards == group["image"].shards == (128, 128)
        assert group["prob"].dtype == np.float16
        blocks = group.attrs["detect"]["blocks"]
        assert all(s % 128 == 0 for sizes in blocks for s in sizes[:-1])
        prob = group["prob"][:]
        clean = group["clean"][:]
        image = group["image"][:]
        assert np.isfinite(prob).all()  # the fill value (NaN) would show a chunk never written
        assert group["mask"][:].sum() == group.attrs["detect"]["n_cr_pixels"] > 0
        # Outside the CR mask grown by the 1 px inpainting margin, clean is the image itself.
        unmasked = ~ndimage.binary_dilation(group["mask"][:] > 0, np.ones((3, 3), bool))
        np.testing.assert_array_equal(clean[unmasked], image[unmasked].astype(np.float32))


def test_corrupt_exposure_is_recorded_and_the_rest_complete(client, ingested, tmp_path):
    path = tmp_path / "corrupt.zarr"
    shutil.copytree(ingested, path)
    arch = Archive(path)
    ids = arch.exposure_ids()
    saao = next(e for e in ids if e.startswith("a8280271"))
    det = arch.detectors(saao)[0]
    chunk = path / "exposures" / saao / det / "image" / "c" / "2" / "3"
    assert chunk.is_file()
    chunk.write_bytes(b"\x00garbage, not a blosc frame" * 10)
    emmi = next(e for e in ids if e.startswith("emmi"))
    shutil.rmtree(path / "exposures" / emmi / Archive(path).detectors(emmi)[0] / "image")
    gmos = next(e for e in ids if e.startswith("gmos"))  # unreadable exposure metadata
    (path / "exposures" / gmos / "zarr.json").write_text("{not json")
    decam = next(e for e in ids if e.startswith("c4d"))  # every pixel NaN
    nan_image = Archive(path, mode="a").root[f"exposures/{decam}/{arch.detectors(decam)[0]}/image"]
    integrity.for_writing(nan_image)[:] = np.nan  # stored, as the integrity record promises
    bad = (saao, emmi, gmos, decam)

    res = subprocess.run(
        [sys.executable, "-m", "crscale.cli", "detect", str(path), "--scheduler", client.scheduler.address,
         "--no-progress", "--precision", "float32", "--block", "122,106",
         "--report", str(tmp_path / "r.json")],
        capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 1, res.stdout + res.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["counts"] == {"done": len(ids) - 4, "skipped": 0, "failed": 4}
    for eid in bad:
        assert f"FAILED: exposure {eid!r}" in res.stdout
    assert "no readable image array" in res.stdout and "no finite, unflagged pixel" in res.stdout
    assert f"cannot read its metadata in {path}" in res.stdout
    arch = Archive(path)
    for eid in ids:
        if eid != gmos:
            state = arch.status(eid)["detect"]["state"]
            assert state == ("failed" if eid in bad else "done"), eid
    # A failed exposure keeps no partial output; the good ones equal the clean reference run.
    assert "prob" not in arch.root[f"exposures/{saao}/{det}"]
    failures = {f["exposure_id"]: f for f in arch.failures() if f["stage"] == "detect"}
    assert set(failures) == set(bad)
    info = subprocess.run([sys.executable, "-m", "crscale.cli", "info", str(path)], capture_output=True,
                          text=True, timeout=120).stdout
    assert "[detect/error]" in info and saao in info


def test_worker_killed_mid_run_is_survived_with_identical_output(ingested, reference, tmp_path):
    from distributed import Client, LocalCluster

    path = tmp_path / "killed.zarr"
    shutil.copytree(ingested, path)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", memory_limit="4GiB") as cluster, Client(cluster) as cl:
        pids = cl.run(os.getpid)
        victim = sorted(pids.values())[0]
        killed = threading.Event()

        def kill_after_some_blocks():
            while not killed.is_set():
                if len(cl.get_events("crscale-detect-block")) >= 4:
                    os.kill(victim, signal.SIGKILL)
                    killed.set()
                time.sleep(0.05)

        killer = threading.Thread(target=kill_after_some_blocks, daemon=True)
        killer.start()
        report = detect_archive(path, client=cl, precision="float32", block=SMALL_BLOCK, progress=False,
                                echo=None)
        assert killed.is_set()
        killer.join(timeout=5)
        assert report.ok, report.summary()
        assert victim not in cl.run(os.getpid).values()  # the worker really died mid-run
        assert len(cl.get_events("crscale-detect-block")) >= sum(r.n_blocks for r in report.results)
    _assert_identical(path, reference)


def _statuses(path: Path) -> dict[str, dict]:
    arch = Archive(path)
    return {e: arch.status(e).get("detect", {}) for e in arch.exposure_ids()}


def test_killed_run_rerun_gives_identical_output_without_redoing_finished(ingested, reference, tmp_path):
    path = tmp_path / "interrupted.zarr"
    shutil.copytree(ingested, path)
    cmd = [sys.executable, "-m", "crscale.cli", "detect", str(path), "--workers", "2", "--no-progress",
           "--precision", "float32", "--block", "122,106"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            done = [e for e, s in _statuses(path).items() if s.get("state") == "done"]
            if done:
                break
            time.sleep(0.2)
        assert done, "no exposure finished in time"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI, its scheduler and its workers at once
        proc.wait(timeout=60)
    before = _statuses(path)
    finished = {e for e, s in before.items() if s.get("state") == "done"}
    assert 0 < len(finished) < len(before), before
    res = subprocess.run(cmd + ["--report", str(tmp_path / "r.json")], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    skipped = {r["exposure_id"] for r in report["results"] if r["status"] == "skipped"}
    assert skipped == finished
    after = _statuses(path)
    for eid in finished:  # not recomputed: the status written then is untouched
        assert after[eid] == before[eid]
    _assert_identical(path, reference)


def test_gpu_pinned_workers_take_every_cnn_task(ingested, tmp_path):
    """A cluster of 2 'GPU' workers (pinned, resource GPU=1) and a CPU worker: CNN tasks only
    run on the GPU workers, each of which sees exactly its own device and holds the model.

    There is no GPU here: the workers pin CUDA_VISIBLE_DEVICES and declare the resource as
    they would on a GPU node, and torch, finding no CUDA device, runs on the CPU.
    """
    from distributed import Client, Scheduler, SpecCluster

    from crscale.engine.cluster import cluster_has_gpus, gpu_worker_specs
    from crscale.engine.plugin import worker_model_info

    path = tmp_path / "gpu.zarr"
    shutil.copytree(ingested, path)
    specs = gpu_worker_specs(2, n_cpu_workers=1)
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"}}
    with SpecCluster(scheduler=scheduler, workers=specs) as cluster, Client(cluster) as cl:
        cl.wait_for_workers(3)
        assert cluster_has_gpus(cl)
        info = cl.scheduler_info(n_workers=-1)["workers"]
        gpu_workers = {a for a, w in info.items() if w["resources"].get("GPU") == 1}
        assert len(gpu_workers) == 2
        visible = cl.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
        assert sorted(visible[a] for a in gpu_workers) == ["0", "1"]
        assert [v for a, v in visible.items() if a not in gpu_workers] == [""]
        # 3 workers on this 2-core machine: each gets one torch/OpenMP thread.
        assert set(cl.run(lambda: os.environ.get("OMP_NUM_THREADS")).values()) == {"1"}

        report = detect_archive(path, client=cl, precision="float32", block=SMALL_BLOCK, progress=False,
                                echo=None, exposures=[e for e in Archive(path).exposure_ids()
                                                      if e.startswith(("gmos", "c4d"))])
        assert report.ok and report.settings["gpu"]
        ran_on = {msg["worker"] for _, msg in cl.get_events("crscale-detect-block")}
        assert ran_on and ran_on <= gpu_workers
        loaded = cl.run(worker_model_info)
        assert all(loaded[a]["loaded"] for a in gpu_workers)
        assert not any(v.get("loaded") for a, v in loaded.items() if a not in gpu_workers)


def test_engine_halo_covers_network_fill_and_inpainting():
    from crscale.detection.inpaint import INPAINT_RADIUS
    from crscale.engine.blocks import DetectSettings
    from crscale.models import load_model

    net, _ = load_model("default")
    cfg = net.config
    for method, radius in INPAINT_RADIUS.items():
        halo = engine_halo(cfg, DetectSettings(model="default", threshold=0.5, inpaint_method=method))
        assert halo >= cfg.receptive_radius + 4 + radius + 1 and halo % 2**cfg.depth == 0
    no_clean = engine_halo(cfg, DetectSettings(model="default", threshold=0.5, inpaint=False))
    assert no_clean == 32


def test_models_load_once_per_worker_not_per_block(client, reference):
    """The plugin loaded the model on each worker at registration; blocks reused it."""
    from crscale.engine.plugin import worker_model_info

    loaded = client.run(worker_model_info)
    assert loaded and all(v.get("loaded") for v in loaded.values())

    def cache_size():
        from crscale.detection import predictor

        return len([k for k in predictor._CACHE if k[2] == "float32"])

    assert set(client.run(cache_size).values()) == {1}
    assert Path(reference).exists()


def test_engine_equals_whole_image_detect_for_a_pixel_noise_model(client, ingested, tmp_path):
    """A model fed with the pixel-to-pixel noise: the engine reads the same boxes as detect()."""
    model = "crscale-v2p-bn-3-16"
    path = tmp_path / "pixel.zarr"
    shutil.copytree(ingested, path)
    arch = Archive(path)
    # the sample's sky frame, its copy with real CRs added, and the DECam cutout with its DQ
    chosen = [e for e in arch.exposure_ids() if e.startswith(("a8280271", "saao", "c4d_"))]
    assert len(chosen) == 3, arch.exposure_ids()
    report = detect_archive(path, client=client, exposures=chosen, model=model, precision="float32",
                            block=SMALL_BLOCK, progress=False, echo=None)
    assert report.ok and report.counts()["done"] == 3, report.summary()
    for eid in chosen:
        for det in arch.detectors(eid):
            group = arch.root[f"exposures/{eid}/{det}"]
            attrs = dict(group.attrs)
            conv = convention_for(arch.exposure_attrs(eid), detector_attrs=attrs)
            dq = conv.excluded(group["dq"][:]) if "dq" in group else None
            whole = crscale.detect(group["image"][:], model=model, gain=attrs["gain"],
                                   readnoise=attrs["readnoise"], dq=dq, saturation=attrs["saturation"],
                                   precision="float32", inpaint=False)
            assert whole.stats.pixel_noise is not None and whole.stats.pixel_noise != whole.stats.noise
            stats = attrs["detect"]["stats"]
            assert stats["pixel_noise"] == pytest.approx(whole.stats.pixel_noise, rel=1e-12), (eid, det)
            np.testing.assert_allclose(group["prob"][:], whole.prob, atol=1e-5, rtol=0,
                                       err_msg=f"{eid}/{det}")
