"""The bundle manifest (``edgemm.json``, schema ``edgemm.bundle/1``) as typed dataclasses.

Parsing is strict: unknown schema versions, duplicate JSON keys, non-finite numbers, wrong types
and unsafe paths are refused with :class:`~edgemm.errors.BundleError` before anything else
trusts the content. The parser also checks what the manifest says about itself: every file the
preprocessing opens (:data:`ASSET_KEYS`) is a listed bundle file, the postprocessing reads an
output the graph has, every modality feeds graph inputs and every graph input is fed, and every
dynamic input axis has an ordered, bounded ``[min, opt, max]`` profile. What needs the runtime's
knowledge (postprocessing types, decoders, preprocessing sizes against the profiles) is checked by
:func:`edgemm.runtime.semantics.check_semantics`.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import asdict, dataclass, field
from typing import Any

from edgemm.bundle.compare import Tolerance
from edgemm.bundle.display import Display
from edgemm.errors import BundleError, DisplayError, UnknownArtifactError

SCHEMA = "edgemm.bundle/1"
MANIFEST_NAME = "edgemm.json"
# A manifest is metadata; anything bigger than this is not one of ours.
MAX_MANIFEST_BYTES = 16 * 2**20

DTYPES = ("float32", "float16", "int64", "int32", "int8", "uint8", "bool")
TASKS = (
    "classification",
    "multilabel",
    "matching",
    "regression",
    "zero_shot_classification",
    "image_text_similarity",
    "embedding",
    "token_classification",
)
MODALITIES = ("text", "image", "audio")
# Tasks whose primary output holds one score per class, so "the predicted class" (top-1) of each
# row is meaningful and compared (parity, golden set, gate). Multi-label, matching, regression
# and embedding outputs are compared elementwise only.
CLASSIFYING_TASKS = ("classification", "zero_shot_classification", "image_text_similarity")
# A serialized TensorRT engine; its ``requirements`` are the compatibility record checked before
# deserialization (see edgemm.runtime.trt_compat).
ENGINE_KIND = "tensorrt"
_ENGINE_RECORD_STRINGS = ("tensorrt", "compute_capability")
_ENGINE_RECORD_OPTIONAL = ("cuda", "l4t", "jetpack", "platform", "gpu")
# The preprocessing keys whose value is a file the runtime opens (grep edgemm/runtime/preprocess):
# each must be a safe bundle-relative path that the manifest lists, so it is hashed before use.
ASSET_KEYS: dict[str, tuple[str, ...]] = {"text": ("tokenizer",)}
# Largest dimension a shape or profile may name (ONNX Runtime and TensorRT take int32 sizes here).
MAX_DIM = 2**31 - 1


@dataclass(frozen=True)
class FileEntry:
    """One file of the bundle: its relative path, size and sha256."""

    path: str
    sha256: str
    bytes: int


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output.

    ``shape`` holds ints for fixed axes and names for dynamic ones; ``profile`` maps each
    dynamic axis name to ``[min, opt, max]`` (the shapes TensorRT profiles are built from).
    """

    name: str
    dtype: str
    shape: list[int | str]
    profile: dict[str, list[int]] = field(default_factory=dict)

    def dims_for(self, sizes: dict[str, int]) -> tuple[int, ...]:
        """Concrete shape for the given dynamic-axis sizes."""
        return tuple(d if isinstance(d, int) else sizes[d] for d in self.shape)


@dataclass(frozen=True)
class ModalitySpec:
    """What a modality means to the graph (the manifest's ``modalities`` entries, typed).

    Attributes:
        required: A request must carry it (else a presence flag tells the graph it is absent).
        inputs: The graph inputs this modality's preprocessing fills.
        presence_input: The graph input that flags present rows (optional modalities), or None.
        batch_axis: The axis its rows run along (``batch``; CLIP candidate texts: ``text_batch``).
    """

    required: bool = True
    inputs: tuple[str, ...] = ()
    presence_input: str | None = None
    batch_axis: str = "batch"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModalitySpec:
        """Read one ``modalities`` entry (missing keys take the defaults above)."""
        return cls(required=bool(data.get("required", True)), inputs=tuple(data.get("inputs", ())),
                   presence_input=data.get("presence_input"), batch_axis=str(data.get("batch_axis", "batch")))


