import os
import sys
from pathlib import Path

# The CPU kernels and torch share one OpenMP runtime, which reads its wait policy when it
# first starts; spinning idle workers slow the other side's next parallel region many
# times over on two cores (see bwplan/kernels/cpu/threads.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# tests import their helpers (netgen, ...) by plain module name
sys.path.insert(0, str(Path(__file__).parent))
