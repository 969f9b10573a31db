"""The spec contract: what the ExportSpec promises about the model, checked before and after export.

An :class:`~edgemm.models.spec.ExportSpec` is the user's description of their model. Before the
exporter runs, ``forward()``'s signature is matched against the spec's inputs (keywords, one
dict parameter, dict-valued parameters, or ``argument_names``) and the model is run once in
PyTorch: what it returns must hold every declared output (tensor, tuple, dict, dataclass), with
the declared shape and dtype, and fit the postprocessing and labels. After export the graph must
take every declared input (an input ``forward()`` ignores is refused), and its outputs must carry
the declared dtypes and fixed sizes. Every parity case is checked the same way against PyTorch.

A contract violation is a :class:`SpecContractError` (exit 2) whose hint says how to fix the
spec or the model — never "try the other exporter".
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgemm._deps import require
from edgemm.errors import (
    CheckFailedError,
    EdgemmError,
    ExportError,
    OutputMismatchError,
    RuntimeFailure,
    UsageError,
)
from edgemm.export.tracing import (
    TracerHazard,
    UserCode,
    exception_chain,
    first_line,
    first_sentence,
)
from edgemm.models.spec import ExportSpec

# Shown wherever a spec input needs another name.
RENAME_HELP = ("the helpers take input names: text_section(..., input_ids=, attention_mask=, token_type_ids=), "
               "image_preprocessing_from_hf(..., input_name=), audio_section(..., inputs=(features, mask))")


class SpecContractError(UsageError):
    """The model and its ExportSpec disagree (names, outputs, shapes, dtypes, labels, postprocessing)."""

    code = "E_SPEC_CONTRACT"


class TracerWarningError(SpecContractError):
    """The legacy exporter warned that the trace may be wrong for other inputs (see ``--allow-tracer-warnings``)."""

    code = "E_TRACER_WARNING"


class DataDependentError(SpecContractError):
    """``forward()`` branches on a tensor's value, which the dynamo exporter cannot put into a graph."""

    code = "E_DATA_DEPENDENT"


# -- calling forward() -------------------------------------------------------------------------


@dataclass(frozen=True)
class ForwardPlan:
    """How edgemm calls the user's ``forward()`` with the graph's inputs and reads its outputs.

    Attributes:
        inputs: The spec's input names, in graph order.
        targets: Per input: ``(parameter, key)``: a keyword argument (``key`` None), an entry of
            a dict passed as that parameter, or ``(None, None)`` for the next positional argument.
        outputs: The spec's output names, in graph order.
    """

    inputs: tuple[str, ...]
    targets: tuple[tuple[str | None, str | None], ...]
    outputs: tuple[str, ...]

    def call(self, module: Any, tensors: tuple[Any, ...]) -> Any:
        """Call ``module`` with ``tensors`` (in input order) the way its ``forward()`` takes them."""
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for (param, key), tensor in zip(self.targets, tensors):
            if param is None:
                args.append(tensor)
            elif key is None:
                kwargs[param] = tensor
            else:
                kwargs.setdefault(param, {})[key] = tensor
        return module(*args, **kwargs)

    def select(self, result: Any) -> tuple[Any, ...]:
        """The declared outputs, in spec order, from whatever ``forward()`` returned."""
        return select_outputs(result, self.outputs)

    def describe(self) -> str:
        """How the inputs are passed, for messages: ``forward(batch={input_ids, …})``."""
        groups: dict[str, list[str]] = {}
        parts: list[str] = []
        for name, (param, key) in zip(self.inputs, self.targets):
            if param is None:
                parts.append(name)
            elif key is None:
                parts.append(name if param == name else f"{param}={name}")
            else:
                if param not in groups:
                    groups[param] = []
                    parts.append(param)
                groups[param].append(key if key == name else f"{key}: {name}")
        shown = [f"{p}={{{', '.join(groups[p])}}}" if p in groups else p for p in parts]
        return f"forward({', '.join(shown)})"


