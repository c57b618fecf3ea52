"""The device path (crscale.detection.torch_block): equal to the numpy reference, block = whole image."""

from __future__ import annotations

import threading

import dask
import numpy as np
import pytest
import torch
from astropy.io import fits
from scipy import ndimage

import crscale
from conftest import FZ, SAAO
from crscale.detection import get_predictor
from crscale.detection.inpaint import INPAINT_RADIUS, inpaint
from crscale.detection.inpaint_torch import DEVICE_METHODS, inpaint_tensor
from crscale.detection.torch_block import PACKED_DTYPE, check_layout, detect_torch, use_torch_path
from crscale.engine.blocks import BLOCK_DTYPE
from crscale.train.footprints import load_itl_footprints
from crscale.train.inject import inject_crs

CUDA = torch.cuda.is_available()
END_TO_END = ("harmonic", "median")


@pytest.fixture(scope="module")
def library():
    return load_itl_footprints()


@pytest.fixture(scope="module")
def frame(library):
    """A 256 x 384 cut of the real BANZAI frame with real ITL CRs, a NaN streak and a DQ plane."""
    image = fits.getdata(FZ, "SCI").astype(np.float32)[300:556, 500:884]
    image = inject_crs(image, library, np.random.default_rng(11), rate=4e-4).image
    image[40:52, 100] = np.nan
    dq = np.zeros(image.shape, np.uint8)
    dq[200:203, 10:60] = 4
    return image, dq


@pytest.fixture(scope="module")
def both(frame):
    """The numpy reference and the torch path (CPU, float32) on the same frame: default and host-only methods.

    (The other methods' device inpainting is compared with the reference directly, below.)
    """
    image, dq = frame
    sat = float(np.nanpercentile(image, 99.99))
    out = {}
    for method in END_TO_END:
        kw = dict(precision="float32", dq=dq, saturation=sat, inpaint_method=method, device="cpu")
        out[method] = tuple(crscale.detect(image, backend=b, **kw) for b in ("numpy", "torch"))
    return out


def test_backend_choice():
    assert not use_torch_path("auto", torch.device("cpu"))
    assert use_torch_path("auto", torch.device("cuda"))
    assert use_torch_path("torch", torch.device("cpu"))
    assert not use_torch_path("numpy", torch.device("cuda"))
    with pytest.raises(ValueError, match="backend must be one of"):
        use_torch_path("jax", torch.device("cpu"))
    assert check_layout(BLOCK_DTYPE) == BLOCK_DTYPE
    with pytest.raises(ValueError, match="layout field 'prob'"):
        check_layout(np.dtype([("prob", "f8")]))


@pytest.mark.parametrize("method", END_TO_END)
def test_torch_path_equals_the_numpy_reference(both, method):
    ref, dev = both[method]
    assert ref.info["backend"] == "numpy" and dev.info["backend"] == "torch"
    np.testing.assert_array_equal(dev.bad, ref.bad)
    assert ref.bad.sum() > 150 and ref.mask.sum() > 100
    # The same network calls on inputs equal to float rounding (asinh differs in the last bit).
    np.testing.assert_allclose(dev.prob, ref.prob, atol=1e-5, rtol=0)
    near = np.abs(ref.prob - ref.threshold) < 1e-5
    assert not ((dev.mask != ref.mask) & ~near).any()
    assert np.mean(dev.mask == ref.mask) >= 0.9999
    # clean: the iterative solves reproduce the sparse direct solve to 1e-4 relative (far better).
    finite = np.isfinite(ref.clean)
    np.testing.assert_array_equal(np.isfinite(dev.clean), finite)
    rel = np.abs(dev.clean[finite] - ref.clean[finite]) / np.abs(ref.clean[finite]).clip(1e-3)
    assert rel.max() < 1e-4, rel.max()
    unmasked = ~ref.mask & finite
    np.testing.assert_array_equal(dev.clean[unmasked], ref.clean[unmasked])


def test_bf16_device_masks_agree_with_float32_reference(frame, both):
    image, dq = frame
    ref = both["harmonic"][0]
    dev = crscale.detect(image, precision="bfloat16", dq=dq, saturation=float(np.nanpercentile(image, 99.99)),
                         device="cpu", backend="torch", inpaint=False)
    assert dev.clean is None
    assert np.mean(dev.mask == ref.mask) >= 0.9999


def _hard_case(library):
    """The inpainting test's hard case: real image and CRs, big blocks, thin tracks, NaN, bad rows."""
    image = fits.getdata(FZ, "SCI").astype(np.float64)[:300, :420]
    inj = inject_crs(np.zeros(image.shape, np.float32), library, np.random.default_rng(5), rate=1e-3)
    mask = inj.truth.copy()
    image = image + inj.added
    mask[120:170, 200:260] = True  # too big for the Laplace solvers and far from any donor
    mask[60:63, 30:90] = True  # a long thin track
    image[20:30, 300] = np.nan
    bad = np.zeros(image.shape, bool)
    bad[250:252, :] = True
    return image, mask, bad


