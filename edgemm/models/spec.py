"""ExportSpec: the declarative graph interface of an exportable model, and the spec registry.

An ExportSpec says what the ONNX graph takes and returns (names, dtypes, dynamic axes and their
ranges), which shapes parity is checked at, with which tolerances, and what the runtime must do
before and after the model (preprocessing, postprocessing, labels). It is torch-free.

Families register a *loader* under a name (``fusion``, ``clip`` …). A loader recognises a
checkpoint directory and turns it into ``(torch module, ExportSpec, source info)``. A user's own
model comes in as ``--spec package.module:factory`` (see :func:`load_factory`).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgemm.bundle.compare import Tolerance
from edgemm.bundle.manifest import DTYPES, MODALITIES, TASKS, InterfaceRules, TensorSpec
from edgemm.errors import UsageError


@dataclass(frozen=True)
class ShapeCase:
    """One set of concrete sizes for the dynamic axes, e.g. ``{"batch": 1, "seq": 2}``.

    ``absent`` lists, per optional modality, the rows whose request lacks that modality.
    """

    name: str
    sizes: dict[str, int]
    absent: dict[str, tuple[int, ...]] = field(default_factory=dict)


FeedMaker = Callable[[ShapeCase, Path, np.random.Generator], dict[str, np.ndarray]]


@dataclass
class ExportSpec(InterfaceRules):
    """Everything edgemm needs to export, verify and run a model besides its weights.

    Attributes:
        name: Model name (becomes the bundle name).
        family: Registered family that produced the spec (``fusion``, ``clip``, ``custom``).
        task: Manifest task (``classification``, ``multilabel``, ``matching``, ``regression``,
            ``zero_shot_classification``, ``image_text_similarity``, ``embedding``).
        inputs / outputs: Graph interface; string dims are dynamic axis names.
        axis_ranges: ``axis → (min, max)`` for every dynamic axis.
        export_case: Sizes of the example inputs the graph is traced with (default: batch 2,
            other axes halfway through their range).
        parity_cases: Further shapes to compare ONNX and PyTorch at (≥ 3, ≥ 2 differing from the
            export shape where there are dynamic axes; default: export, smallest, largest, mixed).
        modalities: ``modality → {"required": bool, "inputs": [...], "presence_input": name|None}``
            (default: every preprocessing section, required, with the inputs it produces).
        preprocessing / postprocessing / labels: Copied into the manifest for the runtime.
        assets: Files the runtime needs (bundle-relative path → bytes), e.g. ``tokenizer.json``.
        tolerance: Parity tolerances for FP32.
        opset: ONNX opset (≥ 17).
        make_feed: Optional ``(case, bundle_dir, rng) → feed``; by default feeds are built from
            realistic raw samples through the runtime preprocessing.
        zero_shot: Extra manifest facts for zero-shot exports (labels, prompt, text tower).
        encoders: ``modality → {"architecture", "num_heads", "hidden_size"}`` for the graph
            optimizer's per-encoder passes (empty: generic optimizations only).
        argument_names: ``spec input → forward() parameter`` where they differ: ``"ids"``, or
            ``"text.input_ids"`` for a parameter that takes a dict (``forward(self, text, image)``
            with ``text = {"input_ids": …, "attention_mask": …}``).

    Raises:
        UsageError: Any field is malformed (exit 2): unknown task or dtype, a dynamic axis without
            a range, a range that excludes a shape case, an unknown postprocessing type …
    """

    name: str
    family: str
    task: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    axis_ranges: dict[str, tuple[int, int]] = field(default_factory=dict)
    export_case: ShapeCase | None = None  # type: ignore[assignment]
    parity_cases: list[ShapeCase] = field(default_factory=list)
    modalities: dict[str, dict[str, Any]] = field(default_factory=dict)
    preprocessing: dict[str, dict[str, Any]] = field(default_factory=dict)
    postprocessing: dict[str, Any] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)
    assets: dict[str, bytes] = field(default_factory=dict)
    tolerance: Tolerance = field(default_factory=Tolerance)
    opset: int = 18
    make_feed: FeedMaker | None = None
    zero_shot: dict[str, Any] | None = None
    encoders: dict[str, dict[str, Any]] = field(default_factory=dict)
    argument_names: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_spec_fields(self)
        if not self.modalities:
            self.modalities = _default_modalities(self)
        if self.export_case is None:
            self.export_case = _default_export_case(self.axis_ranges)
        if not self.parity_cases:
            self.parity_cases = _default_parity_cases(self.export_case, self.axis_ranges)
        _check_spec_cases(self)

    def with_profiles(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        """Inputs and outputs with ``[min, opt, max]`` profiles filled from the axis ranges."""

        def fill(spec: TensorSpec) -> TensorSpec:
            profile = {
                d: [self.axis_ranges[d][0], self.export_case.sizes.get(d, self.axis_ranges[d][0]), self.axis_ranges[d][1]]
                for d in spec.shape
                if isinstance(d, str) and d in self.axis_ranges
            }
            return TensorSpec(spec.name, spec.dtype, list(spec.shape), profile)

        return [fill(t) for t in self.inputs], [fill(t) for t in self.outputs]


def _bad(spec_name: Any, message: str, hint: str | None = None) -> UsageError:
    return UsageError(f"ExportSpec {spec_name!r}: {message}",
                      hint=hint or "See README: Bring your own model — the ExportSpec reference.")


def _check_tensor(spec_name: Any, tensor: Any, where: str) -> None:
    if not isinstance(tensor, TensorSpec):
        raise _bad(spec_name, f"{where} holds a {type(tensor).__name__}, not a TensorSpec.",
                   "Declare each as TensorSpec(name, dtype, shape), e.g. TensorSpec('logits', 'float32', ['batch', 3]).")
    if not isinstance(tensor.name, str) or not tensor.name:
        raise _bad(spec_name, f"{where} has no name.")
    if tensor.dtype not in DTYPES:
        raise _bad(spec_name, f"{where} {tensor.name!r} has unknown dtype {tensor.dtype!r}.",
                   f"Use one of: {', '.join(DTYPES)}.")
    if not isinstance(tensor.shape, (list, tuple)) or not all(
            (isinstance(d, int) and not isinstance(d, bool) and d > 0) or (isinstance(d, str) and d)
            for d in tensor.shape):
        raise _bad(spec_name, f"{where} {tensor.name!r} has shape {tensor.shape!r}.",
                   "A shape is a list of positive ints (fixed sizes) and axis names (dynamic sizes).")


def _check_spec_fields(spec: ExportSpec) -> None:
    """Types and values of every field the user writes, before anything uses them."""
    from edgemm.runtime.postprocess import POSTPROCESSING_TYPES

    name = spec.name
    if not isinstance(name, str) or not name:
        raise _bad(name, "the name must be a non-empty string.")
    if spec.task not in TASKS:
        raise _bad(name, f"unknown task {spec.task!r}.", f"Use one of: {', '.join(TASKS)}.")
    for what in ("inputs", "outputs"):
        tensors = getattr(spec, what)
        if not isinstance(tensors, list) or not tensors:
            raise _bad(name, f"{what} must be a non-empty list of TensorSpec.")
        for i, tensor in enumerate(tensors):
            _check_tensor(name, tensor, f"{what}[{i}]")
        names = [t.name for t in tensors]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise _bad(name, f"{what} name {', '.join(dupes)} more than once.")
    both = {t.name for t in spec.inputs} & {t.name for t in spec.outputs}
    if both:
        raise _bad(name, f"{sorted(both)} is both an input and an output.")
    if not isinstance(spec.axis_ranges, dict):
        raise _bad(name, "axis_ranges must be a dict axis → (min, max).")
    for axis, bounds in spec.axis_ranges.items():
        ok = (isinstance(bounds, (tuple, list)) and len(bounds) == 2
              and all(isinstance(b, int) and not isinstance(b, bool) for b in bounds))
        if not ok or not 1 <= bounds[0] <= bounds[1]:
            raise _bad(name, f"axis range {axis}={bounds!r} is not (min, max) with 1 ≤ min ≤ max.")
    axes = {d for t in spec.inputs for d in t.shape if isinstance(d, str)}
    missing = axes - spec.axis_ranges.keys()
    if missing:
        raise _bad(name, f"no range for dynamic axes {sorted(missing)}.",
                   "Give axis_ranges={axis: (min, max)} for every named dimension of the inputs.")
    if isinstance(spec.opset, bool) or not isinstance(spec.opset, int) or spec.opset < 17:
        raise _bad(name, f"opset {spec.opset!r} is too old; edgemm exports opset 17 or newer.")
    if not isinstance(spec.labels, (list, tuple)) or not all(isinstance(x, str) and x for x in spec.labels):
        raise _bad(name, "labels must be a list of non-empty strings.")
    if len(set(spec.labels)) != len(spec.labels):
        raise _bad(name, "labels are not unique.")
    if not isinstance(spec.tolerance, Tolerance):
        raise _bad(name, "tolerance must be a Tolerance(atol=…, rtol=…, min_cosine=…).")
    post = spec.postprocessing
    if not isinstance(post, dict):
        raise _bad(name, "postprocessing must be a dict.")
    if post:
        kind = post.get("type")
        if kind not in POSTPROCESSING_TYPES:
            raise _bad(name, f"unknown postprocessing type {kind!r}.", f"Use one of: {', '.join(POSTPROCESSING_TYPES)}.")
        output = post.get("output")
        outputs = [t.name for t in spec.outputs]
        if output is not None and output not in outputs:
            raise _bad(name, f"postprocessing reads output {output!r}, which the spec does not declare.",
                       f"Name one of the declared outputs: {', '.join(outputs)}.")
        threshold = post.get("threshold", 0.5)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
            raise _bad(name, f"postprocessing threshold {threshold!r} is not a number in [0, 1].")
        top_k = post.get("top_k", 5)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise _bad(name, f"postprocessing top_k {top_k!r} is not a positive integer.")
    for modality in list(spec.modalities) + list(spec.preprocessing):
        if modality not in MODALITIES:
            raise _bad(name, f"unknown modality {modality!r}.", f"Modalities: {', '.join(MODALITIES)}.")
    inputs = {t.name for t in spec.inputs}
    for modality, info in spec.modalities.items():
        if not isinstance(info, dict):
            raise _bad(name, f"modalities[{modality!r}] must be a dict with 'inputs' (and 'required', 'presence_input').")
        listed = [*info.get("inputs", []), *([info["presence_input"]] if info.get("presence_input") else [])]
        unknown = [n for n in listed if n not in inputs]
        if unknown:
            raise _bad(name, f"modality {modality!r} names inputs {unknown} that the spec does not declare.",
                       f"Inputs: {', '.join(sorted(inputs))}.")
    if not isinstance(spec.argument_names, dict):
        raise _bad(name, "argument_names must be a dict spec input → forward() parameter.")
    for key, target in spec.argument_names.items():
        if key not in inputs:
            raise _bad(name, f"argument_names maps {key!r}, which is not a spec input.", f"Inputs: {', '.join(sorted(inputs))}.")
        param, dot, sub = target.partition(".") if isinstance(target, str) else ("", "", "")
        if not param.isidentifier() or (dot and (not sub or "." in sub)):  # one level of dict
            raise _bad(name, f"argument_names[{key!r}] = {target!r} is not 'parameter' or 'parameter.key'.")
    if spec.make_feed is None:
        lacking = [m for m in spec.modalities if m not in spec.preprocessing]
        if lacking:
            raise _bad(name, f"modality {lacking[0]!r} has no preprocessing section.",
                       "Add preprocessing={modality: section} (text_section, image_preprocessing_from_hf, "
                       "audio_section …), or give make_feed.")


def _check_spec_cases(spec: ExportSpec) -> None:
    """Shape cases lie inside the axis ranges, and parity covers more than the export shape."""
    cases = [spec.export_case, *spec.parity_cases]
    if not all(isinstance(c, ShapeCase) for c in cases):
        raise _bad(spec.name, "export_case and parity_cases must be ShapeCase(name, {axis: size}).")
    for case in cases:
        for axis, size in case.sizes.items():
            low, high = spec.axis_ranges.get(axis, (size, size))
            if isinstance(size, bool) or not isinstance(size, int) or not low <= size <= high:
                raise _bad(spec.name, f"shape case {case.name!r}: {axis}={size!r} is outside its range {low}..{high}.",
                           f"Widen axis_ranges[{axis!r}] or change the case; every case must be a shape the graph accepts.")
    dynamic = any(low < high for low, high in spec.axis_ranges.values())
    differing = [c for c in spec.parity_cases if c.sizes != spec.export_case.sizes]
    if len(spec.parity_cases) < 3 or (dynamic and len(differing) < 2):
        raise _bad(spec.name, "needs at least 3 parity shapes, 2 of them different from the export shape.",
                   "Leave parity_cases out to get the defaults (export, smallest, largest, mixed).")


def _is_batch(axis: str) -> bool:
    return axis == "batch" or axis.endswith("_batch")


def _default_export_case(ranges: dict[str, tuple[int, int]]) -> ShapeCase:
    sizes = {a: min(max(2, low), high) if _is_batch(a) else (low + high + 1) // 2 for a, (low, high) in ranges.items()}
    return ShapeCase("export", sizes)


def _default_parity_cases(export: ShapeCase, ranges: dict[str, tuple[int, int]]) -> list[ShapeCase]:
    def sized(name: str, pick: Callable[[str, int, int], int]) -> ShapeCase:
        return ShapeCase(name, {a: pick(a, low, high) for a, (low, high) in ranges.items()})

    return [
        export,
        sized("smallest", lambda a, low, high: low),
        sized("largest", lambda a, low, high: min(high, max(low, 4)) if _is_batch(a) else high),
        sized("mixed", lambda a, low, high: min(high, max(low, 3)) if _is_batch(a) else (low + 2 * high) // 3),
    ]


def _default_modalities(spec: ExportSpec) -> dict[str, dict[str, Any]]:
    """Every preprocessing section as a required modality with the inputs it produces."""
    out: dict[str, dict[str, Any]] = {}
    for modality, section in spec.preprocessing.items():
        if modality == "text":
            names = [section.get(k) for k in ("input_ids", "attention_mask", "token_type_ids")]
        else:
            names = [section.get("input"), section.get("mask_input")]
        out[modality] = {"required": True, "inputs": [n for n in names if n], "presence_input": None}
    return out


@dataclass
class LoadedModel:
    """A torch module ready to export, with its spec and where it came from."""

    module: Any
    spec: ExportSpec
    source: dict[str, Any]


Loader = Callable[..., LoadedModel]


@dataclass(frozen=True)
class Family:
    """A registered model family: how to recognise its checkpoints and load them."""

    name: str
    detect: Callable[[Path], bool]
    load: Loader
    description: str


_FAMILIES: dict[str, Family] = {}


def register_family(name: str, *, detect: Callable[[Path], bool], description: str) -> Callable[[Loader], Loader]:
    """Decorator registering a loader for checkpoint directories that ``detect`` recognises."""

    def wrap(load: Loader) -> Loader:
        _FAMILIES[name] = Family(name, detect, load, description)
        return load

    return wrap


def registered_families() -> dict[str, Family]:
    """Families registered so far (:func:`edgemm.models.specs.families` registers the built-in ones)."""
    return dict(_FAMILIES)


def load_factory(reference: str) -> Callable[..., Any]:
    """Resolve ``package.module:factory`` to the factory callable.

    The factory returns ``(module, ExportSpec)`` (or a :class:`LoadedModel`). The module is
    imported from ``PYTHONPATH``, the installed packages, or the current directory (which the
    ``edgemm`` console script would not search otherwise).
    """
    module_name, sep, attr = reference.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"--spec {reference!r} is not of the form package.module:factory.",
                         hint="Example: --spec mypkg.models:build_for_export")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)  # after the installed packages: a local file never shadows one
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"Cannot import {module_name!r} for --spec: {exc}",
                         hint="Run edgemm in the folder that holds it, or put its folder on PYTHONPATH.") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UsageError(f"{module_name} has no callable {attr!r}.", hint="Check the name after the colon.")
    return factory
