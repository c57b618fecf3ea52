"""Survey statistics and plots of a CR catalogue: hand-built catalogues with known answers."""

from __future__ import annotations

import json
import math

import dask
import numpy as np
import pytest

from crscale.catalogue.plots import PLOT_FILES, write_plots
from crscale.catalogue.stats import exposure_rates, log_bins, summarise
from crscale.io.catalogue_store import as_table, write_exposure_tables
from crscale.io.errors import ArchiveError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def cr_rows(exposure: str, detector: str, crs: list[tuple[int, float, float, str]]) -> list[dict]:
    """CR rows from (n_pixels, length, energy_ev, morphology)."""
    rows = []
    for i, (n_pixels, length, energy, morphology) in enumerate(crs, start=1):
        rows.append({
            "exposure": exposure, "detector": detector, "id": i, "x": 10.0 * i, "y": 5.0,
            "x_min": 10 * i, "x_max": 10 * i + 2, "y_min": 4, "y_max": 6, "n_pixels": n_pixels,
            "length": length, "width": n_pixels / length, "orientation": 0.0, "straightness": 1.0,
            "peak_e": 100.0, "charge_e": energy / 3.65, "energy_ev": energy, "edge_distance": 3,
            "saturated": False, "morphology": morphology,
        })
    return rows


def exposure_row(exposure: str, detector: str, instrument: str | None, crs: list[tuple], *,
                 area: float, efft: float | None, date: str | None, guessed: str = "") -> dict:
    counts = {c: sum(1 for r in crs if r[3] == c) for c in ("dot", "spot", "track", "worm")}
    n = len(crs)
    at = area * efft if efft else None
    return {
        "exposure": exposure, "detector": detector, "instrument": instrument, "telescope": "T",
        "date_obs": date, "mjd": None, "exptime": efft, "readout_time": 0.0, "effective_exptime": efft,
        "n_cr": n, **{f"n_{c}": k for c, k in counts.items()},
        "n_cr_pixels": sum(r[0] for r in crs), "n_pixels_usable": 1000, "cr_pixel_fraction": 0.0,
        "pixel_size_um": 15.0, "binning": "1,1", "thickness_um": None, "area_cm2": area,
        "rate": n / at if at else None, "rate_err": math.sqrt(n) / at if at else None,
        "gain": 1.0, "charge_e": 0.0, "profile": "p", "guessed": guessed, "background": "clean",
        "model": None, "threshold": None,
    }


def write_exposure(archive, exposure: str, detectors: dict[str, list[tuple]], instrument, **kw) -> None:
    crs, exps = [], []
    for det, rows in detectors.items():
        crs += cr_rows(exposure, det, rows)
        exps.append(exposure_row(exposure, det, instrument, rows, **kw))
    write_exposure_tables(archive, exposure, as_table(crs, "crs"), as_table(exps, "exposures"))


DOT = (1, 1.0, 2.0e3, "dot")
SPOT = (6, 3.0, 5.0e4, "spot")
TRACK = (40, 30.0, 1.0e6, "track")
WORM = (25, 20.0, 2.0e5, "worm")
# Outside the fixed bins: a CR bigger than 1e4 pixels, one with no charge, one negative.
HUGE = (20_000, 2_000.0, 5.0e9, "worm")
ZERO_E = (2, 1.5, 0.0, "dot")
NEG_E = (1, 1.0, -30.0, "dot")


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """Three instruments and an unknown one; known counts, areas and times."""
    a = tmp_path_factory.mktemp("catalogue") / "archive.zarr"
    # DECam: two exposures; d1 has two detectors, 10 cm2 x 100 s each.
    write_exposure(a, "d1", {"N1": [DOT, DOT, SPOT, TRACK], "N2": [WORM, SPOT]}, "DECam",
                   area=10.0, efft=100.0, date="2020-01-01T00:00:00")
    write_exposure(a, "d2", {"N1": [DOT, TRACK, TRACK]}, "DECam", area=10.0, efft=50.0,
                   date="2020-01-02T00:00:00")
    # Sinistro: gain guessed on one exposure; one zero-CR exposure.
    write_exposure(a, "s1", {"SCI": [DOT, SPOT, ZERO_E, NEG_E, HUGE]}, "Sinistro", area=4.0, efft=25.0,
                   date="2021-06-01T12:00:00", guessed="gain,readout_time")
    write_exposure(a, "s2", {"SCI": []}, "Sinistro", area=4.0, efft=25.0, date="2021-06-02T12:00:00")
    # No instrument keyword and no exposure time: counted, but out of the rates.
    write_exposure(a, "u1", {"SCI": [WORM, DOT]}, None, area=2.0, efft=None, date=None)
    return a