def primary_output(postprocessing: dict[str, Any], outputs: list[TensorSpec]) -> str:
    """The one rule for "which output holds the logits / scores": the output postprocessing
    names, else the graph's first output."""
    named = postprocessing.get("output")
    return str(named) if named else outputs[0].name


def classifying_outputs(task: str, primary: str) -> set[str]:
    """The one rule for "which outputs classify": the primary output of a classifying task."""
    return {primary} if task in CLASSIFYING_TASKS else set()


class InterfaceRules:
    """Questions about a model interface, answered by one rule each.

    Shared by :class:`Manifest` and the build side's ``ExportSpec``, which both carry ``task``,
    ``outputs``, ``postprocessing`` and ``modalities``.
    """

    @property
    def primary_output(self) -> str:
        """The output that holds the logits / scores (see :func:`primary_output`)."""
        return primary_output(self.postprocessing, self.outputs)  # type: ignore[attr-defined]

    @property
    def classifying_outputs(self) -> set[str]:
        """Outputs whose top-1 is compared (see :func:`classifying_outputs`)."""
        return classifying_outputs(self.task, self.primary_output)  # type: ignore[attr-defined]

    def modality_specs(self) -> dict[str, ModalitySpec]:
        """Every modality's typed entry, in manifest order."""
        return {name: ModalitySpec.from_dict(info) for name, info in self.modalities.items()}  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Artifact:
    """A runnable model file (plus companions such as ONNX external data) and its measurements."""

    name: str
    path: str
    kind: str
    precision: str
    files: list[str]
    providers: list[str] = field(default_factory=lambda: ["CPUExecutionProvider"])
    quantization: dict[str, Any] | None = None
    requirements: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)

    @property
    def graph_optimized(self) -> bool:
        """Whether this ONNX graph carries ONNX Runtime's fused (contrib) operators."""
        return bool(self.requirements.get("graph_optimized"))

    @property
    def cpu_flags_any(self) -> list[str]:
        """CPU flags of which the machine must have one to run this artifact (empty: none), e.g.
        ``["avx512_bf16", "amx_bf16"]`` for BF16 inference; checked to be strings at parse."""
        return list(self.requirements.get("cpu_flags_any") or [])

    @property
    def gate(self) -> dict[str, Any] | None:
        """The accuracy gate's record for this artifact (None: it was not gated, e.g. FP32)."""
        gate = self.validation.get("gate")
        return gate if isinstance(gate, dict) else None

    @property
    def gate_failed(self) -> bool:
        """True only when a gate ran and refused this artifact (such artifacts never run)."""
        return self.gate is not None and self.gate.get("passed", True) is False

    @property
    def built_with(self) -> dict[str, Any]:
        """A TensorRT engine's build record (empty for ONNX artifacts)."""
        record = self.requirements.get("built_with")
        return record if isinstance(record, dict) else {}

    @property
    def source_artifact(self) -> str:
        """The ONNX artifact an engine was built from (an ONNX artifact is its own source)."""
        return str(self.built_with.get("source_artifact", self.name))

    @property
    def quantization_method(self) -> str:
        """How the weights were quantized (``int8-static-qdq``, ``int8-dynamic`` …), or ``""``."""
        return str((self.quantization or {}).get("method", ""))


