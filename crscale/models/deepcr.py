"""The mask models shipped with pip deepCR (BSD-3-Clause), as crscale U-Nets.

deepCR (Zhang & Bloom 2020) installs its trained weights as ``learned_models/mask/<name>.pth``
beside its ``deepCR`` package. :func:`load_deepcr` finds that file, reads it with
``torch.load(weights_only=True)`` (tensors and plain containers only: nothing is unpickled),
maps deepCR's parameter names onto crscale's U-Net, and returns the network with a
:class:`~crscale.models.card.ModelCard` that tells :func:`crscale.detect` how deepCR feeds it:

- the BatchNorm models (``ACS-WFC``, ``decam``, ``example_model``, ...) take the image in
  electrons divided by a per-model ``scale`` (``"scale"`` normalisation);
- ``WFC3-UVIS`` has no BatchNorm but weight-normalised convolutions, which are folded into
  plain weights here, and takes the whole image minus its mean, over its standard deviation
  (``"meanstd"`` normalisation).

Only the weight files and the text of ``learned_models/__init__.py`` are read; deepCR itself is
never imported, so ``pip install --no-deps deepcr`` is enough for crscale to use its models
(deepCR's own ``import`` needs tensorboard, scikit-image, matplotlib, joblib, astroscrappy).

crscale's output equals deepCR's ``clean(..., segment=False, binary=False)`` at every pixel at
least the receptive radius (10 px for these depth-2 models) from the image edge. Nearer the
edge the two differ: deepCR zero-pads every convolution's input at the image edge, crscale
zero-pads the normalised *image* (so that tiles and blocks reproduce whole-image inference) and
lets the hidden layers see their own response to that padding. Neither is more right; the
border band is simply where the two conventions disagree.
"""

from __future__ import annotations

import ast
import re
from importlib import metadata
from pathlib import Path
from typing import Any, cast

import torch

from crscale.errors import InputError, MissingDependencyError
from crscale.models.card import ModelCard
from crscale.models.unet import UNet, UNetConfig, count_parameters

#: Per-model input divisor and network class of deepCR 0.3.1's ``mask_dict``: used when the
#: installed ``learned_models/__init__.py`` cannot be parsed (its text is read, never run).
_FALLBACK_MASK_DICT: dict[str, tuple[str, float]] = {
    "ACS-WFC": ("UNet2SigmoidBatchNorm", 1.0),
    "decam": ("UNet2SigmoidBatchNorm", 1.0),
    "example_model": ("UNet2SigmoidBatchNorm", 100.0),
    "WFC3-UVIS": ("UNet2Sigmoid", 1.0),
}

#: deepCR normalises the input of these models by the whole image's mean and standard
#: deviation (``deepCR.norm``), after dividing by ``scale``.
_MEANSTD_MODELS = ("WFC3-UVIS",)

_DISTRIBUTION = "deepCR"
_INSTALL_HINT = "pip install --no-deps deepcr"


def _models_dir() -> Path:
    """``learned_models`` of the installed deepCR distribution.

    Found through the distribution's metadata rather than by importing ``learned_models``: the
    name is generic, and importing it imports deepCR and all its training dependencies.
    """
    try:
        dist = metadata.distribution(_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise MissingDependencyError(
            f"deepCR models need the pip package 'deepcr' (BSD-3-Clause), which is not installed: "
            f"{_INSTALL_HINT}"
        ) from None
    root = Path(str(dist.locate_file("learned_models")))
    if not (root / "mask").is_dir():
        raise MissingDependencyError(
            f"the installed deepcr {dist.version} has no learned_models/mask folder at {root}; "
            f"reinstall it: {_INSTALL_HINT}"
        )
    return root


def _mask_dict(root: Path) -> dict[str, tuple[str, float]]:
    """Read deepCR's ``mask_dict`` (name → (network class, scale)) from its source text.

    Parsing the literal keeps deepCR un-imported; any surprise in its shape falls back to the
    table of deepCR 0.3.1.
    """
    try:
        tree = ast.parse((root / "__init__.py").read_text())
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "mask_dict" for t in node.targets)
                and isinstance(node.value, ast.Dict)
            ):
                table = {}
                for key, value in zip(node.value.keys, node.value.values, strict=True):
                    # deepCR's literal: "name": [NetworkClass, (in, out, hidden), scale]
                    cls, _args, scale = cast(ast.List, value).elts
                    entry = (cast(ast.Name, cls).id, float(ast.literal_eval(scale)))
                    table[ast.literal_eval(cast(ast.expr, key))] = entry
                return table
    except (OSError, SyntaxError, ValueError, AttributeError, TypeError):
        pass
    return dict(_FALLBACK_MASK_DICT)


