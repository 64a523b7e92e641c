"""OpenFluoro: an open virtual fluoroscope."""

import os as _os

# Numba's OpenMP threads busy-wait by default; with the other core busy (a server, a
# browser) every parallel kernel then stalls for milliseconds. Passive waiting keeps a
# 512x512 frame at ~2 ms instead of 20-45 ms (benchmarks/chain.py --compare-wait-policy).
_os.environ.setdefault("OMP_WAIT_POLICY", "passive")

__version__ = "0.1.0"
