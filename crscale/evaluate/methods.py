"""The methods an evaluation compares: crscale models and the baselines, on the same pixels.

Every method turns an :class:`~crscale.evaluate.dataset.EvalImage` into either a **score**
(a probability map, thresholded at every level for ROC and precision-recall curves) or, for
astroscrappy, a **sweep**: one binary mask per ``sigclip`` value, the ROC points of the
attention-gate paper (sigclip 1 to 20, ``objlim`` and ``sigfrac`` held fixed).

Baselines are optional: :func:`baseline_methods` returns the available ones and a message for
each one whose package is missing.

- ``astroscrappy`` (BSD-3; a crscale dependency).
- pip ``deepCR``'s shipped mask models, run through crscale's interop loader
  (:mod:`crscale.models.deepcr`; its output equals deepCR's own, tested), in float32.
- ``Cosmic-CoNN``'s shipped models, run by the ``cosmic_conn`` package itself
  (``init_model(name).detect_cr(image)``, its own 1024 px stamps). Its weight files are read
  with ``torch.load``; crscale forces ``weights_only=True`` around that call
  (:func:`weights_only_loads`: tensors only, nothing unpickled, even where torch's default has
  been overridden) and calls it only on torch >= 2.6.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from crscale.errors import SettingsError
from crscale.evaluate.dataset import EvalImage

#: astroscrappy's sigclip sweep (the paper's range, 1 to 20).
DEFAULT_SIGCLIPS = (1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 6.0, 7.0, 8.0, 10.0, 12.0, 15.0, 20.0)
DEEPCR_MODELS = ("ACS-WFC", "decam", "WFC3-UVIS")
COSMIC_CONN_MODELS = ("ground_imaging", "NRES", "HST_ACS_WFC")
BASELINES = ("astroscrappy", "deepcr", "cosmic-conn")


@dataclass
class Method:
    """One method of an evaluation.

    Attributes
    ----------
    name : str
        Key in ``metrics.json`` (``"crscale:<model>"``, ``"astroscrappy"``, ``"deepCR:<model>"``,
        ``"Cosmic-CoNN:<model>"``).
    label : str
        Legend text.
    kind : {"score", "sweep"}
        What :meth:`run` returns: a float map, or ``{parameter value: bool mask}``.
    threshold : float
        The operating point at which F1, IoU and FDR are given (a probability or a sigclip).
    trained_dilated : bool
        The method was trained on 3×3-dilated masks: with ``dilate`` its output is not dilated again.
    """

    name: str
    label: str
    kind: str
    threshold: float
    parameter: str = "threshold"
    trained_dilated: bool = False
    settings: dict = field(default_factory=dict)

    def run(self, image: EvalImage) -> np.ndarray | dict[float, np.ndarray]:  # pragma: no cover - abstract
        """The method's output on one image."""
        raise NotImplementedError


@dataclass
class CrscaleMethod(Method):
    """A crscale model (shipped name, ``.safetensors`` path) run exactly as :func:`crscale.detect` runs it."""

    model: str = "default"
    device: str = "auto"
    precision: str = "auto"

    def run(self, image: EvalImage) -> np.ndarray:
        """Probability map."""
        return _detect_prob(image, self.model, self.device, self.precision)


def _detect_prob(image: EvalImage, model: str, device: str, precision: str) -> np.ndarray:
    import crscale
    from crscale.detection import get_predictor

    pred = get_predictor(model, device=device, precision=precision)
    return crscale.detect(image.image_e, model=pred, dq=image.bad, inpaint=False).prob


def crscale_method(
    model: str = "default", *, threshold: float | None = None, device: str = "auto", precision: str = "auto"
) -> CrscaleMethod:
    """A crscale model as a method named ``crscale:<card name>``; threshold: the card's recommendation."""
    from crscale.detection import get_predictor

    card = get_predictor(model, device=device, precision=precision).card
    thr = float(card.recommended_threshold if threshold is None else threshold)
    return CrscaleMethod(
        name=f"crscale:{card.name}",
        label=f"crscale {card.name}",
        kind="score",
        threshold=thr,
        model=model,
        device=device,
        precision=precision,
        settings={"model": model, "precision": precision},
    )


@dataclass
class DeepCRMethod(Method):
    """A pip deepCR shipped mask model (float32, deepCR's input convention)."""

    model: str = "ACS-WFC"

    def run(self, image: EvalImage) -> np.ndarray:
        """Probability map."""
        return _detect_prob(image, f"deepcr:{self.model}", "cpu", "float32")


@dataclass
class CosmicCoNNMethod(Method):
    """A Cosmic-CoNN shipped model, run by the ``cosmic_conn`` package."""

    model: str = "ground_imaging"

    def run(self, image: EvalImage) -> np.ndarray:
        """Probability map.

        The image is mirrored out to a multiple of 16 px first and cropped back after:
        Cosmic-CoNN drops the rows and columns beyond the last multiple of 16, which would
        count as misses that say nothing about the model.
        """
        net = _cosmic_conn_model(self.model)
        h, w = image.image_e.shape
        padded = np.pad(image.image_e, ((0, (-h) % 16), (0, (-w) % 16)), mode="reflect")
        prob = net.detect_cr(padded.astype(np.float32), ret_numpy=True)
        return np.asarray(prob, np.float32)[:h, :w]


_COSMIC_CONN: dict[str, object] = {}


