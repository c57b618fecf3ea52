"""The U-Net family of CR detectors, named presets, weight files and model cards."""

from crscale.models.card import ModelCard
from crscale.models.presets import PRESETS, preset
from crscale.models.store import DEFAULT_MODEL, available_models, load_model, load_weights, save_model
from crscale.models.unet import UNet, UNetConfig, count_parameters, fold_batchnorm

__all__ = [
    "DEFAULT_MODEL",
    "PRESETS",
    "ModelCard",
    "UNet",
    "UNetConfig",
    "available_models",
    "count_parameters",
    "fold_batchnorm",
    "load_model",
    "load_weights",
    "preset",
    "save_model",
]