@dataclass
class Manifest(InterfaceRules):
    """The whole ``edgemm.json``. Build it, then :func:`edgemm.bundle.write_manifest` hashes files."""

    name: str
    task: str
    modalities: dict[str, dict[str, Any]]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    preprocessing: dict[str, dict[str, Any]]
    postprocessing: dict[str, Any]
    artifacts: list[Artifact]
    labels: list[str] = field(default_factory=list)
    created_by: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    golden: str | None = None
    files: list[FileEntry] = field(default_factory=list)
    # What the labels mean in words a child reads, per language (edgemm.bundle.display); {}: none.
    display: dict[str, Any] = field(default_factory=dict)
    schema: str = SCHEMA

    # -- access ---------------------------------------------------------------------------

    def artifact(self, name: str) -> Artifact:
        """The artifact called ``name``; raises BundleError listing the valid names."""
        for art in self.artifacts:
            if art.name == name:
                return art
        valid = ", ".join(a.name for a in self.artifacts)
        raise UnknownArtifactError(f"The bundle has no artifact {name!r}.", hint=f"Choose one of: {valid}.")

    def modality(self, name: str) -> ModalitySpec:
        """The typed entry of modality ``name``; raises BundleError if the bundle has no such modality."""
        if name not in self.modalities:
            raise BundleError(f"The bundle has no modality {name!r}.", hint=f"It takes: {', '.join(self.modalities)}.")
        return ModalitySpec.from_dict(self.modalities[name])

    def tolerance(self, artifact: Artifact | str) -> Tolerance:
        """How far ``artifact`` may drift from its recorded outputs: its own recorded tolerance,
        else the bundle's parity tolerance, else the rule for its precision."""
        art = self.artifact(artifact) if isinstance(artifact, str) else artifact
        table = art.validation.get("tolerance") or self.validation.get("tolerance")
        return Tolerance.from_dict(table) if isinstance(table, dict) else Tolerance.for_precision(art.precision)

    @property
    def max_batch(self) -> int | None:
        """The largest batch the graph was verified at (the ``batch`` profile's max), or None."""
        for spec in self.inputs:
            bounds = spec.profile.get("batch")
            if bounds:
                return int(bounds[-1])
        return None

    def asset_paths(self) -> list[str]:
        """Bundle files the preprocessing reads (e.g. ``text/tokenizer.json``): the values of
        :data:`ASSET_KEYS`. Callers :func:`~edgemm.bundle.verify.verify_hashes` them before use.

        Raises:
            BundleError: A value is not a file the manifest lists (the parser refuses such
                manifests; this guards manifests built in memory).
        """
        listed = {f.path for f in self.files}
        paths = set()
        for where, value in _asset_values(self.preprocessing):
            if value not in listed:
                raise BundleError(f"Manifest field {where} names {value!r}, which the bundle does not list.",
                                  hint=_REBUILD)
            paths.add(value)
        return sorted(paths)

    def required_modalities(self) -> list[str]:
        """Modalities a request must carry."""
        return [m for m, spec in self.modality_specs().items() if spec.required]

    def display_texts(self) -> Display | None:
        """The bundle's display texts (instruction, label names and messages per language), or
        None when it has none (the kiosk page then humanises the labels)."""
        return Display.from_dict(self.display, self.labels) if self.display else None

    # -- (de)serialisation ----------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with ``schema`` first."""
        data = asdict(self)
        data.pop("schema")
        if not data["display"]:  # bundles without display texts keep the manifest they always had
            data.pop("display")
        return {"schema": self.schema, **data}

    def to_json(self) -> str:
        """Canonical JSON text (sorted keys inside sections, UTF-8, trailing newline)."""
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        """Parse and validate manifest JSON; raises BundleError on anything unexpected."""
        if len(text) > MAX_MANIFEST_BYTES:
            raise BundleError("The manifest is larger than 16 MiB.", hint="This is not an edgemm bundle.")
        try:
            data = json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constants)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BundleError(f"The manifest is not valid JSON: {exc}", hint=_REBUILD) from exc
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        """Validate a parsed manifest dict and build the dataclasses."""
        v = _Validator()
        obj = v.obj(data, "manifest")
        schema = v.str_(obj.get("schema"), "schema")
        if schema != SCHEMA:
            raise BundleError(
                f"Unsupported bundle schema {schema!r}; this edgemm reads {SCHEMA!r}.",
                hint="Re-export the bundle with this edgemm version, or upgrade edgemm.",
            )
        task = v.str_(obj.get("task"), "task")
        if task not in TASKS:
            raise BundleError(f"Unknown task {task!r} in the manifest.", hint=f"Known: {', '.join(TASKS)}.")
        modalities = v.obj(obj.get("modalities"), "modalities")
        for name in modalities:
            if name not in MODALITIES:
                raise BundleError(f"Unknown modality {name!r} in the manifest.", hint=_REBUILD)
        inputs = [v.tensor(t, f"inputs[{i}]", needs_profile=True)
                  for i, t in enumerate(v.list_of_obj(obj.get("inputs"), "inputs"))]
        outputs = [v.tensor(t, f"outputs[{i}]") for i, t in enumerate(v.list_of_obj(obj.get("outputs"), "outputs"))]
        _check_unique_names(inputs, "inputs")
        _check_unique_names(outputs, "outputs")
        if not outputs:
            raise BundleError("The manifest lists no outputs.", hint=_REBUILD)
        _check_modalities(v, modalities, inputs)
        preprocessing = v.obj(obj.get("preprocessing", {}), "preprocessing")
        for name, section in preprocessing.items():
            if name not in MODALITIES:
                raise BundleError(f"Manifest field preprocessing.{name} names no modality.",
                                  hint=f"Known: {', '.join(MODALITIES)}. {_REBUILD}")
            v.obj(section, f"preprocessing.{name}")
        postprocessing = v.obj(obj.get("postprocessing", {}), "postprocessing")
        _check_postprocessing(v, postprocessing, outputs)
        files = [
            FileEntry(
                path=v.path(f.get("path"), f"files[{i}].path"),
                sha256=v.sha256(f.get("sha256"), f"files[{i}].sha256"),
                bytes=v.int_(f.get("bytes"), f"files[{i}].bytes", minimum=0),
            )
            for i, f in enumerate(v.list_of_obj(obj.get("files", []), "files"))
        ]
        seen: set[str] = set()
        for entry in files:
            key = entry.path.casefold()
            if key in seen:
                raise BundleError(f"The manifest lists {entry.path!r} twice.", hint=_REBUILD)
            seen.add(key)
        listed = {f.path for f in files}
        artifacts = []
        for i, a in enumerate(v.list_of_obj(obj.get("artifacts"), "artifacts")):
            art_files = [v.path(p, f"artifacts[{i}].files") for p in v.list_(a.get("files"), "files")]
            art = Artifact(
                name=v.str_(a.get("name"), f"artifacts[{i}].name"),
                path=v.path(a.get("path"), f"artifacts[{i}].path"),
                kind=v.str_(a.get("kind"), f"artifacts[{i}].kind"),
                precision=v.str_(a.get("precision"), f"artifacts[{i}].precision"),
                files=art_files,
                providers=[v.str_(p, "providers") for p in v.list_(a.get("providers", []), "providers")],
                quantization=a.get("quantization"),
                requirements=v.obj(a.get("requirements", {}), "requirements"),
                validation=v.obj(a.get("validation", {}), "validation"),
            )
            flags = art.requirements.get("cpu_flags_any")
            if flags is not None:  # a bare string would read as one flag per character
                for flag in v.list_(flags, f"artifacts[{i}].requirements.cpu_flags_any"):
                    v.str_(flag, f"artifacts[{i}].requirements.cpu_flags_any")
            if art.kind == ENGINE_KIND:
                _check_engine_record(v, art.requirements, f"artifacts[{i}].requirements")
            for p in [art.path, *art.files]:
                if files and p not in listed:
                    raise BundleError(f"Artifact {art.name!r} names {p!r}, which is not listed.", hint=_REBUILD)
            artifacts.append(art)
        if not artifacts:
            raise BundleError("The manifest lists no artifacts.", hint=_REBUILD)
        golden = obj.get("golden")
        if golden is not None:
            golden = v.path(golden, "golden")
            if files and golden not in listed:
                raise BundleError(f"The golden set {golden!r} is not listed.", hint=_REBUILD)
        roles = {p: f"a file of artifact {a.name!r}" for a in artifacts for p in [a.path, *a.files]}
        if golden is not None:
            roles[golden] = "the golden set"
        _check_assets(v, preprocessing, listed if files else None, roles)
        labels = [v.str_(x, "labels") for x in v.list_(obj.get("labels", []), "labels")]
        display = obj.get("display", {})
        if display:
            try:
                display = Display.from_dict(display, labels).to_dict()
            except DisplayError as exc:
                raise BundleError(f"The manifest's display texts are invalid: {exc.message}", hint=_REBUILD) from exc
        return cls(
            name=v.str_(obj.get("name"), "name"),
            task=task,
            modalities=modalities,
            inputs=inputs,
            outputs=outputs,
            preprocessing=preprocessing,
            postprocessing=postprocessing,
            artifacts=artifacts,
            labels=labels,
            created_by=v.obj(obj.get("created_by", {}), "created_by"),
            source=v.obj(obj.get("source", {}), "source"),
            validation=v.obj(obj.get("validation", {}), "validation"),
            golden=golden,
            files=files,
            display=display,
        )


