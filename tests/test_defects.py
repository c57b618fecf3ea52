"""Persistent defects vs CRs, and completeness-corrected rates, on a real detector series.

Twelve exposures of one real detector: a 256 x 256 cutout of the LCO kb29 (SBIG) BANZAI frame,
whose own hot pixels stay fixed, plus a hot-column segment, each exposure with different real
LSST ITL CRs painted in. Through ingest, detect and catalogue (with the defect reduction and
the completeness measurement) on a real LocalCluster.
"""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from scipy import ndimage

from crscale import sample_data_dir
from crscale.catalogue.defects import (
    DEFECT_KINDS,
    DefectSettings,
    find_defects,
    map_from_calibration,
    min_count,
)
from crscale.engine.catalogue_stage import catalogue_archive
from crscale.engine.defects_stage import set_user_map
from crscale.engine.detect_stage import detect_archive
from crscale.engine.ingest import ingest
from crscale.evaluate.completeness import refresh_completeness
from crscale.io.archive import FORMAT_VERSION, Archive
from crscale.io.catalogue_store import read_table
from crscale.io.defect_store import read_array, read_defect_attrs
from crscale.io.inputs import InputSpec
from crscale.train.footprints import load_itl_footprints
from crscale.train.inject import inject_crs

pytestmark = pytest.mark.timeout(600)

KB29 = sample_data_dir() / "images" / "banzai_test_frame.fits.fz"
CUT = (slice(192, 448), slice(1184, 1440))  # the 256 x 256 of the frame with most hot pixels
N_EXPOSURES = 12
N_CRS = 120
EXPTIME = 45.265
COLUMN = (slice(40, 120), 128)  # hot-column segment (80 px), 10 sigma above the sky
COMPLETENESS = {"frames": N_EXPOSURES, "passes": 2, "density": 1e-3, "cutout": 256}


def _series(folder):
    with fits.open(KB29) as hdul:
        base = hdul["SCI"].data.astype(np.float32)[CUT]
        src = hdul["SCI"].header
    base[COLUMN] += 300.0
    lib = load_itl_footprints()
    paths, truths = [], []
    for i in range(N_EXPOSURES):
        res = inject_crs(base, lib, np.random.default_rng(100 + i), n=N_CRS)  # gain 1: ADU = e-
        header = fits.Header()
        for key in ("INSTRUME", "TELESCOP", "GAIN", "RDNOISE", "CCDSUM", "SATURATE", "SITEID"):
            header[key] = src[key]
        header["EXPTIME"] = EXPTIME
        header["DATE-OBS"] = f"2016-06-{10 + i:02d}T21:16:05.072"
        path = folder / f"kb29_{i:02d}.fits"
        fits.PrimaryHDU(res.image.astype(np.float32), header).writeto(path)
        paths.append(path)
        truths.append(res)
    return base, paths, truths


@pytest.fixture(scope="module")
def series(client, tmp_path_factory):
    import dask

    folder = tmp_path_factory.mktemp("defects")
    base, paths, truths = _series(folder)
    path = folder / "series.zarr"
    assert ingest([InputSpec(str(p)) for p in paths], path, client=client, progress=False, echo=None).ok
    assert detect_archive(path, client=client, progress=False, echo=None).ok
    with dask.config.set({"crscale.completeness": COMPLETENESS}):
        report = catalogue_archive(path, client=client, progress=False, echo=None,
                                   completeness=refresh_completeness)
    assert report.ok and report.counts()["done"] == N_EXPOSURES, report.summary()
    return path, base, truths, report


def test_binomial_threshold_and_unverified():
    s = DefectSettings()
    # a pixel masked in every one of 2 exposures is no evidence when CRs cover 1 % of the pixels
    assert min_count(2, 0.01, s.false_alarm / 65536) is None
    assert min_count(12, 0.01, s.false_alarm / 65536) <= 6
    rng = np.random.default_rng(0)
    counts = rng.binomial(12, 0.01, size=(128, 128))
    clean = find_defects(counts, 12, settings=s)
    assert clean.status == "verified" and not clean.codes.any()  # no false alarms on pure CRs
    counts[5, 7] = 12
    counts[20:40, 50] = rng.integers(4, 13, size=20)  # an intermittent hot column
    found = find_defects(counts, 12, settings=s)
    assert found.codes[5, 7] == 1 and np.all(found.codes[20:40, 50] == 2)
    assert find_defects(counts, 2, settings=s).status == "unverified"
    dark = np.zeros((8, 8))
    dark[3, 3] = 1e4
    assert map_from_calibration(dark + rng.normal(0, 1, dark.shape), "dark").sum() == 1


