"""Model cards: the JSON file that travels with every weight file.

A card says what the weights are (architecture), how to feed them (input normalisation), what
they were trained on, and how well they did on held-out data (validation metrics and the
recommended threshold). :func:`crscale.detect` reads the normalisation and threshold from it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from crscale.models.unet import UNetConfig

CARD_FORMAT = "crscale-model-card/1"

#: The input normalisation of crscale-trained models (see docs/models.md).
ROBUST_ASINH = {
    "method": "robust-asinh",
    "description": (
        "Computed once per detector image, never per tile: the image is converted to electrons "
        "with the gain, sky = median and noise = 1.4826 x MAD of the finite, unflagged pixels "
        "(iterated 5-sigma clipping; read-noise/Poisson floor when the MAD is zero); the network "
        "input is asinh((image - sky) / (asinh_scale x noise)). Bad pixels (NaN/inf, saturated, "
        "DQ-flagged) are filled from their good neighbours before inference."
    ),
    "asinh_scale": 3.0,
    "units": "electrons",
}

#: What a card's ``normalisation["noise"]`` may say the input is scaled by (absent: global).
INPUT_NOISES = ("global", "pixel", "poisson")

#: The same, the input scaled by the pixel-to-pixel noise (``TrainConfig.input_noise: pixel``).
PIXEL_ASINH = {
    **ROBUST_ASINH,
    "description": (
        "Computed once per detector image, never per tile: the image is converted to electrons "
        "with the gain, sky = median of the finite, unflagged pixels (iterated 5-sigma clipping) "
        "and noise = the pixel-to-pixel noise, robust sigma of the image less its 5x5 running "
        "median in a fixed grid of up to 64 boxes of 64x64 pixels (not raised by smooth "
        "structure: flats, arcs, galaxies); the network input is asinh((image - sky) / "
        "(asinh_scale x noise)). Bad pixels (NaN/inf, saturated, DQ-flagged) are filled from "
        "their good neighbours before inference."
    ),
    "noise": "pixel",
}


#: The pixel-to-pixel noise at the sky, and each pixel's own shot noise above it
#: (``TrainConfig.input_noise: poisson``, :func:`crscale.detection.normalise.poisson_sigmas`).
POISSON_ASINH = {
    **PIXEL_ASINH,
    "description": (
        "Computed once per detector image, never per tile: the image is converted to electrons "
        "with the gain, sky = median of the finite, unflagged pixels (iterated 5-sigma clipping), "
        "s = the pixel-to-pixel noise at the sky (robust sigma of the image less its 5x5 running "
        "median in a fixed grid of up to 64 boxes of 64x64 pixels); d = image - sky is measured "
        "in units of its own noise, v = 2 d / (sqrt(max(d, 0) + s^2) + s) (d / s below the sky, "
        "the Anscombe transform of the light above it: a line or star is compressed by its shot "
        "noise, a CR on it is not); the network input is asinh(v / asinh_scale). Bad pixels "
        "(NaN/inf, saturated, DQ-flagged) are filled from their good neighbours before inference."
    ),
    "noise": "poisson",
}


def input_normalisation(noise: str) -> dict:
    """The card normalisation of a crscale-trained model whose input is scaled by ``noise``."""
    return dict({"pixel": PIXEL_ASINH, "poisson": POISSON_ASINH}.get(noise, ROBUST_ASINH))


@dataclass
class ModelCard:
    """Everything about a model but its weights.

    Attributes
    ----------
    name : str
        Registry name, e.g. ``"crscale-default"`` or ``"deepcr:ACS-WFC"``.
    architecture : dict
        :class:`~crscale.models.unet.UNetConfig` fields.
    normalisation : dict
        How images become network inputs; ``method`` is one of ``"robust-asinh"`` (crscale
        models), ``"scale"`` (deepCR: image in electrons divided by ``scale``) or
        ``"meanstd"`` (deepCR WFC3/UVIS: whole-image mean and standard deviation).
    recommended_threshold : float
        Probability threshold for the binary mask.
    training : dict
        Data, recipe, epochs, seeds, time.
    validation : dict
        Metrics on held-out images, from training.
    evaluation : dict
        The latest ``crscale evaluate --update-card`` summary: its command, data, the
        model's figures and the baselines' on the same pixels.
    """

    name: str
    architecture: dict
    normalisation: dict = field(default_factory=lambda: dict(ROBUST_ASINH))
    recommended_threshold: float = 0.5
    training: dict = field(default_factory=dict)
    validation: dict = field(default_factory=dict)
    evaluation: dict = field(default_factory=dict)
    parameters: int | None = None
    receptive_radius: int | None = None
    licence: str = "BSD-3-Clause"
    notes: str = ""
    created: str = ""
    crscale_version: str = ""
    format: str = CARD_FORMAT

    @property
    def config(self) -> UNetConfig:
        """The architecture as a :class:`UNetConfig`."""
        return UNetConfig(**self.architecture)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)

    def write(self, path: str | Path) -> None:
        """Write the card as indented JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        """Build from a dict, ignoring unknown keys written by newer versions."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        noise = dict(known.get("normalisation") or {}).get("noise", "global")
        if noise not in INPUT_NOISES:
            raise ValueError(
                f"unknown input noise {noise!r} in the card's normalisation ({', '.join(INPUT_NOISES)})"
            )
        return cls(**known)

    @classmethod
    def read(cls, path: str | Path) -> ModelCard:
        """Read a card file."""
        return cls.from_dict(json.loads(Path(path).read_text()))
