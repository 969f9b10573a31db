"""Do more threads than cores win CPU time back from a busy core? (issue 16, contention goal)

With one of two cores kept busy, a compute-bound run that used both cores well can at best use
the other one and a share of the busy one. Linux shares a core fairly between runnable threads,
so more worker threads than cores might take a larger share of the busy core. This times
ONNX Runtime INT8 with blocking workers at 2 / 3 / 4 threads (spinning 2 threads for reference)
and OpenVINO INT8 (``ov-int8`` IR, no pinning) at 2 / 3 / 4 threads, batch 8 and 32, quiet and
with :class:`edgemm.bench.runner.BackgroundLoad`, interleaved in one process.

    python benchmarks/oversubscribe.py benchmarks/.work/reference-cpu.bundle --rounds 4
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgemm.bench.runner import BackgroundLoad


def _ort(path: Path, threads: int, spin: bool) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda feed: session.run(None, feed)


def _openvino(path: Path, threads: int) -> Any:
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU", {
        "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": str(threads),
        "ENABLE_CPU_PINNING": "NO"})
    request = compiled.create_infer_request()
    return lambda feed: request.infer(feed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)
    golden = np.load(args.bundle / "golden.npz")
    full = {k[5:]: v for k, v in golden.items() if k.startswith("feed.")}
    feeds = {b: {k: np.ascontiguousarray(np.resize(v, (b, *v.shape[1:]))) for k, v in full.items()} for b in (8, 32)}
    runners = {"ort int8 spin t2": _ort(args.bundle / "model" / "int8.onnx", 2, True)}
    runners.update({f"ort int8 block t{t}": _ort(args.bundle / "model" / "int8.onnx", t, False) for t in (2, 3, 4)})
    runners.update({f"openvino ov-int8 t{t}": _openvino(args.bundle / "model" / "ov-int8.xml", t) for t in (2, 3, 4)})
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
