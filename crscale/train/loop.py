"""The training loop: label-free recipe of the seed papers, resumable, with validation each epoch.

Each step draws patches of real science images (cleaned of their own CRs), applies random
flips/rotations and the deepCR sky-level augmentation, injects real CR footprints (the
bundled LSST ITL dark-frame CRs and/or the user's darks) whose masks are the truth, and
normalises each patch exactly as :func:`crscale.detect` normalises a whole image. Adam
(lr 0.005), BCE or a median-frequency-weighted BCE, deepCR's two-phase BatchNorm schedule,
learning-rate decay ×0.1 when the validation loss stalls for 4 epochs. A checkpoint after
every epoch (safetensors + JSON, never a pickle) makes the run resumable with identical results.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from crscale._logging import Reporter, reporter
from crscale.detection.api import detect
from crscale.detection.badpix import fill_bad
from crscale.detection.normalise import ImageStats, compute_stats, needs_pixel_noise, normalise
from crscale.detection.predictor import Predictor
from crscale.errors import SettingsError
from crscale.injection.faint import faint_pixels
from crscale.injection.inject import inject_crs, sky_augment
from crscale.injection.metrics import pixel_metrics, roc_curve, threshold_at_fpr, tpr_at_fpr
from crscale.models.card import ModelCard, input_normalisation
from crscale.models.presets import preset
from crscale.models.store import save_model
from crscale.models.unet import UNet, UNetConfig, count_parameters
from crscale.train.config import TrainConfig
from crscale.train.dataset import STORE_VERSION, build_store, config_key, cr_libraries

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """Outcome of :func:`train`."""

    model_path: Path
    card: ModelCard
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def _architecture(arch) -> UNetConfig:
    return preset(arch) if isinstance(arch, str) else UNetConfig(**arch)


class PatchSampler:
    """Draws training batches from the patch store (all in memory: a few hundred MB at most)."""

    def __init__(self, store, config: TrainConfig, *, log: Reporter | None = None):
        g = store["train"]
        self.image = g["image"][...]
        self.ignore = g["ignore"][...]
        self.bad = g["bad"][...]
        self.sky = g["sky_e"][...]
        # The noise the input is scaled by; the sky augmentation transforms either kind alike.
        self.normalisation = input_normalisation(config.input_noise)
        self.noise = g["pixel_noise_e" if needs_pixel_noise(self.normalisation) else "noise_e"][...]
        self.rn = g["readnoise_e"][...]
        self.weight = g["weight"][...]
        self.config = config
        self.libs = cr_libraries(config, log=lambda *_: None)  # build_store already said what it skipped

    def batch(self, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(inputs, targets, loss weights), each (B, 1, P, P) float32."""
        cfg, aug = self.config, self.config.sky_augment
        xs, ts, ws = [], [], []
        for i in rng.choice(len(self.image), size=size, p=self.weight):
            k, fr, fc = int(rng.integers(4)), bool(rng.integers(2)), bool(rng.integers(2))
            img, ign, bad = (_orient(a[i], k, fr, fc) for a in (self.image, self.ignore, self.bad))
            sky, noise = float(self.sky[i]), float(self.noise[i])
            if rng.random() < aug.p:
                img, par = sky_augment(
                    img,
                    rng,
                    sky_e=sky,
                    # YAML gives lists; sky_augment unpacks (and so checks) exactly two numbers
                    scale_range=cast(tuple[float, float], tuple(aug.scale_range)),
                    add_sky_range=cast(tuple[float, float], tuple(aug.add_sky_range)),
                    p_add=aug.p_add,
                    readnoise_e=float(self.rn[i]),
                    return_params=True,
                )
                sky = par["scale"] * sky + par["added_sky"]
                noise = math.sqrt((par["scale"] * noise) ** 2 + par["added_variance"])
            lib = self.libs[int(rng.integers(len(self.libs)))]
            inj = inject_crs(
                img,
                lib,
                rng,
                rate=cfg.cr_rate,
                avoid=bad,
                noise_e=noise,
                rescale_noise=lib.noise_e is not None,
            )
            stats = ImageStats(sky=sky, noise=noise, pixel_noise=noise)
            x = fill_bad(normalise(np.where(bad, 0, inj.image), stats, self.normalisation), bad)
            xs.append(x)
            ts.append(inj.truth & ~bad)
            if cfg.faint_ignore_nsigma is None:
                ws.append(~ign)
            else:
                faint = faint_pixels(
                    inj.added, inj.truth, img, readnoise_e=float(self.rn[i]), nsigma=cfg.faint_ignore_nsigma
                )
                ws.append(~(ign | faint))
        f = lambda a: np.ascontiguousarray(np.stack(a)[:, None], dtype=np.float32)  # noqa: E731
        return f(xs), f(ts), f(ws)


