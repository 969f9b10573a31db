"""Thread and spin policy under contention (issue 16): quiet vs one core kept busy, interleaved.

Every policy's session is made once; then rounds alternate "quiet" and "busy" (a subprocess
``while True: pass`` pinned to core 0, as a kiosk's browser would take a core), and inside each
round every policy is timed back to back at batch 1 and 8 on the bundle's golden feed. Ratios
within one run are what count (the machines here are shared and noisy).

    python benchmarks/thread_policy.py out/reference.bundle --artifact int8 --rounds 6 \
        --json benchmarks/results/cpu-amd-epyc-2c/thread-policy.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

BUSY = "import os\nos.sched_setaffinity(0, {0})\nwhile True:\n    pass\n"


def _ort_policies(threads: int) -> dict[str, dict[str, str] | None]:
    """ORT policies: name → session config entries (None: ORT's defaults, i.e. spinning)."""
    return {
        f"ort t{threads} spin (ORT default)": None,
        f"ort t{threads} no-spin (EDGEMM_SPIN=0)": {"session.intra_op.allow_spinning": "0",
                                            "session.inter_op.allow_spinning": "0"},
        f"ort t{threads} no-spin dbb2": {"session.intra_op.allow_spinning": "0", "session.dynamic_block_base": "2"},
        f"ort t{threads} spin 20us": {"session.intra_op.spin_duration_us": "20"},
        f"ort t{threads} spin 100us": {"session.intra_op.spin_duration_us": "100"},
        f"ort t{threads} spin 500us": {"session.intra_op.spin_duration_us": "500"},
        f"ort t{threads} spin stop-after-run": {"session.force_spinning_stop": "1"},
        f"ort t{threads} spin 30us stop-after-run": {"session.intra_op.spin_duration_us": "30",
                                                     "session.force_spinning_stop": "1"},
        f"ort t{threads} spin 100us stop-after-run dbb2": {"session.intra_op.spin_duration_us": "100",
                                                           "session.force_spinning_stop": "1",
                                                           "session.dynamic_block_base": "2"},
        f"ort t{threads} spin 100us stop-after-run": {"session.intra_op.spin_duration_us": "100",
                                                      "session.force_spinning_stop": "1"},
        "ort t1": {},
    }


def _ort_session(path: Path, threads: int, entries: dict[str, str] | None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    for key, value in (entries or {}).items():
        options.add_session_config_entry(key, value)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}  # a split's text part takes only the text inputs
    return lambda feed: session.run(None, {k: v for k, v in feed.items() if k in names})


def _adaptive_session(path: Path, threads: int) -> Any:
    """edgemm's default: an AdaptiveSession (spinning while idle; under contention blocking, or one thread for one row)."""
    os.environ.pop("EDGEMM_SPIN", None)
    from edgemm.runtime.sessions import AdaptiveSession, create_session

    session = create_session(path, threads=threads)
    if not isinstance(session, AdaptiveSession):
        raise SystemExit("no adaptive session here (no /proc?)")
    names = {i.name for i in session.get_inputs()}
    run = lambda feed: session.run(None, {k: v for k, v in feed.items() if k in names})  # noqa: E731
    run.session = session  # type: ignore[attr-defined]
    return run


def _ov_request(path: Path, threads: int, pinning: bool, precision: str | None = "f32") -> Any:
    """An OpenVINO CPU infer request as a callable; ``precision`` None: OpenVINO's default (BF16 on a BF16 CPU)."""
    import openvino as ov

    core = ov.Core()
    properties = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": str(threads),
                  "ENABLE_CPU_PINNING": "YES" if pinning else "NO"}
    if precision is not None:
        properties["INFERENCE_PRECISION_HINT"] = precision
    compiled = core.compile_model(core.read_model(str(path)), "CPU", properties)
    request = compiled.create_infer_request()
    return lambda feed: request.infer(feed)


