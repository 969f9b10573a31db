"""Deployment targets: export recipes as typed, frozen sections.

A recipe is one TOML file per deployment target (``cpu-kiosk``, ``jetson-orin-nano`` …). The
repository's top-level ``export/`` folder is their one source; the build maps it into the wheel
as the package ``edgemm.targets``, so ``--target NAME`` resolves the same way from a source
checkout, an editable install or a wheel. ``--target PATH`` reads any ``.toml`` file.

Every section is a frozen dataclass whose fields *are* the schema: an unknown section or key is
refused with the valid ones listed, a value of the wrong type or outside its choices is refused
with the choices, and every accepted key is read by somebody (export, optimize, tensorrt,
triton). Overrides from the CLI or the Python API are applied once, with :meth:`Recipe.override`,
before anyone reads the recipe.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Union

from edgemm.bundle.compare import Tolerance
from edgemm.errors import RecipeError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (JetPack 6)
    import tomli as tomllib

#: The package the build maps ``export/*.toml`` into (see ``setup.py``).
TARGETS_PACKAGE = "edgemm.targets"

EXPORTERS = ("dynamo", "legacy")
PRECISIONS = ("fp32-opt", "fp16", "int8-dynamic", "int8-static", "mixed", "ov-fp32", "ov-bf16", "ov-int8",
              "ov-int8-bf16")
# OpenVINO IR variants (edgemm.optimize.openvino): built from the plain graph only.
OPENVINO_PRECISIONS = ("ov-fp32", "ov-bf16", "ov-int8", "ov-int8-bf16")
BASES = ("optimized", "plain")
GATE_METRICS = ("accuracy", "macro_f1")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
MIXED_BRANCHES = ("text", "image", "audio", "fusion", "head")
TENSORRT_DEVICES = ("any", "jetson", "desktop")
TENSORRT_PRECISIONS = ("fp32", "fp16", "int8")
HARDWARE_COMPATIBILITY = ("none", "ampere_plus", "same_compute_capability")
TRITON_DEVICES = ("auto", "cpu", "gpu")
TRITON_ORT_EPS = ("default", "tensorrt")
TRITON_TEXT_PADDING = ("fixed", "longest")

# Keys whose value must be one of a fixed set: (section, key) -> choices.
_CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("export", "exporter"): EXPORTERS,
    ("gate", "metric"): GATE_METRICS,
    ("calibration", "method"): CALIBRATION_METHODS,
    ("variants", "precision"): PRECISIONS,
    ("variants", "base"): BASES,
    ("variants", "calibration"): CALIBRATION_METHODS,
    ("tensorrt", "device"): TENSORRT_DEVICES,
    ("tensorrt", "hardware_compatibility"): HARDWARE_COMPATIBILITY,
    ("triton", "device"): TRITON_DEVICES,
    ("triton", "ort_ep"): TRITON_ORT_EPS,
    ("triton", "text_padding"): TRITON_TEXT_PADDING,
}


@dataclass(frozen=True)
class ExportSection:
    """``[export]``: how torch becomes ONNX.

    Attributes:
        exporter: ``dynamo`` (torch.export) or ``legacy`` (TorchScript; ORT's attention fusions
            match its graphs).
        opset: ONNX opset (None: the model family's default).
    """

    exporter: str = "dynamo"
    opset: int | None = None


@dataclass(frozen=True)
class OptimizeSection:
    """``[optimize]``: ONNX Runtime's transformer fusions, one pass per encoder.

    Attributes:
        graph: Build the fused FP32 graph (default: whenever the recipe has variants).
    """

    graph: bool = False


@dataclass(frozen=True)
class GateSection:
    """``[gate]``: the accuracy budget every reduced-precision variant must meet.

    Attributes:
        budget: Largest drop of ``metric`` against FP32 on the test split, in points.
        metric: ``accuracy`` or ``macro_f1``.
        repair_rounds: Rounds of excluding the most harmful quantized nodes before falling back.
        repair_fraction: Share of the candidate nodes excluded per round.
    """

    budget: float = 0.5
    metric: str = "accuracy"
    repair_rounds: int = 2
    repair_fraction: float = 0.1


@dataclass(frozen=True)
class CalibrationSection:
    """``[calibration]``: static INT8 calibration on the paired calibration split.

    Attributes:
        method: ``minmax``, ``entropy`` or ``percentile`` (a variant may name its own).
        samples: At most this many calibration records are used.
    """

    method: str = "minmax"
    samples: int = 128


@dataclass(frozen=True)
class LimitsSection:
    """``[limits]``: bounds of the exported graph's dynamic axes and of engine builds.

    Attributes:
        max_batch: Upper end of the ``batch`` axis range (and of TensorRT profiles).
        max_seq: Upper end of the ``seq`` axis range.
        workspace_mb: TensorRT builder memory pool, in MiB.
    """

    max_batch: int | None = None
    max_seq: int | None = None
    workspace_mb: int | None = None


@dataclass(frozen=True)
class TensorRTSection:
    """``[tensorrt]``: which engines export builds where TensorRT is present (or build-engine later).

    Attributes:
        build: Build engines at all.
        device: ``any``, ``jetson`` or ``desktop``: where they may be built (engines are
            device-specific).
        precisions: Engine precisions; the source artifact follows from the TensorRT regime.
        artifacts: Explicit ONNX artifacts to build from instead of ``precisions``.
        profiles: Optimization profiles, e.g. ``{ name = "b1", batch = [1, 1, 1] }``.
        dla_core: DLA core to build for (Jetson AGX/NX).
        gpu_fallback: Let layers the DLA cannot run fall back to the GPU.
        layernorm_fp32: Keep LayerNorm in FP32 in reduced-precision engines.
        hardware_compatibility: Engine hardware compatibility level (desktop GPUs).
        builder_optimization_level: TensorRT's builder optimization level.
        waive_fp16_overflow: Accept FP16 overflow warnings in the build log.
    """

    build: bool = False
    device: str = "any"
    precisions: tuple[str, ...] = ()
    artifacts: tuple[str, ...] = ()
    profiles: tuple[dict[str, Any], ...] = ()
    dla_core: int | None = None
    gpu_fallback: bool | None = None
    layernorm_fp32: bool | None = None
    hardware_compatibility: str | None = None
    builder_optimization_level: int | None = None
    waive_fp16_overflow: bool | None = None

    def build_options(self) -> dict[str, Any]:
        """The keys that become TensorRT build options (those the recipe sets)."""
        keys = ("dla_core", "gpu_fallback", "layernorm_fp32", "hardware_compatibility",
                "builder_optimization_level", "waive_fp16_overflow")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


@dataclass(frozen=True)
class TritonSection:
    """``[triton]`` (and ``edgemm triton``'s options): how a model repository is generated.

    Attributes:
        name: Base model name (default: the bundle's name, sanitised).
        artifacts: Artifacts to export (default: all); the first is what the ensembles run.
        version: Model version directory.
        device: Instance kind of the backend models: ``auto`` (GPU where Triton has one), ``cpu``, ``gpu``.
        instances: Instances per model.
        max_batch_size: Triton ``max_batch_size`` (default: the manifest's batch profile maximum).
        preferred_batch_sizes: Dynamic batcher's preferred sizes (default: 4, 8, 16 up to the max).
        queue_delay_us: Dynamic batcher's ``max_queue_delay_microseconds``.
        ort_ep: ``tensorrt`` adds ONNX Runtime's TensorRT execution provider on GPU instances.
        threads: ONNX Runtime intra-op threads per instance (0: ONNX Runtime's default).
        text_padding: ``fixed`` pads text to the bundle's max length so requests batch;
            ``longest`` keeps each request's own length (batches only equal lengths).
        warmup: Add model warm-up from the bundle's golden set.
    """

    name: str | None = None
    artifacts: tuple[str, ...] = ()
    version: int = 1
    device: str = "auto"
    instances: int = 1
    max_batch_size: int | None = None
    preferred_batch_sizes: tuple[int, ...] | None = None
    queue_delay_us: int = 2000
    ort_ep: str = "default"
    threads: int = 0
    text_padding: str = "fixed"
    warmup: bool = True

    def __post_init__(self) -> None:
        # The Python API builds these directly: the same checks as a recipe file.
        _check_choices("triton", "[triton]", dataclasses.asdict(self), "options")
        for key in ("version", "instances"):
            if getattr(self, key) < 1:
                raise RecipeError(f"[triton] {key} must be at least 1, got {getattr(self, key)}.")
        if self.max_batch_size is not None and self.max_batch_size < 1:
            raise RecipeError(f"[triton] max_batch_size must be at least 1, got {self.max_batch_size}.")
        if self.queue_delay_us < 0 or self.threads < 0:
            raise RecipeError("[triton] queue_delay_us and threads must not be negative.")


@dataclass(frozen=True)
class SplitSection:
    """``[split]``: cut a shipped variant at its cacheable branch (text / audio) for the answer cache.

    Attributes:
        source: The variant to cut (e.g. ``int8``); it must be one of the recipe's variants.
        cache: Branch rows the runtime's LRU cache keeps (0: no cache, the parts still run).
        name: The split artifact's name (default ``<source>-split``).
    """

    source: str
    cache: int = 256
    name: str | None = None

    @property
    def artifact_name(self) -> str:
        """The name of the artifact the split ships as."""
        return self.name or f"{self.source}-split"


@dataclass(frozen=True)
class VariantSpec:
    """One requested precision variant (a ``[[variants]]`` table).

    Attributes:
        name: Artifact name (unique, not ``fp32``, which always ships).
        precision: ``fp32-opt``, ``fp16``, ``int8-dynamic``, ``int8-static`` or ``mixed``; OpenVINO IR:
            ``ov-fp32``, ``ov-bf16``, ``ov-int8`` (NNCF) or ``ov-int8-bf16`` (NNCF INT8, the layers
            left in float run in BF16), always from the plain graph.
        base: ``optimized`` (the fused graph) or ``plain`` (what TensorRT parses).
        per_channel: Per-channel weight scales.
        reduce_range: 7-bit weights (None: follow the CPU, on where it lacks VNNI).
        calibration: Calibration method of a static variant (None: ``[calibration] method``).
        fallback: Precisions to try when this one fails the gate (None: the built-in chain).
        modalities: ``mixed``: precision per branch, e.g. ``{ text = "int8", image = "fp32" }``.
        providers: Execution providers the artifact is meant for (None: by precision).
    """

    name: str
    precision: str
    base: str = "optimized"
    per_channel: bool = True
    reduce_range: bool | None = None
    calibration: str | None = None
    fallback: tuple[str, ...] | None = None
    modalities: dict[str, str] = field(default_factory=dict)
    providers: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Recipe:
    """A parsed export recipe: one frozen section per TOML table.

    Attributes:
        name / description / path: Identity (``path`` is where it was read from).
        export / optimize / gate / calibration / limits / tensorrt: The sections.
        parity: ``[parity]`` tolerance of ONNX vs PyTorch (None: the model family's).
        triton: ``[triton]`` (None: the recipe writes no model repository).
        variants: The ``[[variants]]`` tables, in order.
        split: ``[split]`` (None: no branch-split artifact).
    """

    name: str
    description: str = ""
    path: str = ""
    export: ExportSection = ExportSection()
    parity: Tolerance | None = None
    optimize: OptimizeSection = OptimizeSection()
    gate: GateSection = GateSection()
    calibration: CalibrationSection = CalibrationSection()
    limits: LimitsSection = LimitsSection()
    tensorrt: TensorRTSection = TensorRTSection()
    triton: TritonSection | None = None
    variants: tuple[VariantSpec, ...] = ()
    split: SplitSection | None = None

    def override(self, *, exporter: str | None = None, opset: int | None = None,
                 tolerance: Tolerance | None = None, budget: float | None = None,
                 calibration: str | None = None) -> Recipe:
        """This recipe with the CLI's (or the caller's) explicit values; None keeps the recipe's.

        Args:
            exporter: ``--exporter``.
            opset: ``--opset``.
            tolerance: Parity tolerance (Python API).
            budget: ``--budget``, in accuracy points.
            calibration: ``--calibration`` method.

        Raises:
            RecipeError: A value outside its choices.
        """
        recipe = self
        if exporter is not None or opset is not None:
            _check_choices("export", "--exporter", {"exporter": exporter or self.export.exporter}, "options")
            recipe = dataclasses.replace(recipe, export=dataclasses.replace(
                recipe.export, exporter=exporter or recipe.export.exporter,
                opset=opset if opset is not None else recipe.export.opset))
        if tolerance is not None:
            recipe = dataclasses.replace(recipe, parity=tolerance)
        if budget is not None:
            if budget < 0:
                raise RecipeError(f"The accuracy budget must not be negative, got {budget}.")
            recipe = dataclasses.replace(recipe, gate=dataclasses.replace(recipe.gate, budget=float(budget)))
        if calibration is not None:
            _check_choices("calibration", "--calibration", {"method": calibration}, "options")
            recipe = dataclasses.replace(recipe, calibration=dataclasses.replace(recipe.calibration, method=calibration))
        return recipe


# -- finding recipes ------------------------------------------------------------------------------


def recipe_files() -> dict[str, Path]:
    """The packaged recipes by name (``export/*.toml`` of the source tree, in the wheel too)."""
    folder = resources.files(TARGETS_PACKAGE)
    return {entry.name[: -len(".toml")]: Path(str(entry)) for entry in folder.iterdir()
            if entry.name.endswith(".toml")}


def available_recipes() -> list[str]:
    """Names of the packaged recipes, sorted (what ``--target NAME`` accepts)."""
    return sorted(recipe_files())


def load_recipe(target: str) -> Recipe:
    """Load a recipe by packaged name or by path to a ``.toml`` file.

    Raises:
        RecipeError: Unknown name (the known ones are listed), missing file, invalid TOML, or a
            section, key, type or value the schema does not accept (exit 2).
    """
    path = Path(target)
    if not (target.endswith(".toml") or path.is_file()):
        packaged = recipe_files()
        if target not in packaged:
            raise RecipeError(f"Unknown target {target!r}.",
                              hint=f"Known targets: {', '.join(sorted(packaged))}; or give a path to a .toml file.")
        path = packaged[target]
    if not path.is_file():
        raise RecipeError(f"Recipe file {path} does not exist.",
                          hint=f"Known targets: {', '.join(available_recipes())}.")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{path} is not valid TOML: {exc}") from exc
    return parse_recipe(data, path)


def parse_recipe(data: dict[str, Any], path: Path) -> Recipe:
    """Build a :class:`Recipe` from parsed TOML (``path`` names the file in messages)."""
    where = path.name
    top = {k: data[k] for k in ("name", "description") if k in data}
    unknown = sorted(set(data) - set(_SECTIONS) - {"name", "description", "variants"})
    if unknown:
        key = unknown[0]
        kind = "section" if isinstance(data[key], dict) else "key"
        shown = f"[{key}]" if kind == "section" else repr(key)
        raise RecipeError(f"{where}: unknown {kind} {shown}.",
                          hint=f"Sections: {', '.join(f'[{s}]' for s in _SECTIONS)}, [[variants]]; "
                                   "top-level keys: name, description.")
    for key in ("name", "description"):
        if key in top and not isinstance(top[key], str):
            raise RecipeError(f"{where}: {key} at top level has the wrong type ({type(top[key]).__name__}); it takes a string.")
    sections: dict[str, Any] = {}
    for key, cls in _SECTIONS.items():
        if key in data:
            if not isinstance(data[key], dict):
                raise RecipeError(f"{where}: {key} must be a [{key}] table.")
            sections[key] = _section(cls, data[key], key, where)
    variants_data = data.get("variants", [])
    if not isinstance(variants_data, list) or not all(isinstance(v, dict) for v in variants_data):
        raise RecipeError(f"{where}: variants must be [[variants]] tables.")
    variants = tuple(_variant(v, where) for v in variants_data)
    names = [v.name for v in variants]
    if len(set(names)) != len(names) or "fp32" in names:
        raise RecipeError(f"{where}: variant names must be unique and not 'fp32' (always shipped).")
    # Without an explicit [optimize] graph, the fused graph is built whenever variants need a base.
    optimize = OptimizeSection(graph=data.get("optimize", {}).get("graph", bool(variants)))
    if any(v.precision in ("fp32-opt", "mixed") or v.base == "optimized" for v in variants) and not optimize.graph:
        raise RecipeError(f"{where}: variants on the optimized graph need [optimize] graph = true.")
    split = sections.get("split")
    if split is not None and (split.source not in names or split.cache < 0 or split.artifact_name in (*names, "fp32")):
        raise RecipeError(f"{where}: [split] source must name one of the variants ({', '.join(names) or 'none'}), "
                          "cache must not be negative, and its artifact name must be new.")
    parity = data.get("parity")
    return Recipe(
        name=data.get("name", path.stem),
        description=data.get("description", ""),
        path=str(path),
        export=sections.get("export", ExportSection()),
        parity=Tolerance.from_dict(parity) if parity else None,
        optimize=optimize,
        gate=sections.get("gate", GateSection()),
        calibration=sections.get("calibration", CalibrationSection()),
        limits=sections.get("limits", LimitsSection()),
        tensorrt=sections.get("tensorrt", TensorRTSection()),
        triton=sections.get("triton"),
        variants=variants,
        split=split,
    )


# -- schema checks --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ParitySection:
    """``[parity]``: the tolerance of ONNX against PyTorch (see :class:`Tolerance`)."""

    atol: float = 1e-4
    rtol: float = 1e-3
    min_cosine: float = 0.9999
    min_top1: float = 1.0


_SECTIONS: dict[str, type] = {
    "export": ExportSection,
    "parity": _ParitySection,
    "optimize": OptimizeSection,
    "gate": GateSection,
    "calibration": CalibrationSection,
    "limits": LimitsSection,
    "tensorrt": TensorRTSection,
    "triton": TritonSection,
    "split": SplitSection,
}


def _section(cls: type, table: dict[str, Any], key: str, where: str) -> Any:
    """One table → its frozen dataclass; keys, types and choices checked against the fields."""
    values = _typed_fields(cls, table, f"[{key}]", where, section=key)
    if cls is SplitSection and "source" not in values:
        raise RecipeError(f"{where}: [split] needs source, the variant to cut.", hint='e.g. source = "int8"')
    if cls is TensorRTSection:
        bad = [p for p in values.get("precisions", ()) if p not in TENSORRT_PRECISIONS]
        if bad:
            raise RecipeError(f"{where}: unknown engine precision {bad[0]!r} in [tensorrt].",
                              hint=f"Choose from: {', '.join(TENSORRT_PRECISIONS)}.")
    try:
        return cls(**values)
    except RecipeError as exc:
        raise RecipeError(f"{where}: {exc.message}", hint=exc.hint) from None


def _variant(table: dict[str, Any], where: str) -> VariantSpec:
    for key in ("name", "precision"):
        if key not in table:
            raise RecipeError(f"{where}: a [[variants]] table has no {key!r}.",
                              hint="Each variant needs name and precision, e.g. name = \"int8\", precision = \"int8-dynamic\".")
    values = _typed_fields(VariantSpec, table, "[[variants]]", where, section="variants")
    if values["precision"] in OPENVINO_PRECISIONS:
        # OpenVINO cannot read ONNX Runtime's contrib operators in the fused graph.
        if values.get("base", "plain") != "plain":
            raise RecipeError(f"{where}: OpenVINO variant {values['name']!r} is built from the plain graph.",
                              hint="Remove base, or set base = \"plain\".")
        if any(p != "fp32" for p in values.get("fallback") or ()):
            raise RecipeError(f"{where}: OpenVINO variant {values['name']!r} takes no fallback precisions "
                              "(INT8 retries with NNCF's accuracy control; the ONNX artifacts remain).",
                              hint="Remove fallback, or list the other variants in the recipe.")
    values.setdefault("base", "plain" if values["precision"] in ("fp16", *OPENVINO_PRECISIONS) else "optimized")
    modalities = dict(values.get("modalities", {}))
    if values["precision"] == "mixed":
        bad = {k: v for k, v in modalities.items() if k not in MIXED_BRANCHES or v not in ("int8", "fp32")}
        if bad or not any(v == "int8" for v in modalities.values()):
            raise RecipeError(f"{where}: mixed variant {values['name']!r} needs modalities like "
                              "{ text = \"int8\", image = \"fp32\" } with at least one int8 branch.",
                              hint=f"Branches: {', '.join(MIXED_BRANCHES)}; precisions: int8, fp32.")
    elif modalities:
        raise RecipeError(f"{where}: modalities applies to precision = \"mixed\" only (variant {values['name']!r}).")
    fallback = values.get("fallback")
    if fallback is not None and any(p not in (*PRECISIONS, "fp32") for p in fallback):
        raise RecipeError(f"{where}: unknown precision in fallback {list(fallback)}.",
                          hint=f"Choose from: {', '.join((*PRECISIONS, 'fp32'))}.")
    return VariantSpec(**values)


def _typed_fields(cls: type, table: dict[str, Any], shown: str, where: str, *, section: str) -> dict[str, Any]:
    """Check ``table`` against ``cls``'s fields (names and types); lists become tuples."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in hints:
            raise RecipeError(f"{where}: unknown key {key!r} in {shown}.", hint=f"Valid keys: {', '.join(names)}.")
        if not _is_instance(value, hints[key]):
            raise RecipeError(f"{where}: {key} in {shown} has the wrong type ({type(value).__name__}); "
                              f"it takes {_describe(hints[key])}.")
        values[key] = _freeze(value)
    _check_choices(section, shown, values, where)
    return values


def _check_choices(section: str, shown: str, values: dict[str, Any], where: str) -> None:
    for key, value in values.items():
        choices = _CHOICES.get((section, key))
        if choices is not None and value is not None and value not in choices:
            raise RecipeError(f"{where}: {key} = {value!r} in {shown} is not one of the choices.",
                              hint=f"Choose one of: {', '.join(choices)}.")


def _freeze(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def _is_instance(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_is_instance(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is Any:
        return True
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        item = typing.get_args(hint)[0]
        return isinstance(value, (list, tuple)) and all(_is_instance(v, item) for v in value)
    if origin is dict:
        key_type, value_type = typing.get_args(hint)
        return isinstance(value, dict) and all(_is_instance(k, key_type) and _is_instance(v, value_type)
                                               for k, v in value.items())
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint) if a is not type(None))
    if origin is tuple:
        return f"a list of {_PLURAL.get(typing.get_args(hint)[0], 'values')}"
    if origin is dict:
        return "a table"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


_PLURAL = {str: "strings", int: "integers", float: "numbers", bool: "booleans", dict[str, Any]: "tables"}
