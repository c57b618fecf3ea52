"""Shared fixtures: the bundled real images, copies made bad on purpose, a real cluster."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

import crscale

SAMPLE = crscale.sample_data_dir()
IMAGES = SAMPLE / "images"
MEF = IMAGES / "mef_raw_test_frame.fits"  # LCO Sinistro raw, 4 x SCI uint16 (BZERO)
FZ = IMAGES / "banzai_test_frame.fits.fz"  # LCO BANZAI, tile-compressed SCI + BPM
SAAO = IMAGES / "a8280271.fits"  # single-extension uint16 (BZERO 32768)
GMOS = IMAGES / "gmos.fits"  # big-endian float32 SCI + VAR + SKYFIT
EMMI = IMAGES / "emmi_image_sum3.fits"  # int16 with non-trivial BSCALE/BZERO
DECAM = IMAGES / "c4d_170316_062107_ooi_z_ls9.N2.fits"  # DECam CP, per-amp gains
DECAM_DQ = IMAGES / "c4d_170316_062107_ood_z_ls9.N2.fits"  # its DQ companion
ITL_CRS = SAMPLE / "crs" / "cosmic_rays_itl_2017.fits.gz"  # a BINTABLE only: no image
HST = Path(__file__).parent / "data" / "hst" / "o4sp040b0_raw.fits"  # real STIS raw: SCI/ERR/null DQ
# ../shared/data/real beside the repository, when present (CI and developers have it).
SHARED_REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"


def copy_to(src: Path, folder: Path, name: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    dst = folder / (name or src.name)
    shutil.copyfile(src, dst)
    os.chmod(dst, 0o644)
    return dst


def make_bad_inputs(folder: Path) -> dict[str, Path]:
    """Bad inputs made from the real sample files (every one derived from real data)."""
    folder.mkdir(parents=True, exist_ok=True)
    raw = MEF.read_bytes()
    out = {}
    out["junk"] = folder / "junk.fits"
    out["junk"].write_bytes(b"this is not a FITS file\n" * 200)
    out["truncated"] = folder / "truncated.fits"
    out["truncated"].write_bytes(raw[: len(raw) // 2])
    out["truncated_tail"] = folder / "truncated_tail.fits"
    out["truncated_tail"].write_bytes(raw[: len(raw) - 100_000])
    out["empty"] = folder / "empty.fits"
    out["empty"].write_bytes(b"")
    out["table_only"] = copy_to(ITL_CRS, folder, "itl_crs_table.fits.gz")

    with fits.open(SAAO) as hdul:
        data = hdul[0].data.astype(np.float32)
        header = hdul[0].header.copy()
    header.remove("BZERO", ignore_missing=True)
    header.remove("BSCALE", ignore_missing=True)
    nan_data = data.copy()
    nan_data[10:20, 30:35] = np.nan
    nan_data[100, 100] = np.inf
    out["nan_pixels"] = folder / "saao_nan_pixels.fits"
    fits.PrimaryHDU(nan_data, header).writeto(out["nan_pixels"])
    all_nan = np.full_like(data, np.nan)
    out["all_nan"] = folder / "saao_all_nan.fits"
    fits.PrimaryHDU(all_nan, header).writeto(out["all_nan"])
    absurd = header.copy()
    absurd["EXPTIME"] = 0.0
    absurd["GAIN"] = -1.9
    out["absurd_keywords"] = folder / "saao_absurd_keywords.fits"
    fits.PrimaryHDU(data, absurd).writeto(out["absurd_keywords"])
    return out


@pytest.fixture(scope="session")
def client():
    """A real distributed LocalCluster with worker processes, shared by the session."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address=None, memory_limit="4GiB",
    )
    cl = Client(cluster)
    yield cl
    cl.close()
    cluster.close()


def astropy_pixels(path: Path, index: int) -> np.ndarray:
    """What astropy reads for one HDU, BZERO/BSCALE applied, native byte order."""
    with fits.open(path) as hdul:
        data = hdul[index].data
        return data.astype(data.dtype.newbyteorder("="))
