"""The catalogue stage on a real cluster: real images with injected real CRs through all stages."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from scipy import ndimage

from conftest import DECAM, DECAM_DQ, GMOS, SAAO
from crscale import sample_data_dir
from crscale.engine.catalogue_stage import catalogue_archive
from crscale.engine.detect_stage import detect_archive
from crscale.engine.ingest import ingest
from crscale.io.archive import Archive
from crscale.io.catalogue_store import rates_dataset, read_table, read_table_dask, table_file
from crscale.io.inputs import InputSpec
from crscale.train.footprints import load_itl_footprints
from crscale.train.inject import inject_crs

pytestmark = pytest.mark.timeout(600)

BIAS = sample_data_dir() / "darks" / "ntt_susi_bias_nttexample.fits.gz"
ODD_CHUNKS = [61, 53]  # CRs cut by chunk (and band) edges everywhere
# Injected CRs whose brightest pixel is at least this many noise sigmas: the CNN's detection limit
# at its recommended threshold. Fainter ITL events (single pixels of 40-110 e- on 9 e- noise) are
# partly missed; that is the detector's completeness, measured by `crscale evaluate`, not the
# catalogue's. The default of issue 15 works at threshold 0.91 (at most 1e-4 false positives on
# validation): on the bias it finds 261 of the 263 injected CRs above 15 sigma, 270 of 292 above 8
# (the default before it, at 0.6, held this test at 8 sigma).
LIMIT_SIGMA = 15.0


def _injected(folder: Path, src: Path, name: str, n: int, seed: int, gain: float, crop=None, **cards):
    with fits.open(src) as hdul:
        header = hdul[0].header.copy()
        data = hdul[0].data.astype(np.float32)
    if crop is not None:
        data = data[crop]
    res = inject_crs(data * gain, load_itl_footprints(), np.random.default_rng(seed), n=n)
    for key in ("BZERO", "BSCALE"):
        header.remove(key, ignore_missing=True)
    for key, value in cards.items():
        header[key] = value
    path = folder / f"{name}.fits"
    fits.PrimaryHDU((res.image / gain).astype(np.float32), header).writeto(path)
    return path, res.truth


@pytest.fixture(scope="module")
def catalogued(client, tmp_path_factory):
    """Real frames with injected real ITL CRs plus real sample exposures, through all three stages."""
    folder = tmp_path_factory.mktemp("catalogue")
    bias, bias_truth = _injected(
        folder,
        BIAS,
        "susi_itl",
        400,
        1,
        4.0,
        (slice(None), slice(50, 1074)),
        EXPTIME=1500.0,
        GAIN=4.0,
        RDNOISE=9.0,
    )
    saao, saao_truth = _injected(folder, SAAO, "saao_itl", 300, 2, float(fits.getheader(SAAO)["GAIN"]))
    path = folder / "a.zarr"
    inputs = [
        InputSpec(str(bias)),
        InputSpec(str(saao)),
        InputSpec(str(GMOS)),
        InputSpec(str(DECAM), str(DECAM_DQ)),
    ]
    assert ingest(inputs, path, client=client, chunks=ODD_CHUNKS, progress=False, echo=None).ok
    assert detect_archive(path, client=client, progress=False, echo=None).ok
    report = catalogue_archive(path, client=client, progress=False, echo=None)
    assert report.ok and report.counts()["done"] == 4, report.summary()
    return path, {"susi_itl": bias_truth, "saao_itl": saao_truth}


def _files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted((path / "catalogue").rglob("*.parquet"))}


def test_engine_counts_match_the_injected_truth(catalogued):
    path, truths = catalogued
    arch = Archive(path)
    crs = read_table(path, "crs")
    for eid, truth in truths.items():
        group = arch.root[f"exposures/{eid}/PRIMARY"]
        image, mask = group["image"][:], group["mask"][:] > 0
        attrs = dict(group.attrs)
        noise_e = attrs["detect"]["stats"]["noise_e"]
        lt, nt = ndimage.label(truth, np.ones((3, 3)))
        lm, nm = ndimage.label(mask, np.ones((3, 3)))
        rows = crs[crs.exposure == eid]
        assert len(rows) == nm  # the catalogue holds every region of the mask, once
        peak = ndimage.maximum((image - np.median(image)) * attrs["gain"], lt, np.arange(1, nt + 1))
        bright = np.flatnonzero(peak >= LIMIT_SIGMA * noise_e) + 1
        both = (lt > 0) & (lm > 0)
        pairs = np.unique(np.stack([lt[both], lm[both]]), axis=1)
        found = pairs[1][np.isin(pairs[0], bright)]  # catalogue CRs on bright injected ones
        n_found = np.unique(found).size
        assert bright.size > 150
        assert abs(n_found - bright.size) <= 0.03 * bright.size, (eid, n_found, bright.size, nt)
        # catalogue rows sit on the mask regions: row id -> its region's bounding box
        objects = ndimage.find_objects(lm)
        for r in rows.itertuples():
            sl = objects[r.id - 1]
            assert (r.y_min, r.y_max + 1, r.x_min, r.x_max + 1) == (
                sl[0].start,
                sl[0].stop,
                sl[1].start,
                sl[1].stop,
            )


def test_rows_rates_and_readers(catalogued):
    path, _ = catalogued
    exposures = read_table(path, "exposures")
    assert set(exposures.exposure) == {"susi_itl", "saao_itl", "gmos", "c4d_170316_062107_ooi_z_ls9.N2"}
    for r in exposures.itertuples():
        assert r.n_cr == r.n_dot + r.n_spot + r.n_track + r.n_worm
        assert r.rate == pytest.approx(r.n_cr / (r.area_cm2 * r.effective_exptime))
        assert r.rate_err == pytest.approx(np.sqrt(r.n_cr) / (r.area_cm2 * r.effective_exptime))
        assert r.background == "clean" and r.model and r.threshold
    gmos = exposures.set_index("exposure").loc["gmos"]
    assert gmos.profile.startswith("gemini-gmos") and "gain" in gmos.guessed  # GMOS header has no gain
    susi = exposures.set_index("exposure").loc["susi_itl"]
    assert susi.profile == "generic" and "pixel_size_um" in susi.guessed
    crs_dd = read_table_dask(path, "crs", columns=["exposure", "charge_e", "kind"])
    crs_dd = crs_dd[crs_dd.kind == "cr"]  # the exposure rows count CRs only, not artefacts
    totals = crs_dd.groupby("exposure").charge_e.sum().compute()
    per_exposure = exposures.groupby("exposure").charge_e.sum()
    np.testing.assert_allclose(totals.reindex(per_exposure.index, fill_value=0.0), per_exposure)
    ds = rates_dataset(path)
    assert ds.sizes["obs"] == 4 and int(ds.n_cr.sum()) == int(exposures.n_cr.sum())
    assert ds.rate.attrs["units"] == "cm-2 s-1" and np.all(
        np.diff(ds.time.values[~np.isnat(ds.time.values)]) >= 0
    )


def test_rerun_is_byte_identical_and_skips_what_is_current(catalogued, client, tmp_path):
    path, _ = catalogued
    before = _files(path)
    assert len(before) == 8
    report = catalogue_archive(path, client=client, progress=False, echo=None)
    assert report.counts() == {"done": 0, "skipped": 4, "failed": 0}
    forced = catalogue_archive(path, client=client, force=True, progress=False, echo=None)
    assert forced.counts()["done"] == 4
    assert _files(path) == before  # byte-identical Parquet


def test_failed_exposure_leaves_no_rows_and_the_rest_complete(catalogued, tmp_path):
    src, _ = catalogued
    path = tmp_path / "broken.zarr"
    shutil.copytree(src, path)
    # One chunk of saao_itl's mask becomes garbage: its catalogue must fail, and its old rows go.
    chunk = next(p for p in (path / "exposures/saao_itl/PRIMARY/mask/c").rglob("*") if p.is_file())
    chunk.write_bytes(b"not a zstd chunk")
    assert table_file(path, "crs", "saao_itl").exists()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "crscale.cli",
            "catalogue",
            str(path),
            "--force",
            "--no-progress",
            "--workers",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAILED: exposure 'saao_itl'" in proc.stdout and "3 exposure(s) done" in proc.stdout
    assert not table_file(path, "crs", "saao_itl").exists()
    assert not table_file(path, "exposures", "saao_itl").exists()
    rows = read_table(path, "crs")
    assert "saao_itl" not in set(rows.exposure) and {"susi_itl", "gmos"} <= set(rows.exposure)
    arch = Archive(path)
    assert arch.status("saao_itl")["catalogue"]["state"] == "failed"
    assert any(f["stage"] == "catalogue" and "saao_itl" in f["problem"] for f in arch.failures())


def test_detect_again_invalidates_the_catalogue_of_that_exposure(catalogued, client, tmp_path):
    src, _ = catalogued
    path = tmp_path / "redetect.zarr"
    shutil.copytree(src, path)
    assert detect_archive(
        path, client=client, exposures=["gmos"], force=True, threshold=0.5, progress=False, echo=None
    ).ok
    assert not table_file(path, "crs", "gmos").exists()  # rows of the old mask are gone at once
    report = catalogue_archive(path, client=client, progress=False, echo=None)
    assert report.counts() == {"done": 1, "skipped": 3, "failed": 0}
    row = read_table(path, "exposures", exposures=["gmos"]).iloc[0]
    assert row.threshold == 0.5


def test_stats_and_export_commands(catalogued, tmp_path):
    path, _ = catalogued
    plots = tmp_path / "plots"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "crscale.cli",
            "stats",
            str(path),
            "--plots",
            str(plots),
            "--workers",
            "1",
            "--json",
            str(tmp_path / "stats.json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "rate (CR cm⁻² s⁻¹)" in proc.stdout and "SUSI" in proc.stdout and "total" in proc.stdout
    pngs = sorted(plots.glob("*.png"))
    assert len(pngs) == 6 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    out = tmp_path / "crs.fits"
    proc = subprocess.run(
        [sys.executable, "-m", "crscale.cli", "export", str(path), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    table = Table.read(out)
    assert len(table) == len(read_table(path, "crs")) and str(table["energy_ev"].unit) == "eV"
    again = subprocess.run(
        [sys.executable, "-m", "crscale.cli", "export", str(path), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 2 and "exists" in again.stderr
    ecsv = tmp_path / "exposures.ecsv"
    subprocess.run(
        [sys.executable, "-m", "crscale.cli", "export", str(path), str(ecsv), "--table", "exposures"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert Table.read(ecsv)["rate"].unit == "1 / (s cm2)"


def test_a_damaged_catalogue_file_is_named_with_the_way_out(catalogued, tmp_path):
    from crscale.io.errors import ArchiveError

    src, _ = catalogued
    path = tmp_path / "damaged.zarr"
    shutil.copytree(src, path)
    damaged = table_file(path, "crs", "gmos")
    damaged.write_bytes(damaged.read_bytes()[:100])
    with pytest.raises(ArchiveError, match="gmos.parquet.*--force"):
        read_table(path, "crs")
    assert len(read_table(path, "crs", exposures=["susi_itl"])) > 0  # the other files still read
    with pytest.raises(ArchiveError, match="gmos.parquet"):
        read_table_dask(path, "crs").compute(scheduler="sync")
    proc = subprocess.run(
        [sys.executable, "-m", "crscale.cli", "export", str(path), str(tmp_path / "x.fits")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "gmos.parquet" in proc.stderr and "--force" in proc.stderr
