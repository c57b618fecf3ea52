"""Training: real images + injected real CR footprints (label-free recipe), patch store, loop."""

from crscale.train.config import TrainConfig
from crscale.train.loop import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "train"]
