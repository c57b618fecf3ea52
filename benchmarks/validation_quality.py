"""Quality of a crscale model against astroscrappy on held-out real images with injected real CRs.

Builds (or reuses) the validation set of a training config: whole real images never used for
training, with real LSST ITL CR footprints injected at known positions (the truth), their own
CRs found by astroscrappy and left out. Runs the model as ``crscale.detect`` does, and
astroscrappy over a sigclip sweep (objlim and sigfrac settable) on the same pixels, and prints
pixel TPR at 1e-4 and 1e-3 FPR for both (for astroscrappy: the best sweep point whose FPR is
within the budget), per image and pooled.

    python benchmarks/validation_quality.py docs/training/crscale-default.yaml [--model default]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import zarr

import crscale
from crscale.evaluate.metrics import pixel_metrics, tpr_at_fpr
from crscale.train import TrainConfig
from crscale.train.dataset import build_store, config_key


def _astroscrappy_points(img, bad, rn, sigclips, objlim, sigfrac):
    import astroscrappy

    for s in sigclips:
        m, _ = astroscrappy.detect_cosmics(
            img,
            inmask=bad,
            gain=1.0,
            readnoise=rn,
            sigclip=s,
            sigfrac=sigfrac,
            objlim=objlim,
            satlevel=np.inf,
            niter=4,
        )
        yield s, m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", help="training config whose val_images to use")
    ap.add_argument("--model", default="default")
    ap.add_argument("--workdir", help="reuse this training workdir's patch store")
    ap.add_argument("--objlim", type=float, default=4.0)
    ap.add_argument("--sigfrac", type=float, default=0.3)
    ap.add_argument("--sigclips", default="1,1.5,2,2.5,3,3.5,4,4.5,5,6,7,8,10,12,15,20")
    args = ap.parse_args()

    cfg = TrainConfig.from_yaml(args.config)
    store_path = Path(args.workdir or cfg.workdir_path) / "patches.zarr"
    if not (
        store_path.exists()
        and zarr.open_group(str(store_path), mode="r").attrs.get("config_key") == config_key(cfg)
    ):
        store_path = Path(tempfile.mkdtemp()) / "patches.zarr"
        build_store(cfg, store_path)
    store = zarr.open_group(str(store_path), mode="r")
    sigclips = [float(s) for s in args.sigclips.split(",")]

    probs, truths = [], []
    scrappy: dict[float, list] = {s: [] for s in sigclips}
    rows = []
    for key in sorted(store["val"].group_keys(), key=int):
        g = store["val"][key]
        img, truth, valid, bad = g["image"][...], g["truth"][...], g["valid"][...], g["bad"][...]
        res = crscale.detect(img, model=args.model, dq=bad, inpaint=False)
        p = res.prob
        probs.append(p[valid])
        truths.append(truth[valid])
        best3 = 0.0
        for s, m in _astroscrappy_points(
            img, bad, float(g.attrs["readnoise_e"]), sigclips, args.objlim, args.sigfrac
        ):
            scrappy[s].append(m[valid])
            t, f = m[valid][truth[valid]].mean(), m[valid][~truth[valid]].mean()
            if f <= 1e-3:
                best3 = max(best3, t)
        rows.append(
            (
                g.attrs["name"],
                img.shape,
                int(truth[valid].sum()),
                tpr_at_fpr(p[valid], truth[valid], 1e-3),
                best3,
            )
        )
    pred = crscale.detection.get_predictor(args.model, device="auto", precision="auto")
    thr = pred.card.recommended_threshold
    print(
        f"model {args.model!r} vs astroscrappy (objlim {args.objlim}, sigfrac {args.sigfrac}, "
        f"sigclip {sigclips[0]}..{sigclips[-1]}); pixels: injected real ITL CRs, own CRs excluded"
    )
    print(f"{'image':<40} {'shape':>11} {'CR px':>7} {'crscale TPR@1e-3':>17} {'astroscrappy best':>18}")
    for name, shape, n, a, b in rows:
        print(f"{name:<40} {shape[0]:>5}x{shape[1]:<5} {n:>7} {a:>17.4f} {b:>18.4f}")
    p, t = np.concatenate(probs), np.concatenate(truths)
    m = pixel_metrics(p, t, thr)
    points = []
    for s in sigclips:
        mm = np.concatenate(scrappy[s])
        points.append((s, float(mm[t].mean()), float(mm[~t].mean()), pixel_metrics(mm.astype(float), t, 0.5)))
    print(f"\npooled over {t.size:,} pixels ({int(t.sum()):,} CR pixels):")
    print(
        f"  crscale {args.model}: TPR@FPR=1e-4 {m.tpr_at_fpr_1e4:.4f}  TPR@FPR=1e-3 {m.tpr_at_fpr_1e3:.4f}  "
        f"precision@TPR=0.95 {m.precision_at_tpr_95:.4f}  at threshold {thr}: "
        f"TPR {m.tpr:.4f} FPR {m.fpr:.2e} "
        f"F1 {m.f1:.4f} IoU {m.iou:.4f} FDR {m.fdr:.4f}"
    )
    print("  astroscrappy sweep:  sigclip   TPR      FPR       F1")
    for s, tp, fp, mm in points:
        print(f"                      {s:>7.1f}  {tp:.4f}  {fp:.2e}  {mm.f1:.4f}")
    for budget in (1e-4, 1e-3):
        ok = [(tp, s) for s, tp, fp, _ in points if fp <= budget]
        best = max(ok) if ok else (float("nan"), None)
        mine = m.tpr_at_fpr_1e4 if budget == 1e-4 else m.tpr_at_fpr_1e3
        print(
            f"  at FPR <= {budget:g}: crscale TPR {mine:.4f} vs astroscrappy best {best[0]:.4f} "
            f"(sigclip {best[1]})"
        )


if __name__ == "__main__":
    main()