def plan_forward(module: Any, spec: ExportSpec) -> ForwardPlan:
    """Match the spec's inputs to ``forward()``'s parameters.

    In order: ``spec.argument_names`` (``{"input_ids": "ids"}``, or ``"text.input_ids"`` for a
    parameter that takes a dict); parameters named like the inputs (or ``**kwargs``); a single
    parameter that receives all inputs as one dict; ``*args`` in spec order.

    Raises:
        SpecContractError: A parameter without default receives nothing, an input matches no
            parameter, or ``argument_names`` names a parameter ``forward()`` does not have.
    """
    names = tuple(t.name for t in spec.inputs)
    outputs = tuple(t.name for t in spec.outputs)
    forward = getattr(module, "forward", None) or module
    try:
        params = list(inspect.signature(forward).parameters.values())
    except (TypeError, ValueError):  # a C-implemented or otherwise opaque callable: keywords it is
        return ForwardPlan(names, tuple((n, None) for n in names), outputs)
    kinds = inspect.Parameter
    named = [p for p in params if p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY)]
    var_kw = any(p.kind is kinds.VAR_KEYWORD for p in params)
    var_pos = any(p.kind is kinds.VAR_POSITIONAL for p in params)
    required = [p.name for p in params if p.kind is not kinds.VAR_KEYWORD and p.kind is not kinds.VAR_POSITIONAL
                and p.default is inspect.Parameter.empty]
    known = {p.name for p in named}

    explicit = dict(spec.argument_names)
    targets: dict[str, tuple[str | None, str | None] | None] = {}
    for name in names:
        if name in explicit:
            param, _, key = explicit[name].partition(".")
            targets[name] = (param, key or None)
        elif name in known or var_kw:
            targets[name] = (name, None)
        else:
            targets[name] = None
    used = {t[0] for t in targets.values() if t is not None}
    unknown = sorted(p for p in used if p is not None and p not in known and not var_kw)
    unmatched = [n for n, t in targets.items() if t is None]
    starved = [p for p in required if p not in used]
    if not unmatched and not unknown and not starved:
        return ForwardPlan(names, tuple(targets[n] for n in names), outputs)  # type: ignore[misc]

    if not explicit:
        only = [p for p in params if p.name in required]
        if len(only) == 1 and only[0].name not in names and only[0].kind is not kinds.POSITIONAL_ONLY:
            param = only[0].name
            if len(names) > 1 or _is_mapping(only[0].annotation):
                return ForwardPlan(names, tuple((param, n) for n in names), outputs)
            return ForwardPlan(names, ((param, None),), outputs)
        if var_pos and not required:
            return ForwardPlan(names, tuple((None, None) for _ in names), outputs)
    raise _signature_error(forward, params, names, unmatched, unknown, starved, explicit)


def _is_mapping(annotation: Any) -> bool:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", repr(annotation))
    return any(word in str(text) for word in ("dict", "Dict", "Mapping", "TypedDict", "BatchEncoding"))


def _signature_error(forward: Any, params: list[inspect.Parameter], names: tuple[str, ...], unmatched: list[str],
                     unknown: list[str], starved: list[str], explicit: dict[str, str]) -> SpecContractError:
    shown = ", ".join(f"`{p.name}`" for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)) or "nothing"
    where = _where(forward)
    problems = []
    if starved:
        problems.append(f"parameter{'s' if len(starved) > 1 else ''} {_ticks(starved)} receive{'s' if len(starved) == 1 else ''} no input")
    if unmatched:
        problems.append(f"spec input{'s' if len(unmatched) > 1 else ''} {_ticks(unmatched)} "
                        f"match{'es' if len(unmatched) == 1 else ''} no parameter")
    if unknown:
        problems.append(f"argument_names names {_ticks(unknown)}, which forward() does not take")
    message = (f"forward(){where} takes {shown}; the spec declares {_ticks(list(names))}: {'; '.join(problems)}.")
    if unmatched and len(unmatched) == len(starved):
        mapping = {**explicit, **dict(zip(unmatched, starved))}
        fix = f"Map them in the ExportSpec: argument_names={mapping!r}"
    else:
        fix = "Map them in the ExportSpec with argument_names={spec input: parameter, or 'parameter.key' for a dict parameter}"
    hint = (f"{fix}; or rename the spec's inputs to the parameter names ({RENAME_HELP}). "
            "A forward(self, batch) that takes one dict of all inputs works as it is.")
    return SpecContractError(message, hint=hint, details={"parameters": [p.name for p in params],
                                                          "inputs": list(names)})


def _ticks(items: list[str]) -> str:
    return ", ".join(f"`{i}`" for i in items)


