"""Semantic validation: does a manifest describe a model this runtime can run as it says?

The strict parser (:mod:`edgemm.bundle.manifest`) checks structure: types, safe and listed paths,
names that resolve (postprocessing output, modality inputs), ordered profiles. This module checks
what needs the runtime's knowledge, with the runtime's own rules:

* **postprocessing**: a known type, and a label list that fits the primary output's width
  (the rules of :mod:`edgemm.runtime.postprocess`, applied to the declared shape);
* **feeds**: every modality has a preprocessing section and every section a modality; each
  section fills exactly its modality's inputs, with the dtypes the preprocessing produces;
* **sizes**: the image resize / crop gives the pixel input's H×W (and its channels); text
  ``max_length`` lies within the sequence profile; audio ``max_seconds × sampling_rate`` (in
  samples or frames) fits the audio axis; caps (``max_pixels``, ``max_bytes``, ``max_chars``,
  ``max_seconds``) are positive and bounded; image ``formats`` are known to the decoder.

Every check is arithmetic on the manifest's numbers. :func:`check_semantics` runs before any
ONNX Runtime session, tokenizer or image buffer exists (``Predictor.load``, ``edgemm verify``, the
golden check), so a hostile 100000-px resize or a 2^40 cap is refused without costing memory.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from PIL import Image

from edgemm.bundle.manifest import MAX_DIM, Manifest, TensorSpec
from edgemm.errors import BundleError, OutputMismatchError, UsageError

# The runtime's own rules, imported rather than restated so that load and request time agree.
from edgemm.runtime.postprocess import (
    POSTPROCESSING_TYPES,
    TOKEN_TYPES,
    PostprocessSettings,
    value_names,
)
from edgemm.runtime.preprocess.audio import validate_audio_preprocessing
from edgemm.runtime.preprocess.audio.clap import clap_feature_shape
from edgemm.runtime.preprocess.audio.fbank import FBANK_FEATURES
from edgemm.runtime.preprocess.image.decode import allowed_formats
from edgemm.runtime.preprocess.image.transforms import parse_image_section

__all__ = [
    "MAX_AUDIO_SECONDS",
    "MAX_IMAGE_BYTES",
    "MAX_IMAGE_PIXELS",
    "MAX_IMAGE_SIDE",
    "MAX_TEXT_CHARS",
    "MAX_TEXT_TOKENS",
    "check_semantics",
    "semantic_problems",
]

# Upper bounds for the caps and sizes a manifest may set. Generous for any kiosk model (the
# defaults are 40 Mpx, 20 MiB, 4096 characters, 30 s; encoders take at most a few thousand
# tokens and about 1000 px), small enough that one request can never ask for gigabytes.
MAX_TEXT_CHARS = 2**20
MAX_TEXT_TOKENS = 2**16
MAX_IMAGE_SIDE = 4096
MAX_IMAGE_PIXELS = 2**28
MAX_IMAGE_BYTES = 2**30
MAX_AUDIO_SECONDS = 3600.0
# Pillow hands these to an external program (EPS: Ghostscript); a bundle may not enable them.
_EXTERNAL_DECODERS = ("EPS",)

_HINT = ("The manifest does not describe its model; export the bundle again (edgemm.json is written "
         "by `edgemm export` and is not meant to be edited).")


class _Problems:
    """Problems found so far, each naming the manifest field it is about."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, field: str, message: str) -> None:
        """Record ``message`` about ``field`` (empty: the message names its field itself)."""
        self.items.append(f"{field} {message}".strip().rstrip("."))


def check_semantics(manifest: Manifest) -> None:
    """Refuse a manifest whose numbers do not describe a model this runtime can run.

    Args:
        manifest: A manifest accepted by the strict parser.

    Raises:
        BundleError: One or more problems; the message names each field with the valid values
            or range, ``details["problems"]`` lists them.
    """
    problems = semantic_problems(manifest)
    if problems:
        raise BundleError(f"Invalid manifest: {'; '.join(problems)}.", hint=_HINT, details={"problems": problems})


