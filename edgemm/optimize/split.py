"""Cut a shipped artifact's graph where a cacheable branch meets fusion (build side).

The branch part takes that branch's graph inputs (text: ``input_ids``, ``attention_mask`` …)
and returns the tensors where its subgraph meets fusion; the rest part takes the other inputs
plus those tensors and returns the model's outputs. Which node belongs to which branch comes
from :mod:`edgemm.optimize.branches`. At run time :class:`edgemm.runtime.backends.split.SplitBackend`
caches the branch part's outputs per row (a kiosk hears the same answers all day).

The split form is measured as it runs: parity against its source artifact and the accuracy gate
against FP32 are both computed through ``SplitBackend``. A model without a separable cacheable
branch (one modality, or one transformer over text and image like ViLT) records why the split
does not apply and the export goes on.

A third part, *whole*, is another shipped artifact's own graph file: a batch with many new rows
is faster through it than row by row. Its candidates are the source artifact and the bundle's
OpenVINO IRs that need no particular CPU flags (each passed its own gate); the fastest on the
largest held-out feed is recorded (``requirements.whole.artifact``). The share of new rows from
which it pays is measured here on that feed (the parts' per-row and rest cost against the whole
graph's) and recorded as ``requirements.whole.min_new_fraction``; where it never pays, no whole
part is recorded.

A fourth part, *joint*, is the source graph that also returns the branch part's outputs: a new
answer alone is answered and its branch row cached in one call instead of two. It is recorded
only where its rows and answers equal the parts' bit for bit on every held-out row alone.

Both parts keep the source artifact's nodes, precision and engine (ONNX Runtime). Measured on
the reference model (2-core EPYC, batch 1): the rest part took 0.11 ms on ONNX Runtime in INT8
and in FP32 alike, and 0.31 ms on OpenVINO (BF16 or FP32; its per-call overhead dominates a
0.1 ms graph); once answers are cached the rest is all that runs, so another engine did not pay.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgemm.bundle.compare import Tolerance
from edgemm.bundle.manifest import Artifact, ModalitySpec, TensorSpec
from edgemm.errors import RuntimeFailure
from edgemm.optimize.branches import node_branches
from edgemm.optimize.gate import judge
from edgemm.runtime.backends.split import (
    JOINT_PART,
    SPLIT_KIND,
    WHOLE_PART,
    CachePolicy,
    PartSpec,
    SplitBackend,
)
from edgemm.runtime.sessions import engine_errors, feed_rows

log = logging.getLogger("edgemm.optimize")

CACHE_BRANCHES = ("text", "audio")
# Largest change trimming trailing padding may make to the FP32 branch outputs and still count
# as float rounding (accumulation order over a shorter axis), not as a model that reads padding.
PADDING_ATOL = 1e-4
# Graphs this large are not cut (in-memory probing and parts without external data; protobuf
# refuses 2 GiB).
PROTOBUF_LIMIT = 2 * 2**30 - 2**24


class NotSplittable(Exception):
    """The model has no branch that can be cut off and cached; the message says why."""


@dataclass(frozen=True)
class Cut:
    """Where a graph is cut.

    Attributes:
        branch: The cached branch (``text`` / ``audio``).
        branch_inputs: Graph inputs the branch part reads.
        boundary: Tensors the branch part hands to the rest (produced in the branch, read by fusion).
        branch_nodes: Indices (in graph order) of the branch part's nodes.
        rest_nodes: Indices of the rest part's nodes.
        rest_inputs: Graph inputs the rest part reads.
        branch_rewired / rest_rewired: ``(node index, tensor)``: in that part, the node's first
            input reads ``tensor`` instead. These are batch-size ``Shape`` nodes of the other part's
            inputs (the dynamo exporter takes the shared batch symbol from whichever input it met
            first); they read a tensor of their own part with the same batch axis.
    """

    branch: str
    branch_inputs: tuple[str, ...]
    boundary: tuple[str, ...]
    branch_nodes: tuple[int, ...]
    rest_nodes: tuple[int, ...]
    rest_inputs: tuple[str, ...]
    branch_rewired: tuple[tuple[int, str], ...] = ()
    rest_rewired: tuple[tuple[int, str], ...] = ()


def plan_cut(model: Any, modalities: dict[str, ModalitySpec], *, single_modality: str | None = None) -> Cut:
    """Find the cut of an ONNX ``ModelProto`` at the cacheable branch's boundary.

    Args:
        model: The graph to cut.
        modalities: The model's modalities (which graph inputs each one fills).
        single_modality: The model's only modality, or None (then nothing is cut).

    Returns:
        The :class:`Cut`.

    Raises:
        NotSplittable: One modality; no node of a text / audio branch; the branch reads other
            modalities' inputs; fusion reads the branch's raw inputs; or a model output comes
            straight out of the branch.
    """
    if single_modality is not None or len(modalities) < 2:
        raise NotSplittable("the model has one modality: there is no branch to cache apart from the whole model")
    graph = model.graph
    mapping = node_branches(model)
    labelled = {mapping.get(n.name) for n in graph.node if n.name}
    branch = next((b for b in CACHE_BRANCHES if b in modalities and b in labelled), None)
    if branch is None:
        raise NotSplittable("no node belongs to a separate text or audio encoder (one transformer over every "
                            "modality, or a graph without module paths)")
    graph_inputs = [i.name for i in graph.input]
    initializers = {i.name for i in graph.initializer}
    wanted = [n for n in modalities[branch].inputs if n in graph_inputs]
    if not wanted:
        raise NotSplittable(f"the {branch} modality feeds no graph input")
    nodes = list(graph.node)
    producer = {out: i for i, n in enumerate(nodes) for out in n.output if out}
    deps = _input_dependencies(nodes, graph_inputs)
    pure = set(wanted)

    def is_pure(tensor: str) -> bool:
        return not tensor or tensor in initializers or deps.get(tensor, set()) <= pure

    part = {i for i, n in enumerate(nodes) if n.name and mapping.get(n.name) == branch}
    dims = {i.name: _batch_dim(i) for i in graph.input}
    batch = dims[wanted[0]]
    rewired: dict[int, str] = {}
    rest_rewired: list[int] = []
    # Unnamed nodes (casts an optimizer inserted) that only read the branch join it; then every
    # tensor a branch node reads must come from the branch, its inputs or the weights.
    available = set(wanted) | initializers | {o for i in part for o in nodes[i].output}
    changed = True
    while changed:
        changed = False
        for i, n in enumerate(nodes):
            if i not in part and not n.name and all(not t or t in available for t in n.input):
                part.add(i)
                available.update(n.output)
                changed = True
    stack = [t for i in part for t in nodes[i].input]
    while stack:
        tensor = stack.pop()
        if not tensor or tensor in available:
            continue
        index = producer.get(tensor)
        if index is not None and _is_batch_shape(nodes[index], dims, batch) and nodes[index].input[0] not in wanted:
            rewired[index] = wanted[0]
            part.add(index)
            available.update(nodes[index].output)
            continue
        if index is None or not is_pure(tensor):
            raise NotSplittable(f"the {branch} branch reads {tensor!r}, which depends on other modalities' inputs: "
                                "it is not a separate encoder")
        part.add(index)
        available.update(nodes[index].output)
        stack.extend(nodes[index].input)
    produced = {o for i in part for o in nodes[i].output if o}
    outputs = {o.name for o in graph.output}
    if produced & outputs:
        raise NotSplittable(f"a model output comes straight out of the {branch} branch")
    # The rest: what the model's outputs need, walking back until the boundary or a graph input.
    rest: set[int] = set()
    boundary: set[str] = set()
    rest_inputs: set[str] = set()
    stack = list(outputs)
    seen: set[str] = set()
    while stack:
        tensor = stack.pop()
        if not tensor or tensor in seen or tensor in initializers:
            continue
        seen.add(tensor)
        if tensor in produced and producer[tensor] not in rewired:
            boundary.add(tensor)
        elif tensor in graph_inputs:
            rest_inputs.add(tensor)
        elif tensor in producer:
            index = producer[tensor]
            if _is_batch_shape(nodes[index], dims, batch) and nodes[index].input[0] in wanted:
                rest_rewired.append(index)  # to the first boundary tensor, once the boundary is known
            else:
                stack.extend(nodes[index].input)
            rest.add(index)
    raw = sorted(rest_inputs & set(wanted))
    if raw:
        raise NotSplittable(f"fusion reads the {branch} branch's raw inputs ({', '.join(raw)}), not only its outputs")
    if not boundary:
        raise NotSplittable(f"nothing of the {branch} branch reaches the model's outputs")
    order = {o: i for i, o in enumerate(o for n in nodes for o in n.output)}
    ordered = tuple(sorted(boundary, key=order.__getitem__))
    return Cut(branch=branch, branch_inputs=tuple(n for n in graph_inputs if n in wanted), boundary=ordered,
               branch_nodes=tuple(sorted(part)), rest_nodes=tuple(sorted(rest)),
               rest_inputs=tuple(n for n in graph_inputs if n in rest_inputs),
               branch_rewired=tuple(sorted(rewired.items())),
               rest_rewired=tuple((i, ordered[0]) for i in sorted(rest_rewired)))


def _batch_dim(value_info: Any) -> str | None:
    """The symbolic name of a graph input's first axis (None: fixed or unnamed)."""
    dims = value_info.type.tensor_type.shape.dim
    return dims[0].dim_param or None if len(dims) else None