def _where(func: Any) -> str:
    try:
        file = inspect.getsourcefile(func)
        line = inspect.getsourcelines(func)[1]
    except (TypeError, OSError):
        return ""
    return f" ({Path(file).name}:{line})" if file else ""


def select_outputs(result: Any, names: tuple[str, ...]) -> tuple[Any, ...]:
    """Pick the declared outputs from what ``forward()`` returned.

    A tensor (one declared output); a tuple or list (positional); a dict, a transformers
    ``ModelOutput`` or a dataclass (by name); a named tuple (by name when every name is a field).

    Raises:
        SpecContractError: An output name it does not return, a count that differs, or a value
            that is not a tensor.
    """
    torch = require("torch")
    if isinstance(result, torch.Tensor):
        values: list[Any] = [result]
        kind = "a tensor"
    elif isinstance(result, Mapping) or (dataclasses.is_dataclass(result) and not isinstance(result, type)):
        fields = (dict(result) if isinstance(result, Mapping)
                  else {f.name: getattr(result, f.name) for f in dataclasses.fields(result)})
        available = [k for k, v in fields.items() if v is not None]
        missing = [n for n in names if fields.get(n) is None]
        if missing:
            raise _missing_outputs(missing, available, type(result).__name__)
        values = [fields[n] for n in names]
        kind = f"a {type(result).__name__}"
    elif isinstance(result, tuple) and hasattr(result, "_fields") and all(n in result._fields for n in names):
        values = [getattr(result, n) for n in names]
        kind = f"a {type(result).__name__}"
    elif isinstance(result, (tuple, list)):
        if len(result) != len(names):
            raise SpecContractError(
                f"forward() returns a {type(result).__name__} of {len(result)} values; the spec declares "
                f"{len(names)} output{'s' if len(names) != 1 else ''} ({', '.join(names)}).",
                hint="Declare one TensorSpec per returned value, in order, or return a dict keyed by output name.")
        values = list(result)
        kind = f"a {type(result).__name__}"
    else:
        raise SpecContractError(
            f"forward() returns a {type(result).__name__}; edgemm reads a tensor, a tuple, a dict or a dataclass of tensors.",
            hint="Return the outputs the spec declares as tensors (a dict keyed by output name is clearest).")
    if len(values) != len(names):
        raise SpecContractError(
            f"forward() returns {kind}; the spec declares {len(names)} outputs ({', '.join(names)}).",
            hint="Declare the one output it returns, or return a dict keyed by output name.")
    for name, value in zip(names, values):
        if not isinstance(value, torch.Tensor):
            raise SpecContractError(f"forward()'s output {name!r} is a {type(value).__name__}, not a tensor.",
                                    hint="Return tensors only; compute Python values outside the model.")
    return tuple(values)


def _missing_outputs(missing: list[str], available: list[str], container: str) -> SpecContractError:
    guesses = [f"`{difflib.get_close_matches(m, available, n=1)[0]}` for `{m}`"
               for m in missing if difflib.get_close_matches(m, available, n=1)]
    maybe = f" (did you mean {', '.join(guesses)}?)" if guesses else ""
    return SpecContractError(
        f"The spec declares output{'s' if len(missing) > 1 else ''} {_ticks(missing)}, which forward() does not "
        f"return{maybe}; it returns a {container} with {_ticks(available) or 'nothing'}.",
        hint="Name the spec's outputs (TensorSpec and postprocessing 'output') after what forward() returns.",
        details={"missing": missing, "returned": available})


def to_torch(feed: dict[str, np.ndarray], names: tuple[str, ...] | list[str]) -> tuple[Any, ...]:
    """The feed's arrays as torch tensors, in ``names`` order (the graph's positional inputs)."""
    torch = require("torch")
    return tuple(torch.from_numpy(np.ascontiguousarray(feed[name])) for name in names)


