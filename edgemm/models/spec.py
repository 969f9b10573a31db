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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgemm.bundle.compare import Tolerance
from edgemm.bundle.manifest import InterfaceRules, TensorSpec
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
        task: Manifest task (``classification``, ``matching``, ``zero_shot_classification`` …).
        inputs / outputs: Graph interface; string dims are dynamic axis names.
        axis_ranges: ``axis → (min, max)`` for every dynamic axis.
        export_case: Sizes of the example inputs the graph is traced with.
        parity_cases: Further shapes to compare ONNX and PyTorch at (≥ 2 differ from export).
        modalities: ``modality → {"required": bool, "inputs": [...], "presence_input": name|None}``.
        preprocessing / postprocessing / labels: Copied into the manifest for the runtime.
        assets: Files the runtime needs (bundle-relative path → bytes), e.g. ``tokenizer.json``.
        tolerance: Parity tolerances for FP32.
        opset: ONNX opset (≥ 17).
        make_feed: Optional ``(case, bundle_dir, rng) → feed``; by default feeds are built from
            realistic raw samples through the runtime preprocessing.
        zero_shot: Extra manifest facts for zero-shot exports (labels, prompt, text tower).
        encoders: ``modality → {"architecture", "num_heads", "hidden_size"}`` for the graph
            optimizer's per-encoder passes (empty: generic optimizations only).
    """

    name: str
    family: str
    task: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    axis_ranges: dict[str, tuple[int, int]]
    export_case: ShapeCase
    parity_cases: list[ShapeCase]
    modalities: dict[str, dict[str, Any]]
    preprocessing: dict[str, dict[str, Any]] = field(default_factory=dict)
    postprocessing: dict[str, Any] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)
    assets: dict[str, bytes] = field(default_factory=dict)
    tolerance: Tolerance = field(default_factory=Tolerance)
    opset: int = 18
    make_feed: FeedMaker | None = None
    zero_shot: dict[str, Any] | None = None
    encoders: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.opset < 17:
            raise UsageError(f"opset {self.opset} is too old; edgemm exports opset 17 or newer.")
        axes = {d for t in self.inputs for d in t.shape if isinstance(d, str)}
        missing = axes - self.axis_ranges.keys()
        if missing:
            raise UsageError(f"ExportSpec {self.name}: no range for dynamic axes {sorted(missing)}.")
        for case in [self.export_case, *self.parity_cases]:
            for axis, size in case.sizes.items():
                low, high = self.axis_ranges.get(axis, (size, size))
                if not low <= size <= high:
                    raise UsageError(f"Shape case {case.name}: {axis}={size} is outside {low}..{high}.")
        differing = [c for c in self.parity_cases if c.sizes != self.export_case.sizes]
        if len(self.parity_cases) < 3 or len(differing) < 2:
            raise UsageError(
                f"ExportSpec {self.name} needs at least 3 parity shapes, 2 of them different from the export shape."
            )

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

    The factory returns ``(module, ExportSpec)`` (or a :class:`LoadedModel`).
    """
    module_name, sep, attr = reference.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"--spec {reference!r} is not of the form package.module:factory.",
                         hint="Example: --spec mypkg.models:build_for_export")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"Cannot import {module_name!r} for --spec: {exc}",
                         hint="Make sure the package is installed or on PYTHONPATH.") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UsageError(f"{module_name} has no callable {attr!r}.", hint="Check the name after the colon.")
    return factory
