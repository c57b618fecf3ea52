#!/usr/bin/env bash
# The device check of issue #17, for a session that is lent one H100/H200 (15 minutes in all).
# Run from the repository root: `bash benchmarks/gpu_device_check.sh` (through the `run` tool,
# timeout_s=600). Writes $OUT/gpu_check.json, $OUT/gpu_check.log and $OUT/pytest_gpu.log.
set -u
OUT=${OUT:-/tmp/crscale-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
} > "$OUT/gpu_check.log" 2>&1
# GPU tests first (seconds), then the timed run: 16 x 4096^2 keeps it within ~8 minutes.
timeout 120 python -m pytest tests/test_torch_block.py -m gpu -q -p no:cacheprovider \
  --basetemp=/tmp/pt-gpu-check > "$OUT/pytest_gpu.log" 2>&1
echo "pytest -m gpu: rc=$?" >> "$OUT/gpu_check.log"
timeout 450 python benchmarks/gpu_device_check.py --n "${N:-16}" --size "${SIZE:-4096}" --out "$OUT" \
  >> "$OUT/gpu_check.log" 2>&1
echo "device check: rc=$?" >> "$OUT/gpu_check.log"
tail -n 20 "$OUT/gpu_check.log"