def test_rates_grouping_and_fractions(archive):
    st = summarise(archive)
    assert list(st.instruments) == ["DECam", "Sinistro", "unknown"]
    dec, sin, unk = (st.instruments[k] for k in ("DECam", "Sinistro", "unknown"))

    assert (dec.n_exposures, dec.n_detectors, dec.n_cr) == (2, 3, 9)
    at = 10 * 100 + 10 * 100 + 10 * 50
    assert dec.exposure_cm2_s == pytest.approx(at)
    assert dec.rate == pytest.approx(9 / at) and dec.rate_err == pytest.approx(3 / at)
    row_rates = [4 / 1000, 2 / 1000, 3 / 500]
    assert dec.rate_median == pytest.approx(np.median(row_rates))
    assert (dec.rate_p16, dec.rate_p84) == pytest.approx(tuple(np.percentile(row_rates, [16, 84])))
    assert dec.class_counts == {"dot": 3, "spot": 2, "track": 3, "worm": 1}
    assert dec.class_fractions == pytest.approx({"dot": 3 / 9, "spot": 2 / 9, "track": 3 / 9, "worm": 1 / 9})
    assert dec.n_no_rate == 0 and not dec.guessed

    assert (sin.n_exposures, sin.n_detectors, sin.n_cr) == (2, 2, 5)
    assert sin.rate == pytest.approx(5 / 200) and sin.rate_err == pytest.approx(math.sqrt(5) / 200)
    assert sin.rate_median == pytest.approx(2.5 / 100)
    assert sin.n_guessed_rows == 1 and sin.guessed_fields == ["gain", "readout_time"]

    assert (unk.n_exposures, unk.n_cr, unk.n_no_rate, unk.n_cr_rated) == (1, 2, 1, 0)
    assert math.isnan(unk.rate) and math.isnan(unk.rate_median)

    tot = st.total
    assert (tot.n_exposures, tot.n_detectors, tot.n_cr, tot.n_cr_rated, tot.n_no_rate) == (5, 6, 16, 14, 1)
    assert tot.rate == pytest.approx(14 / (at + 200))
    assert tot.rate_err == pytest.approx(math.sqrt(14) / (at + 200))
    assert tot.class_counts == {"dot": 7, "spot": 3, "track": 3, "worm": 3}


def test_cr_histograms_count_every_row(archive):
    st = summarise(archive)
    assert st.n_cr == 16 and st.n_unclassified == 0
    assert st.class_counts == {"dot": 7, "spot": 3, "track": 3, "worm": 3}
    assert st.class_fractions["dot"] == pytest.approx(7 / 16)
    for quantity, by_group in st.histograms.items():
        assert by_group["all"].n == 16, quantity
        for c, n in st.class_counts.items():
            assert by_group[c].n == n, (quantity, c)
        assert sum(by_group[c].n for c in st.class_counts) == by_group["all"].n

    size = st.histograms["n_pixels"]["all"]
    np.testing.assert_array_equal(size.edges, log_bins(1, 1e4, 10))
    assert size.n_above == 1 and size.counts.sum() == 15  # HUGE is over 1e4 pixels
    energy = st.histograms["energy_ev"]
    assert energy["all"].n_nonpositive == 2 and energy["dot"].n_nonpositive == 2  # 0 and -30 eV
    assert energy["all"].n_above == 1 and energy["worm"].n_above == 1  # 5e9 eV
    # Same bins as numpy on the same values.
    values = [2e3] * 5 + [5e4] * 3 + [1e6] * 3 + [2e5] * 2  # the 13 in range
    np.testing.assert_array_equal(energy["all"].counts, np.histogram(values, bins=energy["all"].edges)[0])
    # Medians from the histograms fall inside the bin of the true median (10 bins per decade).
    assert energy["dot"].median == pytest.approx(2e3, rel=0.26)
    assert st.medians["length"]["track"] == pytest.approx(30.0, rel=0.26)
    assert st.rate_histograms["all"].n == 6
    assert st.rate_histograms["all"].n_missing == 1 and st.rate_histograms["all"].n_nonpositive == 1


