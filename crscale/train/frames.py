"""Frames derived from real images: crops and binned copies, for splits and undersampled fields.

An archive holds kinds of frame that the real data here hold only once (one arc, one bright flat,
one IR array). To train on such a frame and still test on frames never trained on, the frame is
**split by position**: one crop goes to training, another to validation, a third to the held-out
set, and no pixel is in two of them. Binning a real frame 2×2 or 3×3 makes an undersampled (and,
for a star field, crowded) frame from real pixels: the binned pixel is the **sum** in electrons,
so its Poisson noise is that of the summed charge, and its read noise is ``bin × readnoise``
(quadrature sum of ``bin²`` reads), which is what the header then says. Trailing a real star
field along a line (:func:`trail_frame`) makes the frame of a telescope that tracks a moving
target (an asteroid, a comet): every star becomes a PSF-wide streak, the real structure most
easily taken for a CR track. Dimming a real frame (:func:`dim_frame`) makes the same exposure
shorter: its sources (an arc's lines, a spectrum's trace) fainter against the same background
noise, so that a faint, sharp line of real light is among the hard negatives as well as a
bright one. Adding a sky to a real frame (:func:`add_sky`) makes the same field under a brighter
sky (twilight, moonlight, a longer exposure): its CRs then stand only a few times their noise above
it, as on a bright flat, while its stars and galaxies keep their shapes.

Each derived frame is written as a plain FITS file in electrons (``GAIN = 1``), with the source's
path, sha256, crop and binning in its header, and its bad pixels (non-finite, saturated,
DQ-flagged in the source) as NaN, so that every reader of crscale finds them again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path

import numpy as np
import yaml

from crscale.detection.badpix import bad_pixel_mask
from crscale.errors import CrscaleError, InputError, SettingsError
from crscale.io.fits_reader import read_exposure, sha256_file

log = logging.getLogger(__name__)

ROLES = ("train", "val", "heldout")
#: Header keyword of a frame whose own CRs are not to be looked for (see :class:`FrameSpec`).
OWN_CRS_KEY = "CRSOWNCR"


@dataclass(frozen=True)
class FrameSpec:
    """One derived frame.

    Attributes
    ----------
    name : str
        Output file stem (unique within a spec file).
    source : str
        The real FITS file (relative to the spec file).
    role : {"train", "val", "heldout"}
        Which list it belongs to.
    kind : str
        What it is (star field, arc, flat, IR array, ...), for the reports.
    detector : int
        Index of the detector (science HDU) of a multi-extension file.
    crop : tuple of int, optional
        ``(y0, y1, x0, x1)`` in the source's pixels, before binning.
    bin : int
        Binning factor (sum of ``bin × bin`` pixels, in electrons).
    trail : tuple of float, optional
        ``(length, angle)``: trail the frame over ``length`` pixels at ``angle`` degrees
        (counter-clockwise from the x axis), see :func:`trail_frame`.
    dim : float
        ``0 < dim <= 1``: scale the light above the background by ``dim``, with the noise of
        the fainter light (:func:`dim_frame`); 1 leaves the frame as it is.
    sky : float
        Electrons of uniform sky to add, with its Poisson noise (:func:`add_sky`); 0 adds none.
    own_crs : {"", "none"}
        ``"none"``: do not look for the frame's own CRs (header ``CRSOWNCR = 'none'``), for
        exposures of a few seconds, which hold almost none (0.07 per Mpix per second at the ITL
        rate), while astroscrappy flags their real structure (arc-line peaks, undersampled star
        cores, flat-field grain): removing those would take the hard negatives out of the
        training loss and out of the held-out figures. ``""``: the training config's setting.
    """

    name: str
    source: str
    role: str
    kind: str
    detector: int = 0
    crop: tuple[int, int, int, int] | None = None
    bin: int = 1
    trail: tuple[float, float] | None = None
    dim: float = 1.0
    sky: float = 0.0
    own_crs: str = ""

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise SettingsError(f"frame {self.name!r}: role must be one of {ROLES}, not {self.role!r}")
        if self.own_crs not in ("", "none"):
            raise SettingsError(f"frame {self.name!r}: own_crs must be '' or 'none', not {self.own_crs!r}")
        if self.bin < 1:
            raise SettingsError(f"frame {self.name!r}: bin must be >= 1, not {self.bin}")
        if not (isinstance(self.dim, (int, float)) and 0 < self.dim <= 1):
            raise SettingsError(f"frame {self.name!r}: dim must be a number in (0, 1], not {self.dim!r}")
        if not (isinstance(self.sky, (int, float)) and not isinstance(self.sky, bool)
                and np.isfinite(self.sky) and self.sky >= 0):
            raise SettingsError(
                f"frame {self.name!r}: sky must be a number of electrons >= 0, not {self.sky!r}"
            )
        if self.trail is not None and (
            len(self.trail) != 2 or not self.trail[0] > 1 or not np.isfinite(self.trail).all()
        ):
            raise SettingsError(
                f"frame {self.name!r}: trail must be [length > 1, angle], finite numbers, not {self.trail!r}"
            )


def read_specs(path: str | Path) -> tuple[list[FrameSpec], Path]:
    """The frame specs of a YAML file (a ``frames:`` list), and the folder paths are relative to."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
        specs = [
            FrameSpec(**{
                **f,
                "crop": tuple(f["crop"]) if f.get("crop") else None,
                "trail": _pair(f["trail"], f.get("name")) if f.get("trail") is not None else None,
            })
            for f in data["frames"]
        ]
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        raise InputError(path, f"cannot read frame specs: {exc}", kind="config") from exc
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise InputError(path, "frame names must be unique", kind="config")
    return specs, path.resolve().parent


