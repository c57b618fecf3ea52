"""A model prepared for fast inference on one device, reused across images and blocks."""

from __future__ import annotations

import copy
import os
import warnings

import numpy as np
import torch

from crscale import _validate
from crscale.detection.cpu_memory import keep_freed_memory
from crscale.errors import DeviceError, FallbackWarning
from crscale.models.card import ModelCard
from crscale.models.unet import UNet, fold_batchnorm

PRECISIONS = ("auto", "float32", "bfloat16", "float16")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → the first CUDA device when there is one, else the CPU."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {device!r} requested but torch sees no CUDA device")
    return dev


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX): then bf16 is ~5× faster."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # older torch
        return False


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """``"auto"``: bfloat16 on CUDA devices that support it and on CPUs with native bf16, else float32."""
    _validate.one_of(precision, PRECISIONS, "precision")
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    return getattr(torch, precision)


class Predictor:
    """A U-Net ready for inference: eval mode, BatchNorm folded, channels-last, on its device.

    Parameters
    ----------
    model : UNet
        The network (any mode; a prepared copy is made).
    card : ModelCard
        Its card (normalisation, threshold).
    device : str or torch.device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
    precision : {"auto", "float32", "bfloat16", "float16"}
        Compute precision; outputs are always float32 probabilities.
    compile : bool
        Run the network through ``torch.compile``, for ~20 s of compilation on the first tile
        shape (every tile of an image, and of every block of a run, has the same shape). On
        this 2-core AMX CPU it took the whole of ``detect`` from 0.455 to 0.434 s/Mpix
        (``benchmarks/detect_speed.py``): worth it only for long runs. Falls back to eager
        mode, with a warning, where compilation fails (no C++ compiler).
    """

    def __init__(
        self,
        model: UNet,
        card: ModelCard,
        *,
        device: str | torch.device = "auto",
        precision: str = "auto",
        compile: bool = False,
    ):
        self.card = card
        self.config = model.config
        self.device = resolve_device(device)
        if self.device.type == "cpu":
            keep_freed_memory()  # each tile reuses the last one's memory (cpu_memory)
        self.dtype = resolve_precision(precision, self.device)
        # Never the caller's module: a model still being trained must keep its dtype, mode and
        # gradients (fold_batchnorm already returns a copy).
        net = fold_batchnorm(model) if model.config.norm == "batch" else copy.deepcopy(model)
        # Module.to takes memory_format at run time; torch's overloads do not list it.
        self.net = net.eval().to(self.device, self.dtype).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.eager = self.net
        self.compiled = bool(compile)
        if compile:
            self.net = torch.compile(self.net, dynamic=False)

    @property
    def name(self) -> str:
        """The model's registry name."""
        return self.card.name

    def default_tile(self) -> int:
        """Largest core tile: 448 px on CPUs, 1024 on GPUs.

        Each axis is then cut into the fewest cores of at most that size, as even as the grid
        allows (:func:`crscale.detection.tiling.core_size`). On CPUs a tile's input (core plus
        two 32-px halos) then stays at or under 512 px: above that the network's time per pixel
        rose by a third here, as its activations left the cache (``benchmarks/balanced_tiles.py``).
        """
        return 1024 if self.device.type == "cuda" else 448

    def default_batch(self) -> int:
        """Tiles per call: 1 on CPUs (bigger batches were slower there), 8 on GPUs."""
        return 8 if self.device.type == "cuda" else 1

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities (float32, same shape) for a (B, C, H, W) float32 input batch."""
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device, self.dtype)
            x = x.contiguous(memory_format=torch.channels_last)
            try:
                logits = self.net(x)
            except Exception as exc:  # inductor needs a working C++/CUDA toolchain
                if not self.compiled or self.net is self.eager:
                    raise
                warnings.warn(
                    f"torch.compile failed ({exc!r:.200}); running in eager mode",
                    FallbackWarning,
                    stacklevel=2,
                )
                self.net = self.eager
                logits = self.net(x)
            return torch.sigmoid(logits.float()).cpu().numpy()

    def __repr__(self) -> str:
        return f"Predictor({self.name!r}, device={self.device}, dtype={str(self.dtype).split('.')[-1]})"


_CACHE: dict[tuple, Predictor] = {}


def get_predictor(
    model: str = "default", *, device: str = "auto", precision: str = "auto", compile: bool = False
) -> Predictor:
    """Load (once per process) and prepare a model by name or path; see :func:`crscale.models.load_model`."""
    from crscale.models.store import load_model

    key = (str(model), str(device), precision, compile, os.getpid())
    if key not in _CACHE:
        net, card = load_model(model, device="cpu")
        _CACHE[key] = Predictor(net, card, device=device, precision=precision, compile=compile)
    return _CACHE[key]


def predictor_from(
    model: str | Predictor | tuple[UNet, ModelCard], device: str, precision: str, *, compile: bool = False
) -> Predictor:
    """Accept a ready :class:`Predictor`, a ``(UNet, ModelCard)`` pair, or a name/path."""
    if isinstance(model, Predictor):
        return model
    if isinstance(model, tuple):
        return Predictor(model[0], model[1], device=device, precision=precision, compile=compile)
    return get_predictor(str(model), device=device, precision=precision, compile=compile)