def _ov_graph(bundle: Path, name: str) -> Path:
    """``model/<name>.onnx``, or the OpenVINO IR ``model/<name>.xml`` (``ov-int8``) where there is no ONNX file."""
    onnx_path = bundle / "model" / f"{name}.onnx"
    return onnx_path if onnx_path.exists() else onnx_path.with_suffix(".xml")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--artifact", default="int8",
                        help="model/<ARTIFACT>.onnx (a split's part too: int8-split.joint, int8-split.text)")
    parser.add_argument("--ov-artifact", default="fp32", help="graph OpenVINO compiles: an ONNX artifact or an IR such as ov-int8 ('' to skip OpenVINO)")
    parser.add_argument("--threads", type=int, default=min(4, len(os.sched_getaffinity(0))))
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--runs", type=int, default=25, help="runs per policy, batch and round")
    parser.add_argument("--only", default="", help="comma-separated substrings: keep the policies that contain one")
    parser.add_argument("--alone", action="store_true",
                        help="batch 1 = the first golden row as a request alone (its batch padding cut), as a kiosk sends it")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    golden = np.load(args.bundle / "golden.npz")
    full = {k[5:]: v for k, v in golden.items() if k.startswith("feed.")}
    one = {k: np.ascontiguousarray(v[:1]) for k, v in full.items()}
    if args.alone:
        from edgemm.bundle.verify import verify_bundle
        from edgemm.runtime.ranking import batch_one

        manifest = verify_bundle(args.bundle, check_hashes=False)
        one = batch_one(full, set(full), manifest.preprocessing.get("text"))
    feeds = {1: one,
             8: {k: np.ascontiguousarray(np.resize(v, (8, *v.shape[1:]))) for k, v in full.items()}}
    runners: dict[str, Any] = {}
    for name, entries in _ort_policies(args.threads).items():
        threads = 1 if name == "ort t1" else args.threads
        runners[name] = _ort_session(args.bundle / "model" / f"{args.artifact}.onnx", threads, entries)
    runners[f"ort t{args.threads} adaptive (edgemm default)"] = _adaptive_session(
        args.bundle / "model" / f"{args.artifact}.onnx", args.threads)
    if args.ov_artifact:
        try:
            for pinning in (True, False):
                runners[f"openvino {args.ov_artifact} t{args.threads} pinning={'on' if pinning else 'off'}"] = \
                    _ov_request(_ov_graph(args.bundle, args.ov_artifact), args.threads, pinning)
        except ImportError:
            print("openvino not installed: OpenVINO rows skipped", file=sys.stderr)
    if args.only:
        runners = {k: v for k, v in runners.items() if any(part in k for part in args.only.split(","))}
    for run in runners.values():
        for feed in feeds.values():
            for _ in range(5):
                run(feed)

    samples: dict[tuple[str, int, str], list[float]] = {}
    served: dict[tuple[str, int, str], list[str]] = {}  # adaptive: which kind of session served each run
    for round_ in range(args.rounds):
        modes = ("quiet", "busy") if round_ % 2 == 0 else ("busy", "quiet")
        for mode in modes:
            busy = subprocess.Popen([sys.executable, "-c", BUSY]) if mode == "busy" else None
            try:
                # Settle either way, running every policy: the adaptive policy's detector samples
                # only when called, needs one or two 100 ms samples to see a change, and a kiosk's
                # load changes far less often than every round (steady state is what is compared).
                settle = time.monotonic() + 0.3
                while time.monotonic() < settle:
                    for run in runners.values():
                        run(feeds[1])
                names = list(runners) if round_ % 2 == 0 else list(runners)[::-1]
                for batch, feed in feeds.items():
                    for name in names:
                        run, out = runners[name], samples.setdefault((name, batch, mode), [])
                        adaptive = getattr(run, "session", None)
                        for _ in range(args.runs):
                            start = time.perf_counter()
                            run(feed)
                            out.append((time.perf_counter() - start) * 1e3)
                            if adaptive is not None:
                                served.setdefault((name, batch, mode), []).append(adaptive.last_mode)
            finally:
                if busy is not None:
                    busy.kill()
                    busy.wait()

    rows = []
    for name in runners:
        for batch in feeds:
            quiet, busy = samples[(name, batch, "quiet")], samples[(name, batch, "busy")]
            row = {"policy": name, "batch": batch, "quiet_p50_ms": statistics.median(quiet),
                   "busy_p50_ms": statistics.median(busy), "busy_p90_ms": float(np.percentile(busy, 90)),
                   "runs": len(quiet)}
            row["busy_over_quiet"] = row["busy_p50_ms"] / row["quiet_p50_ms"]
            extra = ""
            if (name, batch, "quiet") in served:
                for mode in ("quiet", "busy"):
                    kinds = served[(name, batch, mode)]
                    row[f"{mode}_served"] = {kind: kinds.count(kind) / len(kinds) for kind in sorted(set(kinds))}
                extra = "".join(f"  {mode}: " + " ".join(f"{k} {v:.2f}" for k, v in row[f"{mode}_served"].items())
                                for mode in ("quiet", "busy"))
            rows.append(row)
            print(f"{name:40s} b{batch}: quiet p50 {row['quiet_p50_ms']:7.2f} ms  busy p50 {row['busy_p50_ms']:7.2f} ms"
                  f" (p90 {row['busy_p90_ms']:7.2f})  busy/quiet {row['busy_over_quiet']:.2f}{extra}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        doc = {"bundle": str(args.bundle), "artifact": args.artifact, "threads": args.threads, "alone": args.alone,
               "rounds": args.rounds, "runs": args.runs, "machine": platform.processor() or platform.machine(),
               "cores": len(os.sched_getaffinity(0)), "loadavg_at_end": os.getloadavg(), "rows": rows}
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