def _pair(value: object, name: object) -> tuple[float, float]:
    """A spec's ``[length, angle]`` list as floats (a string or a single number is refused)."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise SettingsError(f"frame {name!r}: trail must be a list [length, angle], not {value!r}")
    return float(value[0]), float(value[1])


def bin_sum(image: np.ndarray, bad: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Sum ``factor × factor`` blocks (trailing rows and columns that do not fill a block are cut).

    A binned pixel is bad when any of its source pixels is.
    """
    if factor == 1:
        return image, bad
    h, w = (s // factor * factor for s in image.shape)
    shape = (h // factor, factor, w // factor, factor)
    img = image[:h, :w].reshape(shape).sum(axis=(1, 3))
    b = np.asarray(bad[:h, :w].reshape(shape).any(axis=(1, 3)))
    return img, b


def trail_kernel(length: float, angle: float) -> np.ndarray:
    """A line of ``length`` pixels at ``angle`` degrees, as a convolution kernel that sums to 1.

    The line is sampled every 0.1 px and each sample is spread bilinearly over the pixel grid.
    """
    half = int(np.ceil(length / 2)) + 1
    k = np.zeros((2 * half + 1, 2 * half + 1))
    t = np.linspace(-length / 2, length / 2, max(int(length * 10), 2))
    x = half + t * np.cos(np.radians(angle))
    y = half + t * np.sin(np.radians(angle))
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - x0, y - y0
    corners = ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx))
    for dy, dx, w in corners:
        np.add.at(k, (y0 + dy, x0 + dx), w)
    return k / k.sum()


