"""Precision variants: FP16 with a safe block list, INT8 dynamic, INT8 static QDQ.

Each function reads one ONNX file and writes another; the accuracy gate decides what ships.
"""

from __future__ import annotations

import contextlib
import io
import logging
import platform
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgemm import progress

log = logging.getLogger("edgemm.optimize")

# ORT's default FP16 block list misses the ops that overflow in transformers (FIELD_NOTES).
# (The fused SkipLayerNormalization kernel accumulates in FP32 internally, so it may take FP16.)
FP16_BLOCK_OPS = ("LayerNormalization", "Softmax", "Pow", "ReduceMean", "Sqrt",
                  "Erf", "Exp", "ReduceSum", "CumSum", "Range", "TopK", "Resize")
# Dynamic INT8 quantizes the transformer-style ops. Convolutions stay FP32: their dynamic form
# (ConvInteger) is slower than FP32 Conv on ONNX Runtime's CPU provider (measured on the reference
# model's ResNet branch); CNNs get INT8 through static Q/DQ instead.
INT8_OP_TYPES = ("MatMul", "Gemm", "Attention", "Gather", "EmbedLayerNormalization")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


def cpu_has_vnni() -> bool:
    """True when this x86 CPU has AVX-512 VNNI or AVX-VNNI (u8×s8 dot products don't saturate)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="ignore")
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def _load_clean(src: Path) -> Any:
    import onnx

    model = onnx.load(str(src))
    # Exporters leave value_info that disagrees with shape inference after rewrites.
    del model.graph.value_info[:]
    return model


def to_fp16(src: Path, dst: Path, *, block_ops: Iterable[str] = FP16_BLOCK_OPS, block_nodes: Iterable[str] = ()) -> dict[str, Any]:
    """FP16 weights and compute with inputs/outputs kept FP32 and overflow-prone ops blocked."""
    from onnxruntime.transformers.onnx_model import OnnxModel

    block_ops, block_nodes = sorted(set(block_ops)), sorted(set(block_nodes))
    # OnnxModel's converter (not the plain float16 module) knows ORT's contrib operators, so it
    # also converts graphs the transformer optimizer fused.
    model = OnnxModel(_load_clean(src))
    with contextlib.redirect_stdout(io.StringIO()), _quiet_warnings():
        model.convert_float_to_float16(keep_io_types=True, op_block_list=block_ops, node_block_list=block_nodes)
    _drop_duplicate_nodes(model.model)
    model.save_model_to_file(str(dst))
    return {"method": "fp16", "keep_io_types": True, "op_block_list": block_ops, "node_block_list": block_nodes}


def _drop_duplicate_nodes(model: Any) -> int:
    """Remove nodes that repeat an earlier node exactly (op, inputs, outputs, attributes).

    The FP16 converter inserts one Cast back to FP32 per blocked consumer of an FP16 value and
    names it after the value; where the dynamo exporter shares one initializer between several
    blocked nodes (e.g. every zero LayerNorm bias of a freshly initialised model), that gives
    identical Casts writing the same output, which ONNX Runtime refuses to load. One of them
    computes the same thing; it moves to the front when it reads only initializers (it then
    precedes every consumer). Returns how many were dropped.
    """
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    seen: set[bytes] = set()
    kept: list[Any] = []
    dropped = 0
    for node in graph.node:
        key = node.SerializeToString(deterministic=True)
        if key in seen:
            dropped += 1
            continue
        seen.add(key)
        kept.append(node)
    if not dropped:
        return 0
    outputs = [o for n in kept for o in n.output]
    repeated = {o for o in outputs if outputs.count(o) > 1}
    if repeated:  # different nodes writing one value: not ours to resolve
        raise ValueError(f"FP16 conversion wrote {sorted(repeated)[:3]} from different nodes")
    hoisted = [n for n in kept if n.op_type == "Cast" and n.input and all(i in initializers for i in n.input)]
    hoisted_ids = {id(n) for n in hoisted}
    order = hoisted + [n for n in kept if id(n) not in hoisted_ids]
    del graph.node[:]
    graph.node.extend(order)
    return dropped


def quantize_int8_dynamic(src: Path, dst: Path, *, per_channel: bool = True, reduce_range: bool | None = None,
                          exclude: Iterable[str] = (), include: Iterable[str] | None = None) -> dict[str, Any]:
    """Dynamic INT8 (weights quantized offline, activations at run time) for CPUs.

    ``reduce_range`` defaults to True where the CPU lacks VNNI: 7-bit weights avoid u8×s8
    saturation in the AVX2 kernels.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    reduce = (not cpu_has_vnni()) if reduce_range is None else reduce_range
    model = _load_clean(src)
    staged = dst.with_suffix(".in.onnx")
    onnx.save(model, str(staged))
    exclude, include = sorted(set(exclude)), (sorted(set(include)) if include is not None else None)
    try:
        with contextlib.redirect_stdout(io.StringIO()), _quiet_warnings():
            quantize_dynamic(str(staged), str(dst), per_channel=per_channel, reduce_range=reduce,
                             weight_type=QuantType.QInt8, nodes_to_exclude=exclude, nodes_to_quantize=include or [],
                             op_types_to_quantize=list(INT8_OP_TYPES),
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    finally:
        staged.unlink(missing_ok=True)
    return {"method": "int8-dynamic", "per_channel": per_channel, "reduce_range": reduce, "weights": "int8",
            "excluded_nodes": exclude, "quantized_nodes": "all" if include is None else len(include)}


class FeedReader:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over precomputed feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self._feeds = feeds
        self._it: Iterator[dict[str, np.ndarray]] = iter(progress.track(feeds, label="calibration batches"))

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next calibration feed, or None when all were read (ONNX Runtime's CalibrationDataReader)."""
        return next(self._it, None)

    def rewind(self) -> None:
        """Start again from the first feed (a calibrator may read the data twice)."""
        self._it = iter(progress.track(self._feeds, label="calibration batches"))

    def __len__(self) -> int:
        return len(self._feeds)


def quantize_int8_static(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]], *, method: str = "minmax",
                         per_channel: bool = True, exclude: Iterable[str] = (),
                         include: Iterable[str] | None = None, percentile: float = 99.999) -> dict[str, Any]:
    """Static INT8 in QDQ format (symmetric, per-channel weights): the format TensorRT consumes.

    Args:
        feeds: Calibration feeds, preprocessed from real paired multimodal samples.
        method: ``minmax``, ``entropy`` or ``percentile``.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if method not in CALIBRATION_METHODS:
        from edgemm.errors import UsageError

        raise UsageError(f"Unknown calibration method {method!r}.", hint=f"Choose one of: {', '.join(CALIBRATION_METHODS)}.")
    calibrate = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                 "percentile": CalibrationMethod.Percentile}[method]
    model = _load_clean(src)
    staged = dst.with_suffix(".in.onnx")
    onnx.save(model, str(staged))
    exclude, include = sorted(set(exclude)), (sorted(set(include)) if include is not None else None)
    extra = {"ActivationSymmetric": True, "WeightSymmetric": True, "DefaultTensorType": onnx.TensorProto.FLOAT}
    if method == "percentile":
        extra["CalibPercentile"] = percentile
    try:
        # The calibrators print progress on stdout, which belongs to --json.
        with contextlib.redirect_stdout(io.StringIO()), _quiet_warnings():
            quantize_static(str(staged), str(dst), FeedReader(feeds), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=per_channel,
                            calibrate_method=calibrate, nodes_to_exclude=exclude, nodes_to_quantize=include or [],
                            op_types_to_quantize=["MatMul", "Gemm", "Conv"], extra_options=extra)
    finally:
        staged.unlink(missing_ok=True)
        for leftover in dst.parent.glob("augmented_model*.onnx"):
            leftover.unlink()
    return {"method": "int8-static-qdq", "calibration": method, "calibration_samples": sum(len(next(iter(f.values()))) for f in feeds),
            "per_channel": per_channel, "symmetric": True, "excluded_nodes": exclude,
            "quantized_nodes": "all" if include is None else len(include)}


@contextlib.contextmanager
def _quiet_warnings():
    import warnings

    level = logging.getLogger("root").level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger().setLevel(logging.ERROR)
        try:
            yield
        finally:
            logging.getLogger().setLevel(level)
