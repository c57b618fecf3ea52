"""Training configuration (the YAML file given to ``crscale train``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from crscale.errors import InputError, SettingsError
from crscale.io.inputs import fits_files
from crscale.models.card import INPUT_NOISES

#: Values of ``threshold_rule``.
THRESHOLD_RULES = ("best-f1", "fpr", "frame-fpr")


@dataclass
class SkyAugment:
    """deepCR-style sky / exposure-time augmentation (see :func:`crscale.train.inject.sky_augment`)."""

    p: float = 0.7
    scale_range: tuple[float, float] = (0.3, 3.0)
    add_sky_range: tuple[float, float] = (0.0, 3.0e4)
    p_add: float = 0.5


@dataclass
class TrainConfig:
    """Everything ``crscale train`` needs; paths are relative to the YAML file.

    Attributes
    ----------
    name : str
        Model name (registry name of the result).
    architecture : str or dict
        A preset name (``deepcr-3-32``, ``gn-3-32``, ``deepcr-3-32-att``, ...) or UNetConfig fields.
    train_images, val_images : list of str
        FITS files, directories or globs of real science images. Validation images are never
        used for training (an image in both lists is an error).
    darks : list of str
        The user's own dark frames: CRs = pixels > ``dark_nsigma`` σ above the median,
        dilated 3×3, rescaled by the ratio of noise levels.
    use_itl : bool
        Inject the bundled LSST ITL dark-frame CR footprints (electrons, converted with each
        image's gain).
    own_crs : {"astroscrappy", "none"}
        How the science images' own CRs are handled: found with astroscrappy (conservative
        settings), replaced by its clean values and left out of the loss (dilated 1 px).
    threshold_rule : {"best-f1", "fpr", "frame-fpr"}
        How the model card's recommended threshold is chosen on validation
        (:func:`crscale.train.loop.recommended_threshold`): the best F1, the smallest
        threshold whose false-positive rate is at most ``threshold_fpr``, or the smallest at
        which every validation frame's false-positive rate is.
    faint_ignore_nsigma : float or None
        Leave the faint injected CR pixels out of the loss: those whose injected charge is below
        this many times their pixel's noise (:func:`crscale.injection.faint.faint_pixels`).
        They are then neither CR nor background to the model. None (the default) labels every
        injected CR pixel as CR.
    ignore_spikes_nsigma : float or None
        On the training frames whose own CRs are not looked for (``own_crs: none`` in a frame
        spec: arcs, flats, IR frames of a few seconds), leave out of the loss every pixel this
        many pixel-noise σ above all 8 of its neighbours
        (:func:`crscale.injection.sources.lone_spikes`): such a pixel is a hot pixel or a
        one-pixel CR, and only the defects stage can tell. None (the default) trains them as
        background.
    val_ignore_spikes : bool
        With ``ignore_spikes_nsigma``, leave the same pixels of the validation frames out of
        the validation figures too (and so out of the epoch and threshold choice); False (the
        default) counts a model's masking them as false positives.
    input_noise : {"global", "pixel", "poisson"}
        The noise the network input is scaled by (recorded in the model card's normalisation):
        the image's robust noise (spread of all pixel values, the default), or its
        pixel-to-pixel noise (:func:`crscale.detection.sky_noise.pixel_noise`), which smooth
        structure (a flat's vignetting, an arc's lines, a galaxy) does not raise; ``poisson``:
        the pixel-to-pixel noise at the sky and each pixel's own shot noise above it
        (:func:`crscale.detection.normalise.poisson_sigmas`).
    """

    name: str = "crscale-model"
    architecture: Any = "deepcr-3-32"
    train_images: list[str] = field(default_factory=list)
    val_images: list[str] = field(default_factory=list)
    darks: list[str] = field(default_factory=list)
    dark_nsigma: float = 3.0
    use_itl: bool = True
    own_crs: str = "astroscrappy"
    patch: int = 128
    patch_stride: int = 64
    batch_size: int = 16
    epochs: int = 30
    steps_per_epoch: int = 100
    lr: float = 0.005
    loss: str = "bce"
    bn_train_fraction: float = 0.4
    lr_patience: int = 4
    lr_factor: float = 0.1
    lr_threshold: float = 1e-3
    cr_rate: float = 3.0e-4
    val_cr_rate: float = 2.0e-4
    threshold_rule: str = "best-f1"
    threshold_fpr: float = 1.0e-4
    faint_ignore_nsigma: float | None = None
    ignore_spikes_nsigma: float | None = None
    val_ignore_spikes: bool = False
    input_noise: str = "global"
    sky_augment: SkyAugment = field(default_factory=SkyAugment)
    seed: int = 0
    workdir: str = ""
    output: str = ""
    precision: str = "auto"
    threads: int | None = None
    notes: str = ""
    base_dir: str = "."

    def __post_init__(self) -> None:
        if isinstance(self.sky_augment, dict):
            self.sky_augment = SkyAugment(**self.sky_augment)
        if self.loss not in ("bce", "median-weighted"):
            raise SettingsError(f"loss must be 'bce' or 'median-weighted', not {self.loss!r}")
        if self.own_crs not in ("astroscrappy", "none"):
            raise SettingsError(f"own_crs must be 'astroscrappy' or 'none', not {self.own_crs!r}")
        if self.threshold_rule not in THRESHOLD_RULES:
            raise SettingsError(
                f"threshold_rule must be one of {THRESHOLD_RULES}, not {self.threshold_rule!r}"
            )
        if not 0 < self.threshold_fpr < 1:
            raise SettingsError(f"threshold_fpr must be in (0, 1), not {self.threshold_fpr!r}")
        if not isinstance(self.val_ignore_spikes, bool):
            raise SettingsError(f"val_ignore_spikes must be true or false, not {self.val_ignore_spikes!r}")
        if self.ignore_spikes_nsigma is not None and not (
            isinstance(self.ignore_spikes_nsigma, (int, float))
            and not isinstance(self.ignore_spikes_nsigma, bool)
            and 0 < self.ignore_spikes_nsigma < 1000
        ):
            raise SettingsError(
                "ignore_spikes_nsigma must be a number in (0, 1000) or null, "
                f"not {self.ignore_spikes_nsigma!r}"
            )
        if self.faint_ignore_nsigma is not None and not (
            isinstance(self.faint_ignore_nsigma, (int, float))
            and not isinstance(self.faint_ignore_nsigma, bool)
            and 0 < self.faint_ignore_nsigma < 100
        ):
            raise SettingsError(
                f"faint_ignore_nsigma must be a number in (0, 100) or null, not {self.faint_ignore_nsigma!r}"
            )
        if self.input_noise not in INPUT_NOISES:
            raise SettingsError(f"input_noise must be one of {INPUT_NOISES}, not {self.input_noise!r}")
        if self.patch % 8:
            raise SettingsError(f"patch size {self.patch} must be a multiple of 8")

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Read a YAML config; unknown keys are an error that names them."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise InputError(path, f"cannot read training config: {exc}", kind="config") from exc
        if not isinstance(data, dict):
            raise InputError(path, "training config must be a YAML mapping", kind="config")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(
                path, f"unknown key(s) {unknown}; known: {sorted(known - {'base_dir'})}", kind="config"
            )
        data.update({k: v for k, v in overrides.items() if v is not None})
        data["base_dir"] = str(path.resolve().parent)
        try:
            return cls(**data)
        except (TypeError, ValueError) as exc:
            raise InputError(path, str(exc), kind="config") from exc

    def resolve(self, p: str) -> Path:
        """A path of the config, relative to the YAML file's folder."""
        q = Path(p).expanduser()
        return q if q.is_absolute() else Path(self.base_dir) / q

    def expand(self, entries: list[str]) -> list[Path]:
        """FITS files named by files, directories (searched recursively) and globs."""
        return fits_files([self.resolve(e) for e in entries], missing="training image not found")

    @property
    def workdir_path(self) -> Path:
        """Where patches, checkpoints and the log go."""
        return self.resolve(self.workdir or f"runs/{self.name}")

    @property
    def output_path(self) -> Path:
        """The trained model's weight file."""
        return self.resolve(self.output) if self.output else self.workdir_path / f"{self.name}.safetensors"

    def to_dict(self) -> dict:
        """Plain dict (for the model card)."""
        d = asdict(self)
        d.pop("base_dir")
        return d
