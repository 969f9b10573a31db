"""``edgemm bench``: latency, memory, cold start and accuracy drift, with peers side by side.

The core (statistics, runner, edgemm contenders, reports, cold start) is torch-free and runs on
the kiosk; :mod:`edgemm.bench.peers` (PyTorch eager, torch.compile, the Optimum pipeline) needs
the ``export`` extra and is imported only when peers are asked for.
"""

from __future__ import annotations