def _is_batch_shape(node: Any, dims: dict[str, str | None], batch: str | None) -> bool:
    """Whether ``node`` is ``Shape(start=0, end=1)`` of a graph input whose first axis is ``batch``."""
    if node.op_type != "Shape" or batch is None or dims.get(node.input[0]) != batch:
        return False
    attrs = {a.name: a.i for a in node.attribute}
    return attrs.get("start", 0) == 0 and attrs.get("end") == 1


def _input_dependencies(nodes: list[Any], graph_inputs: list[str]) -> dict[str, set[str]]:
    """Tensor → the graph inputs it is computed from (nodes are in topological order)."""
    deps: dict[str, set[str]] = {name: {name} for name in graph_inputs}
    for node in nodes:
        found: set[str] = set()
        for tensor in node.input:
            found |= deps.get(tensor, set())
        for out in node.output:
            deps[out] = found
    return deps


def boundary_types(model: Any, cut: Cut, feeds: list[dict[str, np.ndarray]]) -> dict[str, tuple[int, list[Any]]]:
    """ONNX element type and shape (``["batch", 384]``) of each boundary tensor, measured by running
    the source graph on ``feeds`` (two or more, of different batch sizes and lengths).

    Raises:
        NotSplittable: A boundary tensor's first axis is not the batch, or another axis changes
            with the input length (fusion over tokens or frames: rows of different lengths
            could not share a batch).
    """
    import onnx

    from edgemm.runtime.sessions import create_session

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for name in cut.boundary:
        probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = create_session(probe.SerializeToString())
    batch_input = cut.branch_inputs[0]
    shapes: dict[str, list[tuple[int, ...]]] = {name: [] for name in cut.boundary}
    dtypes: dict[str, np.dtype] = {}
    for feed in feeds:
        values = session.run(list(cut.boundary), feed)
        rows = feed[batch_input].shape[0]
        for name, value in zip(cut.boundary, values):
            if value.ndim == 0 or value.shape[0] != rows:
                raise NotSplittable(f"the boundary tensor {name!r} has shape {list(value.shape)}, not one row per "
                                    "item of the batch")
            shapes[name].append(value.shape[1:])
            dtypes[name] = value.dtype
    types = {}
    for name in cut.boundary:
        if len(set(shapes[name])) != 1:
            raise NotSplittable(f"the boundary tensor {name!r} changes shape with the input ({shapes[name]}): fusion "
                                "reads the branch per position, so rows of different lengths cannot share a batch")
        types[name] = (onnx.helper.np_dtype_to_tensor_dtype(dtypes[name]), ["batch", *shapes[name][0]])
    return types


