"""crscale train on the bundled real images: patch store, checkpoints, resume, model card, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from safetensors.torch import load_file
from scipy import ndimage

import crscale
from crscale.cli import main
from crscale.io.errors import InputError
from crscale.train import TrainConfig, train
from tests.conftest import EMMI, FZ, GMOS, SAAO


def _config(tmp_path, name="tiny", **extra) -> TrainConfig:
    cfg = {
        "name": name,
        "architecture": {"depth": 2, "width": 8, "norm": "batch"},
        "train_images": [str(SAAO), str(EMMI)],
        "val_images": [str(GMOS)],
        "epochs": 3,
        "steps_per_epoch": 3,
        "batch_size": 4,
        "patch": 64,
        "patch_stride": 64,
        "seed": 5,
        "workdir": str(tmp_path / "work"),
        **extra,
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return TrainConfig.from_yaml(path)


def test_train_writes_a_model_with_its_card_and_store(tmp_path):
    cfg = _config(tmp_path)
    res = train(cfg, progress=False, log=lambda *_: None)
    card = json.loads(res.model_path.with_suffix(".json").read_text())
    assert card["name"] == "tiny" and card["architecture"]["depth"] == 2
    assert card["training"]["epochs_run"] == 3 and len(card["training"]["history"]) == 3
    assert [s["path"] for s in card["training"]["val_sources"]] == [str(GMOS)]
    assert {"tpr@fpr=1e-3", "tpr@fpr=1e-4", "threshold_table"} <= set(card["validation"])
    # BatchNorm two-phase schedule: batch statistics for 40 % of the epochs (1 of 3), frozen after.
    assert [h["bn"] for h in card["training"]["history"]] == ["batch-stats", "frozen", "frozen"]
    import zarr

    store = zarr.open_group(str(cfg.workdir_path / "patches.zarr"), mode="r")
    assert store["train/image"].shape[1:] == (64, 64) and store["train/image"].shape[0] > 10
    assert store["val/0/truth"][...].sum() > 0  # real CR footprints injected into the held-out image
    # The trained file works in crscale.detect.
    img = np.asarray(store["val/0/image"][...])
    out = crscale.detect(img, model=str(res.model_path), inpaint=False)
    assert out.prob.shape == img.shape


def test_resume_gives_the_same_model_as_an_uninterrupted_run(tmp_path):
    full = train(_config(tmp_path / "a"), progress=False, log=lambda *_: None)
    # Interrupted after epoch 2 of 3 (the checkpoint holds epoch 2), then resumed.
    cfg_b = _config(tmp_path / "b")
    train(TrainConfig(**{**cfg_b.__dict__, "epochs": 2}), progress=False, log=lambda *_: None)
    ckpt = json.loads((cfg_b.workdir_path / "checkpoint.json").read_text())
    assert ckpt["epoch"] == 1  # zero-based: two epochs done
    # Resuming with the full schedule: the BN phase boundary is the same (round(0.4 * 3) = 1).
    resumed = train(cfg_b, progress=False, log=lambda *_: None)
    a, b = load_file(str(full.model_path)), load_file(str(resumed.model_path))
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k].numpy(), b[k].numpy()), k


def test_config_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nepochz: 3\n")
    with pytest.raises(InputError, match="epochz"):
        TrainConfig.from_yaml(bad)
    both = tmp_path / "both.yaml"
    both.write_text(yaml.safe_dump({"train_images": [str(SAAO)], "val_images": [str(SAAO)],
                                    "workdir": str(tmp_path / "w")}))
    with pytest.raises(ValueError, match="both"):
        train(TrainConfig.from_yaml(both), progress=False, log=lambda *_: None)
    missing = tmp_path / "missing.yaml"
    missing.write_text(yaml.safe_dump({"train_images": ["nope.fits"], "workdir": str(tmp_path / "w")}))
    assert main(["train", str(missing), "--no-progress"]) == 2


def test_unreadable_training_files_are_skipped_and_recorded(tmp_path):
    from tests.conftest import make_bad_inputs

    bad = make_bad_inputs(tmp_path / "bad")
    messages: list[str] = []
    cfg = _config(tmp_path, train_images=[str(SAAO), str(bad["junk"]), str(bad["truncated"])],
                  darks=[str(bad["empty"])], epochs=1)
    res = train(cfg, progress=False, log=messages.append)
    text = "\n".join(messages)
    assert "junk.fits" in text and "truncated.fits" in text and "empty.fits" in text
    import zarr

    store = zarr.open_group(str(cfg.workdir_path / "patches.zarr"), mode="r")
    skipped = {s["path"] for s in store.attrs["skipped_sources"]}
    assert skipped == {str(bad["junk"]), str(bad["truncated"])}
    assert [s["path"] for s in res.card.training["train_sources"]] == [str(SAAO)]


def test_cli_train_and_models(tmp_path, capsys):
    cfg = _config(tmp_path, epochs=1)
    yaml_path = tmp_path / "tiny.yaml"
    args = ["train", str(yaml_path), "--no-progress", "--output", str(tmp_path / "out.safetensors")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "out.safetensors" in out and "TPR@FPR=1e-3" in out
    assert (tmp_path / "out.json").exists() and cfg.name == "tiny"
    assert main(["models"]) == 0
    listing = capsys.readouterr().out
    assert "crscale-default" in listing and "467,233" in listing
    rows = {line.split()[0]: line for line in listing.splitlines() if line.startswith("crscale-")}
    assert " pixel " in rows["crscale-default"] and " global " in rows["crscale-v2-bn-3-16"]
    assert main(["models", "default"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "crscale-default"


@pytest.mark.parametrize("attention", [False, True])
def test_groupnorm_models_train_past_the_first_validation(tmp_path, attention):
    """Validation once converted a non-BatchNorm model in place (bf16, no gradients): epoch 2 failed."""
    import torch

    from crscale.detection.predictor import Predictor
    from crscale.models.card import ModelCard
    from crscale.models.unet import UNet, UNetConfig

    net = UNet(UNetConfig(depth=2, width=8, norm="group", attention=attention)).train()
    Predictor(net, ModelCard(name="t", architecture=net.config.to_dict()), device="cpu", precision="bfloat16")
    assert net.training and all(p.requires_grad and p.dtype == torch.float32 for p in net.parameters())
    arch = {"depth": 2, "width": 8, "norm": "group", "attention": attention}
    res = train(_config(tmp_path, architecture=arch, epochs=2), progress=False, log=lambda *_: None)
    card = json.loads(res.model_path.with_suffix(".json").read_text())
    assert card["training"]["epochs_run"] == 2 and card["architecture"]["norm"] == "group"
    assert all(v.dtype == torch.float32 for v in load_file(str(res.model_path)).values())


def test_the_recommended_threshold_follows_the_configured_rule():
    from crscale.train.config import TrainConfig
    from crscale.train.loop import recommended_threshold

    val = {"best_f1_threshold": 0.35, "fpr_threshold": 0.9086}
    assert recommended_threshold(val, TrainConfig()) == 0.35
    # the smallest 0.01 step at or above the validation threshold at the FPR budget
    assert recommended_threshold(val, TrainConfig(threshold_rule="fpr")) == 0.91
    assert recommended_threshold({**val, "fpr_threshold": 0.91}, TrainConfig(threshold_rule="fpr")) == 0.91
    assert recommended_threshold({**val, "fpr_threshold": 0.9991}, TrainConfig(threshold_rule="fpr")) == 0.99
    # frame-fpr: the budget on every validation frame, not only pooled
    frames = {**val, "frame_fpr_threshold": 0.9512}
    assert recommended_threshold(frames, TrainConfig(threshold_rule="frame-fpr")) == 0.96
    assert recommended_threshold(frames, TrainConfig(threshold_rule="fpr")) == 0.91
    with pytest.raises(ValueError, match="threshold_rule"):
        TrainConfig(threshold_rule="youden")
    for fpr in (0.0, 1.0, float("nan")):
        with pytest.raises(ValueError, match="threshold_fpr"):
            TrainConfig(threshold_rule="fpr", threshold_fpr=fpr)


def test_frame_fpr_threshold_keeps_every_validation_frame_within_the_budget(tmp_path):
    """Two real validation frames: at the frame-fpr threshold neither has more false pixels
    than the budget allows, and the threshold is the larger of their own ones."""
    import math

    import zarr

    from crscale.detection.normalise import compute_stats
    from crscale.models import load_weights
    from crscale.train.loop import validate

    cfg = _config(tmp_path, epochs=1, val_images=[str(GMOS), str(FZ)], threshold_rule="frame-fpr",
                  threshold_fpr=1e-3)
    res = train(cfg, progress=False, log=lambda *_: None)
    model, card = load_weights(res.model_path)
    store = zarr.open_group(str(cfg.workdir_path / "patches.zarr"), mode="r")
    val = validate(model, store, fpr=1e-3, normalisation=card.normalisation)
    assert val["frame_fpr_threshold"] >= val["fpr_threshold"]
    thr = card.recommended_threshold
    assert thr == min(0.99, math.ceil(round(val["frame_fpr_threshold"] * 100, 6)) / 100)
    rates = []
    for key in store["val"].group_keys():
        g = store["val"][key]
        img, truth, valid, bad = g["image"][...], g["truth"][...], g["valid"][...], g["bad"][...]
        stats = compute_stats(img, bad=bad | ~valid)  # as validation computes them
        p = crscale.detect(img, model=(model, card), dq=bad, stats=stats, inpaint=False, tile=448).prob
        rates.append(float(((p >= thr) & ~truth)[valid].sum() / valid.sum()))
    assert len(rates) == 2 and max(rates) <= 1e-3, rates


def test_faint_ignore_leaves_only_faint_cr_pixels_out_of_the_loss(tmp_path):
    import zarr

    from crscale.train.dataset import build_store
    from crscale.train.loop import PatchSampler

    # one store, two samplers: the same draws with and without the faint pixels left out
    plain = _config(tmp_path / "a")
    build_store(plain, tmp_path / "patches.zarr", log=lambda *_: None)
    store = zarr.open_group(str(tmp_path / "patches.zarr"), mode="r")
    faint_cfg = _config(tmp_path / "b", faint_ignore_nsigma=5.0)
    x0, t0, w0 = PatchSampler(store, plain).batch(np.random.default_rng(3), 32)
    x1, t1, w1 = PatchSampler(store, faint_cfg).batch(np.random.default_rng(3), 32)
    assert np.array_equal(x0, x1) and np.array_equal(t0, t1)
    dropped = (w0 > 0) & (w1 == 0)
    assert not ((w1 > 0) & (w0 == 0)).any()
    # only CR pixels leave the loss, and only some of them: the bright cores stay in
    assert dropped.any() and (t0[dropped] == 1).all()
    kept = (t0 == 1) & (w1 > 0)
    assert kept.sum() > 0.1 * (t0 == 1).sum()
    for bad in (0, -1.0, float("nan"), True, "5"):
        with pytest.raises(ValueError, match="faint_ignore_nsigma"):
            TrainConfig(faint_ignore_nsigma=bad)


def test_input_noise_pixel_scales_each_patch_by_its_image_pixel_noise(tmp_path):
    import zarr

    from crscale.train.dataset import build_store
    from crscale.train.loop import PatchSampler

    no_aug = {"sky_augment": {"p": 0.0}}
    plain = _config(tmp_path / "a", **no_aug)
    build_store(plain, tmp_path / "patches.zarr", log=lambda *_: None)
    store = zarr.open_group(str(tmp_path / "patches.zarr"), mode="r")
    g = store["train"]
    noise, pixel = g["noise_e"][...], g["pixel_noise_e"][...]
    assert np.all(pixel > 0) and not np.allclose(pixel, noise)
    pixel_cfg = _config(tmp_path / "b", input_noise="pixel", **no_aug)
    x0, t0, w0 = PatchSampler(store, plain).batch(np.random.default_rng(3), 16)
    x1, t1, w1 = PatchSampler(store, pixel_cfg).batch(np.random.default_rng(3), 16)
    assert np.array_equal(t0, t1) and np.array_equal(w0, w1)  # the same draws
    # away from the injected CRs the input is asinh((x - sky) / (3 noise)): the two inputs
    # differ by the ratio of the two noises of the patch's own image
    ratios = set(np.round(noise / pixel, 6))
    for a, b, t in zip(x0[:, 0], x1[:, 0], t0[:, 0], strict=True):
        away = ~ndimage.binary_dilation(t > 0, iterations=3) & (np.abs(a) > 0.05)
        r = np.sinh(b[away]) / np.sinh(a[away])
        assert np.allclose(r, np.median(r), rtol=1e-3)
        assert min(abs(float(np.median(r)) - q) for q in ratios) < 1e-4
    for bad in ("local", "", None):
        with pytest.raises(ValueError, match="input_noise"):
            TrainConfig(input_noise=bad)
