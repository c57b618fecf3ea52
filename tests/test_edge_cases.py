"""The edge cases of issue #20 (items 2, 3, 5, 6, 7, 9): each a usage error or the right result."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits

import crscale
from conftest import SAAO, copy_to
from crscale.engine.detect_stage import detect_archive
from crscale.engine.ingest import ingest
from crscale.io.archive import Archive

pytestmark = pytest.mark.timeout(600)


def crscale_cli(*args):
    return subprocess.run([sys.executable, "-m", "crscale.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=480)


@pytest.mark.parametrize("value", ["-1", "0", "1000"])
def test_workers_out_of_range_is_a_usage_error(tmp_path, value):
    res = crscale_cli("detect", tmp_path / "none.zarr", "--workers", value)
    assert res.returncode == 2 and "--workers" in res.stderr and "give 1 to" in res.stderr, res.stderr


def test_tiny_chunks_are_refused_with_the_file_count(tmp_path):
    res = crscale_cli("ingest", SAAO, "--archive", tmp_path / "a.zarr", "--chunks", "1")
    assert res.returncode == 2 and "16,777,216 files" in res.stderr and "at least 16" in res.stderr
    assert not (tmp_path / "a.zarr").exists()


def test_images_thinner_than_the_halo_give_what_detect_gives(client, tmp_path):
    with fits.open(SAAO) as hdul:
        data = hdul[0].data.astype(np.float32)
        header = hdul[0].header.copy()
    for key in ("BZERO", "BSCALE"):
        header.remove(key, ignore_missing=True)
    tall = np.concatenate([data[:, :20]] * 6)  # 3120 x 20: several blocks down, one across
    shapes = {"row": data[:1, :500], "two": data[100:102, 100:102], "thin": data[:63, :300],
              "tall": tall}
    for name, pixels in shapes.items():
        fits.PrimaryHDU(np.ascontiguousarray(pixels), header).writeto(tmp_path / f"{name}.fits")
    path = tmp_path / "a.zarr"
    assert ingest([str(tmp_path)], path, client=client, progress=False, echo=None).ok
    report = detect_archive(path, client=client, precision="float32", block=[1024, 1024],
                            progress=False, echo=None)
    assert report.ok, report.summary()
    arch = Archive(path)
    for eid in shapes:
        group = arch.root[f"exposures/{eid}/PRIMARY"]
        attrs = group.attrs
        whole = crscale.detect(group["image"][:], gain=attrs["gain"], readnoise=attrs["readnoise"],
                               saturation=attrs["saturation"], precision="float32")
        np.testing.assert_allclose(group["prob"][:], whole.prob, atol=1e-5, rtol=0, err_msg=eid)
        near = np.abs(whole.prob - whole.threshold) < 1e-5
        assert not ((group["mask"][:].astype(bool) != whole.mask) & ~near).any(), eid


def test_reserved_names_and_unparsable_gain_are_ingested(client, tmp_path):
    named = copy_to(SAAO, tmp_path / "in", "zarr.json.fits")
    raw = bytearray(SAAO.read_bytes())
    at = raw.find(b"GAIN    =")
    assert at >= 0
    raw[at:at + 80] = b"GAIN    = NaN".ljust(80)  # unquoted: astropy cannot parse the card
    nan_gain = tmp_path / "in" / "nan_gain.fits"
    nan_gain.write_bytes(bytes(raw))
    path = tmp_path / "a.zarr"
    report = ingest([str(named), str(nan_gain)], path, client=client, progress=False, echo=None)
    assert report.ok, report.summary()
    by_path = {r.path: r for r in report.results}
    assert by_path[str(named)].exposure_id == "zarr_json"
    assert Archive(path).status("zarr_json")["ingest"]["state"] == "done"
    attrs = Archive(path).root["exposures/nan_gain/PRIMARY"].attrs
    assert attrs["gain"] == 1.0 and "gain" in attrs["guessed"]  # the fallback, as for 'nan'
    assert any("GAIN='NaN'" in w for w in by_path[str(nan_gain)].warnings)
    again = ingest([str(named)], path, client=client, force=True, progress=False, echo=None)
    assert again.ok and again.results[0].status == "done"


def test_unwritable_outputs_and_closed_pipes_give_messages_not_tracebacks(client, tmp_path):
    archive = tmp_path / "a.zarr"
    cluster = ("--scheduler", client.scheduler.address)
    res = crscale_cli("run", SAAO, "--archive", archive, "--no-progress", *cluster)
    assert res.returncode == 0, res.stderr  # a catalogue: stats gets as far as writing
    plots = tmp_path / "plots.png"
    plots.write_text("a file, not a folder")
    for args in (("--plots", plots), ("--no-plots", "--json", tmp_path / "no" / "dir" / "x.json")):
        res = crscale_cli("stats", archive, *args, *cluster)
        assert "Traceback" not in res.stderr, res.stderr
        assert res.returncode == 2 and "crscale stats: cannot write" in res.stderr, res.stderr
    for args in (("info", archive), ("models",)):
        cmd = f"{sys.executable} -m crscale.cli {' '.join(map(str, args))} | head -c 1"
        res = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True,
                             timeout=240)
        assert "Traceback" not in res.stderr and "BrokenPipe" not in res.stderr, res.stderr


class _NotATensor:
    """Any pickled object other than tensors: what a weights-only load must refuse."""


def test_cosmic_conn_weights_load_tensors_only_even_with_torch_default_overridden(tmp_path, monkeypatch):
    import pickle

    import torch

    from crscale.evaluate.methods import weights_only_loads

    path = tmp_path / "checkpoint.pt"
    torch.save({"weights": torch.zeros(2), "extra": _NotATensor()}, path)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # a site that turned the default off
    assert isinstance(torch.load(path)["extra"], _NotATensor)  # what Cosmic-CoNN's call did
    original = torch.load
    with weights_only_loads(), pytest.raises(pickle.UnpicklingError):
        torch.load(path, map_location="cpu")  # Cosmic-CoNN's call, inside the guard
    assert torch.load is original
    pytest.importorskip("cosmic_conn")
    from crscale.evaluate.methods import _cosmic_conn_model

    assert _cosmic_conn_model("ground_imaging") is not None  # its real weights are tensors only


def test_a_file_ingested_meanwhile_by_another_run_is_skipped_not_failed(tmp_path):
    """Two ingests planned the same new file; the other one wrote it first (issue #20, item 8)."""
    from crscale.engine.ingest import ingest_one, ingest_settings
    from crscale.io.fits_reader import read_exposure, sha256_file
    from crscale.io.inputs import InputSpec

    path = tmp_path / "a.zarr"
    other = read_exposure(str(SAAO))
    Archive(path, mode="a").write_exposure(other)  # the concurrent run, done first
    sha = sha256_file(str(SAAO))
    mine = ingest_one(InputSpec(str(SAAO)), str(path), other.exposure_id, sha, ingest_settings())
    assert mine.status == "skipped" and "another run" in mine.message, mine.message
    stranger = ingest_one(InputSpec(str(SAAO)), str(path), other.exposure_id, "0" * 64, ingest_settings())
    assert stranger.status == "failed" and "exists" in stranger.message  # other content: a real clash


def test_a_failure_record_left_empty_by_a_full_disk_is_ignored_quietly(tmp_path):
    import warnings

    path = tmp_path / "a.zarr"
    Archive(path, mode="a").record_failure("/data/x.fits", "a real record")
    (path / "failures" / "detect-0123456789abcdef").mkdir()  # what ENOSPC left: no zarr.json
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        records = Archive(path).failures()
    assert [r["problem"] for r in records] == ["a real record"]