def cut_models(model: Any, cut: Cut, types: dict[str, tuple[int, list[Any]]]) -> tuple[Any, Any]:
    """The branch part and the rest part of ``model`` as ``ModelProto`` s (weights copied)."""
    import onnx

    graph = model.graph
    value_inputs = {i.name: i for i in graph.input}
    boundary_info = {name: onnx.helper.make_tensor_value_info(name, elem, shape) for name, (elem, shape) in types.items()}

    def build(name: str, indices: tuple[int, ...], inputs: list[Any], outputs: list[Any],
              rewired: tuple[tuple[int, str], ...]) -> Any:
        nodes = []
        for i in indices:
            node = onnx.NodeProto()
            node.CopyFrom(graph.node[i])
            if i in dict(rewired):
                node.input[0] = dict(rewired)[i]
            nodes.append(node)
        used = {t for n in nodes for t in n.input}
        weights = [w for w in graph.initializer if w.name in used]
        sub = onnx.helper.make_graph(nodes, name, inputs, outputs, initializer=weights)
        part = onnx.helper.make_model(sub, opset_imports=list(model.opset_import), ir_version=model.ir_version,
                                      producer_name="edgemm-split")
        part.functions.extend(model.functions)
        return part

    branch_model = build(f"{cut.branch}-part", cut.branch_nodes, [value_inputs[n] for n in cut.branch_inputs],
                         [boundary_info[n] for n in cut.boundary], cut.branch_rewired)
    rest_model = build("rest-part", cut.rest_nodes,
                       [value_inputs[n] for n in cut.rest_inputs] + [boundary_info[n] for n in cut.boundary],
                       list(graph.output), cut.rest_rewired)
    return branch_model, rest_model