def deepcr_model_names() -> list[str]:
    """Names of the mask models of the installed deepCR, for ``"deepcr:<name>"``.

    Every ``learned_models/mask/*.pth`` is listed, including the files deepCR ships but leaves
    out of its own ``mask_dict`` (``ACS-WFC-F435W``, ...; deepCR itself cannot load those by
    name).

    Returns
    -------
    list of str
        Sorted model names.

    Raises
    ------
    ImportError
        deepCR is not installed (the message says how to install it).
    """
    return sorted(p.stem for p in (_models_dir() / "mask").glob("*.pth"))


def _fold_weight_norm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace ``weight_g``/``weight_v`` pairs by the weight they stand for.

    ``torch.nn.utils.weight_norm(conv)`` (dim 0) computes ``weight = g * v / ||v||`` with the
    norm over every dimension but the output channel. Newer torch names the pair
    ``parametrizations.weight.original0/1``; both spellings are accepted.
    """
    out: dict[str, torch.Tensor] = {}
    pairs = {
        ".weight_g": ".weight_v",
        ".parametrizations.weight.original0": ".parametrizations.weight.original1",
    }
    for key, value in state.items():
        for g_suffix, v_suffix in pairs.items():
            if key.endswith(g_suffix):
                base = key[: -len(g_suffix)]
                v = state[base + v_suffix].double()
                norm = v.flatten(1).norm(dim=1).reshape(-1, *([1] * (v.dim() - 1)))
                out[base + ".weight"] = (value.double() * v / norm).float()
                break
            if key.endswith(v_suffix):
                break
        else:
            out[key] = value
    return out


#: Position of a layer inside deepCR's ``double_conv`` Sequential → crscale ConvBlock name.
#: With BatchNorm: conv, BN, ReLU, conv, BN, ReLU; without: conv, ReLU, conv, ReLU.
_BLOCK_BN = {"0": "conv1", "1": "norm1", "3": "conv2", "4": "norm2"}
_BLOCK_PLAIN = {"0": "conv1", "2": "conv2"}


def _map_keys(
    state: dict[str, torch.Tensor], batchnorm: bool, path: Path
) -> tuple[dict[str, torch.Tensor], int]:
    """Rename deepCR's parameters (``down1.mpconv.1.conv.0.weight``) to crscale's; also the depth."""
    block = _BLOCK_BN if batchnorm else _BLOCK_PLAIN
    downs = sorted({int(m.group(1)) for k in state if (m := re.match(r"down(\d+)\.", k))})
    # deepCR numbers its up layers from the bottom (UNet3: up7 then up8): sorted order = crscale's.
    ups = sorted({int(m.group(1)) for k in state if (m := re.match(r"up(\d+)\.", k))})
    if downs != list(range(1, len(downs) + 1)) or len(ups) != len(downs):
        raise InputError(path, f"not a deepCR U-Net: down layers {downs}, up layers {ups}", kind="model")
    up_index = {n: j for j, n in enumerate(ups)}
    out: dict[str, torch.Tensor] = {}
    patterns = (
        (r"inc\.conv\.conv\.(\d+)\.(.+)", lambda m: f"inc.{block[m[1]]}.{m[2]}"),
        (r"down(\d+)\.mpconv\.1\.conv\.(\d+)\.(.+)", lambda m: f"downs.{int(m[1]) - 1}.{block[m[2]]}.{m[3]}"),
        (r"up(\d+)\.up\.(.+)", lambda m: f"ups.{up_index[int(m[1])]}.up.{m[2]}"),
        (
            r"up(\d+)\.conv\.conv\.(\d+)\.(.+)",
            lambda m: f"ups.{up_index[int(m[1])]}.conv.{block[m[2]]}.{m[3]}",
        ),
        (r"outc\.conv\.(.+)", lambda m: f"outc.{m[1]}"),
    )
    for key, value in state.items():
        for pattern, name in patterns:
            m = re.fullmatch(pattern, key)
            if m is not None:
                try:
                    out[name(m)] = value
                except KeyError:
                    problem = f"unexpected layer {key!r} for this deepCR network"
                    raise InputError(path, problem, kind="model") from None
                break
        else:
            raise InputError(path, f"unexpected parameter {key!r} in a deepCR mask model", kind="model")
    return out, len(downs) + 1


def load_deepcr(name: str, *, device: str | torch.device = "cpu") -> tuple[UNet, ModelCard]:
    """Load a mask model shipped with pip deepCR as a crscale U-Net.

    Parameters
    ----------
    name : str
        deepCR's name of the model (``"ACS-WFC"``, ``"decam"``, ``"WFC3-UVIS"``,
        ``"example_model"``, ...; see :func:`deepcr_model_names`).
    device : str or torch.device
        Where to put the weights.

    Returns
    -------
    (UNet, ModelCard)
        The network in eval mode, and its card (name ``"deepcr:<name>"``, deepCR's input
        normalisation, threshold 0.5).

    Raises
    ------
    ImportError
        deepCR is not installed (the message says how to install it).
    InputError
        ``name`` is not one of the installed models (the message lists them), or the file is
        not a deepCR U-Net.
    """
    root = _models_dir()
    path = root / "mask" / f"{name}.pth"
    if not path.is_file():
        known = deepcr_model_names()
        problem = f"unknown deepCR mask model; installed: {', '.join(known) or 'none'}"
        raise InputError(f"deepcr:{name}", problem, kind="model")
    try:
        # weights_only: tensors and plain containers only; a tampered file cannot run code.
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or non-tensor pickles
        raise InputError(path, f"cannot read deepCR weights: {exc}", kind="model") from exc
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise InputError(path, "not a state dict of tensors", kind="model")
    # deepCR saves the state of WrappedModel / DataParallel: every key starts with "module.".
    state = {k.removeprefix("module."): v for k, v in raw.items()}
    state = _fold_weight_norm(state)
    batchnorm = any(k.endswith("running_var") for k in state)
    mapped, depth = _map_keys(state, batchnorm, path)
    inc = mapped["inc.conv1.weight"]
    config = UNetConfig(depth=depth, width=int(inc.shape[0]), norm="batch" if batchnorm else "none",
                        in_channels=int(inc.shape[1]))
    model = UNet(config)
    try:
        model.load_state_dict(mapped, strict=True)
    except RuntimeError as exc:
        raise InputError(path, f"deepCR weights do not fit a {config}: {exc}", kind="model") from exc

    table = _mask_dict(root)
    cls, scale = table.get(name, ("(not in deepCR's mask_dict)", 1.0))
    normalisation: dict[str, Any]
    if name in _MEANSTD_MODELS:
        normalisation = {
            "method": "meanstd", "units": "electrons",
            "description": "(image - mean) / std, mean and standard deviation of the whole image (deepCR)",
        }
    else:
        normalisation = {
            "method": "scale", "scale": scale, "units": "electrons",
            "description": f"image in electrons divided by {scale:g} (deepCR's mask_dict scale)",
        }
    try:
        version = metadata.version(_DISTRIBUTION)
    except metadata.PackageNotFoundError:  # pragma: no cover - _models_dir found it a moment ago
        version = "unknown"
    card = ModelCard(
        name=f"deepcr:{name}",
        architecture=config.to_dict(),
        normalisation=normalisation,
        recommended_threshold=0.5,
        training={"source": f"pip deepCR {version}: {path}", "network": cls,
                  "reference": "Zhang & Bloom 2020, ApJ 889, 24"},
        licence="BSD-3-Clause (deepCR, Copyright (c) 2019, UC Berkeley)",
        notes=(
            "deepCR's shipped mask model, mapped onto crscale's U-Net"
            + (" (weight-normalised convolutions folded into plain weights)" if not batchnorm else "")
            + ". Threshold 0.5 is deepCR's default, not a crscale-validated one. crscale's "
            "probabilities equal deepCR's clean(segment=False) except within the receptive radius "
            "of the image edge, where deepCR zero-pads each layer and crscale the input image."
            + ("" if name in table else " Not in deepCR's mask_dict: scale 1 assumed, as deepCR "
               "does for a model given by path.")
        ),
    )
    card.parameters = count_parameters(model)
    card.receptive_radius = config.receptive_radius
    return model.eval().to(device), card