@pytest.mark.parametrize("method", DEVICE_METHODS)
def test_device_inpainting_equals_reference_and_is_local(method, library):
    image, mask, bad = _hard_case(library)
    ref = inpaint(image, mask, method=method, bad=bad, fallback=50.0)
    t = torch.from_numpy
    whole = inpaint_tensor(t(image), t(mask), method=method, bad=t(bad), fallback=50.0).numpy()
    scale = np.nanmax(np.abs(image))
    np.testing.assert_allclose(whole, ref, rtol=1e-6, atol=1e-7 * scale)
    assert whole[145, 230] == np.float32(50.0)  # beyond every radius: the fallback
    halo = INPAINT_RADIUS[method]
    for y0, y1, x0, x1 in [(0, 100, 0, 140), (90, 230, 150, 330), (180, 300, 300, 420)]:
        ya, yb, xa, xb = max(y0 - halo, 0), min(y1 + halo, 300), max(x0 - halo, 0), min(x1 + halo, 420)
        sub = (slice(ya, yb), slice(xa, xb))
        block = inpaint_tensor(t(image[sub].copy()), t(mask[sub].copy()), method=method,
                               bad=t(bad[sub].copy()), fallback=50.0).numpy()
        np.testing.assert_allclose(block[y0 - ya : y1 - ya, x0 - xa : x1 - xa], whole[y0:y1, x0:x1],
                                   rtol=1e-6, atol=1e-7 * scale)
    with pytest.raises(NotImplementedError):
        inpaint_tensor(t(image), t(mask), method="median")


def test_block_layout_and_threads_share_one_model(frame, both):
    """Engine layout straight from the device; two threads on one predictor give the same blocks."""
    image, dq = frame
    pred = get_predictor("default", device="cpu", precision="float32")
    whole = both["harmonic"][0]
    sat = float(np.nanpercentile(image, 99.99))
    out: dict[int, np.ndarray] = {}

    def run(k: int, y0: int) -> None:
        blk = image[y0 : y0 + 200]  # the second block runs past the frame: 136 rows
        out[k] = detect_torch(blk, pred=pred, stats=whole.stats, threshold=whole.threshold,
                              dq=dq[y0 : y0 + 200], saturation=sat, origin=(y0, 0), layout=BLOCK_DTYPE).packed

    threads = [threading.Thread(target=run, args=(k, y0)) for k, y0 in enumerate((0, 120))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert out[0].dtype == BLOCK_DTYPE and out[0].shape == (200, 384) and out[1].shape == (136, 384)
    assert PACKED_DTYPE.names == ("prob", "clean", "mask", "bad")
    halo = 64
    np.testing.assert_allclose(out[0]["prob"][: 200 - halo], whole.prob[: 200 - halo], atol=1e-5)
    np.testing.assert_allclose(out[1]["prob"][halo:136], whole.prob[120 + halo : 256], atol=1e-5)


def test_engine_on_the_device_path_equals_whole_image(client, tmp_path, library):
    """The engine with ``crscale.detect.backend: torch`` (CPU workers) equals crscale.detect."""
    from crscale.engine.detect_stage import detect_archive
    from crscale.engine.ingest import ingest
    from crscale.io.archive import Archive
    from crscale.io.inputs import InputSpec

    with fits.open(SAAO) as hdul:  # a 256 x 256 cut of the real SAAO frame with real ITL CRs
        header = hdul[0].header.copy()
        data = hdul[0].data.astype(np.float32)[:256, :256]
    gain = float(header["GAIN"])
    res = inject_crs(data * gain, library, np.random.default_rng(4), n=40)
    for key in ("BZERO", "BSCALE"):
        header.remove(key, ignore_missing=True)
    fits.PrimaryHDU((res.image / gain).astype(np.float32), header).writeto(tmp_path / "saao.fits")
    path = tmp_path / "a.zarr"
    spec = InputSpec(str(tmp_path / "saao.fits"))
    assert ingest([spec], path, client=client, chunks=[61, 53], progress=False, echo=None).ok
    with dask.config.set({"crscale.detect.backend": "torch"}):
        report = detect_archive(path, client=client, precision="float32", block=[122, 106], progress=False,
                                echo=None)
    assert report.ok, report.summary()
    assert report.settings["backend"] == "torch"
    arch = Archive(path)
    (eid,) = arch.exposure_ids()
    for det in arch.detectors(eid):
        group = arch.root[f"exposures/{eid}/{det}"]
        attrs = dict(group.attrs)
        image, dq = group["image"][:], group["dq"][:] if "dq" in group else None
        whole = crscale.detect(image, gain=attrs["gain"], readnoise=attrs["readnoise"], dq=dq,
                               saturation=attrs["saturation"], precision="float32", backend="numpy")
        mask = group["mask"][:].astype(bool)
        np.testing.assert_allclose(group["prob"][:], whole.prob, atol=1e-5, rtol=0)
        near = np.abs(whole.prob - whole.threshold) < 1e-5
        assert not ((mask != whole.mask) & ~near).any()
        assert whole.mask.sum() > 20
        np.testing.assert_allclose(group["clean"][:], whole.clean, rtol=1e-5, atol=1e-5 * whole.stats.noise,
                                   equal_nan=True)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_path_agrees_with_cpu_reference(frame):
    image, dq = frame
    ref = crscale.detect(image, dq=dq, precision="float32", device="cpu", backend="numpy")
    for precision in ("float32", "auto"):
        dev = crscale.detect(image, dq=dq, precision=precision, device="cuda", backend="auto")
        assert dev.info["backend"] == "torch"
        assert np.mean(dev.mask == ref.mask) >= 0.9999
        if precision == "float32":
            np.testing.assert_allclose(dev.prob, ref.prob, atol=1e-4)
            ok = np.isfinite(ref.clean) & ~ndimage.binary_dilation(ref.mask != dev.mask, iterations=30)
            np.testing.assert_allclose(dev.clean[ok], ref.clean[ok], rtol=1e-4, atol=1e-4 * ref.stats.noise)