def trail_frame(
    image: np.ndarray, bad: np.ndarray, length: float, angle: float, *, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """The frame as if the telescope had moved ``length`` pixels along ``angle`` during it.

    The image (electrons) is convolved with :func:`trail_kernel`, which keeps the flux. The
    convolution also averages the noise, down to ``sum(k²)`` of its variance. White Gaussian
    noise of the missing variance restores it: ``(1 - sum(k²)) (σ² + max(x - sky, 0))``, with
    the sky and its noise σ measured on the frame (a raw frame's bias is not charge) and the
    shot noise of the sources above it. A pixel is bad when the kernel reaches a bad source pixel.
    """
    from scipy import ndimage, signal

    from crscale.detection.sky_noise import robust_sky_noise

    k = trail_kernel(length, angle)
    sky, sigma = robust_sky_noise(image, bad=bad)
    img = signal.fftconvolve(np.where(bad, sky, image), k, mode="same")
    reach = ndimage.binary_dilation(bad, structure=k > 0) if bad.any() else bad
    rng = np.random.default_rng(seed)
    missing = (1.0 - float((k**2).sum())) * (float(sigma) ** 2 + np.clip(img - sky, 0.0, None))
    img = img + rng.normal(size=img.shape) * np.sqrt(missing)
    return img, reach


def dim_frame(image: np.ndarray, bad: np.ndarray, factor: float, *, seed: int) -> np.ndarray:
    """The frame as if exposed ``factor`` times as long: light above the background scaled.

    With the background ``sky`` and its noise ``σ`` measured on the frame (the pixel-to-pixel
    noise of :func:`~crscale.detection.sky_noise.pixel_noise`, away from the light), the light
    ``x - sky`` is scaled by ``factor`` and white Gaussian noise of the missing variance is
    added, so that the result has the noise of the fainter frame: ``σ²`` (the background's,
    unchanged) plus the shot noise of the scaled light. The scaling leaves
    ``factor² (σ² + max(x - sky, 0))``; the added variance is
    ``(1 - factor²) σ² + (factor - factor²) max(x - sky, 0)``, never negative. Bad pixels are
    left as they are. The noise added is white: right for raw frames (the arc, ISAAC, M13
    here), not for a resampled frame whose noise is correlated from pixel to pixel (the
    bundled GMOS spectrum: lag-1 correlation 0.78 along its columns).
    """
    from scipy import ndimage

    from crscale.detection.sky_noise import pixel_noise, robust_sky_noise

    sky, spread = robust_sky_noise(image, bad=bad)
    # The background's own noise: an arc's lines or a flat's gradient inflate the spread of
    # the pixel values, and adding that much would make the dimmed frame noisier than it is.
    # Sharp bright lines still leave large residuals from the running median: measured again
    # without them (and their wings).
    sigma = pixel_noise(image, bad=bad) or spread
    lit = ndimage.binary_dilation(image - sky > 3 * sigma, iterations=2)
    sigma = pixel_noise(image, bad=bad | lit) or sigma
    light = np.clip(image - sky, 0.0, None)
    missing = (1.0 - factor**2) * float(sigma) ** 2 + (factor - factor**2) * light
    rng = np.random.default_rng(seed)
    out = sky + factor * (image - sky) + rng.normal(size=image.shape) * np.sqrt(missing)
    return np.where(bad, image, out)


def add_sky(image: np.ndarray, bad: np.ndarray, level: float, *, seed: int) -> np.ndarray:
    """The frame under a sky ``level`` electrons brighter: the level added with its Poisson noise.

    Every good pixel gains ``level`` e⁻ plus Gaussian noise of variance ``level`` (Poisson at
    these levels, thousands of electrons). The frame's own noise, light and structure are kept;
    a CR injected into it later stands ``sqrt(level)`` more noise above it. Bad pixels are left
    as they are.
    """
    rng = np.random.default_rng(seed)
    out = image + level + rng.normal(size=image.shape) * np.sqrt(level)
    return np.where(bad, image, out)


def derive(spec: FrameSpec, base: Path) -> tuple[np.ndarray, dict]:
    """The derived image (float32 electrons, NaN where bad) and its header cards."""
    from crscale.io.inputs import expand_inputs

    src = base / spec.source
    found, _ = expand_inputs([str(src)])
    exp = read_exposure(src, dq_path=found[0].dq_path if found else None)
    if spec.detector >= len(exp.detectors):
        raise InputError(src, f"has {len(exp.detectors)} detector(s), no #{spec.detector}", kind="invalid")
    det = exp.detectors[spec.detector]
    gain = float(det.meta.gain or 1.0)
    rn = float(det.meta.readnoise or 5.0)
    bad = bad_pixel_mask(det.image, dq=det.dq, saturation=det.meta.saturation)
    img = np.where(bad, 0.0, det.image.astype(np.float64) * gain)
    y0, y1, x0, x1 = spec.crop or (0, img.shape[0], 0, img.shape[1])
    if not (0 <= y0 < y1 <= img.shape[0] and 0 <= x0 < x1 <= img.shape[1]):
        raise InputError(src, f"crop {spec.crop} outside the image {img.shape}", kind="invalid")
    img, bad = bin_sum(img[y0:y1, x0:x1], bad[y0:y1, x0:x1], spec.bin)
    if bad.all():  # trail and dim measure the frame's sky and noise: there is none
        raise InputError(src, f"frame {spec.name!r}: no good pixel in crop {spec.crop}", kind="invalid")
    if spec.trail:
        if spec.trail[0] >= min(img.shape) / 2:
            raise InputError(
                src,
                f"trail of {spec.trail[0]:g} px is too long for the {img.shape} frame (under half its side)",
                kind="invalid",
            )
        seed = int.from_bytes(sha256(spec.name.encode()).digest()[:4], "little")
        img, bad = trail_frame(img, bad, *spec.trail, seed=seed)
    if spec.dim < 1:
        seed = int.from_bytes(sha256(f"{spec.name}:dim".encode()).digest()[:4], "little")
        img = dim_frame(img, bad, spec.dim, seed=seed)
    if spec.sky > 0:
        seed = int.from_bytes(sha256(f"{spec.name}:sky".encode()).digest()[:4], "little")
        img = add_sky(img, bad, spec.sky, seed=seed)
    out = np.where(bad, np.nan, img).astype(np.float32)
    header = {
        "GAIN": (1.0, "e-/ADU: derived frames are in electrons"),
        "RDNOISE": (rn * spec.bin, "e-: source read noise x binning"),
        "EXPTIME": (float(det.meta.exptime or 0.0), "s, of the source"),
        "CRSKIND": (spec.kind, "kind of frame"),
        "CRSROLE": (spec.role, "train / val / heldout"),
        "CRSSRC": (Path(spec.source).name, "source file"),
        "CRSSHA": (sha256_file(src)[:16], "sha256 of the source (first 16 hex)"),
        "CRSDET": (spec.detector, "detector index in the source"),
        "CRSCROP": (f"[{y0}:{y1},{x0}:{x1}]", "numpy slice of the source, before binning"),
        "CRSBIN": (spec.bin, "binning (sum, electrons)"),
    }
    if spec.trail:
        header["CRSTRAIL"] = (f"{spec.trail[0]:g} px at {spec.trail[1]:g} deg", "trailed (trail_frame)")
    if spec.dim < 1:
        header["CRSDIM"] = (spec.dim, "light above the background scaled (dim_frame)")
    if spec.sky > 0:
        header["CRSSKY"] = (spec.sky, "e- of sky added with its Poisson noise (add_sky)")
    if spec.own_crs:
        header[OWN_CRS_KEY] = (spec.own_crs, "own CRs: not looked for (short exposure)")
    return out, header


def write_frames(
    spec_file: str | Path, out_dir: str | Path, *, overwrite: bool = False
) -> dict[str, list[Path]]:
    """Write every frame of a spec file into ``out_dir/<role>/<name>.fits``.

    Frames already written are kept unless ``overwrite`` (they depend only on the spec and the
    source files). Returns the paths by role.
    """
    from astropy.io import fits

    specs, base = read_specs(spec_file)
    out_dir = Path(out_dir)
    paths: dict[str, list[Path]] = {r: [] for r in ROLES}
    for spec in specs:
        path = out_dir / spec.role / f"{spec.name}.fits"
        if overwrite or not path.exists():
            img, header = derive(spec, base)
            path.parent.mkdir(parents=True, exist_ok=True)
            hdu = fits.PrimaryHDU(img)
            for key, value in header.items():
                hdu.header[key] = value
            tmp = path.with_suffix(".tmp")
            hdu.writeto(tmp, overwrite=True)
            tmp.replace(path)
            log.info("wrote %s %s", path, img.shape)
        paths[spec.role].append(path)
    return paths


def overlaps(specs: list[FrameSpec]) -> list[tuple[str, str]]:
    """Pairs of frames of different roles that share source pixels (a split must have none)."""
    out = []
    for i, a in enumerate(specs):
        for b in specs[i + 1 :]:
            if a.role == b.role or a.source != b.source or a.detector != b.detector:
                continue
            if a.crop is None or b.crop is None:
                out.append((a.name, b.name))
                continue
            ay0, ay1, ax0, ax1 = a.crop
            by0, by1, bx0, bx1 = b.crop
            if ay0 < by1 and by0 < ay1 and ax0 < bx1 and bx0 < ax1:
                out.append((a.name, b.name))
    return out


def main(argv: list[str] | None = None) -> None:
    """``python -m crscale.train.frames SPEC OUT [--overwrite]``: write the frames of a spec file."""
    import argparse

    ap = argparse.ArgumentParser(description="Write the derived real frames of a spec file.")
    ap.add_argument("spec")
    ap.add_argument("out")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    try:
        specs, _ = read_specs(args.spec)
        bad = overlaps(specs)
        if bad:
            raise SystemExit(f"frames of different roles share pixels: {bad}")
        paths = write_frames(args.spec, args.out, overwrite=args.overwrite)
    except CrscaleError as exc:  # a bad spec or source: its message, not a traceback
        raise SystemExit(f"crscale.train.frames: {exc}") from None
    for role, ps in paths.items():
        print(f"{role}: {len(ps)} frame(s) in {Path(args.out) / role}")


if __name__ == "__main__":
    main()