def semantic_problems(manifest: Manifest) -> list[str]:
    """Every semantic problem of ``manifest`` (empty when it is consistent); see the module doc."""
    problems = _Problems()
    _check_postprocessing(manifest, problems)
    _check_feeds(manifest, problems)
    checks = {"text": _check_text, "image": _check_image, "audio": _check_audio}
    for modality, section in manifest.preprocessing.items():
        if isinstance(section, Mapping):
            checks[modality](manifest, section, problems)
    return problems.items


# -- postprocessing -------------------------------------------------------------------------------


def _check_postprocessing(manifest: Manifest, problems: _Problems) -> None:
    kind = manifest.postprocessing.get("type", "identity")
    if kind not in POSTPROCESSING_TYPES:
        problems.add("postprocessing.type", f"is {kind!r}; valid: {', '.join(POSTPROCESSING_TYPES)}.")
        return
    try:
        settings = PostprocessSettings.read(manifest)
    except OutputMismatchError as exc:
        problems.add("", exc.message)
        return
    if settings.kind in TOKEN_TYPES:
        _check_token_output(manifest, settings, problems)
        return
    if manifest.task == "image_text_similarity":
        return  # the candidate texts name the values, one per text, at request time
    spec = _tensor(manifest.outputs, settings.output)
    if spec is None or not spec.shape:
        problems.add(f"outputs.{settings.output}.shape", "has no batch axis for the postprocessing to read.")
        return
    dims = spec.shape[1:]
    if all(isinstance(d, int) for d in dims):
        try:
            value_names(settings, manifest, None, math.prod(dims))  # type: ignore[arg-type]
        except OutputMismatchError as exc:
            problems.add("labels:", exc.message)


def _check_token_output(manifest: Manifest, settings: PostprocessSettings, problems: _Problems) -> None:
    """Token classification reads ``[batch, sequence, labels]`` logits of a text model, one label per column."""
    if not isinstance(manifest.preprocessing.get("text"), Mapping):
        problems.add("postprocessing.type", f"is {settings.kind!r}, which tags the tokens of a text, but the bundle "
                     "has no text preprocessing.")
    spec = _tensor(manifest.outputs, settings.output)
    if spec is None or len(spec.shape) != 3:
        problems.add(f"outputs.{settings.output}.shape", f"is {None if spec is None else spec.shape}; "
                     f"{settings.kind!r} reads per-token logits [batch, sequence, labels].")
        return
    if isinstance(spec.shape[2], int):
        try:
            value_names(settings, manifest, None, spec.shape[2])
        except OutputMismatchError as exc:
            problems.add("labels:", exc.message)


# -- which inputs each section fills --------------------------------------------------------------


def _produced(modality: str, section: Mapping[str, Any]) -> dict[str, str]:
    """Graph input name → dtype that the preprocessing of ``modality`` fills (names as configured)."""
    if modality == "text":
        keys = [("input_ids", "int64"), ("attention_mask", "int64"), ("token_type_ids", "int64")]
    elif modality == "image":
        keys = [("input", "float32"), ("mask_input", "int64")]  # the pixel mask of padded batches (ViLT)
    else:
        keys = [("input", "float32"), ("mask_input", "int64")]
    return {section[key]: dtype for key, dtype in keys if isinstance(section.get(key), str) and section[key]}