def padding_policy(fp32_model: Any, cut: Cut, modalities: dict[str, ModalitySpec], inputs: list[TensorSpec],
                   feeds: list[dict[str, np.ndarray]]) -> tuple[CachePolicy, dict[str, Any]]:
    """Whether rows may be keyed and computed without their trailing padding.

    Checked on the FP32 graph's branch (where only float rounding can differ): each padded row of
    ``feeds`` is run as padded and trimmed; trimming is allowed when every boundary tensor moves by
    at most :data:`PADDING_ATOL` and all branch inputs are ``[batch, seq]`` with an attention mask.

    Returns:
        The policy (``entries`` left 0 for the caller to set) and the evidence for the manifest.
    """
    specs = {s.name: s for s in inputs}
    masks = [n for n in cut.branch_inputs if n.endswith("attention_mask")]
    two_d = all(len(specs[n].shape) == 2 and isinstance(specs[n].shape[1], str) for n in cut.branch_inputs)
    seq_axes = {specs[n].shape[1] for n in cut.branch_inputs} if two_d else set()
    if not masks or not two_d or len(seq_axes) != 1:
        return CachePolicy(cut.branch, 0), {"padding": "exact", "reason": "the branch inputs have no [batch, seq] "
                                                                          "attention mask to trim by"}
    mask = masks[0]
    seq = next(iter(seq_axes))
    min_length = int(specs[mask].profile.get(seq, [1])[0]) or 1
    try:
        fp32_cut = plan_cut(fp32_model, modalities)
        types = boundary_types(fp32_model, fp32_cut, feeds[:1])
        branch_model, _ = cut_models(fp32_model, fp32_cut, types)
    except NotSplittable as exc:
        return CachePolicy(cut.branch, 0), {"padding": "exact", "reason": f"the FP32 graph does not cut: {exc}"}
    from edgemm.runtime.sessions import create_session

    session = create_session(branch_model.SerializeToString())
    names = list(fp32_cut.boundary)
    worst, checked = 0.0, 0
    for feed in feeds:
        for row in range(feed[mask].shape[0]):
            nonzero = np.flatnonzero(feed[mask][row])
            length = max(int(nonzero[-1]) + 1 if nonzero.size else 0, min_length)
            if length >= feed[mask].shape[1]:
                continue
            padded = session.run(names, {n: feed[n][row:row + 1] for n in fp32_cut.branch_inputs})
            trimmed = session.run(names, {n: feed[n][row:row + 1, :length] for n in fp32_cut.branch_inputs})
            worst = max(worst, *(float(np.abs(a - b).max()) for a, b in zip(padded, trimmed)))
            checked += 1
    evidence = {"rows_checked": checked, "max_abs_diff": worst, "atol": PADDING_ATOL}
    if checked == 0 or worst > PADDING_ATOL:
        reason = "no padded rows to check" if checked == 0 else "the branch's outputs change with padding"
        return CachePolicy(cut.branch, 0), {"padding": "exact", "reason": reason, **evidence}
    return CachePolicy(cut.branch, 0, "trim", mask, min_length), {"padding": "trim", **evidence}


@dataclass
class SplitRequest:
    """What :func:`build_split` needs.

    Attributes:
        staging: The bundle being assembled (parts are written under ``model/``).
        source: The shipped artifact to cut (an ONNX artifact in ``staging``).
        name: The split artifact's name (e.g. ``int8-split``).
        entries: Cache rows recorded in the manifest.
        inputs / outputs / modalities: The model interface.
        fp32_path: The plain FP32 graph (padding check).
        feeds: Held-out feeds (parity and gate); ``labels`` / ``fp32_outputs`` / ``output`` as for the gate.
        metric / budget_points: The gate's metric and budget.
        edge_feeds: Edge inputs that must give finite outputs.
        single_modality: The model's only modality, or None.
        whole_candidates: Other shipped artifacts that may answer batches of many new rows
            (OpenVINO IRs; the source artifact always is a candidate).
    """

    staging: Path
    source: Artifact
    name: str
    entries: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    modalities: dict[str, ModalitySpec]
    fp32_path: Path
    feeds: list[dict[str, np.ndarray]]
    labels: np.ndarray
    fp32_outputs: np.ndarray
    output: str
    metric: str = "accuracy"
    budget_points: float = 0.5
    edge_feeds: dict[str, dict[str, np.ndarray]] | None = None
    single_modality: str | None = None
    whole_candidates: list[Artifact] = dataclasses.field(default_factory=list)


