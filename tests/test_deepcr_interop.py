"""crscale running deepCR's shipped models gives deepCR's own probabilities.

On a real image (the bundled LCO BANZAI frame, gain 1 e-/ADU), pip deepCR's
``clean(segment=False, binary=False)`` and ``crscale.detect(model="deepcr:<name>")`` must agree
to float rounding at every pixel at least the receptive radius (10 px for these depth-2
networks) from the image edge. Nearer the edge the two conventions differ: deepCR zero-pads the
input of *every* convolution at the image edge, crscale zero-pads the normalised *image* once
(so that tiles and dask blocks reproduce whole-image inference), and the hidden layers then see
their own response to that padding, not zeros. That band is checked separately below.
"""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

import crscale
from crscale.detection import DetectResult
from crscale.io.errors import InputError
from crscale.models.deepcr import deepcr_model_names, load_deepcr

deepcr_module = pytest.importorskip("deepCR")

# deepCR builds its WFC3-UVIS network with the deprecated torch.nn.utils.weight_norm.
pytestmark = pytest.mark.filterwarnings("ignore:.*weight_norm.* is deprecated:FutureWarning")

BANZAI = crscale.sample_data_dir() / "images" / "banzai_test_frame.fits.fz"
#: A crop whose sides are multiples of 4, so deepCR adds none of its own top-left padding.
CROP = (slice(200, 712), slice(300, 812))
TOL = 1e-5


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """512 x 512 of a real LCO frame (electrons: gain 1), with stars, sky and real CRs."""
    return fits.getdata(BANZAI, "SCI").astype(np.float32)[CROP].copy()


def _deepcr_prob(name: str, img: np.ndarray) -> np.ndarray:
    net = deepcr_module.deepCR(mask=name, device="CPU")
    return np.asarray(net.clean(img, threshold=0.5, inpaint=False, binary=False, segment=False), np.float32)


@pytest.fixture(scope="module")
def results(image: np.ndarray) -> dict[str, tuple[np.ndarray, DetectResult]]:
    """deepCR's and crscale's probabilities per model, computed once for the module."""
    out = {}
    for name in ("ACS-WFC", "decam", "WFC3-UVIS"):
        ref = _deepcr_prob(name, image)
        # One tile covers the image: the comparison is of the network, not of the tiling.
        ours = crscale.detect(
            image, model=f"deepcr:{name}", gain=1.0, precision="float32", tile=512, inpaint=False
        )
        out[name] = (ref, ours)
    return out


def test_model_names_listed():
    names = deepcr_model_names()
    assert {"ACS-WFC", "decam", "WFC3-UVIS", "example_model"} <= set(names)


def test_unknown_name_lists_known():
    with pytest.raises(InputError, match="ACS-WFC.*decam"):
        load_deepcr("no-such-model")


@pytest.mark.parametrize(
    ("name", "norm", "method", "scale"),
    [
        ("ACS-WFC", "batch", "scale", 1.0),
        ("example_model", "batch", "scale", 100.0),
        ("WFC3-UVIS", "none", "meanstd", None),
    ],
)
def test_card_and_parameters(name, norm, method, scale):
    model, card = load_deepcr(name)
    assert not model.training
    assert card.name == f"deepcr:{name}"
    assert card.config.depth == 2 and card.config.width == 32 and card.config.norm == norm
    assert card.normalisation["method"] == method
    assert card.normalisation.get("scale") == scale
    assert card.recommended_threshold == 0.5
    assert "BSD-3-Clause" in card.licence
    ref = deepcr_module.deepCR(mask=name, device="CPU").maskNet
    if norm == "batch":  # weight norm stores two tensors (g, v) per weight, so counts differ there
        assert card.parameters == sum(p.numel() for p in ref.parameters())


@pytest.mark.parametrize("name", ["ACS-WFC", "decam", "WFC3-UVIS"])
def test_probabilities_match_deepcr(results, name):
    ref, ours = results[name]
    r = load_deepcr(name)[1].receptive_radius  # 10 px: the reach of the edge padding
    inner = (slice(r, -r), slice(r, -r))
    diff = np.abs(ours.prob - ref)[inner]
    assert diff.max() < TOL, f"{name}: max |crscale - deepCR| = {diff.max():.2e} away from the edge"
    np.testing.assert_array_equal(ours.mask[inner], ref[inner] > 0.5)
    # The comparison is not vacuous: the interior holds CR-like detections and clear sky.
    assert 0 < int((ref[inner] > 0.5).sum()) < 0.05 * ref[inner].size


def test_deepcr_top_left_padding_reproduced_by_origin(image):
    # deepCR pads an image whose sides are not multiples of 4 with zeros at the top and left,
    # which moves its pooling grid; passing that padding as the origin puts crscale's tiles
    # on the same grid.
    img = image[:253, :254]
    pad = (-img.shape[0] % 4, -img.shape[1] % 4)
    ref = _deepcr_prob("ACS-WFC", img)
    ours = crscale.detect(
        img, model="deepcr:ACS-WFC", gain=1.0, precision="float32", inpaint=False, origin=pad
    )
    r = 10
    assert np.abs(ours.prob - ref)[r:-r, r:-r].max() < TOL


def test_tiling_invariant(image):
    # Small tiles with halos give the one-tile result everywhere, edge band included.
    img = image[:256, :256]
    one = crscale.detect(img, model="deepcr:ACS-WFC", precision="float32", tile=256, inpaint=False)
    many = crscale.detect(img, model="deepcr:ACS-WFC", precision="float32", tile=64, inpaint=False)
    assert np.abs(one.prob - many.prob).max() < TOL


def test_edge_band_agrees_with_deepcr(results):
    # crscale mirrors the image beyond its edges; zeros there would look like a cliff to a
    # model fed electrons (deepCR's 'scale' normalisation) and flag the outer ~8 px.
    ref, ours = results["ACS-WFC"]
    band = np.ones(ref.shape, bool)
    band[10:-10, 10:-10] = False
    disagree = int(((ref > 0.5) != ours.mask)[band].sum())
    assert disagree <= 0.001 * band.sum(), f"{disagree} edge-band pixels disagree with deepCR"