def run_forward(module: Any, plan: ForwardPlan, feed: dict[str, np.ndarray], *, case: str,
                user: UserCode | None = None) -> dict[str, np.ndarray]:
    """Run the PyTorch model on one feed; outputs by spec name as numpy arrays.

    Raises:
        SpecContractError: ``forward()`` raised (with the user's ``file:line``), or what it
            returns does not hold the declared outputs.
    """
    torch = require("torch")
    try:
        with torch.no_grad():
            outputs = plan.select(plan.call(module, to_torch(feed, plan.inputs)))
    except EdgemmError:
        raise
    except Exception as exc:
        where = (user or UserCode(module)).locate_error(exc)
        at = f" at {where.short} (`{where.code}`)" if where else ""
        shapes = ", ".join(f"{k} {list(v.shape)} {v.dtype}" for k, v in feed.items())
        raise SpecContractError(
            f"forward() failed on the spec's example inputs for case {case!r}{at}: "
            f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
            hint=f"edgemm called {plan.describe()} with {shapes}; make the spec's inputs, shapes and "
                 "preprocessing match what forward() expects.",
            details={"case": case, "exception": type(exc).__name__}) from exc
    return {name: out.detach().cpu().numpy() for name, out in zip(plan.outputs, outputs)}


# -- outputs against the spec ------------------------------------------------------------------


def feed_sizes(spec: ExportSpec, feed: dict[str, np.ndarray]) -> dict[str, int]:
    """The dynamic axes' sizes in a feed (``{"batch": 2, "seq": 11}``)."""
    sizes: dict[str, int] = {}
    for tensor in spec.inputs:
        array = feed.get(tensor.name)
        if array is None or array.ndim != len(tensor.shape):
            continue
        for dim, size in zip(tensor.shape, array.shape):
            if isinstance(dim, str):
                sizes.setdefault(dim, int(size))
    return sizes


def check_outputs(spec: ExportSpec, feed: dict[str, np.ndarray], outputs: dict[str, np.ndarray], *, case: str) -> None:
    """Each PyTorch output has the declared dtype and shape (dynamic axes at this feed's sizes).

    Raises:
        SpecContractError: A dtype, rank or size differs from the declaration.
    """
    sizes = feed_sizes(spec, feed)
    for tensor in spec.outputs:
        value = outputs[tensor.name]
        actual = np.dtype(value.dtype).name
        if actual != tensor.dtype:
            raise SpecContractError(
                f"Output {tensor.name!r} is declared {tensor.dtype} but forward() returns {actual} (case {case!r}).",
                hint=f"Declare TensorSpec({tensor.name!r}, {actual!r}, …), or cast the output in forward().")
        expected = [d if isinstance(d, int) else sizes.get(d) for d in tensor.shape]
        if len(expected) != value.ndim or any(e is not None and e != s for e, s in zip(expected, value.shape)):
            at = ", ".join(f"{k}={v}" for k, v in sizes.items())
            raise SpecContractError(
                f"Output {tensor.name!r} is declared {_shape(tensor.shape)} but forward() returns shape "
                f"{list(value.shape)} at case {case!r} ({at}).",
                hint=f"Declare it as PyTorch returns it: TensorSpec({tensor.name!r}, {tensor.dtype!r}, "
                     f"{_suggest(tensor.shape, value.shape, sizes)}) — dynamic axes by their input axis name.",
                details={"output": tensor.name, "declared": list(tensor.shape), "actual": list(value.shape)})