def build_split(request: SplitRequest) -> tuple[Artifact | None, dict[str, Any]]:
    """Cut ``request.source`` into branch and rest parts, measure the split form, and return its artifact.

    Returns:
        ``(artifact, report)``: the artifact is None when the split does not apply (the report's
        ``outcome`` says why) or failed its gate; nothing is left in ``staging`` then.
    """
    import onnx

    report: dict[str, Any] = {"name": request.name, "from": request.source.name}
    source = request.source
    if source.kind != "onnx":
        report["outcome"] = f"not applicable: artifact {source.name!r} is of kind {source.kind!r}, not an ONNX graph"
        return None, report
    model = onnx.load(str(request.staging / source.path))
    if model.ByteSize() >= PROTOBUF_LIMIT:
        report["outcome"] = "not applicable: graphs over 2 GiB are not cut yet (their weights live in external data)"
        log.warning("split %s: %s", request.name, report["outcome"])
        return None, report
    probe_feeds = _probe_feeds(request.feeds)
    try:
        cut = plan_cut(model, request.modalities, single_modality=request.single_modality)
        types = boundary_types(model, cut, probe_feeds)
        policy, padding = padding_policy(onnx.load(str(request.fp32_path)), cut, request.modalities,
                                         request.inputs, request.feeds[:4])
    except NotSplittable as exc:
        report["outcome"] = f"not applicable: {exc}"
        log.warning("split %s: %s", request.name, report["outcome"])
        return None, report
    branch_model, rest_model = cut_models(model, cut, types)
    paths = {cut.branch: f"model/{request.name}.{cut.branch}.onnx", "rest": f"model/{request.name}.rest.onnx"}
    onnx.save(branch_model, str(request.staging / paths[cut.branch]))
    onnx.save(rest_model, str(request.staging / paths["rest"]))
    written = [paths[cut.branch], paths["rest"]]
    precision = source.precision
    outputs = tuple(o.name for o in model.graph.output)
    parts = [PartSpec(cut.branch, paths[cut.branch], cut.branch_inputs, cut.boundary, "onnxruntime", precision),
             PartSpec("rest", paths["rest"], (*cut.rest_inputs, *cut.boundary), outputs, "onnxruntime", precision),
             PartSpec(WHOLE_PART, source.path, tuple(i.name for i in model.graph.input), outputs, "onnxruntime",
                      precision)]
    policy = CachePolicy(policy.branch, request.entries, policy.padding, policy.mask, policy.min_length)
    requirements = {"parts": [p.to_dict() for p in parts], "cache": policy.to_dict(),
                    "whole": {"min_new_fraction": 1.0}, "source_artifact": source.name,
                    **{k: v for k, v in source.requirements.items() if k in ("graph_optimized", "contrib_ops")}}
    artifact = Artifact(name=request.name, path=paths["rest"], kind=SPLIT_KIND, precision=precision,
                        files=[*written, source.path], providers=["CPUExecutionProvider"],
                        quantization=source.quantization, requirements=requirements)
    report.update({"branch": cut.branch, "boundary": list(cut.boundary), "padding": padding,
                   "nodes": {cut.branch: len(cut.branch_nodes), "rest": len(cut.rest_nodes)}})
    # The whole part is another artifact's file: only the parts written here are removed on failure.
    try:
        validation = _measure(request, artifact, report)
        if validation["gate"]["passed"]:
            artifact = _with_whole_policy(request, artifact, report)
            written.append(f"model/{request.name}.joint.onnx")
            artifact = _with_joint_part(request, artifact, report, model, cut, types, written[-1])
    except (RuntimeFailure, *engine_errors()) as exc:
        # Like a variant ONNX Runtime cannot run: recorded, and the export goes on without it.
        report["outcome"] = f"failed: ONNX Runtime could not run the parts: {str(exc).splitlines()[0][:200]}"
        log.warning("split %s: %s", request.name, report["outcome"])
        _remove(request.staging, written)
        return None, report
    except Exception:
        _remove(request.staging, written)
        raise
    if not validation["gate"]["passed"]:
        report["outcome"] = "failed the gate"
        log.warning("split %s: failed the gate (%s)", request.name, validation["gate"])
        _remove(request.staging, written)
        return None, report
    report["outcome"] = "passed"
    log.info("split %s: %s part cached, parity vs %s max |diff| %.3g, gate %s %.4f", request.name, cut.branch,
             source.name, validation["parity"]["max_abs_diff"], request.metric, validation["gate"]["value"])
    return dataclasses.replace(artifact, validation=validation), report


