"""The accuracy gate: measure every variant on held-out data, repair or fall back when it fails.

Measured per variant against the FP32 ONNX artifact on the same inputs: the task metric
(accuracy / macro-F1), top-1 agreement, max abs logit difference and non-finite outputs. A
variant passes when its metric drops no more than the budget (points, absolute) and every
output is finite.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgemm import progress
from edgemm.bundle.compare import Tolerance, near_ties, top1_agreement
from edgemm.data.metrics import classification_metrics
from edgemm.runtime.sessions import create_session

log = logging.getLogger("edgemm.optimize")


def run_artifact(path: Path, feeds: list[dict[str, np.ndarray]], output: str) -> np.ndarray:
    """Run an ONNX file over the feeds on the CPU and concatenate one output."""
    session = create_session(path)
    return np.concatenate([session.run([output], feed)[0]
                           for feed in progress.track(feeds, label="held-out batches")]).astype(np.float64)


@dataclass
class GateResult:
    """One variant's measurements and verdict."""

    metric: str
    value: float
    fp32_value: float
    drop_points: float
    budget_points: float
    top1_agreement: float
    near_ties: int
    max_abs_diff: float
    nonfinite: int
    samples: int
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        """The result as recorded in the manifest (floats rounded to 6 digits)."""
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def judge(outputs: np.ndarray, fp32_outputs: np.ndarray, labels: np.ndarray, *, metric: str,
          budget_points: float, tolerance: Tolerance) -> GateResult:
    """Compare a variant's outputs with FP32's on the same inputs.

    Args:
        outputs: The variant's classifying output over the test split.
        fp32_outputs: FP32's on the same feeds.
        labels: The test split's labels.
        metric: ``"accuracy"`` or ``"macro_f1"``: what the budget is spent on.
        budget_points: The largest drop allowed, in points.
        tolerance: The variant precision's numeric tolerance: FP32 rows whose top-two margin
            lies inside it are near-ties and do not count against the agreement.

    Returns:
        The measurements and the verdict (``passed``).
    """
    nonfinite = int((~np.isfinite(outputs)).sum())
    safe = np.nan_to_num(outputs, nan=0.0, posinf=1e6, neginf=-1e6)
    value = classification_metrics(labels, safe)[metric]
    reference = classification_metrics(labels, fp32_outputs)[metric]
    agreement = top1_agreement(safe, fp32_outputs, tolerance)
    drop = (reference - value) * 100.0
    return GateResult(metric=metric, value=value, fp32_value=reference, drop_points=drop, budget_points=budget_points,
                      top1_agreement=agreement, near_ties=near_ties(fp32_outputs, tolerance), max_abs_diff=float(np.abs(safe - fp32_outputs).max()),
                      nonfinite=nonfinite, samples=int(labels.shape[0]),
                      passed=nonfinite == 0 and drop <= budget_points + 1e-9)


def harmful_nodes(float_path: Path, quant_path: Path, feeds: list[dict[str, np.ndarray]], candidates: list[str],
                  *, count: int) -> list[dict[str, Any]]:
    """Rank quantized nodes by the error their own quantization adds (activation matching).

    Both graphs are extended to output every intermediate tensor; tensors keep their names
    through quantization, so each candidate node's output in the quantized graph is matched with
    the float graph's. A node's *own* damage is the SQNR it loses between its worst input and its
    output (errors that merely flow through it do not count against it).
    """
    import onnx

    float_model = onnx.load(str(float_path))
    nodes = {n.name: n for n in float_model.graph.node}
    wanted = {t for name in candidates if name in nodes for t in [*nodes[name].input, *nodes[name].output] if t}
    float_acts = _activations(float_path, feeds, wanted)
    quant_acts = _activations(quant_path, feeds, wanted)
    ranked = []
    for name in candidates:
        node = nodes.get(name)
        if node is None or not node.output or node.output[0] not in float_acts or node.output[0] not in quant_acts:
            continue
        out_sqnr = _sqnr(float_acts[node.output[0]], quant_acts[node.output[0]])
        in_sqnrs = [_sqnr(float_acts[i], quant_acts[i]) for i in node.input if i in float_acts and i in quant_acts]
        in_sqnr = min(in_sqnrs) if in_sqnrs else 120.0
        ranked.append({"node": name, "op": node.op_type, "output_sqnr_db": round(out_sqnr, 2),
                       "added_error_db": round(max(0.0, min(in_sqnr, 120.0) - out_sqnr), 2)})
    ranked.sort(key=lambda r: (-r["added_error_db"], r["output_sqnr_db"]))
    return ranked[:count]


def _sqnr(reference: np.ndarray, actual: np.ndarray) -> float:
    noise = float(np.mean((reference.astype(np.float64) - actual.astype(np.float64)) ** 2))
    signal = float(np.mean(reference.astype(np.float64) ** 2))
    if noise <= 1e-30:
        return 120.0
    return float(10.0 * np.log10(max(signal, 1e-30) / noise))


def _activations(path: Path, feeds: list[dict[str, np.ndarray]], tensors: set[str]) -> dict[str, np.ndarray]:
    """Values of the named intermediate tensors (those that exist in this graph) over the feeds."""
    import onnx

    model = onnx.load(str(path))
    produced = {o for n in model.graph.node for o in n.output}
    existing = {o.name for o in model.graph.output}
    extra = sorted((tensors & produced) - existing)
    for name in extra:
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    # Keep the graph as written: fusing would rename or remove the tensors being matched.
    session = create_session(model.SerializeToString(), optimization="disable")
    names = [o.name for o in session.get_outputs() if o.name in tensors]
    collected: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for feed in feeds:
        for name, value in zip(names, session.run(names, feed)):
            collected[name].append(np.asarray(value, dtype=np.float32).ravel())
    return {name: np.concatenate(values) for name, values in collected.items() if values}