def _shape(shape: list[int | str]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _suggest(declared: list[int | str], actual: tuple[int, ...], sizes: dict[str, int]) -> str:
    dims: list[int | str] = []
    for i, size in enumerate(actual):
        name = declared[i] if i < len(declared) and isinstance(declared[i], str) else None
        if name is not None and sizes.get(name) == size:
            dims.append(name)
        elif i == 0 and sizes.get("batch") == size:
            dims.append("batch")
        else:
            dims.append(int(size))
    return repr(dims)


def check_postprocessing(spec: ExportSpec, outputs: dict[str, np.ndarray], *, case: str) -> None:
    """The runtime's own postprocessing accepts PyTorch's outputs: labels, widths, probabilities.

    The same code the kiosk runs (:func:`edgemm.runtime.postprocess.postprocess`) is applied to
    PyTorch's outputs, so a label list of the wrong length, a ``probabilities`` type over logits
    or a ``matching`` type over a wide output is refused here, not on the kiosk.

    Raises:
        SpecContractError: The postprocessing or labels do not fit the outputs.
        CheckFailedError: PyTorch itself returns NaN or infinite values on the example inputs.
    """
    from edgemm.runtime.postprocess import postprocess

    primary = outputs.get(spec.primary_output)
    candidates = None
    if spec.task == "image_text_similarity" and primary is not None and primary.ndim >= 2:
        candidates = [f"text {i}" for i in range(primary.shape[-1])]  # the texts sent at run time
    try:
        postprocess(outputs, spec, candidates=candidates)  # type: ignore[arg-type]
    except OutputMismatchError as exc:
        details = exc.details
        if "labels" in details and "width" in details:
            labels = ", ".join(spec.labels) or "none"
            raise SpecContractError(
                f"The spec lists {details['labels']} label{'s' if details['labels'] != 1 else ''} ({labels}) but the "
                f"model's output {details['output']!r} has {details['width']} values per row.",
                hint="Give one label per output value, in the order of the head's outputs "
                     "(a one-wide match logit takes two labels: no match, match).",
                details=details) from exc
        raise SpecContractError(f"The spec's postprocessing does not fit the model's outputs (case {case!r}): "
                                f"{exc.message}",
                                hint="Choose the postprocessing type that matches what the head returns: "
                                     "softmax / sigmoid for logits, probabilities / multilabel_probabilities "
                                     "for a head that already applies softmax / sigmoid.",
                                details=details) from exc
    except RuntimeFailure as exc:
        raise CheckFailedError(f"PyTorch returns NaN or infinite values on the example inputs (case {case!r}).",
                               hint="The model itself is broken on these inputs; check its weights.") from exc


def activation_warnings(spec: ExportSpec, outputs: list[dict[str, np.ndarray]]) -> list[str]:
    """A warning when the declared activation is applied to values that already look activated.

    ``softmax`` over rows that are already in [0, 1] and sum to 1, or ``sigmoid`` over values
    already in [0, 1], at *every* parity case, means the head normalises itself and the kiosk
    would apply the activation twice (a sigmoid of probabilities puts every label over 0.5).
    """
    kind = spec.postprocessing.get("type")
    if kind not in ("softmax", "sigmoid") or not outputs:
        return []
    name = spec.primary_output
    arrays = [np.asarray(o[name], dtype=np.float64) for o in outputs if name in o]
    if not arrays or not all(a.size and ((a >= 0) & (a <= 1)).all() for a in arrays):
        return []
    if kind == "softmax":
        rows = [a.reshape(-1, a.shape[-1]) for a in arrays if a.ndim >= 2 and a.shape[-1] > 1]
        if len(rows) != len(arrays) or not all(np.allclose(r.sum(-1), 1.0, atol=1e-3) for r in rows):
            return []
        better, what = "probabilities", "in [0, 1] and every row sums to 1"
    else:
        better, what = "multilabel_probabilities", "in [0, 1]"
    return [f"Postprocessing {kind!r} applies {kind} to output {name!r}, but its values are already {what} in all "
            f"{len(arrays)} parity cases: the head seems to apply {kind} itself, so the kiosk would apply it twice. "
            f"If so, use postprocessing type {better!r}" + (" (with its threshold)." if kind == "sigmoid" else ".")]


# -- the exported graph against the spec -------------------------------------------------------


def check_graph(spec: ExportSpec, path: Path) -> None:
    """The exported graph takes and uses every declared input and returns the declared outputs.

    Raises:
        SpecContractError: An input the graph drops or never reads (``forward()`` ignores it), or
            an output whose dtype or fixed size differs from the declaration.
        ExportError: The graph's interface differs in a way the spec cannot explain.
    """
    onnx = require("onnx")
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    graph_inputs = {i.name: i for i in graph.input if i.name not in initializers}
    consumed = _consumed(graph)
    names = [t.name for t in spec.inputs]
    ignored = [n for n in names if n not in graph_inputs or n not in consumed]
    if ignored:
        raise SpecContractError(
            f"forward() never uses the input{'s' if len(ignored) > 1 else ''} {_ticks(ignored)} that the spec declares"
            f" (the exported graph {'drops' if any(n not in graph_inputs for n in ignored) else 'never reads'} "
            f"{'them' if len(ignored) > 1 else 'it'}).",
            hint="Remove it from the spec's inputs and its modality's 'inputs', and stop the preprocessing producing "
                 "it (e.g. text_section(..., attention_mask=None)) — or use it in forward(): an attention mask the "
                 "model ignores lets padding change its answers.",
            details={"ignored": ignored})
    extra = [n for n in graph_inputs if n not in names]
    graph_outputs = [o.name for o in graph.output]
    if extra or graph_outputs != [t.name for t in spec.outputs]:
        raise ExportError(f"The exported graph has inputs {list(graph_inputs)} and outputs {graph_outputs}; "
                          f"the spec declares {names} and {[t.name for t in spec.outputs]}.",
                          hint="Report this with the model; the exporter renamed the interface.")
    pairs = [("Input", t, graph_inputs[t.name]) for t in spec.inputs]
    pairs += [("Output", t, o) for t, o in zip(spec.outputs, graph.output)]
    for kind, tensor, value in pairs:
        ttype = value.type.tensor_type
        if ttype.elem_type:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(ttype.elem_type)).name
            if dtype != tensor.dtype:
                raise SpecContractError(
                    f"{kind} {tensor.name!r} is declared {tensor.dtype} but the exported graph has {dtype}.",
                    hint=f"Declare {dtype!r}" + (" (the graph takes the dtype the preprocessing produces)."
                                                 if kind == "Input" else ", or cast the output in forward()."))
        if not ttype.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in ttype.shape.dim]
        if len(dims) != len(tensor.shape) or any(isinstance(s, int) and g is not None and g != s
                                                 for s, g in zip(tensor.shape, dims)):
            graph_shape = ["?" if d is None else d for d in dims]
            raise SpecContractError(
                f"{kind} {tensor.name!r} is declared {_shape(tensor.shape)} but the exported graph has "
                f"{_shape(graph_shape)}.",
                hint="Declare the shape the graph has (dynamic axes by name).")


