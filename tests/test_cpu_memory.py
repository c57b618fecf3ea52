"""A CPU predictor keeps freed memory for the next tile (glibc), in plain processes and dask workers.

Without it every tile touches fresh pages: the page faults, counted by the kernel, are the
property measured here (their cost in time is ``benchmarks/malloc_tuning.py``'s).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from crscale.detection.cpu_memory import glibc
from tests.conftest import FZ

pytestmark = pytest.mark.skipif(glibc() is None, reason="the tuning is for glibc's malloc")

TUNABLES = ("CRSCALE_KEEP_FREED_MEMORY", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")
#: Runs crscale.detect three times on the real BANZAI frame; prints the third run's page faults.
CHILD = f"""
import json, resource, numpy as np, torch
from astropy.io import fits
torch.set_num_threads(1)
import crscale
from crscale.detection import get_predictor
from crscale.detection.cpu_memory import keep_freed_memory
img = fits.getdata({str(FZ)!r}, "SCI").astype(np.float32)
pred = get_predictor("default", device="cpu", precision="float32")
for _ in range(2):
    crscale.detect(img, model=pred, inpaint=False)
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
mask = crscale.detect(img, model=pred, inpaint=False).mask
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0
print(json.dumps({{"faults": faults, "tuned": keep_freed_memory(), "mask": int(mask.sum()),
                   "ys": np.flatnonzero(mask.any(1)).tolist()}}))
"""


def _run(env_extra: dict[str, str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in TUNABLES}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_tiles_reuse_freed_memory_under_dasks_trim_setting_and_the_result_is_the_same():
    dask_env = {"MALLOC_TRIM_THRESHOLD_": "65536"}  # what distributed's nanny gives its workers
    off = _run({**dask_env, "CRSCALE_KEEP_FREED_MEMORY": "0"})
    on = _run(dask_env)
    assert off["tuned"] is False and on["tuned"] is True
    # 1.5 Mpix in 12 tiles: every tile faulting its activations in again costs tens of thousands
    assert off["faults"] > 20_000
    assert on["faults"] < off["faults"] / 10
    assert on["mask"] == off["mask"] > 0 and on["ys"] == off["ys"]


def _worker_faults() -> dict:
    """In a dask worker: page faults of the last of five crscale.detect runs on the real frame."""
    import resource

    import numpy as np
    from astropy.io import fits

    import crscale
    from crscale.detection import Predictor
    from crscale.detection.cpu_memory import keep_freed_memory
    from crscale.models import load_model

    img = fits.getdata(FZ, "SCI").astype(np.float32)
    pred = Predictor(*load_model("default"), device="cpu", precision="float32")
    for _ in range(4):  # a worker thread's arena takes a few images to reach its size
        crscale.detect(img, model=pred, inpaint=False)
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    crscale.detect(img, model=pred, inpaint=False)
    return {"faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0, "tuned": keep_freed_memory(),
            "trim_env": os.environ.get("MALLOC_TRIM_THRESHOLD_")}


def _in_a_worker(env: dict[str, str]) -> dict:
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, env=env) as cluster, Client(cluster) as client:
        return client.submit(_worker_faults, pure=False).result(timeout=300)


def test_a_dask_worker_process_keeps_its_tiles_memory():
    """Real LocalCluster workers, started by their nanny with dask's trim setting."""
    off = _in_a_worker({"CRSCALE_KEEP_FREED_MEMORY": "0"})
    on = _in_a_worker({})
    assert on["trim_env"] == off["trim_env"] is not None  # the nanny's setting is there
    assert off["tuned"] is False and on["tuned"] is True
    assert off["faults"] > 100_000, off  # every tile's activations faulted in again
    # In a worker thread some faults remain (5,000-124,000 per image against ~440,000 here,
    # varying from worker to worker; benchmarks/malloc_tuning.py): far fewer, not none.
    assert on["faults"] < off["faults"] / 2, (on, off)
