"""This machine's fp32 matmul rate: the best of several torch.matmul calls on square
matrices with the benchmark's thread count. Prints {"size": GFLOP/s, ...} as JSON.

    .venv/bin/python benchmarks/matmul_peak.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import pin_threads  # noqa: E402


def main() -> int:
    import torch

    pin_threads()
    best = {}
    for n in (1024, 2048):
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.matmul(a, b)  # warm-up
        seconds = []
        for _ in range(8):
            start = time.perf_counter()
            torch.matmul(a, b)
            seconds.append(time.perf_counter() - start)
        best[n] = 2 * n**3 / min(seconds) / 1e9  # a matmul is n^3 multiply-adds
    print(json.dumps(best))
    return 0


if __name__ == "__main__":
    sys.exit(main())
