"""Cold start and peak memory, each in a fresh process: process start → import → load → first result.

The parent times from spawning the interpreter until the child reports its first prediction;
the child reports its own import / load / first-inference phases and its peak RSS. Run as
``python -m edgemm.bench.coldstart …`` (the child side).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

CHILDREN = ("edgemm", "torch-eager", "optimum", "openvino")


def _peak_rss_mb() -> float:
    """This process's peak resident memory.

    ``VmHWM`` first: Linux carries ``ru_maxrss`` over from the parent across fork + exec, so a
    child spawned by a big benchmark process would report the parent's peak.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 2**20  # KiB on Linux, bytes on macOS
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def measure(kind: str, bundle: Path, *, artifact: str | None = None, checkpoint: Path | None = None,
            device: str = "cpu", threads: int | None = None, runs: int = 3, timeout: float = 600) -> dict[str, Any]:
    """Median cold start over ``runs`` fresh processes, with every run's phases and peak RSS."""
    args = [sys.executable, "-m", "edgemm.bench.coldstart", kind, str(bundle), "--device", device]
    if artifact:
        args += ["--artifact", artifact]
    if checkpoint:
        args += ["--checkpoint", str(checkpoint)]
    if threads:
        args += ["--threads", str(threads)]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        line = proc.stdout.readline()
        first_result = time.perf_counter() - start
        _, err = proc.communicate(timeout=timeout)
        if proc.returncode != 0 or not line.strip():
            return {"kind": kind, "artifact": artifact, "error": (err.strip().splitlines() or ["no output"])[-1][:300]}
        child = json.loads(line)
        samples.append({"total_s": first_result, **child})
    totals = [s["total_s"] for s in samples]
    return {"kind": kind, "artifact": artifact, "runs": samples, "total_s": float(np.median(totals)),
            "peak_rss_mb": float(np.median([s["peak_rss_mb"] for s in samples]))}


# -- the child side ---------------------------------------------------------------------------


def first_request(bundle: Path) -> dict[str, Any]:
    """The first golden-set request of a bundle (what every cold start predicts on)."""
    from edgemm.bundle.verify import verify_bundle
    from edgemm.runtime.golden import load_golden

    manifest = verify_bundle(bundle, check_hashes=False)
    requests = load_golden(bundle, manifest).raw_requests()
    return {m: items[0] for m, items in requests.items() if items and items[0] is not None}


def _child_edgemm(bundle: Path, artifact: str | None, device: str, threads: int | None) -> tuple[float, float, Any]:
    t0 = time.perf_counter()
    from edgemm.runtime.predictor import Predictor

    t1 = time.perf_counter()
    predictor = Predictor.load(bundle, device=device, artifact=artifact, threads=threads)
    t2 = time.perf_counter()
    request = first_request(bundle)
    return t1 - t0, t2 - t1, lambda: predictor.predict(**request)


def main() -> None:
    """Child-process entry point (``python -m edgemm.bench.coldstart``): load, predict once, print the phases as JSON."""
    parser = argparse.ArgumentParser(description="cold-start child (internal)")
    parser.add_argument("kind", choices=CHILDREN)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--artifact")
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    if args.kind == "edgemm":
        import_s, load_s, first = _child_edgemm(args.bundle, args.artifact, args.device, args.threads)
    else:
        from edgemm.bench.peers import cold_start_child  # the peers' side of the story needs torch

        import_s, load_s, first = cold_start_child(args.kind, args.bundle, args.checkpoint, args.device, args.threads,
                                                   first_request(args.bundle))
    t = time.perf_counter()
    first()
    first_s = time.perf_counter() - t
    sys.stdout.write(json.dumps({"import_s": import_s, "load_s": load_s, "first_inference_s": first_s,
                                 "peak_rss_mb": _peak_rss_mb()}) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
