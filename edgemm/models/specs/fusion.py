"""Export family ``fusion``: edgemm FusionModel directories (``fusion_config.json``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgemm.bundle.manifest import TensorSpec
from edgemm.models.config import CONFIG_NAME, WEIGHTS_NAME
from edgemm.models.spec import ExportSpec, LoadedModel, ShapeCase, register_family
from edgemm.models.specs.common import (
    BATCH_RANGE,
    POSTPROCESSING,
    encoder_info,
    file_sha256,
    image_input,
)

# Shortest audio in the profile: wav2vec2's feature encoder needs 400 samples for one frame.
MIN_AUDIO_SECONDS = 0.1


def _audio_inputs(section: dict[str, Any]) -> tuple[list[TensorSpec], tuple[int, int] | None, dict[str, int]]:
    """Audio tensor specs, the ``audio_len`` range (None when fixed) and case sizes."""
    rate = int(section["sampling_rate"])
    features = section["features"]
    mask = section.get("mask_input")
    if features == "whisper_log_mel":
        mel = section["log_mel"]
        frames = int(mel["n_samples"]) // int(mel["hop_length"])
        return [TensorSpec(section["input"], "float32", ["batch", int(mel["n_mels"]), frames])], None, {}
    longest = float(section["max_seconds"])
    if features == "waveform":
        low, high = int(MIN_AUDIO_SECONDS * rate), int(longest * rate)
        specs = [TensorSpec(section["input"], "float32", ["batch", "audio_len"])]
        export = int(1.0 * rate)
    else:
        hop = int(section["log_mel"]["hop_length"])
        low, high = 1 + int(MIN_AUDIO_SECONDS * rate) // hop, 1 + int(longest * rate) // hop
        specs = [TensorSpec(section["input"], "float32", ["batch", int(section["log_mel"]["n_mels"]), "audio_len"])]
        export = 1 + rate // hop
    if mask:
        specs.append(TensorSpec(mask, "int64", ["batch", "audio_len"]))
    mid = (low + high) // 3
    return specs, (low, high), {"shortest": low, "export": export, "longest": high, "mid": mid}


def fusion_spec(model: Any) -> ExportSpec:
    """Build the ExportSpec of a :class:`~edgemm.models.FusionModel`."""
    config = model.config
    preprocessing, assets = model.processors.runtime_preprocessing(config)
    inputs: list[TensorSpec] = []
    ranges: dict[str, tuple[int, int]] = {"batch": BATCH_RANGE}
    sizes: dict[str, dict[str, int]] = {"shortest": {}, "export": {}, "longest": {}, "mid": {}}
    modalities: dict[str, dict[str, Any]] = {}
    for m in config.modalities:
        section = preprocessing[m]
        if m == "text":
            specs = [TensorSpec(n, "int64", ["batch", "seq"]) for n in model.encoders["text"].input_names]
            low, high = int(section["min_length"]), int(section["max_length"])
            ranges["seq"] = (low, high)
            sizes["shortest"]["seq"], sizes["longest"]["seq"] = low, high
            sizes["export"]["seq"], sizes["mid"]["seq"] = min(16, high), min(7, high)
        elif m == "image":
            specs = [image_input(section)]
        else:
            specs, audio_range, audio_sizes = _audio_inputs(section)
            if audio_range:
                ranges["audio_len"] = audio_range
                for key, value in audio_sizes.items():
                    sizes[key]["audio_len"] = value
        inputs.extend(specs)
        optional = m in config.optional_modalities
        modalities[m] = {
            "required": not optional,
            "inputs": [s.name for s in specs],
            "presence_input": f"{m}_present" if optional else None,
        }
    for m in config.optional_modalities:
        inputs.append(TensorSpec(f"{m}_present", "float32", ["batch"]))

    labels = list(config.labels)
    if config.fusion.type == "dual":
        outputs = [TensorSpec("logits", "float32", ["batch", 1]),
                   TensorSpec("text_embeds", "float32", ["batch", config.fusion.dim]),
                   TensorSpec("image_embeds", "float32", ["batch", config.fusion.dim])]
    else:
        name = "values" if config.head.type == "regression" else "logits"
        outputs = [TensorSpec(name, "float32", ["batch", config.num_outputs])]
    postprocessing = dict(POSTPROCESSING[config.head.type])
    if "threshold" in postprocessing:
        postprocessing["threshold"] = config.head.threshold

    absent = {m: (1,) for m in config.optional_modalities}
    return ExportSpec(
        name=config.name,
        family="fusion",
        task=config.head.type,
        inputs=inputs,
        outputs=outputs,
        axis_ranges=ranges,
        export_case=ShapeCase("export", {"batch": 2, **sizes["export"]}),
        parity_cases=[
            ShapeCase("export", {"batch": 2, **sizes["export"]}),
            ShapeCase("batch1-shortest", {"batch": 1, **sizes["shortest"]}),
            ShapeCase("batch4-longest", {"batch": 4, **sizes["longest"]}),
            ShapeCase("batch3-mixed", {"batch": 3, **sizes["mid"]}, absent=absent),
        ],
        modalities=modalities,
        preprocessing=preprocessing,
        postprocessing=postprocessing,
        labels=labels,
        assets=assets,
        encoders={m: encoder_info(e.architecture, e.config) for m, e in config.encoders.items()},
    )


def _is_fusion_dir(path: Path) -> bool:
    return (path / CONFIG_NAME).is_file()


@register_family("fusion", detect=_is_fusion_dir, description="an edgemm FusionModel directory (fusion_config.json)")
def load_fusion(path: Path, *, allow_pickle: bool = False, **_: Any) -> LoadedModel:
    """Load a FusionModel directory for export."""
    from edgemm.models.model import FusionModel

    model = FusionModel.from_pretrained(path, allow_pickle=allow_pickle)
    weights = path / WEIGHTS_NAME
    source = {
        "kind": "fusion",
        "path": str(path.resolve()),
        "weights": weights.name if weights.is_file() else None,
        "sha256": file_sha256(weights) if weights.is_file() else None,
        "config_sha256": file_sha256(path / CONFIG_NAME),
    }
    return LoadedModel(model, fusion_spec(model), source)
