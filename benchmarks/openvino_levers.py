"""Where OpenVINO INT8 spends its time, and levers tried against it (issue 16, "ahead, not equal").

Four measurements on a bundle's OpenVINO IR (``model/ov-int8.xml``), in one process:

* ``profile``: OpenVINO's per-node counters (``PERF_COUNT``), summed by node type and kernel, and
  the arithmetic rate of the INT8 FullyConnected nodes (2·M·K·N per node from the compiled
  model's shapes): how much of a run is INT8 matrix products, and how fast they already go.
* ``streams``: a batch as one request on one stream with two threads (edgemm's and the peer's
  policy) against the batch cut in halves, each on its own stream with one thread (OpenVINO
  THROUGHPUT, two streams, no pinning); quiet and with :class:`edgemm.bench.runner.BackgroundLoad`.
* ``static``: the IR compiled for the feed's exact shapes against the dynamic compile edgemm and
  the peer load (what :mod:`edgemm.runtime.backends.ov_shapes` does for shapes a kiosk keeps
  sending), with the largest difference between their outputs.
* ``qkv``: the bundle's FP32 ONNX with each attention layer's query / key / value projections
  (three MatMul + Add reading one input) fused into one MatMul + Add + Split, both graphs quantized
  by NNCF alike (TRANSFORMER, calibrated on the golden feed), timed in OpenVINO.

    python benchmarks/openvino_levers.py benchmarks/.work/reference-cpu.bundle --batches 1,8,32
    python benchmarks/openvino_levers.py benchmarks/.work/large-fusion-cpu.bundle --batches 1,4 \
        --precision bf16 --only profile,static,streams --runs 3

Inputs: the golden feed's rows, repeated to the batch size (text at the golden set's length).
"""

from __future__ import annotations

import argparse
import collections
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgemm.bench.runner import BackgroundLoad


def _feeds(bundle: Path, batches: list[int]) -> dict[int, dict[str, np.ndarray]]:
    golden = np.load(bundle / "golden.npz")
    full = {k[5:]: v for k, v in golden.items() if k.startswith("feed.")}
    return {b: {k: np.ascontiguousarray(np.resize(v, (b, *v.shape[1:]))) for k, v in full.items()} for b in batches}


def _compile(core: Any, model: Any, precision: str, streams: int = 1) -> Any:
    properties = {"PERFORMANCE_HINT": "LATENCY" if streams == 1 else "THROUGHPUT", "NUM_STREAMS": str(streams),
                  "INFERENCE_NUM_THREADS": "2", "ENABLE_CPU_PINNING": "NO", "INFERENCE_PRECISION_HINT": precision}
    return core.compile_model(model, "CPU", properties)


def _interleaved(calls: dict[str, Any], rounds: int, runs: int) -> dict[str, float]:
    """Median over rounds of each call's per-round median, in ms (order alternating by round)."""
    for call in calls.values():
        for _ in range(3):
            call()
    medians: dict[str, list[float]] = {name: [] for name in calls}
    for round_ in range(rounds):
        for name in (list(calls) if round_ % 2 == 0 else list(calls)[::-1]):
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                calls[name]()
                times.append((time.perf_counter() - start) * 1e3)
            medians[name].append(statistics.median(times))
    return {name: statistics.median(values) for name, values in medians.items()}


def profile(core: Any, xml: Path, feeds: dict[int, dict[str, np.ndarray]], precision: str) -> None:
    for batch, feed in feeds.items():
        # Reshaped to the feed's shapes so every node's arithmetic is known (a static compile of
        # this IR measured 2-4 % faster than the dynamic one edgemm and the peer run).
        model = core.read_model(xml)
        model.reshape({name: list(value.shape) for name, value in feed.items()})
        compiled = core.compile_model(model, "CPU", {"PERF_COUNT": "YES", "PERFORMANCE_HINT": "LATENCY",
                                                     "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": "2",
                                                     "ENABLE_CPU_PINNING": "NO", "INFERENCE_PRECISION_HINT": precision})
        request = compiled.create_infer_request()
        for _ in range(3):
            request.infer(feed, share_inputs=True)
        shapes = _fc_shapes(compiled.get_runtime_model())
        by_kernel: collections.Counter[tuple[str, str]] = collections.Counter()
        fc_us, fc_ops = [], []
        runs = 5
        for _ in range(runs):
            request.infer(feed, share_inputs=True)
            for info in request.profiling_info:
                us = info.real_time.total_seconds() * 1e6
                by_kernel[(info.node_type, info.exec_type)] += us / runs
                if info.node_type.startswith("FullyConnected") and info.node_name in shapes and us > 0:
                    fc_us.append(us)
                    fc_ops.append(shapes[info.node_name])
        total = sum(by_kernel.values())
        print(f"\nprofile batch {batch} (static shapes {sorted((k, v.shape) for k, v in feed.items())}): "
              f"{total / 1e3:.2f} ms in nodes")
        for (kind, kernel), us in by_kernel.most_common(8):
            print(f"  {kind:30s} {kernel:26s} {us / 1e3:8.2f} ms {100 * us / total:5.1f} %")
        if fc_us:
            rates = np.array(fc_ops) / np.array(fc_us) / 1e6  # ops per µs → TOPS
            weighted = float(np.sum(fc_ops) / np.sum(fc_us) / 1e6)
            print(f"  INT8 FullyConnected: {len(fc_us) // runs} nodes, {weighted:.2f} TOPS overall, "
                  f"median node {np.median(rates):.2f}, best {rates.max():.2f} TOPS")