#: The validation figures kept in the history and the model card.
VAL_KEYS = ("loss", "tpr@fpr=1e-4", "tpr@fpr=1e-3", "precision@tpr=0.95", "f1", "best_f1_threshold")


def _orient(a: np.ndarray, k: int, flip_rows: bool, flip_cols: bool) -> np.ndarray:
    return np.rot90(a[:: -1 if flip_rows else 1, :: -1 if flip_cols else 1], k)


def _loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, kind: str) -> torch.Tensor:
    per_pixel = nn.functional.binary_cross_entropy_with_logits(logits.float(), target, reduction="none")
    if kind == "median-weighted":
        # Median-frequency class balancing (Eigen & Fergus 2015), the class-imbalance weighting
        # Cosmic-CoNN introduced for CR masks: each class weighted by median frequency / its frequency.
        n = weight.sum().clamp(min=1)
        f_pos = ((target * weight).sum() / n).clamp(min=1e-6)
        f_neg = (1 - f_pos).clamp(min=1e-6)
        med = (f_pos + f_neg) / 2
        weight = weight * torch.where(target > 0.5, med / f_pos, med / f_neg)
    return (per_pixel * weight).sum() / weight.sum().clamp(min=1)


def set_bn_training(model: nn.Module, training: bool) -> None:
    """Phase 1: BatchNorm normalises with batch statistics; phase 2: with its frozen running ones."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.train(training)


def validate(
    model: UNet, store, *, precision: str = "auto", fpr: float = 1e-4, normalisation: dict | None = None
) -> dict:
    """Validation loss and pixel metrics on the held-out images, predicted as :func:`crscale.detect` does.

    ``fpr_threshold`` is the smallest threshold whose false-positive rate is at most ``fpr``,
    ``frame_fpr_threshold`` the smallest at which that holds on every image;
    ``normalisation`` is the model card's (default: the robust noise, :data:`ROBUST_ASINH`).
    """
    normalisation = normalisation or input_normalisation("global")
    card = ModelCard(name="validation", architecture=model.config.to_dict(), normalisation=normalisation)
    pred = Predictor(model, card, device="cpu", precision=precision)
    probs, truths, per_image = [], [], {}
    for key in sorted(store["val"].group_keys(), key=int):
        g = store["val"][key]
        img, truth, valid, bad = g["image"][...], g["truth"][...], g["valid"][...], g["bad"][...]
        # The image's own CRs stay out of the statistics, as in training.
        stats = compute_stats(img, bad=bad | ~valid, pixel=needs_pixel_noise(normalisation))
        p = detect(img, model=pred, dq=bad, stats=stats, inpaint=False, tile=448).prob
        probs.append(p[valid])
        truths.append(truth[valid])
        per_image[g.attrs["name"]] = {
            "tpr@fpr=1e-3": tpr_at_fpr(p[valid], truth[valid], 1e-3),
            "n_cr_pixels": int(truth[valid].sum()),
        }
    p = np.concatenate(probs)
    t = np.concatenate(truths)
    eps = 1e-6
    bce = float(-np.mean(t * np.log(np.clip(p, eps, 1)) + (~t) * np.log(np.clip(1 - p, eps, 1))))
    thresholds = np.round(np.arange(0.05, 1.0, 0.05), 2)
    table = [pixel_metrics(p, t, float(th)).to_dict() for th in thresholds]
    best = max(table, key=lambda r: r["f1"])
    m = pixel_metrics(p, t, best["threshold"]).to_dict()
    # Per frame at the chosen threshold: what a user of that frame's kind gets (issue 15).
    for row, pi, ti in zip(per_image.values(), probs, truths, strict=True):
        flagged = pi >= best["threshold"]
        row["tpr"] = float((flagged & ti).sum() / max(ti.sum(), 1))
        row["fp_per_mpix"] = float(1e6 * (flagged & ~ti).sum() / max(ti.size, 1))
    return {
        "loss": bce,
        "tpr@fpr=1e-4": m["tpr_at_fpr_1e4"],
        "tpr@fpr=1e-3": m["tpr_at_fpr_1e3"],
        "precision@tpr=0.95": m["precision_at_tpr_95"],
        "best_f1_threshold": best["threshold"],
        "fpr_threshold": threshold_at_fpr(p, t, fpr),
        # Each frame within the budget, not only the pooled pixels (where a big, clean frame
        # can hide a small frame full of false pixels).
        "frame_fpr_threshold": max(
            threshold_at_fpr(pi, ti, fpr) for pi, ti in zip(probs, truths, strict=True)
        ),
        "f1": m["f1"],
        "iou": m["iou"],
        "fdr": m["fdr"],
        "n_pixels": int(t.size),
        "n_cr_pixels": int(t.sum()),
        "per_image": per_image,
        "threshold_table": [{k: r[k] for k in ("threshold", "tpr", "fpr", "f1", "fdr")} for r in table],
        "roc": {k: v.tolist() for k, v in roc_curve(p, t, n_points=60).items()},
    }


def recommended_threshold(val: dict, config: TrainConfig) -> float:
    """The model card's threshold from the best epoch's validation, by ``config.threshold_rule``.

    ``best-f1``: the threshold of the best validation F1. ``fpr``: the smallest threshold on a
    0.01 grid whose validation false-positive rate is at most ``config.threshold_fpr``
    (100 false-positive pixels per Mpix at 1e-4: a bound on what each frame of an archive gets,
    where the best F1 trades false pixels for the completeness of CR pixels below the noise).
    ``frame-fpr``: the same, with the rate at most ``config.threshold_fpr`` on every
    validation frame (the per-frame target of issue 15).
    """
    if config.threshold_rule == "best-f1":
        return float(val["best_f1_threshold"])
    key = "frame_fpr_threshold" if config.threshold_rule == "frame-fpr" else "fpr_threshold"
    return float(min(0.99, math.ceil(round(float(val[key]) * 100, 6)) / 100))


def _save_checkpoint(path: Path, model, opt, sched, epoch: int, rng, history, best) -> None:
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt_state = opt.state_dict()
    for pid, st in opt_state["state"].items():
        for k, v in st.items():
            tensors[f"opt.{pid}.{k}"] = v.detach().cpu().contiguous().reshape(v.shape)
    tensors["torch_rng"] = torch.get_rng_state()
    if best is not None:
        tensors.update({f"best.{k}": v.contiguous() for k, v in best["state"].items()})
    tmp = path.with_suffix(".tmp.safetensors")
    save_file(tensors, str(tmp))
    meta = {
        "epoch": epoch,
        "param_groups": opt_state["param_groups"],
        "scheduler": sched.state_dict(),
        "numpy_rng": rng.bit_generator.state,
        "history": history,
        "best": None if best is None else {k: v for k, v in best.items() if k != "state"},
    }
    tmp_json = path.with_suffix(".tmp.json")
    tmp_json.write_text(json.dumps(meta, default=float))
    os.replace(tmp, path.with_suffix(".safetensors"))
    os.replace(tmp_json, path.with_suffix(".json"))


def _load_checkpoint(path: Path, model, opt, sched, rng):
    tensors = load_file(str(path.with_suffix(".safetensors")))
    meta = json.loads(path.with_suffix(".json").read_text())
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    sched.load_state_dict(meta["scheduler"])
    rng.bit_generator.state = meta["numpy_rng"]
    torch.set_rng_state(tensors["torch_rng"])
    best = meta["best"]
    if best is not None:
        best["state"] = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
    return meta["epoch"], meta["history"], best


def train(
    config: TrainConfig, *, resume: bool = True, progress: bool = True, log: Reporter | None = None
) -> TrainResult:
    """Train a model from a :class:`TrainConfig`; see the module docstring for the recipe.

    The patch store (``<workdir>/patches.zarr``) is built on the first run and reused while the
    data settings do not change. With ``resume`` a checkpoint in the workdir is picked up and
    training continues from the epoch after it, giving the same result as an uninterrupted run.
    The model with the best validation TPR at 0.1 % FPR is written with its model card.
    """
    import zarr
    from tqdm.auto import tqdm

    log = reporter(logger, log)

    t_start = time.perf_counter()
    work = config.workdir_path
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(config.threads or max(os.cpu_count() or 1, 1))
    store_path = work / "patches.zarr"
    store = None
    if store_path.exists():
        store = zarr.open_group(str(store_path), mode="r")
        if store.attrs.get("crscale_patch_store") != STORE_VERSION:
            log("patch store of another crscale version: rebuilding it")
            store = None
        elif store.attrs.get("config_key") != config_key(config):
            log("data settings changed: rebuilding the patch store")
            store = None
    if store is None:
        build_store(config, store_path, log=log)
        store = zarr.open_group(str(store_path), mode="r")

    arch = _architecture(config.architecture)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = UNet(arch)
    model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # not in torch's overloads
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt,
        mode="min",
        factor=config.lr_factor,
        patience=config.lr_patience,
        threshold=config.lr_threshold,
        threshold_mode="rel",
    )
    sampler = PatchSampler(store, config, log=log)
    ckpt = work / "checkpoint"
    start, history, best = 0, [], None
    if resume and ckpt.with_suffix(".json").exists():
        start, history, best = _load_checkpoint(ckpt, model, opt, sched, rng)
        start += 1
        log(f"resuming from the checkpoint after epoch {start} of {config.epochs}")

    bf16 = config.precision in ("auto", "bfloat16") and _cpu_bf16()
    bn_epochs = int(round(config.bn_train_fraction * config.epochs)) if arch.norm == "batch" else 0
    bn_note = f", BatchNorm statistics frozen after epoch {bn_epochs}" if bn_epochs else ""
    log(
        f"training {config.name}: {config.architecture} ({count_parameters(model):,} parameters), "
        f"{len(sampler.image)} patches, {config.epochs} epochs x {config.steps_per_epoch} steps x "
        f"{config.batch_size}, {'bf16 autocast' if bf16 else 'float32'}{bn_note}"
    )
    for epoch in range(start, config.epochs):
        model.train()
        set_bn_training(model, epoch < bn_epochs or arch.norm != "batch")
        losses = []
        bar = tqdm(
            range(config.steps_per_epoch),
            desc=f"epoch {epoch + 1}/{config.epochs}",
            unit="step",
            disable=not progress,
            leave=False,
        )
        for _ in bar:
            x, t, w = (torch.from_numpy(a) for a in sampler.batch(rng, config.batch_size))
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = model(x)
            loss = _loss(logits, t, w, config.loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        bar.close()
        model.eval()
        val = validate(model, store, precision="auto" if bf16 else "float32", fpr=config.threshold_fpr,
                       normalisation=input_normalisation(config.input_noise))
        sched.step(val["loss"])
        row = {
            "epoch": epoch + 1,
            "train_loss": float(np.mean(losses)),
            "lr": opt.param_groups[0]["lr"],
            # BatchNorm phase; None for GroupNorm models, which have no running statistics.
            "bn": ("batch-stats" if epoch < bn_epochs else "frozen") if arch.norm == "batch" else None,
            **{k: val[k] for k in VAL_KEYS},
            "seconds": time.perf_counter() - t_start,
        }
        history.append(row)
        # Best by the target figure; judged only once BatchNorm statistics are frozen, because
        # running statistics with deepCR's momentum 0.005 lag the weights during phase 1.
        eligible = epoch >= bn_epochs or bn_epochs == 0 or epoch == config.epochs - 1
        if eligible and (best is None or val["tpr@fpr=1e-3"] > best["val"]["tpr@fpr=1e-3"]):
            best = {
                "epoch": epoch + 1,
                "val": val,
                "state": {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()},
            }
        log(
            f"epoch {epoch + 1}/{config.epochs}: train loss {row['train_loss']:.4f}, "
            f"val loss {val['loss']:.4f}, "
            f"TPR@FPR=1e-3 {val['tpr@fpr=1e-3']:.4f}, TPR@FPR=1e-4 {val['tpr@fpr=1e-4']:.4f}, "
            f"F1 {val['f1']:.3f} (thr {val['best_f1_threshold']}), lr {row['lr']:.1e}"
            + (f", BN {row['bn']}" if row["bn"] else "")
        )
        _save_checkpoint(ckpt, model, opt, sched, epoch, rng, history, best)

    if best is None:
        raise SettingsError("no epoch was run: epochs must be > 0")
    model.load_state_dict(best["state"])
    model.eval()
    seconds = time.perf_counter() - t_start
    val = best["val"]
    card = ModelCard(
        name=config.name,
        architecture=arch.to_dict(),
        normalisation=input_normalisation(config.input_noise),
        recommended_threshold=recommended_threshold(val, config),
        training={
            "recipe": "label-free: real science images cleaned of their own CRs (astroscrappy) + "
            "injected real "
            "CR footprints with random positions, flips and rotations; deepCR sky augmentation",
            "config": config.to_dict(),
            "epochs_run": len(history),
            "best_epoch": best["epoch"],
            "train_sources": store.attrs["train_sources"],
            "val_sources": store.attrs["val_sources"],
            "history": history,
            "seconds": seconds,
            "torch": torch.__version__,
            "architecture_preset": config.architecture if isinstance(config.architecture, str) else None,
        },
        validation={
            k: val[k]
            for k in (
                *VAL_KEYS,
                "iou",
                "fdr",
                "n_pixels",
                "n_cr_pixels",
                "per_image",
                "threshold_table",
            )
        },
        notes=config.notes,
    )
    path = save_model(model, card, config.output_path)
    log(
        f"wrote {path} (best epoch {best['epoch']}, TPR@FPR=1e-3 {val['tpr@fpr=1e-3']:.4f}, "
        f"recommended threshold {card.recommended_threshold}) in {seconds / 60:.1f} min"
    )
    return TrainResult(path, card, history, seconds)


def _cpu_bf16() -> bool:
    from crscale.detection.predictor import cpu_has_fast_bf16

    return cpu_has_fast_bf16()
