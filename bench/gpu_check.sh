#!/usr/bin/env bash
# The GPU check of the CUDA target, for a GPU machine (H100, CUDA 13, Python 3.12), run from
# the checkout's root after
#     python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#     export PYTHONPATH=/tmp/site:$PWD
# 1. every import the run needs, and the GPU itself, or stop at once with the reason;
# 2. the GPU tests (tests/test_cuda_gpu.py; the nvcc and host tests of the CUDA target,
#    tests/test_cuda_compile.py and tests/test_cuda_host.py, need no GPU and run anywhere);
# 3. the GPU benchmark (bench/gpu_bench.py), whose table is printed last.
# Logs and bench JSON go to $OUT when it is set. Exit status: nonzero if any part failed.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
LOG=${OUT:-/tmp}
started=$(date +%s)

python3 - <<'PY' || { echo "gpu_check: FAILED before the tests (see above)" >&2; exit 2; }
import importlib, shutil, sys
missing = []
for name in ("numpy", "numba", "networkx", "lark", "pytest", "hypothesis", "torch",
             "pycuda.driver", "pycuda.compiler", "bwplan", "bwplan.runtime.cuda",
             "bwplan.kernels.cuda.build"):
    try:
        importlib.import_module(name)
    except Exception as err:  # noqa: BLE001 - report every failure, not just ImportError
        missing.append(f"{name}: {type(err).__name__}: {err}")
if missing:
    sys.exit("gpu_check: cannot import\n  " + "\n  ".join(missing))
if shutil.which("nvcc") is None:
    sys.exit("gpu_check: nvcc is not on PATH")
import torch
from bwplan.runtime.cuda import device
d = device()
print(f"gpu_check: {d.name} ({d.arch}, {d.sm_count} SMs), torch {torch.__version__}, "
      f"torch sees the GPU: {torch.cuda.is_available()}")
if not torch.cuda.is_available():
    sys.exit("gpu_check: torch cannot see the GPU")
PY

status=0
echo "== tests ($(date +%T))"
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_cuda_gpu.py 2>&1 \
    | tee "$LOG/gpu_tests.log" | tail -n 60 || status=1
echo "== benchmark ($(date +%T), $(( $(date +%s) - started )) s in)"
timeout 200 python3 -m bench.gpu_bench --batch-mult "${BATCH_MULT:-16}" 2>&1 \
    | tee "$LOG/gpu_bench.log" || status=1
echo "gpu_check: $(( $(date +%s) - started )) s, status $status"
exit $status