def _remove(staging: Path, written: list[str]) -> None:
    for rel in written:
        (staging / rel).unlink(missing_ok=True)


# Timed calls per route when measuring where the whole part pays (medians; a few hundred ms in all
# on the reference model).
_WHOLE_REPEATS = 7


def _with_whole_policy(request: SplitRequest, artifact: Artifact, report: dict[str, Any]) -> Artifact:
    """``artifact`` with its fastest whole part and ``requirements.whole`` set from a measurement,
    or without a whole part where no whole graph ever beats the parts.

    On the largest held-out feed (``B`` rows, ``m`` distinct texts): ``r`` = seconds per new row
    through the parts (cache off minus all cached, over ``m``), ``R`` = the rest with every row
    cached, ``W`` = the fastest candidate whole graph. The whole graph pays from ``(W - R) / r``
    new rows; recorded as a share of ``B`` (at least two rows: one new row alone is always the
    parts' case).
    """
    feed = max(request.feeds, key=feed_rows)
    rows = feed_rows(feed)
    # Room for every row of the feed, whatever the recipe's cache size: "all cached" must be.
    entries = max(request.entries, rows)
    backend = SplitBackend(request.staging, artifact, request.inputs, request.outputs, cache_entries=entries,
                           compile_cache=False)
    backend.activate()
    try:
        backend.set_route("parts")
        backend.set_caching(False)
        distinct = backend.new_rows(feed)
        new_rows = _median_seconds(backend, feed)
        backend.set_caching(True)
        backend.run(feed)
        cached = _median_seconds(backend, feed)
    finally:
        backend.deactivate()
    wholes = {}
    for candidate in _whole_candidates(request):
        option = _with_whole_part(artifact, candidate, request)
        with SplitBackend(request.staging, option, request.inputs, request.outputs, cache_entries=0,
                          compile_cache=False) as trial:
            trial.set_route("whole")
            wholes[candidate.name] = (_median_seconds(trial, feed), option)
    fastest = min(wholes, key=lambda name: wholes[name][0])
    whole, artifact = wholes[fastest]
    per_row = max(new_rows - cached, 1e-9) / max(distinct, 1)
    break_even = max((whole - cached) / per_row, 2.0)
    measured = {"rows": rows, "distinct_rows": distinct, "parts_new_ms": round(new_rows * 1e3, 3),
                "parts_cached_ms": round(cached * 1e3, 3), "whole_ms": round(whole * 1e3, 3),
                "whole_candidates_ms": {name: round(t * 1e3, 3) for name, (t, _) in wholes.items()},
                "break_even_rows": round(break_even, 2)}
    report["whole"] = measured
    requirements = dict(artifact.requirements)
    if rows < 2 or break_even > rows:
        report["whole"]["outcome"] = ("not recorded: the held-out feeds have batches of one row" if rows < 2 else
                                      "not recorded: the parts were as fast as the whole graph at every share of "
                                      "new rows")
        requirements.pop("whole")
        requirements["parts"] = [p for p in requirements["parts"] if p["name"] != WHOLE_PART]
        files = _parts_files(artifact)
    else:
        requirements["whole"] = {"min_new_fraction": round(break_even / rows, 4), "artifact": fastest,
                                 "measured": measured}
        files = artifact.files
    log.info("split %s: whole graph (%s) from %.1f new rows of %d (parts %.2f ms new / %.2f ms cached, "
             "whole %s ms)", request.name, fastest, break_even, rows, new_rows * 1e3, cached * 1e3,
             ", ".join(f"{name} {t * 1e3:.2f}" for name, (t, _) in wholes.items()))
    return dataclasses.replace(artifact, requirements=requirements, files=files)


# Held-out rows, each alone, on which the joint part must equal the parts bit for bit.
_JOINT_ROWS = 32