def _check_feeds(manifest: Manifest, problems: _Problems) -> None:
    graph = {spec.name: spec for spec in manifest.inputs}
    for modality in manifest.preprocessing:
        if modality not in manifest.modalities:
            problems.add(f"preprocessing.{modality}", f"configures {modality}, which the bundle does not take "
                         f"(modalities: {', '.join(manifest.modalities) or 'none'}).")
    for modality, spec in manifest.modality_specs().items():
        section = manifest.preprocessing.get(modality)
        if not isinstance(section, Mapping):
            problems.add(f"modalities.{modality}", f"has no preprocessing.{modality} section to prepare requests with.")
            continue
        produced = _produced(modality, section)
        if set(produced) != set(spec.inputs):
            problems.add(f"modalities.{modality}.inputs", f"lists {sorted(spec.inputs)}, but preprocessing.{modality} "
                         f"fills {sorted(produced)}.")
        for name, dtype in produced.items():
            if name in graph and graph[name].dtype != dtype:
                problems.add(f"inputs.{name}.dtype", f"is {graph[name].dtype}, but preprocessing.{modality} "
                             f"produces {dtype}.")
        presence = spec.presence_input
        if presence in graph and graph[presence].dtype != "float32":
            problems.add(f"inputs.{presence}.dtype", f"is {graph[presence].dtype}; the presence flags of "
                         f"{modality} are float32.")


# -- text ----------------------------------------------------------------------------------------


def _check_text(manifest: Manifest, section: Mapping[str, Any], problems: _Problems) -> None:
    where = "preprocessing.text"
    _kind(section, "text", where, problems)
    if not isinstance(section.get("tokenizer"), str):
        problems.add(f"{where}.tokenizer", "is missing: it names the bundle's tokenizer.json.")
    for key, optional in (("input_ids", False), ("attention_mask", True), ("token_type_ids", True)):
        value = section.get(key)
        if not (isinstance(value, str) and value) and not (optional and value is None):
            problems.add(f"{where}.{key}", f"is {value!r}; it must name a graph input" + (" or be null." if optional else "."))
    if section.get("padding") not in ("longest", "max_length"):
        problems.add(f"{where}.padding", f"is {section.get('padding')!r}; valid: 'longest', 'max_length'.")
    _int_in(section, "pad_token_id", where, 0, MAX_DIM, problems)
    if not isinstance(section.get("pad_token"), str):
        problems.add(f"{where}.pad_token", f"is {section.get('pad_token')!r}; it must be the padding token's text.")
    _int_in(section, "max_chars", where, 1, MAX_TEXT_CHARS, problems)
    max_length = _int_in(section, "max_length", where, 1, MAX_TEXT_TOKENS, problems)
    ids = _tensor(manifest.inputs, section.get("input_ids"))
    if max_length is None or ids is None:
        return
    if len(ids.shape) != 2:
        problems.add(f"inputs.{ids.name}.shape", f"is {ids.shape}; token ids are [batch, sequence].")
        return
    seq = ids.shape[1]
    if isinstance(seq, int):
        if section.get("padding") != "max_length" or max_length != seq:
            problems.add(f"{where}.max_length", f"is {max_length} with padding {section.get('padding')!r}, but graph "
                         f"input {ids.name!r} takes exactly {seq} tokens (padding 'max_length', max_length {seq}).")
        return
    low, _, high = ids.profile[seq]
    if not low <= max_length <= high:
        problems.add(f"{where}.max_length", f"is {max_length}, outside the {seq!r} profile {low}..{high} of graph "
                     f"input {ids.name!r}.")


# -- image ---------------------------------------------------------------------------------------


