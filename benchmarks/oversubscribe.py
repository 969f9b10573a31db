"""Do more threads than cores win CPU time back from a busy core? (issue 16, contention goal)

With one of two cores kept busy, a compute-bound run that used both cores well can at best use
the other one and a share of the busy one. Linux shares a core fairly between runnable threads,
so more worker threads than cores might take a larger share of the busy core. This times
ONNX Runtime INT8 with blocking workers at 2 / 3 / 4 threads (spinning 2 threads for reference)
and OpenVINO INT8 (``ov-int8`` IR, no pinning, OpenVINO's default precision: BF16 for the layers
INT8 leaves on a BF16 CPU) at 2 / 3 / 4 threads, batch 8 and 32, quiet and
with :class:`edgemm.bench.runner.BackgroundLoad`, interleaved in one process.

    python benchmarks/oversubscribe.py benchmarks/.work/reference-cpu.bundle --rounds 4
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from thread_policy import _ort_session, _ov_request  # run as a script: benchmarks/ is on sys.path

from edgemm.bench.runner import BackgroundLoad

BLOCKING = {"session.intra_op.allow_spinning": "0"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)
    golden = np.load(args.bundle / "golden.npz")
    full = {k[5:]: v for k, v in golden.items() if k.startswith("feed.")}
    feeds = {b: {k: np.ascontiguousarray(np.resize(v, (b, *v.shape[1:]))) for k, v in full.items()} for b in (8, 32)}
    int8, ir = args.bundle / "model" / "int8.onnx", args.bundle / "model" / "ov-int8.xml"
    runners = {"ort int8 spin t2": _ort_session(int8, 2, None)}
    runners.update({f"ort int8 block t{t}": _ort_session(int8, t, BLOCKING) for t in (2, 3, 4)})
    runners.update({f"openvino ov-int8 t{t}": _ov_request(ir, t, pinning=False, precision=None) for t in (2, 3, 4)})
    for run in runners.values():
        for feed in feeds.values():
            for _ in range(3):
                run(feed)
    samples: dict[tuple[str, int, str], list[float]] = {}
    for _ in range(args.rounds):
        for load in ("quiet", "busy"):
            background = BackgroundLoad() if load == "busy" else None
            if background:
                background.start()
            try:
                for name, run in runners.items():
                    for batch, feed in feeds.items():
                        for _ in range(12 if batch == 8 else 5):
                            start = time.perf_counter()
                            run(feed)
                            samples.setdefault((name, batch, load), []).append((time.perf_counter() - start) * 1e3)
            finally:
                if background:
                    background.stop()
    for name in runners:
        cells = []
        for batch in feeds:
            quiet, busy = (statistics.median(samples[(name, batch, load)]) for load in ("quiet", "busy"))
            cells.append(f"b{batch} quiet {quiet:7.2f} busy {busy:7.2f} ms ({busy / quiet:.2f}x)")
        print(f"{name:22s} | " + " | ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