def _with_joint_part(request: SplitRequest, artifact: Artifact, report: dict[str, Any], model: Any, cut: Cut,
                     types: dict[str, tuple[int, list[Any]]], path: str) -> Artifact:
    """``artifact`` with a joint part (the source graph that also returns the branch part's outputs,
    written to ``path``) where it equals the parts bit for bit on every held-out row alone; else
    ``artifact`` as it was, the file removed and the report saying why."""
    import onnx

    joint = onnx.ModelProto()
    joint.CopyFrom(model)
    outputs = [o.name for o in joint.graph.output]
    for name in (n for n in cut.boundary if n not in outputs):
        elem, shape = types[name]
        joint.graph.output.append(onnx.helper.make_tensor_value_info(name, elem, shape))
    onnx.save(joint, str(request.staging / path))
    spec = PartSpec(JOINT_PART, path, tuple(i.name for i in model.graph.input), (*outputs, *cut.boundary),
                    "onnxruntime", artifact.precision)
    option = dataclasses.replace(artifact, files=[*artifact.files, path], requirements={
        **artifact.requirements, "parts": [*artifact.requirements["parts"], spec.to_dict()]})
    rows = [_unpadded_row(f, i, artifact) for f in request.feeds for i in range(feed_rows(f))][:_JOINT_ROWS]
    with SplitBackend(request.staging, option, request.inputs, request.outputs, cache_entries=0,
                      compile_cache=False) as backend:
        worst = 0.0
        for row in rows:
            worst = max(worst, *backend.compare_joint(row).values())
        backend.set_caching(False)
        backend.set_route("parts")
        parts_ms = _median_seconds(backend, rows[0]) * 1e3
        backend.set_route("auto")
        joint_ms = _median_seconds(backend, rows[0]) * 1e3
    measured = {"rows": len(rows), "max_abs_diff": worst, "parts_ms": round(parts_ms, 3),
                "joint_ms": round(joint_ms, 3)}
    report["joint"] = measured
    if worst != 0.0:  # also NaN: a cached row must be the one the branch part computes
        report["joint"]["outcome"] = "not recorded: its branch rows or answers differ from the parts'"
        (request.staging / path).unlink(missing_ok=True)
        log.info("split %s: no joint part (max |diff| %.3g against the parts)", request.name, worst)
        return artifact
    log.info("split %s: joint part bit-exact on %d rows alone (%.3f ms, parts %.3f ms)", request.name,
             len(rows), joint_ms, parts_ms)
    return option


def _whole_candidates(request: SplitRequest) -> list[Artifact]:
    """The source artifact, then each OpenVINO IR of the bundle that any x86 kiosk with OpenVINO
    can run (no CPU flags required) and this machine can measure."""
    from edgemm.runtime.backends.kinds import unavailable_reason

    others = [a for a in request.whole_candidates
              if a.kind == "openvino" and a.name != request.source.name
              and not a.cpu_flags_any and unavailable_reason(a, "cpu") is None]
    return [request.source, *others]


def _parts_files(artifact: Artifact) -> list[str]:
    """The files of the branch and rest parts (written by the split itself)."""
    return [p["path"] for p in artifact.requirements["parts"] if p["name"] != WHOLE_PART]


def _with_whole_part(artifact: Artifact, candidate: Artifact, request: SplitRequest) -> Artifact:
    """``artifact`` whose whole part is ``candidate``'s graph file (its files listed with the parts')."""
    engine = "openvino" if candidate.kind == "openvino" else "onnxruntime"
    # An OpenVINO part runs in BF16 only when recorded as such (PartSpec.precision).
    precision = "bf16" if candidate.requirements.get("inference_precision") == "bf16" else candidate.precision
    whole = PartSpec(WHOLE_PART, candidate.path, tuple(s.name for s in request.inputs),
                     tuple(s.name for s in request.outputs), engine, precision)
    parts = [p for p in artifact.requirements["parts"] if p["name"] != WHOLE_PART] + [whole.to_dict()]
    parts_files = _parts_files(artifact)
    files = [*parts_files, *(f for f in candidate.files if f not in parts_files)]
    return dataclasses.replace(artifact, files=files, requirements={**artifact.requirements, "parts": parts})


