"""Chunk integrity: a lost or corrupt chunk is never read as data (issue #20, item 1)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import zarr

from conftest import SAAO
from crscale.io import integrity
from crscale.io.archive import Archive
from crscale.io.fits_reader import read_exposure
from crscale.io.verify import verify_archive

pytestmark = pytest.mark.timeout(600)


def _ingest(path, chunks=(128, 128), shards=None, nan_rows=0):
    exposure = read_exposure(str(SAAO))
    if nan_rows:  # a whole chunk row of fill values: stored all the same
        image = exposure.detectors[0].image.astype(np.float32)
        image[:nan_rows] = np.nan
        exposure.detectors[0].image = image
    Archive(path, mode="a").write_exposure(exposure, chunks=chunks, shards=shards)
    return exposure.exposure_id, exposure.detectors[0].name


@pytest.mark.parametrize("shards", [None, (256, 256)])
def test_every_chunk_is_stored_checked_and_named_when_lost(tmp_path, shards):
    path = tmp_path / "a.zarr"
    eid, det = _ingest(path, shards=shards, nan_rows=128)
    image = Archive(path).root[f"exposures/{eid}/{det}/image"]
    assert integrity.is_recorded(image)
    report = verify_archive(path)
    assert report.ok, report.summary()  # the all-NaN chunks are there, not judged missing
    n = len(list(integrity.all_chunks(image)))
    assert report.results[0].chunks == n and n > 1

    key = integrity.chunk_key(image, (0, 1))
    (path / "exposures" / eid / det / "image" / key).unlink()
    label = f"{path}/exposures/{eid}/{det}/image"
    view = integrity.CheckedArray(Archive(path).root[f"exposures/{eid}/{det}/image"], label)
    with pytest.raises(integrity.ChunkIntegrityError, match=f"image: chunk {key} is missing"):
        view[100:300, 100:300]
    assert view[400:, :5].shape == (120, 5)  # chunks that are there still read

    report = verify_archive(path)
    assert not report.ok
    check = report.results[0]
    assert any(f"{det}/image: chunk {key} is missing" in d for d in check.damage)
    assert Archive(path).status(eid)["ingest"]["state"] == "damaged"
    assert check.repair(str(path)) == [f"crscale run {SAAO} --archive {path}"]


def test_corrupt_chunk_is_found_by_its_checksum(tmp_path):
    path = tmp_path / "a.zarr"
    eid, det = _ingest(path)
    chunk = path / "exposures" / eid / det / "image" / "c" / "1" / "2"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit: blosc still decodes it, crc32c does not
    chunk.write_bytes(bytes(data))
    view = integrity.CheckedArray(Archive(path).root[f"exposures/{eid}/{det}/image"], "img")
    with pytest.raises(integrity.ChunkIntegrityError, match="chunk c/1/2 is corrupt"):
        view[:, :]
    report = verify_archive(path, mark=False)
    assert any("chunk c/1/2 is corrupt" in d for d in report.results[0].damage)
    assert Archive(path).status(eid)["ingest"]["state"] == "done"  # --no-mark leaves it


def test_older_arrays_without_a_record_are_read_and_reported_unverifiable(tmp_path):
    path = tmp_path / "a.zarr"
    eid, det = _ingest(path)
    group = Archive(path, mode="a").root[f"exposures/{eid}/{det}"]
    del group["image"].attrs[integrity.RECORD_ATTR]  # as format 1.2 wrote it
    report = verify_archive(path)
    assert report.ok and report.results[0].unrecorded == [f"{det}/image"]
    assert not integrity.CheckedArray(zarr.open_array(path / "exposures" / eid / det / "image"), "x").recorded


def test_the_issue_reproduction_exits_1_naming_the_chunk(client, tmp_path):
    """crscale run; rm an image chunk; detect --force: exit 1 and the chunk named; verify says it."""
    archive = tmp_path / "a.zarr"

    def crscale(*args):
        return subprocess.run([sys.executable, "-m", "crscale.cli", *map(str, args)],
                              capture_output=True, text=True, timeout=300)

    cluster = ("--scheduler", client.scheduler.address, "--no-progress")
    res = crscale("run", SAAO, "--archive", archive, "--chunks", "256", *cluster)
    assert res.returncode == 0, res.stdout + res.stderr
    eid = Archive(archive).exposure_ids()[0]
    det = Archive(archive).detectors(eid)[0]
    n_cr = Archive(archive).status(eid)["detect"]["n_cr_pixels"]
    folder = archive / "exposures" / eid / det

    (folder / "mask" / "c" / "0" / "1").unlink()
    res = crscale("catalogue", archive, "--force", *cluster)
    assert res.returncode == 1 and f"{det}/mask: chunk c/0/1 is missing" in res.stdout, res.stdout

    (folder / "image" / "c" / "0" / "1").unlink()
    res = crscale("detect", archive, "-e", eid, "--force", *cluster)
    assert res.returncode == 1, res.stdout + res.stderr
    assert f"{det}/image: chunk c/0/1 is missing" in res.stdout
    res = crscale("verify", archive, "--json")
    assert res.returncode == 1
    (check,) = json.loads(res.stdout)["results"]
    assert f"{det}/image: chunk c/0/1 is missing" in check["damage"]
    status = Archive(archive).status(eid)
    assert status["ingest"]["state"] == "damaged" and status["catalogue"]["state"] != "done"

    # The repair verify prints (re-ingest in place, then the later stages) restores the result.
    res = crscale("run", SAAO, "--archive", archive, *cluster)
    assert res.returncode == 0, res.stdout + res.stderr
    assert Archive(archive).exposure_ids() == [eid]
    assert Archive(archive).status(eid)["detect"]["n_cr_pixels"] == n_cr
    assert crscale("verify", archive).returncode == 0


def test_verify_of_a_missing_archive_is_an_error_and_creates_nothing(tmp_path, capsys):
    from crscale.cli import main

    missing = tmp_path / "no-such.zarr"
    assert main(["verify", str(missing)]) == 2
    assert "no crscale archive here" in capsys.readouterr().err
    assert not missing.exists()


def test_defect_maps_are_recorded_and_a_lost_chunk_is_named(tmp_path):
    """A lost chunk of a defect map would read as zeros, i.e. "no defect here": it is refused."""
    from crscale.io import defect_store

    path = tmp_path / "a.zarr"
    _ingest(path)
    arch = Archive(path, mode="a")
    rng = np.random.default_rng(3)
    counts = rng.integers(0, 3, (1500, 1300)).astype(np.uint32)  # 2 x 2 chunks of 1024
    counts[:1024, 1024:] = 0  # an all-zero chunk is stored too, so that absent means lost
    defect_store.write_defect_map(arch, "k", {"counts": counts}, {"n_exposures": 3})
    group = arch.root["defects/k"]
    assert integrity.is_recorded(group["counts"])
    assert np.array_equal(defect_store.read_array(arch, "k", "counts"), counts)
    key = integrity.chunk_key(group["counts"], (0, 1))
    (path / "defects" / "k" / "counts" / key).unlink()
    with pytest.raises(integrity.ChunkIntegrityError, match=f"defects/k/counts: chunk {key} is missing"):
        defect_store.read_array(Archive(path), "k", "counts")


def test_a_flipped_byte_in_a_catalogue_file_is_found_not_read_as_values(tmp_path):
    """Parquet pages carry a CRC (written and checked): a damaged page is an ArchiveError."""
    import pyarrow as pa

    from crscale.io import catalogue_store as cs

    path = tmp_path / "a.zarr"
    eid, det = _ingest(path)
    n = 20000
    rng = np.random.default_rng(1)
    columns = {}
    for f in cs.TABLES["crs"]:
        if pa.types.is_string(f.type) or pa.types.is_dictionary(f.type):
            columns[f.name] = [eid if f.name == "exposure" else det] * n
        elif pa.types.is_boolean(f.type):
            columns[f.name] = np.zeros(n, bool)
        else:
            columns[f.name] = rng.integers(0, 100, n).astype(f.type.to_pandas_dtype())
    def row(f):
        if pa.types.is_string(f.type) or pa.types.is_dictionary(f.type):
            return [eid if f.name == "exposure" else det]
        return [False] if pa.types.is_boolean(f.type) else np.zeros(1, f.type.to_pandas_dtype())

    exposures = {f.name: row(f) for f in cs.TABLES["exposures"]}
    cs.write_exposure_tables(path, eid, cs.as_table(columns, "crs"), cs.as_table(exposures, "exposures"))
    assert len(cs.read_table(path, "crs")) == n
    import pyarrow.parquet as pq

    crs = cs.table_file(path, "crs", eid)
    good, raw = pq.read_table(crs), crs.read_bytes()

    def silently_wrong(pos: int) -> bool:  # read without the page CRCs: wrong values, no error
        crs.write_bytes(raw[:pos] + bytes([raw[pos] ^ 0xFF]) + raw[pos + 1:])
        try:
            return not pq.read_table(crs).equals(good)
        except (OSError, pa.ArrowException):
            return False

    # A flipped byte inside a data page that zstd decodes to other numbers without complaint.
    assert any(silently_wrong(pos) for pos in range(len(raw) // 4, len(raw) // 2, 7))
    with pytest.raises(cs.ArchiveError, match="damaged catalogue file"):
        cs.read_table(path, "crs")


def test_a_resumed_detect_over_a_leftover_output_is_quiet_and_equal(client, tmp_path):
    """An interrupted detection can leave chunks under prob/ after the array itself was removed
    (a worker was still writing its block). The next detect rewrites it without Zarr's
    "Object at prob is not recognized" warning (issue #20, item 9), and with the same result."""
    import warnings

    from crscale.engine import detect_archive

    path = tmp_path / "a.zarr"
    eid, det = _ingest(path)
    assert detect_archive(path, client=client, progress=False, echo=None).ok
    folder = path / "exposures" / eid / det
    prob = Archive(path).root[f"exposures/{eid}/{det}/prob"][...]
    (folder / "prob" / "zarr.json").unlink()  # what the interrupted run leaves: chunks, no array
    assert (folder / "prob" / "c").is_dir()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert detect_archive(path, client=client, force=True, progress=False, echo=None).ok
    assert not [w for w in caught if "not recognized" in str(w.message)], [str(w.message) for w in caught]
    assert np.array_equal(Archive(path).root[f"exposures/{eid}/{det}/prob"][...], prob, equal_nan=True)