def _fc_shapes(runtime: Any) -> dict[str, float]:
    """Runtime-model FullyConnected node name → 2·M·K·N (its arithmetic, from static output shapes)."""
    out = {}
    for op in runtime.get_ordered_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str) if "layerType" in info else ""
        if not kind.startswith("FullyConnected"):
            continue
        try:
            rows = int(np.prod([d.get_length() for d in op.get_output_partial_shape(0)][:-1]))
            k = op.get_input_partial_shape(0)[-1].get_length()
            n = op.get_output_partial_shape(0)[-1].get_length()
        except RuntimeError:  # a dynamic dimension: no arithmetic count
            continue
        out[op.get_friendly_name()] = 2.0 * rows * k * n
    return out


def streams(core: Any, xml: Path, feeds: dict[int, dict[str, np.ndarray]], precision: str, rounds: int,
            runs: int) -> None:
    model = core.read_model(xml)
    one = _compile(core, model, precision).create_infer_request()
    two = _compile(core, model, precision, streams=2)
    requests = [two.create_infer_request() for _ in range(2)]
    for batch, feed in feeds.items():
        if batch < 2:
            continue
        half = batch // 2
        halves = [{k: np.ascontiguousarray(v[:half]) for k, v in feed.items()},
                  {k: np.ascontiguousarray(v[half:]) for k, v in feed.items()}]

        def split(halves: list[dict[str, np.ndarray]] = halves) -> list[np.ndarray]:
            for request, part in zip(requests, halves):
                request.start_async(part, share_inputs=True)
            for request in requests:
                request.wait()
            return [r.get_output_tensor(0).data.copy() for r in requests]

        same = np.array_equal(one.infer(feed, share_inputs=True)[0], np.concatenate(split()))
        calls = {"1 stream x 2 threads": lambda feed=feed: one.infer(feed, share_inputs=True),
                 "2 streams x 1 thread, halves": split}
        for load in ("quiet", "busy"):
            if load == "busy":
                with BackgroundLoad():
                    time.sleep(0.2)
                    result = _interleaved(calls, rounds, runs)
            else:
                result = _interleaved(calls, rounds, runs)
            base = result["1 stream x 2 threads"]
            print(f"streams batch {batch} {load}: " + ", ".join(f"{k} {v:.2f} ms ({base / v:.3f}x)" for k, v in result.items())
                  + f"; outputs bit-identical: {same}")


def static(core: Any, xml: Path, feeds: dict[int, dict[str, np.ndarray]], precision: str, rounds: int,
           runs: int) -> None:
    dynamic = _compile(core, core.read_model(xml), precision).create_infer_request()
    for batch, feed in feeds.items():
        model = core.read_model(xml)
        model.reshape({name: list(value.shape) for name, value in feed.items()})
        start = time.perf_counter()
        fixed = _compile(core, model, precision).create_infer_request()
        compile_s = time.perf_counter() - start
        diff = float(np.abs(dynamic.infer(feed, share_inputs=True)[0] - fixed.infer(feed, share_inputs=True)[0]).max())
        calls = {"dynamic": lambda feed=feed: dynamic.infer(feed, share_inputs=True),
                 "static": lambda feed=feed, fixed=fixed: fixed.infer(feed, share_inputs=True)}
        result = _interleaved(calls, rounds, runs)
        print(f"static batch {batch}: dynamic {result['dynamic']:.2f} ms, static {result['static']:.2f} ms "
              f"({result['dynamic'] / result['static']:.3f}x; compiled in {compile_s:.2f} s; "
              f"largest output difference {diff:.3g})")