_REBUILD = "The bundle is damaged or was not written by edgemm; export it again."


def _check_engine_record(v: _Validator, record: dict[str, Any], where: str) -> None:
    """An engine artifact must carry a complete, well-typed compatibility record."""
    for key in _ENGINE_RECORD_STRINGS:
        v.str_(record.get(key), f"{where}.{key}")
    for key in _ENGINE_RECORD_OPTIONAL:
        if record.get(key) is not None:
            v.str_(record[key], f"{where}.{key}")
    built_with = v.obj(record.get("built_with"), f"{where}.built_with")
    for key in ("version_compatible",):
        if not isinstance(built_with.get(key, False), bool):
            raise v._fail(f"{where}.built_with.{key}", "a boolean", built_with.get(key))
    for key in ("plugins", "serialized_plugin_libraries"):
        v.list_(built_with.get(key, []), f"{where}.built_with.{key}")


def _asset_values(preprocessing: dict[str, Any]) -> list[tuple[str, Any]]:
    """``(field, value)`` of every :data:`ASSET_KEYS` entry the preprocessing sets."""
    found = []
    for modality, keys in ASSET_KEYS.items():
        section = preprocessing.get(modality)
        if isinstance(section, dict):
            found += [(f"preprocessing.{modality}.{key}", section[key]) for key in keys if key in section]
    return found