def _check_image(manifest: Manifest, section: Mapping[str, Any], problems: _Problems) -> None:
    where = "preprocessing.image"
    _kind(section, "image", where, problems)
    _int_in(section, "max_pixels", where, 1, MAX_IMAGE_PIXELS, problems)
    _int_in(section, "max_bytes", where, 1, MAX_IMAGE_BYTES, problems)
    _check_formats(section.get("formats"), f"{where}.formats", problems)
    pixels = _tensor(manifest.inputs, section.get("input"))
    if pixels is None:
        problems.add(f"{where}.input", f"is {section.get('input')!r}; it must name the graph's pixel input.")
        return
    if len(pixels.shape) != 4:
        problems.add(f"inputs.{pixels.name}.shape", f"is {pixels.shape}; pixel values are [batch, channels, "
                     "height, width].")
        return
    if not _image_sides_bounded(section, where, problems):
        return  # the recipe below must not even see sizes it would allocate
    try:
        parse_image_section(section)
    except BundleError as exc:
        problems.add(f"{where}:", exc.message)
        return
    channels = section.get("channels", 3)
    if isinstance(pixels.shape[1], int) and pixels.shape[1] != channels:
        problems.add(f"{where}.channels", f"is {channels}, but graph input {pixels.name!r} takes {pixels.shape[1]} "
                     "channels.")
    produced = _image_output_size(section)
    height, width = pixels.shape[2], pixels.shape[3]
    if produced is None:
        if isinstance(height, int) or isinstance(width, int):
            problems.add(f"{where}.resize", f"gives every picture its own size (no exact resize or center_crop), "
                         f"but graph input {pixels.name!r} takes {height}x{width} pixels.")
        return
    for (field, size), axis, dim in zip(produced, ("height", "width"), (height, width)):
        if isinstance(dim, int) and size != dim:
            problems.add(f"{where}.{field}", f"gives {axis} {size}, but graph input {pixels.name!r} takes "
                         f"{height}x{width} pixels.")
        elif isinstance(dim, str) and not pixels.profile[dim][0] <= size <= pixels.profile[dim][2]:
            low, _, high = pixels.profile[dim]
            problems.add(f"{where}.{field}", f"gives {axis} {size}, outside the {dim!r} profile {low}..{high} of "
                         f"graph input {pixels.name!r}.")


def _image_sides_bounded(section: Mapping[str, Any], where: str, problems: _Problems) -> bool:
    """Every size the transforms would resize or crop to is at most :data:`MAX_IMAGE_SIDE`."""
    sides: list[tuple[str, Any]] = []
    resize, crop = section.get("resize"), section.get("center_crop")
    if isinstance(resize, Mapping):
        sides += [(f"{where}.resize.{k}", resize[k]) for k in ("height", "width", "shortest_edge", "longest_edge")
                  if k in resize]
        pct, edge = resize.get("crop_pct"), resize.get("shortest_edge")
        if resize.get("mode") == "crop_pct" and _is_number(pct) and pct > 0 and _is_number(edge):
            # ConvNeXt resizes the short side to edge / crop_pct before cropping.
            sides.append((f"{where}.resize.crop_pct", edge / pct))
    if isinstance(crop, Mapping):
        sides += [(f"{where}.center_crop.{k}", crop[k]) for k in ("height", "width") if k in crop]
    ok = True
    for field, value in sides:
        if _is_number(value) and not value <= MAX_IMAGE_SIDE:
            problems.add(field, f"asks for {value:g} px; image sizes are at most {MAX_IMAGE_SIDE} px.")
            ok = False
    return ok


def _image_output_size(section: Mapping[str, Any]) -> list[tuple[str, int]] | None:
    """``[(field, height), (field, width)]`` of every preprocessed picture, each with the key that
    sets it; None when the size follows the picture (no exact resize, no crop)."""
    crop, resize = section.get("center_crop"), section.get("resize")
    if isinstance(crop, Mapping):
        return [("center_crop.height", int(crop["height"])), ("center_crop.width", int(crop["width"]))]
    if isinstance(resize, Mapping) and resize["mode"] == "exact":
        return [("resize.height", int(resize["height"])), ("resize.width", int(resize["width"]))]
    if isinstance(resize, Mapping) and resize["mode"] == "crop_pct":
        return [("resize.shortest_edge", int(resize["shortest_edge"]))] * 2
    return None


def _check_formats(formats: Any, where: str, problems: _Problems) -> None:
    if not isinstance(formats, list) or not formats or not all(isinstance(f, str) for f in formats):
        problems.add(where, f"is {formats!r}; it must be a non-empty list of format names such as 'PNG'.")
        return
    external = [f for f in formats if f.upper() in _EXTERNAL_DECODERS]
    if external:
        problems.add(where, f"enables {', '.join(external)}, which Pillow decodes with an external program.")
        return
    try:
        allowed_formats(formats)
    except UsageError as exc:
        Image.init()
        readable = sorted(set(Image.OPEN) - set(_EXTERNAL_DECODERS))
        problems.add(where, f"is {formats!r}: {exc.message} Valid: {', '.join(readable)}.")