def _median_seconds(backend: SplitBackend, feed: dict[str, np.ndarray]) -> float:
    backend.run(feed)
    times = []
    for _ in range(_WHOLE_REPEATS):
        started = time.perf_counter()
        backend.run(feed)
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def _probe_feeds(feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Two feeds of different batch sizes (and, where the data allows, lengths) for shape probing."""
    first = feeds[0]
    one = {k: v[:1] for k, v in first.items()}
    other = feeds[1] if len(feeds) > 1 else first
    rows = min(3, next(iter(other.values())).shape[0])
    return [one, {k: v[:rows] for k, v in other.items()}]


def _measure(request: SplitRequest, artifact: Artifact, report: dict[str, Any]) -> dict[str, Any]:
    """Parity against the source artifact and the accuracy gate, both through :class:`SplitBackend`."""
    from edgemm.bundle.compare import top1_agreement
    from edgemm.runtime.sessions import create_session

    backend = SplitBackend(request.staging, artifact, request.inputs, request.outputs)
    backend.activate()
    source = create_session(request.staging / request.source.path)
    tolerance = Tolerance.for_precision(request.source.precision)
    started = time.perf_counter()
    split_out = np.concatenate([backend.run_reference(f)[request.output] for f in request.feeds]).astype(np.float64)
    source_out = np.concatenate([source.run([request.output], f)[0] for f in request.feeds]).astype(np.float64)
    # Batch 1, unpadded: the split form runs exactly the source's arithmetic (same engine, same nodes).
    singles = [_unpadded_row(f, i, artifact) for f in request.feeds[:2] for i in range(min(4, feed_rows(f)))]
    single_diff = max(float(np.abs(backend.run_reference(f)[request.output] - source.run([request.output], f)[0]).max())
                      for f in singles)
    parity = {"against": request.source.name, "max_abs_diff": float(np.abs(split_out - source_out).max()),
              "top1_agreement": top1_agreement(split_out, source_out, tolerance),
              "batch1_unpadded_max_abs_diff": single_diff, "rows": int(split_out.shape[0]),
              "note": "rows of the branch part are computed one at a time at their own length; a dynamically "
                      "quantized source scales activations over the whole batch, so batched rows differ from "
                      "the source within its INT8 rounding" if artifact.quantization_method.startswith("int8-dynamic")
                      or artifact.precision == "mixed" else "rows of the branch part are computed one at a time"}
    gate = judge(split_out, request.fp32_outputs, request.labels, metric=request.metric,
                 budget_points=request.budget_points, tolerance=tolerance)
    nonfinite = 0
    for feed in (request.edge_feeds or {}).values():
        nonfinite += sum(int((~np.isfinite(v)).sum()) for v in backend.run_reference(feed).values()
                         if np.issubdtype(v.dtype, np.floating))
    if nonfinite:
        gate.passed = False
        gate.nonfinite += nonfinite
    report["seconds"] = round(time.perf_counter() - started, 3)
    backend.deactivate()
    return {"parity": parity, "gate": {**gate.to_dict(), "evaluated_on": "edgemm SplitBackend (onnxruntime CPU)"},
            "tolerance": tolerance.to_dict()}


def _unpadded_row(feed: dict[str, np.ndarray], row: int, artifact: Artifact) -> dict[str, np.ndarray]:
    """Row ``row`` of ``feed`` alone, without trailing padding where the cache trims it."""
    single = {k: v[row:row + 1] for k, v in feed.items()}
    cache = artifact.requirements["cache"]
    if cache.get("padding") != "trim":
        return single
    mask = single[cache["mask"]][0]
    nonzero = np.flatnonzero(mask)
    length = max(int(nonzero[-1]) + 1 if nonzero.size else 0, int(cache.get("min_length", 1)))
    branch = next(p for p in artifact.requirements["parts"] if p["name"] == cache["branch"])
    return {k: (v[:, :length] if k in branch["inputs"] else v) for k, v in single.items()}


def split_variant(ctx: Any, artifacts: list[Artifact], spec: Any, validation: dict[str, Any]) -> list[Artifact]:
    """The export pipeline's ``[split]`` step: cut the recipe's source variant after the variants shipped.

    Args:
        ctx: The :class:`~edgemm.optimize.variants.VariantContext` of the export.
        artifacts: The variants that shipped.
        spec: The model's ``ExportSpec`` (interface and modalities).
        validation: The manifest's validation section; ``validation["split"]`` records what happened.

    Returns:
        ``[artifact]``, or ``[]`` when the split does not apply, its source did not ship, or it
        failed the gate (the record says which).
    """
    section = ctx.recipe.split
    source = next((a for a in artifacts if a.name == section.source), None)
    if source is None:
        report: dict[str, Any] = {"name": section.artifact_name, "from": section.source,
                                  "outcome": f"not built: variant {section.source!r} did not ship"}
        log.warning("split %s: %s", section.artifact_name, report["outcome"])
        validation["split"] = report
        return []
    inputs, outputs = spec.with_profiles()
    request = SplitRequest(staging=ctx.staging, source=source, name=section.artifact_name, entries=section.cache,
                           inputs=inputs, outputs=outputs, modalities=spec.modality_specs(),
                           fp32_path=ctx.bases["plain"], feeds=ctx.evalset.feeds, labels=ctx.evalset.labels,
                           fp32_outputs=ctx.fp32_outputs, output=ctx.output, metric=ctx.recipe.gate.metric,
                           budget_points=ctx.recipe.gate.budget, edge_feeds=ctx.edge_feeds,
                           single_modality=ctx.single_modality,
                           whole_candidates=[a for a in artifacts if a.kind == "openvino"])
    artifact, report = build_split(request)
    validation["split"] = report
    return [artifact] if artifact is not None else []
