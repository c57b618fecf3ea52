"""The U-Net family: published parameter counts, receptive radius, BN folding, weight files."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from crscale.io.errors import InputError
from crscale.models import (
    PRESETS,
    ModelCard,
    UNet,
    UNetConfig,
    count_parameters,
    fold_batchnorm,
    load_model,
    load_weights,
    preset,
    save_model,
)


def _with_bn_stats(model: UNet, seed: int = 0) -> UNet:
    """Give BatchNorm layers non-trivial running statistics, as a trained model has."""
    torch.manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(2, model.config.in_channels, 64, 64) * 3 + 1)
    return model.eval()


def test_deepcr_3_32_has_the_published_parameter_count():
    # deepCR (Zhang & Bloom 2020): 467,233 parameters for the depth-3, 32-channel BatchNorm U-Net.
    assert count_parameters(UNet(preset("deepcr-3-32"))) == 467_233


def test_groupnorm_twin_and_attention_variants():
    base = count_parameters(UNet(preset("deepcr-3-32")))
    gn = UNet(preset("gn-3-32"))
    assert count_parameters(gn) == base  # GroupNorm has the same affine parameters as BatchNorm
    assert any(isinstance(m, torch.nn.GroupNorm) for m in gn.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in gn.modules())
    for name in ("deepcr-3-32-att", "gn-3-32-att"):
        model = UNet(preset(name))
        gates = [m for m in model.modules() if m.__class__.__name__ == "AttentionGate"]
        assert len(gates) == model.config.depth - 1  # one per skip connection
        extra = count_parameters(model) / base - 1
        # The attention paper: gates cost about 1 % more parameters.
        assert 0.005 < extra < 0.02, extra


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(KeyError, match="deepcr-3-32"):
        preset("nope")


def test_config_validation():
    with pytest.raises(ValueError, match="norm"):
        UNetConfig(norm="layer")
    with pytest.raises(ValueError, match="groups"):
        UNetConfig(norm="group", width=30, groups=8)


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_receptive_radius_bounds_the_measured_support(depth):
    model = _with_bn_stats(UNet(UNetConfig(depth=depth, width=8)))
    size = 160
    with torch.no_grad():
        base = model(torch.zeros(1, 1, size, size))
        support = torch.zeros(size, size, dtype=torch.bool)
        # Impulses at every position of the pooling grid, so no alignment hides a longer reach.
        for off in range(2 ** (depth - 1)):
            x = torch.zeros(1, 1, size, size)
            x[0, 0, 80 + off, 80 + off] = 50.0
            diff = (model(x) - base).abs()[0, 0] > 0
            ys, xs = torch.nonzero(diff, as_tuple=True)
            reach = max((ys - 80 - off).abs().max(), (xs - 80 - off).abs().max())
            assert reach <= model.config.receptive_radius
            support |= diff
    assert support.any()


def test_fold_batchnorm_is_the_same_function():
    model = _with_bn_stats(UNet(preset("deepcr-3-32-att")))
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 1, 64, 96) * 5
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["deepcr-3-32", "deepcr-3-32-att", "gn-3-32"])
def test_inference_relu_in_place_is_the_same_function_and_training_keeps_its_gradients(name):
    """Without gradients (inference) every ReLU runs in place, a third of the CPU time saved;
    the outputs are those of the plain ReLU, and training's backward pass is unchanged."""
    from crscale.models.unet import _relu

    model = _with_bn_stats(UNet(preset(name)))
    x = torch.randn(2, 1, 64, 96, generator=torch.Generator().manual_seed(1)) * 5
    with torch.inference_mode():
        assert _relu() is torch.relu_
        fast = model(x)
    assert _relu() is torch.relu
    out = model(x)  # gradients kept: the plain ReLU
    assert torch.equal(fast, out.detach())
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().max()) > 0 for g in grads if g is not None)


def test_save_and_load_round_trip(tmp_path):
    model = _with_bn_stats(UNet(preset("deepcr-3-32")))
    card = ModelCard(name="roundtrip", architecture={}, recommended_threshold=0.3, notes="test")
    path = save_model(model, card, tmp_path / "m")
    assert path.suffix == ".safetensors" and (tmp_path / "m.json").exists()
    # safetensors: an 8-byte little-endian header length, then a JSON header; no pickle anywhere.
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    assert "crscale_card" in header["__metadata__"]
    card_json = json.loads((tmp_path / "m.json").read_text())
    assert card_json["parameters"] == 467_233
    assert card_json["architecture"]["depth"] == 3 and card_json["normalisation"]["method"] == "robust-asinh"
    loaded, card2 = load_weights(path)
    assert card2.recommended_threshold == 0.3 and card2.receptive_radius == model.config.receptive_radius
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    # The card inside the weight file suffices when the JSON twin is lost.
    (tmp_path / "m.json").unlink()
    assert load_weights(path)[1].name == "roundtrip"


def test_bad_weight_files_name_the_file(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x80\x04\x95 this is a pickle, not safetensors")
    with pytest.raises(InputError, match="junk.safetensors"):
        load_weights(junk)
    with pytest.raises(InputError, match="not found"):
        load_weights(tmp_path / "missing.safetensors")
    # Weights that do not fit the card's architecture.
    model = UNet(preset("deepcr-2-32"))
    save_model(model, ModelCard(name="x", architecture={}), tmp_path / "x")
    card = json.loads((tmp_path / "x.json").read_text())
    card["architecture"]["depth"] = 3
    (tmp_path / "x.json").write_text(json.dumps(card))
    with pytest.raises(InputError, match="architecture"):
        load_weights(tmp_path / "x.safetensors")
    with pytest.raises(InputError, match="unknown model"):
        load_model("no-such-model")


def test_every_preset_builds_and_runs():
    for name, cfg in PRESETS.items():
        model = UNet(cfg).eval()
        with torch.no_grad():
            out = model(torch.randn(1, 1, 32, 40))
        assert out.shape == (1, 1, 32, 40), name
