"""Completeness of the CR catalogue per detector, measured by injecting real CR footprints.

For each detector key (see :mod:`crscale.engine.defects_stage`), a few of that detector's own
exposures (:attr:`CompletenessSettings.frames`, evenly spaced in the archive's order) are taken
from the archive (a centred cutout of at most :attr:`CompletenessSettings.cutout` pixels a
side). Into each, real LSST ITL CR footprints (electrons, converted with the detector's gain)
are painted into the frame with its own CRs removed (the archive's inpainted ``clean``, with
the frame's noise added back where it was inpainted), at
:attr:`CompletenessSettings.density` CRs per pixel or as many as the frame's own mask holds
(whichever is more, so the painted CRs meet the crowding of the real ones), with
:func:`crscale.injection.inject.inject_crs`; the image is detected again with the model and
threshold that made the archive's mask, and catalogued with the detector's defect map exactly
as the catalogue stage does (the clean frame itself too, once, for what it holds without
the painted CRs). Counting footprints centred on the usable area (not bad, not a defect):

- the **completeness** is ``C = (kind-cr rows gained) / (footprints painted)``: the number of
  catalogue CRs a true CR yields on average. Misses, CRs merged into one region and CRs taken
  for defects (or ``unverified``) all lower it, as they lower the raw counts. Its error is the
  binomial ``sqrt(C (1 - C) / n)``;
- an injected CR is *found* when one of its pixels lies in a region of kind ``cr``; the share
  found in bins of deposited charge is the completeness curve.

The per-charge detection probability (in bins of deposited charge) is kept as the
completeness curve, with ``charge_50_e``: the lowest charge from which on at least half of the
injected CRs are found. The catalogue writes ``rate_corrected = rate / C`` with the two errors
combined (:func:`crscale.catalogue.rates.corrected_rate`), and ``crscale stats`` marks the energy
spectrum below ``charge_50_e x 3.65 eV`` as incomplete.

The measurement is deterministic: the random generator is seeded from the key and the
exposure id, so re-runs give the same numbers (and byte-identical catalogues).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, cast

import numpy as np
from scipy import ndimage

from crscale import config
from crscale.catalogue.defects import DefectSettings
from crscale.catalogue.labels import STRUCTURE
from crscale.errors import SettingsError, error_text
from crscale.io.archive import Archive, array_names
from crscale.io.catalogue_schema import EV_PER_ELECTRON
from crscale.io.defect_store import read_defect_attrs, update_defect_attrs

log = logging.getLogger(__name__)

#: Bin edges of deposited charge (electrons) of the completeness curve.
CHARGE_EDGES = np.logspace(1.0, 6.0, 21)


@dataclass(frozen=True)
class CompletenessSettings:
    """Settings under ``crscale.completeness``."""

    # Defaults: crscale.yaml's completeness section, the one place they are written.
    enabled: bool = config.shipped("completeness.enabled")
    frames: int = config.shipped("completeness.frames")
    passes: int = config.shipped("completeness.passes")
    density: float = config.shipped("completeness.density")
    cutout: int = config.shipped("completeness.cutout")
    min_injected: int = config.shipped("completeness.min_injected")

    def __post_init__(self) -> None:
        if (self.frames < 1 or self.passes < 1 or self.cutout < 32 or not 0 < self.density < 0.05
                or self.min_injected < 1):
            raise SettingsError(
                "completeness: frames, passes >= 1, cutout >= 32, 0 < density < 0.05, min_injected >= 1"
            )

    @classmethod
    def from_config(cls) -> CompletenessSettings:
        """The settings under ``crscale.completeness`` (defaults where not set)."""
        given = dict(config.get("completeness") or {})
        unknown = sorted(set(given) - set(cls.__dataclass_fields__))
        if unknown:
            raise SettingsError(f"crscale.completeness: unknown setting(s) {', '.join(unknown)}")
        return cls(**given)


def _footprint_pixels(res: Any, library: Any, j: int, shape: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """Image pixels (ys, xs) and values of injected footprint ``j``."""
    from crscale.injection.inject import orient

    fp = library[int(res.indices[j])]
    k, fr, fc = int(res.rotations[j]), bool(res.flips[j, 0]), bool(res.flips[j, 1])
    mask = orient(fp.mask, k, fr, fc)
    values = orient(fp.values, k, fr, fc) * np.float32(res.scale)
    sy, sx = np.nonzero(mask)
    ys, xs = sy + int(res.origins[j, 0]), sx + int(res.origins[j, 1])
    inside = (ys >= 0) & (ys < shape[0]) & (xs >= 0) & (xs < shape[1])
    return ys[inside], xs[inside], values[sy[inside], sx[inside]]


def _cr_labels(image, mask, *, dq, codes, status, gain, saturation, background, defect_settings):
    """Catalogue one frame as the catalogue stage does; labels of the mask and which are kind cr."""
    from crscale.catalogue.detector import catalogue_detector

    cat = catalogue_detector(image, mask, background=background, dq=dq, gain=gain, saturation=saturation,
                             defects=codes, defect_map=status, defect_settings=defect_settings)
    labels, n_lab = ndimage.label(np.asarray(mask) != 0, structure=STRUCTURE)
    is_cr = np.zeros(n_lab + 1, bool)
    is_cr[1:] = np.asarray(cat.columns["kind"]) == "cr"  # catalogue ids are the raster-order labels
    return labels, is_cr


def measure_frame(
    image: np.ndarray,
    mask: np.ndarray | None,
    *,
    dq: np.ndarray | None,
    codes: np.ndarray | None,
    status: str | None,
    gain: float,
    saturation: float | None,
    model: str,
    threshold: float | None,
    n: int,
    rng: np.random.Generator,
    passes: int = 1,
    library: Any = None,
    defect_settings: DefectSettings | None = None,
) -> dict[str, Any]:
    """Inject ``n`` real CRs into one frame (``passes`` times), detect and catalogue it, and count.

    Parameters
    ----------
    image : numpy.ndarray
        The frame as archived (image units).
    mask : numpy.ndarray, optional
        Its CR mask as archived; None: detected here (for a cutout, whose edges the archived
        mask of the whole detector does not match, or for the ``clean`` frame).
    dq, codes : numpy.ndarray, optional
        Its DQ plane and defect codes.
    status : str, optional
        State of the defect map (see :func:`crscale.catalogue.defects.region_kinds`).
    gain, saturation : float
        e-/ADU and the saturation level (image units).
    model, threshold
        What made the archive's mask.
    n : int
        CRs painted per pass.
    rng : numpy.random.Generator
        Source of randomness.
    passes : int
        Independent paintings of the frame (each detected and catalogued).
    library : CRLibrary, optional
        Footprints (default: the real LSST ITL ones).
    defect_settings : DefectSettings, optional
        Default from the config.

    Returns
    -------
    dict
        ``n_injected`` (footprints centred on usable pixels), ``n_regions`` (kind-cr rows
        gained over the frame's own catalogue), ``charge`` (deposited e⁻ of each footprint
        clear of the frame's own mask) and ``found`` (one of its pixels in a kind-cr region).
    """
    from crscale.detection import detect, get_predictor
    from crscale.detection.badpix import bad_pixel_mask
    from crscale.injection.footprints import load_itl_footprints
    from crscale.injection.inject import inject_crs

    library = library or load_itl_footprints()
    image = np.asarray(image, dtype=np.float32)
    shape = image.shape
    codes = np.zeros(shape, np.uint8) if codes is None else np.asarray(codes)
    unusable = bad_pixel_mask(image, dq=dq, saturation=saturation) | (codes != 0)
    predictor = get_predictor(model)
    common = {"dq": dq, "codes": codes, "status": status, "gain": gain, "saturation": saturation,
              "defect_settings": defect_settings}

    def run(frame: np.ndarray) -> Any:
        return detect(frame, model=predictor, threshold=threshold, gain=gain, dq=dq, saturation=saturation,
                      inpaint=True)

    own_det = run(image) if mask is None else None
    own = np.asarray(own_det.mask if own_det is not None else mask) != 0
    _, own_cr = _cr_labels(image, own, background=None if own_det is None else own_det.clean, **common)
    n_before = int(own_cr.sum())
    charge, found = [], []
    n_injected = gained = 0
    for _ in range(passes):
        res = inject_crs(np.nan_to_num(image) * np.float32(gain), library, rng, n=n, avoid=unusable)
        frame = np.where(np.isfinite(image), res.image / np.float32(gain), image).astype(np.float32)
        det = run(frame)
        labels, is_cr = _cr_labels(frame, det.mask, background=det.clean, **common)
        gained += int(is_cr.sum()) - n_before
        for j in range(res.n_injected):
            ys, xs, values = _footprint_pixels(res, library, j, shape)
            if ys.size == 0:
                continue
            cy, cx = int(round(float(ys.mean()))), int(round(float(xs.mean())))
            if unusable[min(cy, shape[0] - 1), min(cx, shape[1] - 1)]:
                continue
            n_injected += 1
            if own[ys, xs].any():
                continue  # on the frame's own mask: its detection cannot be told apart
            hit = labels[ys, xs]
            charge.append(float(values.sum(dtype=np.float64)))
            found.append(bool(is_cr[hit[hit > 0]].any()))
    return {
        "charge": np.asarray(charge, np.float64),
        "found": np.asarray(found, bool),
        "n_injected": n_injected,
        "n_regions": gained,
        "n_confused": n_injected - len(found),
    }


def summarise_frames(parts: list[dict[str, Any]], *, edges: np.ndarray = CHARGE_EDGES) -> dict[str, Any]:
    """Completeness, its error and the curve from the frames of one detector."""
    n = int(sum(p["n_injected"] for p in parts))
    regions = int(sum(p["n_regions"] for p in parts))
    charge = np.concatenate([p["charge"] for p in parts]) if parts else np.zeros(0)
    found = np.concatenate([p["found"] for p in parts]) if parts else np.zeros(0, bool)
    value = regions / n if n else None
    error = float(np.sqrt(max(value * (1 - value), 1.0 / n) / n)) if value is not None else None
    idx = np.clip(np.searchsorted(edges, charge, side="right") - 1, 0, edges.size - 2)
    injected = np.bincount(idx, minlength=edges.size - 1)
    detected = np.bincount(idx, weights=found.astype(np.float64), minlength=edges.size - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        prob = np.where(injected > 0, detected / np.maximum(injected, 1), np.nan)
    c50 = None
    ok = np.flatnonzero((injected >= 5) & (prob >= 0.5))
    if ok.size:
        # the lowest bin from which every populated bin above is at least half complete
        low = [i for i in ok if np.all((prob[i:] >= 0.5) | (injected[i:] < 5))]
        c50 = float(edges[low[0]]) if low else None
    return {
        "value": value,
        "error": error,
        "n_injected": n,
        "n_regions": regions,
        "n_found": int(found.sum()),
        "n_confused": int(sum(p["n_confused"] for p in parts)),
        "curve": {"charge_edges_e": edges.tolist(), "injected": injected.tolist(),
                  "detected": detected.astype(int).tolist()},
        "charge_50_e": c50,
        "energy_50_ev": c50 * EV_PER_ELECTRON if c50 else None,
    }


def _seed(key: str, eid: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{key}/{eid}".encode()).digest()[:8], "little")


def completeness_task(
    archive: str, key: str, eid: str, det: str, status: str, settings: CompletenessSettings
) -> dict[str, Any]:
    """Worker task: :func:`measure_frame` on a centred cutout of one archived exposure."""
    import zarr

    from crscale.io.storage import zarr_options

    opts = zarr_options(archive)
    group = zarr.open_group(f"{archive}/exposures/{eid}/{det}", mode="r", zarr_format=3, storage_options=opts)
    attrs: dict[str, Any] = dict(group.attrs)
    detect = attrs.get("detect") or {}
    h, w = (int(s) for s in cast(zarr.Array, group["image"]).shape)
    cy, cx = max(0, (h - settings.cutout) // 2), max(0, (w - settings.cutout) // 2)
    box = (slice(cy, cy + min(h, settings.cutout)), slice(cx, cx + min(w, settings.cutout)))
    arrays = array_names(group)
    dgroup = zarr.open_group(f"{archive}/defects/{key}", mode="r", zarr_format=3, storage_options=opts)
    # The frame with its own CRs taken out (the archive's inpainted ``clean``), so that the
    # painted CRs meet the crowding of the detector's real exposures and nothing else.
    image = np.asarray(cast(zarr.Array, group["image"])[box], dtype=np.float32)
    own = np.asarray(cast(zarr.Array, group["mask"])[box]) != 0
    rng = np.random.default_rng(_seed(key, eid))
    if "clean" in arrays:
        # Inpainting is smooth: give the pixels it filled (the mask grown as the detect stage
        # grows it) the frame's noise back, or faint CRs painted there would be found too easily.
        image = np.asarray(cast(zarr.Array, group["clean"])[box], dtype=np.float32)
        filled = ndimage.binary_dilation(own, np.ones((3, 3), bool), iterations=1)
        noise = float((detect.get("stats") or {}).get("noise") or 0.0)
        image[filled] += rng.normal(0.0, noise, int(filled.sum())).astype(np.float32)
    n_own = int(ndimage.label(own, structure=STRUCTURE)[1])
    n = max(settings.min_injected, int(round(settings.density * image.size)), n_own)
    return measure_frame(
        image,
        None,
        dq=np.asarray(cast(zarr.Array, group["dq"])[box]) if "dq" in arrays else None,
        codes=np.asarray(cast(zarr.Array, dgroup["codes"])[box]),
        status=status,
        gain=float(attrs.get("gain") or 1.0),
        saturation=attrs.get("saturation"),
        model=str(detect.get("model") or "default"),
        threshold=detect.get("threshold"),
        n=n,
        rng=rng,
        passes=settings.passes,
        defect_settings=DefectSettings.from_config(),
    )


def refresh_completeness(
    arch: Archive, get_client: Callable[[], Any], maps: dict[str, dict[str, Any]] | None
) -> dict[str, dict[str, Any]] | None:
    """Measure the completeness of every detector whose defect map changed since (a catalogue hook).

    Parameters
    ----------
    arch : Archive
        The archive, open for writing.
    get_client : callable
        Returns the Dask client (called only when there is work).
    maps : dict or None
        :func:`crscale.engine.defects_stage.current_maps`; None: defect maps are off.

    Returns
    -------
    dict or None
        ``maps`` with each key's ``completeness`` filled in.
    """
    settings = CompletenessSettings.from_config()
    if maps is None or not settings.enabled:
        return maps
    wanted = asdict(settings)
    futures = {}
    for key, info in maps.items():
        attrs = read_defect_attrs(arch, key) or {}
        done = attrs.get("completeness") or {}
        if done.get("digest") == info.get("digest") and done.get("settings") == wanted:
            continue
        members = sorted(attrs.get("contributions") or {})
        if not members:
            continue
        spaced = np.linspace(0, len(members) - 1, min(settings.frames, len(members)))
        pick = np.unique(spaced.round().astype(int))
        cl = get_client()
        futures[key] = [
            cl.submit(completeness_task, str(arch.path), key, members[i], attrs["detector"],
                      info.get("status"), settings, pure=False)
            for i in pick
        ]
    for key, futs in futures.items():
        try:
            summary = summarise_frames([f.result() for f in futs])
        except Exception as exc:  # the detector's rates stay uncorrected; the others go on
            log.error("completeness of %s failed: %s", key, error_text(exc))
            continue
        finally:
            for f in futs:
                f.release()
        summary.update(digest=maps[key].get("digest"), settings=wanted, frames=len(futs))
        update_defect_attrs(arch, key, completeness=summary)
        maps[key]["completeness"] = summary
    return maps