def test_defect_map_finds_the_frames_hot_pixels_and_the_column(series):
    path, base, truths, report = series
    arch = Archive(path)
    key = report.defects.results[0].key
    attrs = read_defect_attrs(arch, key)
    assert attrs["status"] == "verified" and attrs["n_exposures"] == N_EXPOSURES
    assert arch.format_version == FORMAT_VERSION == "1.4"
    codes = read_array(arch, key, "codes")
    assert np.all(codes[COLUMN] == 2)  # the hot column, every pixel of it
    crs = read_table(path, "crs")
    # the frame's own masked regions (without painted CRs): what must come out as defects
    from crscale.detection import detect

    own = detect(base, gain=1.0).mask
    lab, n_own = ndimage.label(own, np.ones((3, 3)))
    assert n_own >= 8  # 9 with the default of issue 15 (threshold 0.91), more with the one before
    tally = {"defect": 0, "other": 0, "missed": 0}
    for i, res in enumerate(truths):
        eid = f"kb29_{i:02d}"
        kinds = crs[crs.exposure == eid].set_index("id").kind
        mask = arch.root[f"exposures/{eid}/PRIMARY/mask"][:] > 0
        elab, _ = ndimage.label(mask, np.ones((3, 3)))  # catalogue ids are these labels
        for j in range(1, n_own + 1):
            ids = np.unique(elab[(lab == j) & mask])
            if ids.size == 0:
                tally["missed"] += 1  # not masked this time: nothing catalogued, nothing to call
                continue
            if res.truth[np.isin(elab, ids)].any():
                continue  # merged with a painted CR in this exposure: not a clean test
            tally["defect" if set(kinds.loc[ids]) <= set(DEFECT_KINDS) else "other"] += 1
    share = tally["defect"] / (tally["defect"] + tally["other"])
    assert tally["missed"] <= 0.1 * sum(tally.values()), tally  # the mask itself varies a little
    assert share >= 0.95, tally


def test_cr_rows_and_corrected_rate_match_the_painted_truth(series):
    path, base, truths, report = series
    arch = Archive(path)
    key = report.defects.results[0].key
    comp = read_defect_attrs(arch, key)["completeness"]
    rows = read_table(path, "exposures")
    crs = read_table(path, "crs")
    assert set(crs.kind) <= {"cr", *DEFECT_KINDS}
    assert (rows.n_cr == rows.n_dot + rows.n_spot + rows.n_track + rows.n_worm).all()
    assert (rows.n_defects > 0).all() and (rows.defect_map == "verified").all()
    # kind-cr rows against the mask regions that the painted CRs make (defects left out)
    own = ndimage.binary_dilation(read_array(arch, key, "codes") > 0, iterations=1)
    n_painted_regions = 0
    for i, res in enumerate(truths):
        mask = arch.root[f"exposures/kb29_{i:02d}/PRIMARY/mask"][:] > 0
        lab, _ = ndimage.label(mask, np.ones((3, 3)))
        on = np.unique(lab[res.truth & ~own & (lab > 0)])
        n_painted_regions += on.size
    n_cr = int(rows.n_cr.sum())
    assert abs(n_cr - n_painted_regions) <= 0.03 * n_painted_regions, (n_cr, n_painted_regions)
    # rate: painted truth = CRs painted / (all pixels x pixel area x time)
    area_time = float((rows.area_cm2 * rows.effective_exptime).sum())
    pix_area = float(rows.area_cm2.iloc[0]) / int(rows.n_pixels_usable.iloc[0])
    truth_rate = N_CRS / (256 * 256 * pix_area * float(rows.effective_exptime.iloc[0]))
    raw = n_cr / area_time
    corrected = float((rows.rate_corrected * rows.area_cm2 * rows.effective_exptime).sum()) / area_time
    print(f"\npainted {truth_rate:.4g}, raw {raw:.4g} ({raw / truth_rate - 1:+.1%}), corrected "
          f"{corrected:.4g} ({corrected / truth_rate - 1:+.1%}); completeness {comp['value']:.3f} "
          f"± {comp['error']:.3f} from {comp['n_injected']} injected CRs")
    assert comp["n_injected"] > 1500 and 0.5 < comp["value"] < 1.0
    # The target. Mind that the painted count is itself a draw, n_cr ~ B(N, C): with
    # C ~ 0.6 (a third of the ITL events are faint dots under this frame's 30 e- noise) and
    # N = 1,440 that alone is 2.0 %, and the completeness adds 1.9 %; the seeds are fixed.
    assert abs(corrected / truth_rate - 1) <= 0.02
    assert raw < corrected


def test_rerun_is_byte_identical_and_a_changed_map_is_recatalogued(series, client, tmp_path):
    import shutil

    src, _, _, report = series
    path = tmp_path / "copy.zarr"
    shutil.copytree(src, path)
    files = {p.name: p.read_bytes() for p in sorted((path / "catalogue").rglob("*.parquet"))}
    again = catalogue_archive(path, client=client, progress=False, echo=None)
    assert again.counts()["skipped"] == N_EXPOSURES and not again.redone_for_defects
    forced = catalogue_archive(path, client=client, force=True, progress=False, echo=None)
    assert forced.counts()["done"] == N_EXPOSURES
    assert {p.name: p.read_bytes() for p in sorted((path / "catalogue").rglob("*.parquet"))} == files
    # a user bad-pixel map changes the defect map: every exposure of that detector is redone
    bpm = np.zeros((256, 256), np.uint8)
    bpm[200:203, 10:13] = 1
    assert set_user_map(path, bpm, source="test-bpm") == [report.defects.results[0].key]
    redo = catalogue_archive(path, client=client, progress=False, echo=None)
    assert sorted(redo.redone_for_defects) == sorted(f"kb29_{i:02d}" for i in range(N_EXPOSURES))
    assert "re-catalogued 12 exposure(s)" in redo.summary()
    rows = read_table(path, "exposures")
    before = read_table(src, "exposures")
    assert (rows.n_defect_pixels.to_numpy() == before.n_defect_pixels.to_numpy() + 9).all()
