"""The worker plugin that loads the CR model once per worker, on the worker's own device.

Only the model's name (or path) and the settings travel to the workers; each worker loads the
weights from its own disk into its process-wide cache (:func:`crscale.detection.get_predictor`)
when it starts, or when the plugin is registered with a running cluster, and every block task
on that worker reuses it. Workers that join later (a nanny restarting a killed worker, an HPC
job starting late) run the plugin too. A GPU worker sees one device (``CUDA_VISIBLE_DEVICES``
pinned by the cluster), so ``device="auto"`` puts the model on that device.
"""

from __future__ import annotations

import os
import time
from typing import Any

from distributed import WorkerPlugin

#: Attribute of the worker object holding what the plugin loaded (for diagnostics and tests).
WORKER_ATTR = "crscale_model"


def torch_threads(worker_threads: int) -> int:
    """Intra-op threads for torch on a worker: ``OMP_NUM_THREADS`` if set, else cores / threads.

    Workers of a crscale cluster start with ``OMP_NUM_THREADS`` set so that
    workers × threads × torch threads never exceeds the cores; on a foreign cluster without it,
    each of the worker's task threads gets an equal share of the cores.
    """
    env = os.environ.get("OMP_NUM_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, worker_threads))


class ModelPlugin(WorkerPlugin):
    """Load a CR model on every worker (once), for the detection tasks.

    Parameters
    ----------
    model : str
        Model name or ``.safetensors`` path (as :func:`crscale.models.load_model` takes it).
    device, precision : str
        As for :func:`crscale.detect`.
    compile : bool
        ``torch.compile`` the network.
    gpu_only : bool
        Load the model only on workers that declare a ``GPU`` resource (the only ones that get
        CNN tasks when the cluster has GPUs).
    """

    idempotent = True

    def __init__(
        self,
        model: str,
        *,
        device: str = "auto",
        precision: str = "auto",
        compile: bool = False,
        gpu_only: bool = False,
    ) -> None:
        self.model = model
        self.device = device
        self.precision = precision
        self.compile = compile
        self.gpu_only = gpu_only
        self.name = f"crscale-model-{model}-{device}-{precision}-{int(compile)}"

    def setup(self, worker: Any) -> None:
        """Set torch's thread count and load the model into the worker's cache."""
        import torch

        from crscale.detection import get_predictor
        from crscale.detection.torch_block import set_worker_threads

        torch.set_num_threads(torch_threads(worker.state.nthreads))
        # The CNN tasks running at once share the device: each block's batch is sized for its share.
        from crscale import config

        set_worker_threads(min(worker.state.nthreads, int(config.get("detect.gpu_tasks_per_worker") or 1)))
        info: dict[str, Any] = {
            "model": self.model,
            "loaded": False,
            "torch_threads": torch.get_num_threads(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        }
        if self.gpu_only and "GPU" not in (worker.state.total_resources or {}):
            setattr(worker, WORKER_ATTR, info)
            return
        t0 = time.perf_counter()
        pred = get_predictor(self.model, device=self.device, precision=self.precision, compile=self.compile)
        info.update(
            loaded=True,
            device=str(pred.device),
            dtype=str(pred.dtype).split(".")[-1],
            seconds=round(time.perf_counter() - t0, 3),
            pid=os.getpid(),
        )
        setattr(worker, WORKER_ATTR, info)


def worker_model_info(dask_worker: Any) -> dict[str, Any]:
    """What :class:`ModelPlugin` loaded on a worker (``client.run(worker_model_info)``)."""
    return dict(getattr(dask_worker, WORKER_ATTR, {}))
