"""The U-Net family of CR detectors: deepCR / Cosmic-CoNN style, with optional attention gates.

One class covers the published architectures: a U-Net of configurable depth and width, with
BatchNorm (deepCR), GroupNorm (Cosmic-CoNN) or no normalisation (deepCR's WFC3/UVIS model,
weight-normalised), and optionally an attention gate (Oktay et al. 2018) on every skip
connection. The module layout mirrors deepCR's (two 3×3 convolutions per level, 2×2 max
pooling, 2×2 transposed convolutions, a 1×1 output convolution) so that deepCR's shipped
weights map onto it one to one.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

NORMS = ("batch", "group", "none")

#: deepCR's BatchNorm momentum: slow running statistics, which its two-phase schedule relies on.
BN_MOMENTUM = 0.005


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of a U-Net CR detector.

    Parameters
    ----------
    depth : int
        Number of resolution levels (deepCR's "3" in deepcr-3-32): ``depth - 1`` poolings.
    width : int
        Channels at the first level; each level down doubles it.
    norm : {"batch", "group", "none"}
        Normalisation after every 3×3 convolution.
    attention : bool
        Attention gate on every skip connection.
    groups : int
        Groups for GroupNorm (Cosmic-CoNN uses 8).
    in_channels : int
        Input planes (1: the normalised image).
    """

    depth: int = 3
    width: int = 32
    norm: str = "batch"
    attention: bool = False
    groups: int = 8
    in_channels: int = 1

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, not {self.norm!r}")
        if self.depth < 1:
            raise ValueError(f"depth must be >= 1, not {self.depth}")
        if self.norm == "group" and self.width % self.groups:
            raise ValueError(f"width {self.width} is not a multiple of groups {self.groups}")

    def to_dict(self) -> dict:
        """Plain dict, for model cards."""
        return asdict(self)

    @property
    def align(self) -> int:
        """Tile origins must be multiples of this for tiled inference to equal whole-image."""
        return 2 ** (self.depth - 1)

    @property
    def receptive_radius(self) -> int:
        """Pixels of context on each side that an output pixel can depend on (an upper bound).

        At level k (scale s = 2**k) each 3×3 convolution reaches s pixels further, a 2×2
        pooling or transposed convolution up to s more; the tests check the bound against
        the measured support of an impulse response.
        """
        r = 0
        for k in range(self.depth):
            s = 2**k
            r += 2 * s  # two 3×3 convolutions on the way down (or at the bottom)
            if k < self.depth - 1:
                r += s  # pooling to the next level
                r += 2 * s + s  # transposed convolution back to this level and two convolutions
        return r


def _norm(kind: str, channels: int, groups: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels, momentum=BN_MOMENTUM)
    if kind == "group":
        return nn.GroupNorm(min(groups, channels), channels)
    return nn.Identity()


def _relu() -> Callable[[torch.Tensor], torch.Tensor]:
    # In place when no gradient is kept (inference): a new tensor per activation, and the pass
    # that fills it, cost a large part of the CPU time. Training keeps autograd's usual form.
    return torch.relu if torch.is_grad_enabled() else torch.relu_


class ConvBlock(nn.Module):
    """Two (3×3 convolution → normalisation → ReLU) layers."""

    fold_pairs = (("conv1", "norm1"), ("conv2", "norm2"))

    def __init__(self, cin: int, cout: int, norm: str, groups: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm1 = _norm(norm, cout, groups)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.norm2 = _norm(norm, cout, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        relu = _relu()
        x = relu(self.norm1(self.conv1(x)))
        return relu(self.norm2(self.conv2(x)))


class AttentionGate(nn.Module):
    """Additive attention gate (Oktay et al. 2018) on a skip connection.

    1×1 convolutions of the skip features and of the gating signal (the decoder's upsampled
    features at the same resolution) are added, passed through a ReLU, a 1×1 convolution to
    one channel and a sigmoid; the skip features are multiplied by that attention map.
    """

    fold_pairs = (("wx", "nx"), ("wg", "ng"), ("psi", "npsi"))

    def __init__(self, channels: int, norm: str, groups: int):
        super().__init__()
        inter = max(channels // 2, 1)
        self.wx = nn.Conv2d(channels, inter, 1)
        self.nx = _norm(norm, inter, groups)
        self.wg = nn.Conv2d(channels, inter, 1)
        self.ng = _norm(norm, inter, groups)
        self.psi = nn.Conv2d(inter, 1, 1)
        # One channel: GroupNorm over a single channel would erase the signal.
        self.npsi = nn.BatchNorm2d(1, momentum=BN_MOMENTUM) if norm == "batch" else nn.Identity()

    def forward(self, skip: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:  # noqa: D102
        a = _relu()(self.nx(self.wx(skip)) + self.ng(self.wg(gate)))
        return skip * torch.sigmoid(self.npsi(self.psi(a)))


class Up(nn.Module):
    """Transposed-convolution upsampling, optional attention on the skip, concatenation, ConvBlock."""

    def __init__(self, cin: int, cout: int, norm: str, groups: int, attention: bool):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cout, 2, stride=2)
        self.gate = AttentionGate(cout, norm, groups) if attention else None
        self.conv = ConvBlock(cin, cout, norm, groups)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:  # noqa: D102
        x = self.up(x)
        if self.gate is not None:
            skip = self.gate(skip, x)
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    """U-Net CR detector returning per-pixel logits (apply a sigmoid for probabilities).

    Parameters
    ----------
    config : UNetConfig
        The architecture.

    Notes
    -----
    Input height and width must be multiples of ``config.align``; :mod:`crscale.detection`
    pads and tiles images so that this always holds.
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        c, w = config, config.width
        self.inc = ConvBlock(c.in_channels, w, c.norm, c.groups)
        self.downs = nn.ModuleList(
            ConvBlock(w * 2 ** (k - 1), w * 2**k, c.norm, c.groups) for k in range(1, c.depth)
        )
        self.ups = nn.ModuleList(
            Up(w * 2**k, w * 2 ** (k - 1), c.norm, c.groups, c.attention) for k in range(c.depth - 1, 0, -1)
        )
        self.outc = nn.Conv2d(w, 1, 1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (N, 1, H, W) for input (N, in_channels, H, W)."""
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(self.pool(skips[-1])))
        x = skips.pop()
        for up in self.ups:
            x = up(x, skips.pop())
        return self.outc(x)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def fold_batchnorm(model: UNet) -> UNet:
    """Copy of an eval-mode BatchNorm U-Net with every BatchNorm folded into its convolution.

    Inference then costs one convolution instead of a convolution plus a normalisation pass
    over every activation; the result is the same function (to float rounding). Models with
    other normalisations are returned as an unchanged copy.
    """
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        for conv_name, norm_name in getattr(module, "fold_pairs", ()):
            norm = getattr(module, norm_name)
            if not isinstance(norm, nn.BatchNorm2d):
                continue
            conv = getattr(module, conv_name)
            assert norm.running_mean is not None and norm.running_var is not None  # tracked (eval mode)
            scale = norm.weight.detach() / torch.sqrt(norm.running_var + norm.eps)
            with torch.no_grad():
                conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
                bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
                conv.bias = nn.Parameter((bias - norm.running_mean) * scale + norm.bias.detach())
            setattr(module, norm_name, nn.Identity())
    return folded