def _check_assets(v: _Validator, preprocessing: dict[str, Any], listed: set[str] | None,
                  roles: dict[str, str]) -> None:
    """Every file the preprocessing opens is a safe relative path, listed, and no other file's role."""
    for where, value in _asset_values(preprocessing):
        path = v.path(value, where)
        if listed is not None and path not in listed:
            raise BundleError(f"Manifest field {where} names {path!r}, which the bundle does not list: the "
                              "runtime opens only listed, hashed files of the bundle.", hint=_REBUILD)
        if path in roles:
            raise BundleError(f"Manifest field {where} names {path!r}, which is {roles[path]}.", hint=_REBUILD)


def _check_unique_names(tensors: list[TensorSpec], where: str) -> None:
    seen: set[str] = set()
    for spec in tensors:
        if spec.name in seen:
            raise BundleError(f"Manifest field {where} names {spec.name!r} twice.", hint=_REBUILD)
        seen.add(spec.name)


def _check_modalities(v: _Validator, modalities: dict[str, Any], inputs: list[TensorSpec]) -> None:
    """Each modality feeds graph inputs, no input is fed twice, and, when the bundle takes raw inputs
    at all (a feed-only bundle declares no modalities), every graph input is fed by a modality or is
    a presence flag."""
    graph = {spec.name: spec for spec in inputs}
    fed: dict[str, str] = {}
    for name, entry in modalities.items():
        where = f"modalities.{name}"
        entry = v.obj(entry, where)
        if not isinstance(entry.get("required", True), bool):
            raise v._fail(f"{where}.required", "a boolean", entry.get("required"))
        v.str_(entry.get("batch_axis", "batch"), f"{where}.batch_axis")
        named = [(f"{where}.inputs", v.str_(n, f"{where}.inputs"))
                 for n in v.list_(entry.get("inputs", []), f"{where}.inputs")]
        if entry.get("presence_input") is not None:
            named.append((f"{where}.presence_input", v.str_(entry["presence_input"], f"{where}.presence_input")))
        for field_name, input_name in named:
            if input_name not in graph:
                raise BundleError(f"Manifest field {field_name} names {input_name!r}, which is not a graph input.",
                                  hint=f"Graph inputs: {', '.join(graph) or 'none'}. {_REBUILD}")
            if input_name in fed:
                raise BundleError(f"Graph input {input_name!r} is fed by both modalities.{fed[input_name]} and {where}.",
                                  hint=_REBUILD)
            fed[input_name] = name
    unfed = [name for name in graph if name not in fed]
    if modalities and unfed:
        raise BundleError(f"Graph input(s) {', '.join(map(repr, unfed))} are fed by no modality (manifest field "
                          "modalities[*].inputs / presence_input).", hint=_REBUILD)


def _check_postprocessing(v: _Validator, section: dict[str, Any], outputs: list[TensorSpec]) -> None:
    """The postprocessing reads an output the graph returns (its type is judged by the runtime)."""
    if "type" in section:
        v.str_(section["type"], "postprocessing.type")
    named = section.get("output")
    if named is not None and v.str_(named, "postprocessing.output") not in {o.name for o in outputs}:
        raise BundleError(f"Manifest field postprocessing.output names {named!r}, which is not a graph output.",
                          hint=f"Graph outputs: {', '.join(o.name for o in outputs)}. {_REBUILD}")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    raise ValueError(f"non-finite number {name}")