def _cosmic_conn_model(name: str):
    if name not in _COSMIC_CONN:
        import logging

        from cosmic_conn import init_model

        level = logging.getLogger().level
        with weights_only_loads():
            _COSMIC_CONN[name] = init_model(name)
        logging.getLogger().setLevel(level)
    return _COSMIC_CONN[name]


@contextlib.contextmanager
def weights_only_loads() -> Iterator[None]:
    """Make every ``torch.load`` inside load tensors only (``weights_only=True``), whatever it asks.

    Cosmic-CoNN calls ``torch.load`` without ``weights_only``, so torch's default decides, and
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` (or a changed default) would let its checkpoint
    unpickle arbitrary objects. An explicit ``weights_only=True`` wins over both.
    """
    import torch

    original = torch.load

    def load(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        return original(*args, **kwargs)

    torch.load = load
    try:
        yield
    finally:
        torch.load = original


@dataclass
class AstroscrappyMethod(Method):
    """astroscrappy (L.A.Cosmic) over a sigclip sweep, with ``objlim`` and ``sigfrac`` held fixed."""

    sigclips: tuple[float, ...] = DEFAULT_SIGCLIPS
    objlim: float = 4.0
    sigfrac: float = 0.3
    niter: int = 4

    def run(self, image: EvalImage) -> dict[float, np.ndarray]:
        """One CR mask per sigclip."""
        import astroscrappy

        out = {}
        for s in sorted(set(self.sigclips) | {self.threshold}):
            mask, _ = astroscrappy.detect_cosmics(
                image.image_e,
                inmask=image.bad,
                gain=1.0,
                readnoise=max(image.readnoise_e, 1.0),
                sigclip=s,
                sigfrac=self.sigfrac,
                objlim=self.objlim,
                satlevel=np.inf,
                niter=self.niter,
            )
            out[float(s)] = np.asarray(mask, bool)
        return out


def astroscrappy_method(
    sigclips: tuple[float, ...] = DEFAULT_SIGCLIPS,
    *,
    objlim: float = 4.0,
    sigfrac: float = 0.3,
    sigclip: float = 4.5,
) -> AstroscrappyMethod:
    """The astroscrappy sweep method; ``sigclip`` is the operating point for F1/IoU/FDR (its default 4.5)."""
    return AstroscrappyMethod(
        name="astroscrappy",
        label=f"astroscrappy (objlim {objlim:g}, sigfrac {sigfrac:g})",
        kind="sweep",
        threshold=float(sigclip),
        parameter="sigclip",
        sigclips=tuple(float(s) for s in sigclips),
        objlim=objlim,
        sigfrac=sigfrac,
        settings={"objlim": objlim, "sigfrac": sigfrac, "sigclips": list(sigclips), "sigclip": sigclip},
    )


def _torch_loads_weights_only() -> bool:
    import torch

    major, minor = (int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
    return (major, minor) >= (2, 6)


def baseline_methods(
    names: tuple[str, ...] = BASELINES,
    *,
    sigclips: tuple[float, ...] = DEFAULT_SIGCLIPS,
    objlim: float = 4.0,
    sigfrac: float = 0.3,
    sigclip: float = 4.5,
    deepcr_models: tuple[str, ...] = DEEPCR_MODELS,
    cosmic_conn_models: tuple[str, ...] = COSMIC_CONN_MODELS,
) -> tuple[list[Method], list[dict]]:
    """The requested baselines that can run here, and ``{"method", "problem"}`` for those that cannot."""
    unknown = sorted(set(names) - set(BASELINES))
    if unknown:
        raise SettingsError(f"unknown baseline(s) {unknown}; known: {list(BASELINES)}")
    methods: list[Method] = []
    skipped: list[dict] = []
    if "astroscrappy" in names:
        if importlib.util.find_spec("astroscrappy") is None:
            skipped.append({"method": "astroscrappy", "problem": "not installed (pip install astroscrappy)"})
        else:
            methods.append(astroscrappy_method(sigclips, objlim=objlim, sigfrac=sigfrac, sigclip=sigclip))
    if "deepcr" in names:
        from crscale.models.deepcr import deepcr_model_names

        try:
            available = deepcr_model_names()
        except ImportError as exc:
            skipped.append({"method": "deepCR", "problem": str(exc)})
        else:
            for m in deepcr_models:
                if m in available:
                    methods.append(
                        DeepCRMethod(
                            name=f"deepCR:{m}", label=f"deepCR {m}", kind="score", threshold=0.5, model=m
                        )
                    )
                else:
                    skipped.append(
                        {"method": f"deepCR:{m}", "problem": f"not among deepCR's models {available}"}
                    )
    if "cosmic-conn" in names:
        if importlib.util.find_spec("cosmic_conn") is None:
            skipped.append(
                {
                    "method": "Cosmic-CoNN",
                    "problem": "not installed (pip install --no-deps cosmic-conn; GPL-3.0)",
                }
            )
        elif not _torch_loads_weights_only():
            skipped.append(
                {
                    "method": "Cosmic-CoNN",
                    "problem": "needs torch >= 2.6 so that its weights load tensors only",
                }
            )
        else:
            for m in cosmic_conn_models:
                methods.append(
                    CosmicCoNNMethod(
                        name=f"Cosmic-CoNN:{m}",
                        label=f"Cosmic-CoNN {m}",
                        kind="score",
                        threshold=0.5,
                        model=m,
                    )
                )
    return methods, skipped