def _consumed(graph: Any) -> set[str]:
    """Every value name a node of ``graph`` (or of a subgraph inside it) reads, plus the graph outputs."""
    names = {o.name for o in graph.output}
    for node in graph.node:
        names.update(node.input)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                names |= _consumed(sub)
    return names


# -- what the exporter said --------------------------------------------------------------------


def refuse_tracer_hazards(hazards: list[TracerHazard]) -> None:
    """Raise :class:`TracerWarningError` listing every tracer warning from the user's code."""
    if not hazards:
        return
    lines = "\n  ".join(h.describe() for h in hazards)
    raise TracerWarningError(
        f"The legacy exporter warned that the traced graph may be wrong for other inputs "
        f"({len(hazards)} place{'s' if len(hazards) > 1 else ''} in your code):\n  {lines}",
        hint="Tracing records one path: a Python if / int() / float() on a tensor is frozen to what the example "
             "inputs did, and other inputs then get a different answer than PyTorch. Compute both branches and "
             "pick with torch.where, or pass --allow-tracer-warnings if the value "
             "can never change the answer (it is recorded in the manifest; parity still runs on real and random "
             "inputs).",
        details={"tracer_warnings": [h.to_record() for h in hazards]})


def exporter_failure(exc: BaseException, exporter: str, user: UserCode) -> EdgemmError:
    """The user-facing error for an exception from inside the exporter.

    An edgemm error raised while tracing is returned as it is; a data-dependent guard (dynamo)
    becomes :class:`DataDependentError` with the user's ``file:line``; anything else an
    :class:`ExportError` naming the construct and, where found, the user's line.
    """
    for link in exception_chain(exc):
        if isinstance(link, EdgemmError):
            return link
    where = user.locate_error(exc)
    at = f" at {where.short} (`{where.code}`)" if where else ""
    if any("DataDependent" in type(link).__name__ or "data-dependent" in str(link) for link in exception_chain(exc)):
        return DataDependentError(
            f"forward() decides on a tensor's value{at}; the dynamo exporter cannot put a Python branch on data "
            "into a graph.",
            hint="Compute both branches and select with torch.where(condition, a, b) (or torch.cond). "
                 "--exporter legacy would keep only the branch the example inputs take; it refuses too unless "
                 "--allow-tracer-warnings, and then parity on real and random inputs decides.",
            details={"where": where.to_record() if where else None})
    return ExportError(
        f"torch → ONNX conversion failed ({exporter} exporter){at}: {first_sentence(first_line(exc))}",
        hint="The message names what the exporter could not convert; change that construct in forward(). "
             "The exporter's full log is in the debug output (-vv).",
        details={"exception": type(exc).__name__})