# -- audio ---------------------------------------------------------------------------------------


def _check_audio(manifest: Manifest, section: Mapping[str, Any], problems: _Problems) -> None:
    where = "preprocessing.audio"
    try:
        validate_audio_preprocessing(dict(section))
    except BundleError as exc:
        problems.add(f"{where}:", exc.message)
        return
    seconds = section.get("max_seconds")
    if seconds is None or seconds > MAX_AUDIO_SECONDS:
        problems.add(f"{where}.max_seconds", f"is {seconds!r}; recordings are capped at 0 < max_seconds <= "
                     f"{MAX_AUDIO_SECONDS:g}.")
        return
    features = _tensor(manifest.inputs, section["input"])
    if features is None:
        return  # reported by the feed check
    kind, rate = section["features"], int(section["sampling_rate"])
    if kind == "clap":  # one fixed window: [batch, channels, frames, n_mels]
        expected = list(clap_feature_shape(section))
        if list(features.shape[1:]) != expected:
            problems.add(f"inputs.{features.name}.shape", f"is {features.shape}; these clap features are "
                         f"[batch, {', '.join(map(str, expected))}].")
        return
    rank = 2 if kind == "waveform" else 3
    if len(features.shape) != rank:
        problems.add(f"inputs.{features.name}.shape", f"is {features.shape}; {kind} features are "
                     + ("[batch, samples]." if rank == 2 else "[batch, n_mels, frames]."))
        return
    mel = section.get("log_mel") or {}
    if rank == 3 and isinstance(features.shape[1], int) and features.shape[1] != mel["n_mels"]:
        problems.add(f"{where}.log_mel.n_mels", f"is {mel['n_mels']}, but graph input {features.name!r} takes "
                     f"{features.shape[1]} mel bands.")
    if kind == "whisper_log_mel":
        length, unit, fixed = int(mel["n_samples"]) // int(mel["hop_length"]), "frames", True
    elif kind == "waveform":
        length, unit, fixed = int(seconds * rate), "samples", False
    elif kind == FBANK_FEATURES:  # AST: always max_frames frames
        length, unit, fixed = int(mel["max_frames"]), "frames", True
    else:
        length, unit, fixed = 1 + int(seconds * rate) // int(mel["hop_length"]), "frames", False
    axis = features.shape[-1]
    field = f"{where}.log_mel.n_samples" if fixed else f"{where}.max_seconds"
    if isinstance(axis, int):
        if not fixed or length != axis:
            problems.add(field, f"gives {'' if fixed else 'up to '}{length} {unit}, but graph input "
                         f"{features.name!r} takes exactly {axis}.")
        return
    low, _, high = features.profile[axis]
    if length > high or (fixed and length < low):
        problems.add(field, f"gives {'' if fixed else 'up to '}{length} {unit} ({seconds:g} s at {rate} Hz), "
                     f"outside the {axis!r} profile {low}..{high} of graph input {features.name!r}.")


# -- helpers -------------------------------------------------------------------------------------


def _tensor(specs: list[TensorSpec], name: Any) -> TensorSpec | None:
    return next((spec for spec in specs if spec.name == name), None)


def _kind(section: Mapping[str, Any], expected: str, where: str, problems: _Problems) -> None:
    if section.get("kind", expected) != expected:
        problems.add(f"{where}.kind", f"is {section.get('kind')!r}, not {expected!r}.")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _int_in(section: Mapping[str, Any], key: str, where: str, low: int, high: int, problems: _Problems) -> int | None:
    """``section[key]`` if it is an int in ``low..high``; otherwise record the problem, return None."""
    value = section.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        problems.add(f"{where}.{key}", f"is {value!r}; it must be an integer in {low}..{high}.")
        return None
    return value
