"""Evaluation sets: real images with their CR masks, or with real CR footprints injected.

Two kinds of labelled data are read into :class:`EvalImage` records, all in electrons:

- **labelled pairs** (:func:`pair_files`, :func:`load_labelled`): an image FITS file and a mask
  FITS file matched by name. Non-zero mask pixels are CRs; every finite, unflagged pixel counts.
- **injection sets** (:func:`injected_set`): the recipe of the training validation set. Each
  image's own CRs are found with astroscrappy (conservative settings), replaced by its clean
  values and left out of the figures (dilated 1 px); real CR footprints (the bundled LSST ITL
  darks and/or the user's dark frames) are then added at random places, and their exact
  footprints are the truth. ``repeats`` injects each image several times with independent
  draws, to gather CR pixels from small images without crowding them.

A file that cannot be read is reported in ``skipped`` (path and problem) and the rest are still
used.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crscale._logging import Reporter, reporter
from crscale.detection.badpix import bad_pixel_mask
from crscale.errors import InputError, SettingsError
from crscale.injection.faint import faint_pixels
from crscale.io.dq import DQConvention, match_convention
from crscale.io.fits_reader import DetectorData, read_exposure
from crscale.io.inputs import fits_files, fits_stem

logger = logging.getLogger(__name__)

#: Default mean number of injected CRs per pixel (0.35 % of the pixels for the ITL footprints).
EVAL_CR_RATE = 5.0e-4


@dataclass
class EvalImage:
    """One detector image of an evaluation set.

    Attributes
    ----------
    name : str
        Unique name (file stem, ``/detector`` for multi-detector files, ``#k`` for repeats).
    path : str
        The image file.
    image_e : numpy.ndarray
        float32 image in electrons; bad pixels hold their neighbours' values.
    truth : numpy.ndarray
        bool CR truth.
    valid : numpy.ndarray
        bool, pixels that count in the figures (finite, unflagged, not an unlabelled own CR).
    bad : numpy.ndarray
        bool, bad pixels (given to every method as its data-quality mask).
    readnoise_e, gain : float
        Read noise in electrons and the gain used to convert to electrons.
    source : str
        ``"mask"`` (labelled pair) or ``"injected"``.
    mask_path : str
        The mask file of a labelled pair, ``""`` for injected images.
    faint : numpy.ndarray or None
        bool, the injected CR pixels below the noise
        (:func:`crscale.injection.faint.faint_pixels`); None for labelled pairs.
    own_cr, spikes : numpy.ndarray or None
        bool, the frame's own CRs (left out of ``valid``) and its own lone spikes before injection
        (:func:`crscale.evaluate.false_positives.own_spikes`): what its false positives may sit
        on without being real structure. None for labelled pairs.
    """

    name: str
    path: str
    image_e: np.ndarray
    truth: np.ndarray
    valid: np.ndarray
    bad: np.ndarray
    readnoise_e: float
    gain: float
    source: str
    mask_path: str = ""
    faint: np.ndarray | None = None
    own_cr: np.ndarray | None = None
    spikes: np.ndarray | None = None

    @property
    def n_cr_pixels(self) -> int:
        """CR pixels that count."""
        return int((self.truth & self.valid).sum())

    @property
    def n_pixels(self) -> int:
        """Pixels that count."""
        return int(self.valid.sum())

    @property
    def n_significant_cr_pixels(self) -> int | None:
        """CR pixels that count and are not faint (None without injection)."""
        if self.faint is None:
            return None
        return int((self.truth & self.valid & ~self.faint).sum())

    def provenance(self) -> dict:
        """Provenance for the report."""
        return {
            "name": self.name,
            "path": self.path,
            "mask": self.mask_path or None,
            "source": self.source,
            "shape": list(self.image_e.shape),
            "n_pixels": self.n_pixels,
            "n_cr_pixels": self.n_cr_pixels,
            "n_significant_cr_pixels": self.n_significant_cr_pixels,
            "gain": self.gain,
            "readnoise_e": self.readnoise_e,
        }


def _stem(path: Path) -> str:
    stem = fits_stem(path.name)
    return path.stem if stem == path.name else stem


def image_files(images: list[str | Path]) -> tuple[list[Path], dict[str, str]]:
    """Image files named by files, directories, globs or manifests, and their DQ companions.

    Discovery is ``crscale ingest``'s (:func:`crscale.io.inputs.expand_inputs`): a DECam
    ``*_ood_*`` file beside its ``*_ooi_*`` image is its DQ, not another image.

    Raises
    ------
    InputError
        For an input that names no FITS file.
    """
    from crscale.io.inputs import expand_inputs

    specs, problems = expand_inputs([str(i) for i in images])
    if problems:
        raise InputError(problems[0].path, problems[0].problem, kind=problems[0].kind)
    return [Path(s.path) for s in specs], {s.path: s.dq_path for s in specs if s.dq_path}


def pair_files(images: list[str | Path], masks: list[str | Path]) -> list[tuple[Path, Path]]:
    """Match image files to mask files by name.

    A mask matches an image when its name (without the FITS suffix) equals the image's, or
    starts with it followed by ``_``, ``-`` or ``.`` (``gmos.fits`` ↔ ``gmos_crmask.fits``).
    The exact name wins over a prefix; two prefix matches are an error.

    Raises
    ------
    InputError
        Naming the image that has no mask, or the masks that are ambiguous.
    """
    files, _ = image_files(images)
    mask_files = [m for m in fits_files(masks) if m.resolve() not in {i.resolve() for i in files}]
    if not files:
        raise InputError(", ".join(map(str, images)), "no FITS image found", kind="missing")
    by_stem = {_stem(m): m for m in mask_files}
    pairs = []
    for img in files:
        stem = _stem(img)
        if stem in by_stem:
            pairs.append((img, by_stem[stem]))
            continue
        cands = [
            m
            for s, m in by_stem.items()
            if len(s) > len(stem) and s.startswith(stem) and s[len(stem)] in "_-."
        ]
        if not cands:
            raise InputError(
                img, f"no CR mask matches this image among {len(mask_files)} mask file(s)", kind="no-mask"
            )
        if len(cands) > 1:
            raise InputError(img, f"several masks match: {', '.join(map(str, cands))}", kind="ambiguous-mask")
        pairs.append((img, cands[0]))
    return pairs


def _mask_planes(path: Path) -> list[np.ndarray]:
    from astropy.io import fits

    try:
        with fits.open(path) as hdul:
            planes = [np.asarray(h.data) for h in hdul if h.data is not None and np.ndim(h.data) == 2]
    except (OSError, ValueError) as exc:
        raise InputError(path, f"cannot read CR mask: {exc}", kind="corrupt") from exc
    if not planes:
        raise InputError(path, "CR mask file holds no 2-D image", kind="no-image")
    return planes


def load_labelled(
    pairs: list[tuple[Path, Path]], *, skipped: list[dict] | None = None, dq_paths: dict | None = None
) -> list[EvalImage]:
    """Read labelled (image, mask) pairs; the mask's k-th 2-D HDU goes with the k-th detector.

    Parameters
    ----------
    pairs : list of (Path, Path)
        From :func:`pair_files`.
    skipped : list, optional
        Unreadable pairs are appended as ``{"path", "problem"}`` and left out; without it they raise.
    dq_paths : dict, optional
        Image path → data-quality file, for images whose DQ lives in another file.
    """
    out: list[EvalImage] = []
    for img_path, mask_path in pairs:
        try:
            exp = read_exposure(img_path, dq_path=(dq_paths or {}).get(str(img_path)))
            planes = _mask_planes(mask_path)
            if len(planes) != len(exp.detectors):
                raise InputError(
                    mask_path,
                    f"{len(planes)} mask plane(s) for {len(exp.detectors)} detector(s) of {img_path}",
                    kind="mask-mismatch",
                )
            for det, plane in zip(exp.detectors, planes, strict=True):
                if plane.shape != det.image.shape:
                    raise InputError(
                        mask_path,
                        f"mask shape {plane.shape} differs from image shape {det.image.shape} of {img_path}",
                        kind="mask-mismatch",
                    )
                gain = float(det.meta.gain or 1.0)
                rn = float(det.meta.readnoise or 5.0)
                bad = _bad_pixels(det)
                img = _fill(det.image.astype(np.float64) * gain, bad)
                name = exp.exposure_id if len(exp.detectors) == 1 else f"{exp.exposure_id}/{det.name}"
                if not np.isfinite(plane).all():
                    raise InputError(mask_path, "CR mask holds NaN or infinite values", kind="mask-invalid")
                truth = np.asarray(plane) != 0
                out.append(
                    EvalImage(name, str(img_path), img, truth, ~bad, bad, rn, gain, "mask", str(mask_path))
                )
        except InputError as exc:
            if skipped is None:
                raise
            skipped.append({"path": exc.path, "problem": exc.problem})
    return out


def _convention(det: DetectorData) -> DQConvention:
    return match_convention(det.meta.instrument, det.meta.telescope, detector=det.meta.detector)


def _bad_pixels(det: DetectorData) -> np.ndarray:
    """Bad and saturated pixels, the DQ plane read in its pipeline's convention (a CR flag is not bad)."""
    dq = None if det.dq is None else _convention(det).excluded(det.dq)
    return bad_pixel_mask(det.image, dq=dq, saturation=det.meta.saturation)


def load_pipeline_flagged(images: list[str | Path], *, skipped: list[dict] | None = None) -> list[EvalImage]:
    """Images whose pipeline flagged CRs in their DQ planes, those flags taken as the truth.

    Measures how a method agrees with the pipeline's own CR flags (``crscale evaluate IMAGES
    --masks pipeline``): DECam CP code 5, HST DQ bits 4096/8192, BANZAI BPM bit 8 (see
    :mod:`crscale.io.dq`). A detector whose convention has no CR flag, or that has no DQ plane,
    is skipped (or raises without ``skipped``).
    """
    files, dq_paths = image_files(images)
    out: list[EvalImage] = []
    for path in files:
        try:
            exp = read_exposure(path, dq_path=dq_paths.get(str(path)))
            for det in exp.detectors:
                conv = _convention(det)
                if det.dq is None or not conv.cosmic_ray:
                    raise InputError(path, f"detector {det.name}: no DQ plane with pipeline CR flags "
                                     f"(DQ convention {conv.name!r})", kind="no-mask")
                gain = float(det.meta.gain or 1.0)
                bad = _bad_pixels(det)
                img = _fill(det.image.astype(np.float64) * gain, bad)
                name = exp.exposure_id if len(exp.detectors) == 1 else f"{exp.exposure_id}/{det.name}"
                out.append(EvalImage(name, str(path), img, conv.cr_mask(det.dq), ~bad, bad,
                                     float(det.meta.readnoise or 5.0), gain, "pipeline",
                                     f"{det.dq_source} ({conv.name} CR flags)"))
        except InputError as exc:
            if skipped is None:
                raise
            skipped.append({"path": exc.path, "problem": exc.problem})
    return out


def _fill(image_e: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """Bad pixels take their good neighbours' mean, so that no method sees a hole or a spike there."""
    from crscale.detection.badpix import fill_bad

    if not bad.any():
        return image_e.astype(np.float32)
    sky = float(np.median(image_e[~bad])) if (~bad).any() else 0.0
    filled = fill_bad((np.where(bad, sky, image_e) - sky).astype(np.float32), bad) + sky
    return filled.astype(np.float32)


def injected_set(
    images: list[str | Path],
    *,
    darks: Sequence[str | Path] = (),
    use_itl: bool = True,
    rate: float = EVAL_CR_RATE,
    repeats: int = 1,
    seed: int = 2026,
    own_crs: str = "astroscrappy",
    dark_nsigma: float = 3.0,
    skipped: list[dict] | None = None,
    log: Reporter | None = None,
) -> list[EvalImage]:
    """Real images with real CR footprints injected at known places (the truth).

    Parameters
    ----------
    images : list of str or Path
        FITS files or directories of real science images.
    darks : list, optional
        The user's dark frames: their CRs (pixels > ``dark_nsigma`` σ, dilated 3×3) are injected,
        rescaled by the ratio of noise levels (the label-free recipe).
    use_itl : bool
        Inject the bundled LSST ITL dark-frame footprints too (without darks, they are the only ones).
    rate : float
        Mean number of CRs per pixel (Poisson).
    repeats : int
        Independent injections per image.
    seed : int
        Seed of the placements: the set depends only on the files and these settings.
    own_crs : {"astroscrappy", "none"}
        How the images' own CRs are removed from the figures.
    dark_nsigma : float
        Threshold of the dark frames' CR pixels, in σ above the median.
    skipped : list, optional
        Unreadable images and darks are appended as ``{"path", "problem"}``; without it they raise.
    log : callable, optional
        Receives messages about darks left out; by default they are logged at INFO.
    """
    log = reporter(logger, log)
    from crscale.evaluate.false_positives import own_spikes
    from crscale.injection.darks import footprints_from_dark_file
    from crscale.injection.footprints import load_itl_footprints
    from crscale.injection.inject import inject_crs
    from crscale.injection.sources import load_source_images

    libs = [load_itl_footprints()] if use_itl else []
    for dark in fits_files(list(darks)):
        try:
            lib = footprints_from_dark_file(dark, nsigma=dark_nsigma)
        except InputError as exc:
            if skipped is None:
                raise
            skipped.append({"path": exc.path, "problem": exc.problem})
            continue
        if len(lib):
            libs.append(lib)
        else:
            log(f"skipping dark frame {dark}: no pixel above {dark_nsigma} sigma")
    if not libs:
        raise SettingsError("no CR footprints to inject: use the ITL footprints or give readable dark frames")
    files, dq_paths = image_files(images)
    sources = load_source_images(files, own_crs=own_crs, skipped=skipped, dq_paths=dq_paths)
    rng = np.random.default_rng(seed)
    out: list[EvalImage] = []
    for i, im in enumerate(sources):
        filled = _fill(im.image_e, im.bad)
        spikes = own_spikes(filled, im.bad, im.own_cr, im.pixel_noise_e or im.noise_e)
        for r in range(repeats):
            lib = libs[(i + r) % len(libs)]
            inj = inject_crs(
                filled,
                lib,
                rng,
                rate=rate,
                avoid=im.bad,
                noise_e=im.noise_e,
                rescale_noise=lib.noise_e is not None,
            )
            name = im.name if repeats == 1 else f"{im.name}#{r + 1}"
            out.append(
                EvalImage(
                    name,
                    im.path,
                    inj.image.astype(np.float32),
                    inj.truth,
                    ~(im.bad | im.own_cr),
                    im.bad,
                    im.readnoise_e,
                    im.gain,
                    "injected",
                    faint=faint_pixels(inj.added, inj.truth, filled, readnoise_e=im.readnoise_e),
                    own_cr=im.own_cr,
                    spikes=spikes,
                )
            )
    return out
