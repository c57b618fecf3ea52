"""Named architectures: the published deepCR / Cosmic-CoNN shapes and their attention variants."""

from __future__ import annotations

from crscale.models.unet import UNetConfig

PRESETS: dict[str, UNetConfig] = {
    # deepCR (Zhang & Bloom 2020): BatchNorm, depth 3, 32 channels: 467,233 parameters.
    "deepcr-3-32": UNetConfig(depth=3, width=32, norm="batch"),
    # deepCR's shipped ACS-WFC / DECam mask models are depth 2.
    "deepcr-2-32": UNetConfig(depth=2, width=32, norm="batch"),
    # Cosmic-CoNN's normalisation on the same U-Net: GroupNorm with 8 groups.
    "gn-3-32": UNetConfig(depth=3, width=32, norm="group", groups=8),
    # Attention gates on every skip connection (Oktay et al. 2018), as in the seed paper.
    "deepcr-3-32-att": UNetConfig(depth=3, width=32, norm="batch", attention=True),
    "gn-3-32-att": UNetConfig(depth=3, width=32, norm="group", groups=8, attention=True),
}


def preset(name: str) -> UNetConfig:
    """Return the architecture of a named preset.

    Raises
    ------
    KeyError
        With the list of known presets when ``name`` is not one.
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown architecture preset {name!r}; known: {', '.join(PRESETS)}") from None
