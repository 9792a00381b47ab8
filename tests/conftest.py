import os
import sys
from pathlib import Path

# The CPU kernels and torch share one OpenMP runtime, which reads its wait policy when it
# first starts; spinning idle workers slow the other side's next parallel region many
# times over on two cores (see bwplan/kernels/cpu/threads.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# every test verifies the IR, the plan and the program between passes (bwplan/ir/verify.py)
os.environ.setdefault("BWPLAN_CHECKS", "1")

# tests import their helpers (netgen, ...) by plain module name
sys.path.insert(0, str(Path(__file__).parent))

# CI machines are shared: a slow moment must not fail a property test through a health
# check on generation speed (every test still runs all its examples).
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile("shared-machine", deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile("shared-machine")