def test_table_json_and_guessed_mark(archive):
    st = summarise(archive)
    table = st.format_table()
    lines = table.splitlines()
    sinistro = next(ln for ln in lines if ln.startswith("Sinistro"))
    assert sinistro.startswith("Sinistro*")
    assert "0.0250 ± 0.0112" in sinistro
    decam = next(ln for ln in lines if ln.startswith("DECam"))
    assert not decam.startswith("DECam*") and f"{9 / 2500:#.3g} ± {3 / 2500:#.3g}" in decam
    assert "33.3" in decam and "11.1" in decam  # dot % and worm %
    unknown = next(ln for ln in lines if ln.startswith("unknown"))
    assert "n/a" in unknown
    total = next(ln for ln in lines if ln.startswith("total"))
    assert total.split()[1:4] == ["5", "6", "16"]
    footnote = next(ln for ln in lines if ln.startswith("*"))
    assert "Sinistro: 1 of 2 rows (gain, readout_time)" in footnote
    assert any("left out of the rates" in ln for ln in lines)

    d = json.loads(json.dumps(st.to_dict(), allow_nan=False))
    assert d["instruments"]["unknown"]["rate"] is None
    assert d["instruments"]["Sinistro"]["guessed"] is True
    assert d["histograms"]["energy_ev"]["all"]["n"] == 16


def test_one_compute_and_exposure_filter(archive, monkeypatch):
    calls = []
    real = dask.compute

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(dask, "compute", counting)
    st = summarise(archive, exposures=["d2", "s2"])
    assert len(calls) == 1
    assert list(st.instruments) == ["DECam", "Sinistro"]
    assert st.n_cr == 3 and st.total.n_cr == 3
    assert st.instruments["DECam"].rate == pytest.approx(3 / 500)
    assert st.instruments["Sinistro"].rate == 0.0 and not st.instruments["Sinistro"].guessed
    with pytest.raises(ArchiveError):
        summarise(archive, exposures=["nope"])


def test_custom_bins_and_bad_bins(archive):
    st = summarise(archive, bins={"n_pixels": [1, 10, 100]})
    h = st.histograms["n_pixels"]["all"]
    assert list(h.counts) == [10, 5] and h.n_above == 1  # 7 dots + 3 spots < 10 pixels
    with pytest.raises(ValueError, match="unknown quantity"):
        summarise(archive, bins={"charge": [1, 2]})
    with pytest.raises(ValueError, match="increasing"):
        summarise(archive, bins={"length": [0, 1, 2]})


def test_empty_catalogue(tmp_path):
    a = tmp_path / "empty.zarr"
    write_exposure(a, "e1", {"A": [], "B": []}, "Sinistro", area=4.0, efft=30.0, date="2022-01-01T00:00:00")
    st = summarise(a)
    assert st.n_cr == 0 and st.total.n_cr == 0
    assert st.instruments["Sinistro"].rate == 0.0 and st.instruments["Sinistro"].rate_err == 0.0
    assert all(h.n == 0 and math.isnan(h.median) for by in st.histograms.values() for h in by.values())
    assert "0.00 ± 0.00" in st.format_table()
    json.dumps(st.to_dict(), allow_nan=False)
    paths = write_plots(st, exposure_rates(a), tmp_path / "plots")
    assert [p.name for p in paths] == list(PLOT_FILES)
    assert all(p.read_bytes()[:8] == PNG_SIGNATURE for p in paths)
    with pytest.raises(ArchiveError):
        summarise(tmp_path / "no_catalogue.zarr")


def test_plots_are_png(archive, tmp_path):
    st = summarise(archive)
    rates = exposure_rates(archive)
    assert list(rates["exposure"]) == ["d1", "d2", "s1", "s2", "u1"]  # by time, undated last
    assert rates.loc[rates["exposure"] == "d1", "rate"].item() == pytest.approx(6 / 2000)
    assert math.isnan(rates.loc[rates["exposure"] == "u1", "rate"].item())
    assert rates.loc[rates["exposure"] == "u1", "instrument"].item() == "unknown"

    paths = write_plots(st, rates, tmp_path / "plots")
    assert [p.name for p in paths] == list(PLOT_FILES)
    for p in paths:
        data = p.read_bytes()
        assert data[:8] == PNG_SIGNATURE, p
        assert len(data) > 10_000, p
    # Without a rates frame the time series is drawn empty, the rest as before.
    assert len(write_plots(st, None, tmp_path / "plots2")) == len(PLOT_FILES)


@pytest.fixture(scope="module")
def cluster_client():
    """A real distributed cluster with worker processes, for this module only."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address="127.0.0.1:0", memory_limit="2GiB")
    client = Client(cluster)
    yield client
    client.close()
    cluster.close()


def test_same_answer_on_a_local_cluster(archive, cluster_client):
    from distributed import get_task_stream

    with dask.config.set(scheduler="sync"):
        expected = summarise(archive).to_dict()
    # With a Client alive, dask.compute runs on its workers (other processes).
    with get_task_stream(cluster_client) as ts:
        st = summarise(archive)
    assert st.to_dict() == expected
    workers = {t["worker"] for t in ts.data}
    assert workers and workers <= set(cluster_client.scheduler_info()["workers"])
    assert any("_cr_partition_counts" in str(t["key"]) for t in ts.data)