def check_relative_path(path: str, what: str = "path") -> str:
    """Return ``path`` if it is a safe bundle-relative POSIX path, else raise BundleError.

    Safe means: non-empty, relative, no ``..`` or ``.`` parts, no backslashes, drive letters,
    NUL or control characters, and already normalised.
    """
    bad = (
        not path
        or path.startswith("/")
        or "\\" in path
        or "\x00" in path
        or any(ord(c) < 32 for c in path)
        or (len(path) > 1 and path[1] == ":")
        or posixpath.normpath(path) != path
        or any(part in ("", ".", "..") for part in path.split("/"))
        or len(path) > 512
    )
    if bad:
        raise BundleError(f"Unsafe {what} {path!r} in the manifest: it must stay inside the bundle.", hint=_REBUILD)
    return path


class _Validator:
    """Small typed accessors that raise BundleError naming the offending field."""

    def _fail(self, where: str, expected: str, got: Any) -> BundleError:
        return BundleError(
            f"Manifest field {where} should be {expected}, got {type(got).__name__}.", hint=_REBUILD
        )

    def obj(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self._fail(where, "an object", value)
        return value

    def list_(self, value: Any, where: str) -> list[Any]:
        if not isinstance(value, list):
            raise self._fail(where, "a list", value)
        return value

    def list_of_obj(self, value: Any, where: str) -> list[dict[str, Any]]:
        return [self.obj(x, f"{where}[{i}]") for i, x in enumerate(self.list_(value, where))]

    def str_(self, value: Any, where: str) -> str:
        if not isinstance(value, str):
            raise self._fail(where, "a string", value)
        return value

    def int_(self, value: Any, where: str, minimum: int | None = None) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise self._fail(where, "an integer", value)
        if minimum is not None and value < minimum:
            raise BundleError(f"Manifest field {where} is {value}, below {minimum}.", hint=_REBUILD)
        return value

    def path(self, value: Any, where: str) -> str:
        return check_relative_path(self.str_(value, where), where)

    def sha256(self, value: Any, where: str) -> str:
        text = self.str_(value, where)
        if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
            raise BundleError(f"Manifest field {where} is not a sha256 hex digest.", hint=_REBUILD)
        return text

    def tensor(self, value: dict[str, Any], where: str, *, needs_profile: bool = False) -> TensorSpec:
        """A graph input/output: known dtype, positive fixed dims, and for each dynamic axis that
        has one (every dynamic axis when ``needs_profile``) a ``[min, opt, max]`` profile with
        ``0 <= min <= opt <= max <= MAX_DIM``."""
        name = self.str_(value.get("name"), f"{where}.name")
        dtype = self.str_(value.get("dtype"), f"{where}.dtype")
        if dtype not in DTYPES:
            raise BundleError(f"Unknown dtype {dtype!r} at {where}.", hint=f"Known: {', '.join(DTYPES)}.")
        shape: list[int | str] = []
        for d in self.list_(value.get("shape"), f"{where}.shape"):
            if isinstance(d, bool) or not isinstance(d, (int, str)):
                raise self._fail(f"{where}.shape", "ints or axis names", d)
            if isinstance(d, int) and not 1 <= d <= MAX_DIM:
                raise BundleError(f"Manifest field {where}.shape has the dimension {d}; fixed dimensions lie in "
                                  f"1..{MAX_DIM}.", hint=_REBUILD)
            shape.append(d)
        profile: dict[str, list[int]] = {}
        for axis, bounds in self.obj(value.get("profile", {}), f"{where}.profile").items():
            at = f"{where}.profile.{axis}"
            if axis not in shape:
                raise BundleError(f"Manifest field {at} names no axis of {name!r} (shape {shape}).", hint=_REBUILD)
            numbers = [self.int_(x, at, minimum=0) for x in self.list_(bounds, at)]
            if len(numbers) != 3 or not numbers[0] <= numbers[1] <= numbers[2] <= MAX_DIM:
                raise BundleError(f"Manifest field {at} is {numbers}; a profile is [min, opt, max] with "
                                  f"0 <= min <= opt <= max <= {MAX_DIM}.", hint=_REBUILD)
            profile[axis] = numbers
        missing = [d for d in shape if isinstance(d, str) and d not in profile]
        if needs_profile and missing:
            raise BundleError(f"Manifest field {where}.profile has no [min, opt, max] for the dynamic axis "
                              f"{missing[0]!r} of input {name!r}.", hint=_REBUILD)
        return TensorSpec(name=name, dtype=dtype, shape=shape, profile=profile)
