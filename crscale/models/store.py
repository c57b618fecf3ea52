"""Weight files (safetensors) with their model cards, and the registry of shipped models.

Weights are only ever read with :mod:`safetensors`, which holds tensors and nothing else:
crscale never unpickles a model file. (deepCR's ``.pth`` files are read by
:mod:`crscale.models.deepcr` with ``torch.load(weights_only=True)``, which refuses anything
but tensors and plain containers.)
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from crscale.errors import InputError
from crscale.models.card import ModelCard
from crscale.models.unet import UNet, count_parameters

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_MODEL = "crscale-default"


def _paths(path: str | Path) -> tuple[Path, Path]:
    p = Path(path)
    base = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
    return base.with_suffix(".safetensors"), base.with_suffix(".json")


def save_model(model: UNet, card: ModelCard, path: str | Path) -> Path:
    """Write ``<path>.safetensors`` and its card ``<path>.json``.

    The card's ``parameters``, ``receptive_radius``, ``created`` and ``crscale_version`` are
    filled in; the card is also stored in the safetensors header so a weight file that loses
    its JSON twin still says what it is.

    Returns
    -------
    Path
        The weight file.
    """
    from crscale._version import __version__

    weights, card_path = _paths(path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    card.architecture = model.config.to_dict()
    card.parameters = count_parameters(model)
    card.receptive_radius = model.config.receptive_radius
    card.created = card.created or _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    card.crscale_version = __version__
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(weights), metadata={"crscale_card": json.dumps(card.to_dict())})
    card.write(card_path)
    return weights


def load_weights(path: str | Path, *, device: str | torch.device = "cpu") -> tuple[UNet, ModelCard]:
    """Load a crscale weight file and its card into an eval-mode :class:`UNet`.

    Raises
    ------
    InputError
        Naming the file, when it is missing, not a safetensors file, or does not match its card.
    """
    from safetensors import safe_open

    weights, card_path = _paths(path)
    if not weights.exists():
        raise InputError(weights, "model weight file not found", kind="model")
    try:
        if card_path.exists():
            card = ModelCard.read(card_path)
        else:
            with safe_open(str(weights), framework="pt") as f:
                meta = f.metadata() or {}
            if "crscale_card" not in meta:
                raise InputError(weights, "no model card (.json) beside it nor in its header", kind="model")
            card = ModelCard.from_dict(json.loads(meta["crscale_card"]))
        state = load_file(str(weights), device="cpu")
    except InputError:
        raise
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise InputError(weights, f"cannot read model: {exc}", kind="model") from exc
    model = UNet(card.config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise InputError(
            weights, f"weights do not match the card's architecture: {exc}", kind="model"
        ) from exc
    return model.eval().to(device), card


def available_models() -> dict[str, Path]:
    """Shipped models: registry name → weight file."""
    return {p.stem: p for p in sorted(WEIGHTS_DIR.glob("*.safetensors"))}


def load_model(spec: str | Path = "default", *, device: str | torch.device = "cpu") -> tuple[UNet, ModelCard]:
    """Resolve a model by name or path and load it.

    Parameters
    ----------
    spec : str or Path
        ``"default"`` (the shipped default model), a shipped model's name (see
        :func:`available_models`), ``"deepcr:<name>"`` for a model of an installed pip deepCR
        (e.g. ``"deepcr:ACS-WFC"``), or the path of a ``.safetensors`` file.
    device : str or torch.device
        Where to put the weights.
    """
    name = str(spec)
    if name.startswith("deepcr:"):
        from crscale.models.deepcr import load_deepcr

        return load_deepcr(name.split(":", 1)[1], device=device)
    return load_weights(weights_file(name), device=device)


def weights_file(spec: str | Path = "default") -> Path:
    """The weight file of a crscale model: ``"default"``, a shipped model's name, or a path.

    Raises
    ------
    InputError
        For a name that is neither shipped nor a path.
    """
    name = str(spec)
    if name == "default":
        name = DEFAULT_MODEL
    shipped = available_models()
    if name in shipped:
        return shipped[name]
    p = Path(name).expanduser()
    if p.suffix in (".safetensors", ".json") or p.exists():
        return p
    raise InputError(
        name,
        f"unknown model; shipped models: {', '.join(shipped) or 'none'}; or give a .safetensors path",
        kind="model",
    )


@functools.lru_cache(maxsize=16)
def weights_sha256(spec: str = "default") -> str | None:
    """SHA-256 of a crscale model's weight file, or None where there is no file to hash.

    Parameters
    ----------
    spec : str
        As for :func:`weights_file`; a ``deepcr:NAME`` model, an unknown name or a file that is
        gone give None.

    Returns
    -------
    str or None
        64 hexadecimal digits.
    """
    try:
        path = weights_file(spec)
    except InputError:
        return None
    if path.suffix == ".json":
        path = path.with_suffix(".safetensors")
    if not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()
