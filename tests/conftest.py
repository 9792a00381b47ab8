import sys
from pathlib import Path

# tests import their helpers (netgen, ...) by plain module name
sys.path.insert(0, str(Path(__file__).parent))