def qkv(core: Any, bundle: Path, feeds: dict[int, dict[str, np.ndarray]], precision: str, rounds: int,
        runs: int) -> None:
    import nncf
    import onnx
    import openvino as ov

    plain = onnx.load(str(bundle / "model" / "fp32.onnx"))
    fused, count = _fuse_qkv(onnx.load(str(bundle / "model" / "fp32.onnx")))
    calibration = nncf.Dataset([feeds[max(feeds)]])
    compiled = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, graph in (("separate", plain), (f"fused ({count} layers)", fused)):
            path = Path(tmp) / f"{len(compiled)}.onnx"
            onnx.save(graph, str(path))
            quantized = nncf.quantize(ov.convert_model(str(path)), calibration, subset_size=1,
                                      model_type=nncf.ModelType.TRANSFORMER, target_device=nncf.TargetDevice.CPU)
            compiled[name] = _compile(core, quantized, precision).create_infer_request()
    for batch, feed in feeds.items():
        calls = {name: (lambda r=r, feed=feed: r.infer(feed, share_inputs=True)) for name, r in compiled.items()}
        result = _interleaved(calls, rounds, runs)
        base = result["separate"]
        print(f"qkv batch {batch}: " + ", ".join(f"{k} {v:.2f} ms ({base / v:.3f}x)" for k, v in result.items()))


def _fuse_qkv(model: Any) -> tuple[Any, int]:
    """Every three MatMul (constant 2-D weight) + Add (constant bias) reading one tensor → one of each + Split."""
    from onnx import helper, numpy_helper

    graph = model.graph
    weights = {i.name: i for i in graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    by_input: dict[str, list[Any]] = {}
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in weights and len(weights[node.input[1]].dims) == 2:
            by_input.setdefault(node.input[0], []).append(node)
    replaced: dict[int, list[Any]] = {}
    dropped: set[int] = set()
    for source, matmuls in by_input.items():
        adds = [consumers.get(m.output[0], [None])[0] for m in matmuls]
        if len(matmuls) != 3 or any(a is None or a.op_type != "Add" or len(consumers[m.output[0]]) != 1
                                    or not any(i in weights for i in a.input) for a, m in zip(adds, matmuls)):
            continue
        key = f"edgemm_qkv_{len(replaced)}"
        w = [numpy_helper.to_array(weights[m.input[1]]) for m in matmuls]
        b = [numpy_helper.to_array(weights[next(i for i in a.input if i in weights)]) for a in adds]
        graph.initializer.extend([numpy_helper.from_array(np.concatenate(w, 1), f"{key}_w"),
                                  numpy_helper.from_array(np.concatenate(b, -1), f"{key}_b"),
                                  numpy_helper.from_array(np.array([x.shape[1] for x in w], np.int64), f"{key}_sizes")])
        replaced[id(matmuls[0])] = [
            helper.make_node("MatMul", [source, f"{key}_w"], [f"{key}_mm"], name=f"{key}/MatMul"),
            helper.make_node("Add", [f"{key}_mm", f"{key}_b"], [f"{key}_add"], name=f"{key}/Add"),
            helper.make_node("Split", [f"{key}_add", f"{key}_sizes"], [a.output[0] for a in adds], axis=-1,
                             name=f"{key}/Split")]
        dropped.update(id(n) for n in (*matmuls, *adds))
    nodes = []
    for node in graph.node:
        nodes.extend(replaced.get(id(node), []))
        if id(node) not in dropped:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return model, len(replaced)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--precision", default="f32", help="INFERENCE_PRECISION_HINT for the layers INT8 leaves")
    parser.add_argument("--only", default="profile,static,streams,qkv")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--runs", type=int, default=30, help="runs per call and round")
    args = parser.parse_args(argv)
    import openvino as ov

    core = ov.Core()
    feeds = _feeds(args.bundle, [int(b) for b in args.batches.split(",")])
    xml = args.bundle / "model" / "ov-int8.xml"
    wanted = args.only.split(",")
    if "profile" in wanted:
        profile(core, xml, feeds, args.precision)
    if "static" in wanted:
        static(core, xml, feeds, args.precision, args.rounds, args.runs)
    if "streams" in wanted:
        streams(core, xml, feeds, args.precision, args.rounds, args.runs)
    if "qkv" in wanted:
        qkv(core, args.bundle, feeds, args.precision, args.rounds, args.runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
