"""Training data: patches of real images, and held-out validation images with injected real CRs.

Science images are cleaned of their own CRs and cut into patches in a Zarr store; validation
images get real CR footprints injected, with their exact truth.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import zarr

from crscale._logging import Reporter, reporter
from crscale.errors import InputError, SettingsError
from crscale.injection.darks import footprints_from_dark_file
from crscale.injection.footprints import CRLibrary, load_itl_footprints
from crscale.injection.inject import inject_crs
from crscale.injection.sources import SourceImage, load_source_images
from crscale.train.config import TrainConfig

logger = logging.getLogger(__name__)

STORE_VERSION = 2


def cr_libraries(config: TrainConfig, *, log: Reporter | None = None) -> list[CRLibrary]:
    """The CR footprint libraries of a config: the bundled ITL set and/or the user's darks.

    A dark that cannot be read, or in which no CR is found, is left out with a message.
    """
    log = reporter(logger, log)
    libs: list[CRLibrary] = []
    if config.use_itl:
        libs.append(load_itl_footprints())
    for dark in config.expand(config.darks):
        try:
            lib = footprints_from_dark_file(dark, nsigma=config.dark_nsigma)
        except InputError as exc:
            log(f"skipping dark frame {exc}")
            continue
        if len(lib) == 0:
            log(f"skipping dark frame {dark}: no pixel above {config.dark_nsigma} sigma")
            continue
        libs.append(lib)
    if not libs:
        raise SettingsError("no CR footprints: set use_itl: true or give readable dark frames")
    return libs


def build_store(config: TrainConfig, path: str | Path, *, log: Reporter | None = None) -> zarr.Group:
    """Write the patch store: training patches and injected validation images.

    Layout: ``train/image`` (N, P, P) float32 electrons, ``train/ignore`` (own CRs and bad
    pixels, left out of the loss), ``train/bad``, ``train/sky_e``, ``train/noise_e``,
    ``train/readnoise_e``, ``train/pixel_noise_e``, ``train/weight`` (sampling weight: each
    source image contributes in proportion to the square root of its patch count, so that five
    frames of one field do not drown the rest); ``val/<i>/{image,truth,valid,bad}`` whole
    validation images with real CR footprints injected at ``val_cr_rate``. The attrs record
    the sources and their sha256.
    """
    log = reporter(logger, log)
    train_paths = config.expand(config.train_images)
    val_paths = config.expand(config.val_images)
    overlap = {p.resolve() for p in train_paths} & {p.resolve() for p in val_paths}
    if overlap:
        raise SettingsError(f"images in both train_images and val_images: {sorted(map(str, overlap))}")
    if not train_paths:
        raise SettingsError("train_images names no FITS file")
    log(f"reading {len(train_paths)} training and {len(val_paths)} validation file(s)")
    skipped: list[dict] = []
    train = load_source_images(
        train_paths, own_crs=config.own_crs, min_size=config.patch, skipped=skipped,
        spike_nsigma=config.ignore_spikes_nsigma,
    )
    val = load_source_images(
        val_paths, own_crs=config.own_crs, skipped=skipped,
        spike_nsigma=config.ignore_spikes_nsigma if config.val_ignore_spikes else None,
    )
    for s in skipped:
        log(f"skipping {s['path']}: {s['problem']}")
    if not train:
        raise SettingsError(f"no training image is at least {config.patch} px on a side")

    P, S = config.patch, config.patch_stride
    patches: list[np.ndarray]
    patches, ignores, bads, meta, src = [], [], [], [], []
    for k, im in enumerate(train):
        h, w = im.image_e.shape
        n0 = len(patches)
        for y in range(0, h - P + 1, S):
            for x in range(0, w - P + 1, S):
                b = im.bad[y : y + P, x : x + P]
                if b.mean() > 0.5:
                    continue
                patches.append(im.image_e[y : y + P, x : x + P])
                ignores.append(im.own_cr[y : y + P, x : x + P] | b)
                bads.append(b)
                meta.append((im.sky_e, im.noise_e, im.readnoise_e, im.pixel_noise_e or im.noise_e))
        src += [k] * (len(patches) - n0)
    src_arr = np.array(src)
    counts = np.bincount(src_arr, minlength=len(train))
    weight = 1.0 / np.sqrt(counts[src_arr])

    path = Path(path)
    root = zarr.open_group(str(path), mode="w")
    g = root.create_group("train")
    n = len(patches)
    for name, arr in (
        ("image", np.stack(patches).astype(np.float32)),
        ("ignore", np.stack(ignores)),
        ("bad", np.stack(bads)),
        ("sky_e", np.array([m[0] for m in meta], np.float64)),
        ("noise_e", np.array([m[1] for m in meta], np.float64)),
        ("readnoise_e", np.array([m[2] for m in meta], np.float64)),
        ("pixel_noise_e", np.array([m[3] for m in meta], np.float64)),
        ("weight", (weight / weight.sum()).astype(np.float64)),
        ("source", src_arr.astype(np.int32)),
    ):
        chunks = (min(256, n),) + arr.shape[1:]
        g.create_array(name, data=arr, chunks=chunks)

    rng = np.random.default_rng(config.seed + 1_000_003)
    libs = cr_libraries(config, log=log)
    vg = root.create_group("val")
    for i, im in enumerate(val):
        lib = libs[i % len(libs)]
        inj = inject_crs(
            im.image_e,
            lib,
            rng,
            rate=config.val_cr_rate,
            avoid=im.bad,
            noise_e=im.noise_e,
            rescale_noise=lib.noise_e is not None,
        )
        sub = vg.create_group(str(i))
        sub.create_array("image", data=inj.image)
        sub.create_array("truth", data=inj.truth)
        sub.create_array("valid", data=~(im.bad | im.own_cr))
        sub.create_array("bad", data=im.bad)
        sub.attrs.update(
            {
                "name": im.name,
                "path": im.path,
                "gain": im.gain,
                "readnoise_e": im.readnoise_e,
                "n_crs": int(inj.n_injected),
            }
        )
    root.attrs.update(
        {
            "crscale_patch_store": STORE_VERSION,
            "patch": P,
            "train_sources": [
                {**_provenance(im), "own_cr_pixels": int(im.own_cr.sum()), "patches": int(c)}
                for im, c in zip(train, counts, strict=True)
            ],
            "val_sources": [_provenance(im) for im in val],
            "skipped_sources": skipped,
            "config_key": config_key(config),
        }
    )
    log(
        f"patch store: {n} training patches of {P}x{P} from {len(train)} image(s); "
        f"{len(val)} validation image(s) -> {path}"
    )
    return root


def _provenance(im: SourceImage) -> dict:
    """Provenance of a source image for the store's attrs and the model card."""
    return {
        "name": im.name,
        "path": im.path,
        "sha256": im.sha256,
        "shape": list(im.image_e.shape),
        "gain": im.gain,
        "sky_e": im.sky_e,
        "noise_e": im.noise_e,
        "pixel_noise_e": im.pixel_noise_e,
    }


def config_key(config: TrainConfig) -> str:
    """What the store depends on: a changed image list, patch size or seed rebuilds it."""
    keys = (
        "train_images",
        "val_images",
        "darks",
        "dark_nsigma",
        "use_itl",
        "own_crs",
        "patch",
        "patch_stride",
        "val_cr_rate",
        "seed",
    )
    d = config.to_dict()
    return json.dumps({k: d[k] for k in keys}, sort_keys=True)
