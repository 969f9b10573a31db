"""Declarative configuration of a fusion model: encoders, fusion module, head, labels.

Plain dataclasses, JSON round-trippable and torch-free, so ``edgemm inspect`` and the build side
can read a checkpoint's configuration without importing torch.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgemm.errors import InputPathError, UnsupportedModelError, UsageError

FORMAT = "edgemm.fusion/1"
CONFIG_NAME = "fusion_config.json"
WEIGHTS_NAME = "model.safetensors"

TEXT_ARCHITECTURES = ("bert", "distilbert", "roberta", "xlm-roberta", "electra", "mpnet")
IMAGE_ARCHITECTURES = ("vit", "deit", "clip_vision_model", "siglip_vision_model", "resnet", "convnext")
AUDIO_ARCHITECTURES = ("wav2vec2", "hubert", "whisper", "logmel_cnn")
ARCHITECTURES = {"text": TEXT_ARCHITECTURES, "image": IMAGE_ARCHITECTURES, "audio": AUDIO_ARCHITECTURES}
FUSION_TYPES = ("concat", "gated", "cross_attention", "dual")
HEAD_TYPES = ("classification", "multilabel", "matching", "regression")
POOLINGS = ("mean", "cls", "pooler")


@dataclass
class EncoderConfig:
    """One modality's encoder.

    Attributes:
        modality: ``"text"``, ``"image"`` or ``"audio"``.
        architecture: transformers ``model_type`` (``"bert"``, ``"vit"``, ``"wav2vec2"`` …) or
            ``"logmel_cnn"`` for edgemm's compact audio encoder.
        config: The transformers config as a dict (``PretrainedConfig.to_dict()``), or the
            ``logmel_cnn`` parameters.
        pooling: How a sequence of token/patch/frame states becomes one vector.
        source: Local directory with pretrained weights, read once when the model is built.
            Never stored: a saved FusionModel carries all of its weights.
    """

    modality: str
    architecture: str
    config: dict[str, Any] = field(default_factory=dict)
    pooling: str = "mean"
    source: str | None = None

    def __post_init__(self) -> None:
        if self.modality not in ARCHITECTURES:
            raise UsageError(f"Unknown modality {self.modality!r}.", hint="Use text, image or audio.")
        if self.architecture not in ARCHITECTURES[self.modality]:
            raise UnsupportedModelError(
                f"{self.architecture!r} is not a supported {self.modality} encoder.",
                hint=f"Supported: {', '.join(ARCHITECTURES[self.modality])}.",
            )
        if self.pooling not in POOLINGS:
            raise UsageError(f"Unknown pooling {self.pooling!r}.", hint=f"Choose one of: {', '.join(POOLINGS)}.")

    @classmethod
    def from_pretrained(cls, modality: str, path: str | Path, *, pooling: str | None = None) -> EncoderConfig:
        """Describe a pretrained transformers encoder stored in a local directory."""
        folder = Path(path)
        config_file = folder / "config.json"
        if not config_file.is_file():
            raise InputPathError(f"{folder} has no config.json.", hint="Point at a transformers model directory.")
        config = json.loads(config_file.read_text(encoding="utf-8"))
        architecture = config.get("model_type", "?")
        default_pooling = "mean" if modality in ("text", "audio") else "cls"
        return cls(modality, architecture, config, pooling or default_pooling, str(folder))

    @classmethod
    def from_hf_config(cls, modality: str, hf_config: Any, *, pooling: str | None = None) -> EncoderConfig:
        """Describe a randomly initialised transformers encoder from a ``PretrainedConfig``."""
        config = hf_config.to_dict()
        default_pooling = "mean" if modality in ("text", "audio") else "cls"
        return cls(modality, config["model_type"], config, pooling or default_pooling)

    def to_dict(self) -> dict[str, Any]:
        """The config as saved in ``fusion_config.json`` (without the in-memory ``source``)."""
        data = asdict(self)
        data.pop("source")
        return data


@dataclass
class FusionSpec:
    """How encoder outputs are combined.

    ``concat``: pooled vectors side by side; ``gated``: a learned, input-dependent weighted sum;
    ``cross_attention``: text tokens attend to image patches / audio frames; ``dual``: CLIP-style
    late fusion — separate embeddings, cosine similarity (text + image only).
    """

    type: str = "concat"
    dim: int = 256
    heads: int = 4
    layers: int = 1
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.type not in FUSION_TYPES:
            raise UnsupportedModelError(f"Unknown fusion {self.type!r}.", hint=f"Choose one of: {', '.join(FUSION_TYPES)}.")
        if self.dim % self.heads:
            raise UsageError(f"Fusion dim {self.dim} is not divisible by heads {self.heads}.")


@dataclass
class HeadSpec:
    """The task head. ``num_outputs`` is only used by ``regression`` (else the labels decide)."""

    type: str = "classification"
    hidden: int = 256
    dropout: float = 0.1
    num_outputs: int = 1
    threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.type not in HEAD_TYPES:
            raise UnsupportedModelError(f"Unknown head {self.type!r}.", hint=f"Choose one of: {', '.join(HEAD_TYPES)}.")


@dataclass
class FusionConfig:
    """A whole fusion model. Saved as ``fusion_config.json`` next to ``model.safetensors``.

    Attributes:
        name: Human-readable model name (used for the bundle name).
        encoders: Modality → encoder.
        fusion / head: See :class:`FusionSpec`, :class:`HeadSpec`.
        labels: Class names (classification / multilabel), output names (regression), or
            ``["no_match", "match"]`` style names for matching.
        optional_modalities: Modalities a request may omit; the graph gets a presence flag.
        text_max_length: Truncation length of the text encoder.
    """

    name: str
    encoders: dict[str, EncoderConfig]
    fusion: FusionSpec = field(default_factory=FusionSpec)
    head: HeadSpec = field(default_factory=HeadSpec)
    labels: list[str] = field(default_factory=list)
    optional_modalities: list[str] = field(default_factory=list)
    text_max_length: int = 128
    format: str = FORMAT

    def __post_init__(self) -> None:
        if not self.encoders:
            raise UsageError("A fusion model needs at least one encoder.")
        for modality, enc in self.encoders.items():
            if enc.modality != modality:
                raise UsageError(f"Encoder under {modality!r} declares modality {enc.modality!r}.")
        for modality in self.optional_modalities:
            if modality not in self.encoders:
                raise UsageError(f"Optional modality {modality!r} has no encoder.")
        if len(self.optional_modalities) >= len(self.encoders):
            raise UsageError("At least one modality must be required.")
        kind = self.fusion.type
        if kind == "cross_attention" and ("text" not in self.encoders or "text" in self.optional_modalities):
            raise UsageError("Cross-attention fusion needs a required text encoder (text tokens are the queries).")
        if kind == "cross_attention" and len(self.encoders) < 2:
            raise UsageError("Cross-attention fusion needs text plus image and/or audio.")
        if kind == "dual":
            if set(self.encoders) != {"text", "image"} or self.optional_modalities:
                raise UsageError("Dual-encoder (CLIP-style) fusion takes exactly a required text and image encoder.")
            if self.head.type != "matching":
                raise UsageError("Dual-encoder fusion produces a similarity: use the 'matching' head.")
        if self.head.type in ("classification", "multilabel") and len(self.labels) < 2:
            raise UsageError(f"A {self.head.type} head needs at least two labels.")
        if self.head.type == "matching" and not self.labels:
            self.labels = ["no_match", "match"]
        if self.head.type == "regression" and not self.labels:
            self.labels = [f"value_{i}" for i in range(self.head.num_outputs)]

    @property
    def modalities(self) -> list[str]:
        """Modalities in canonical order."""
        return [m for m in ("text", "image", "audio") if m in self.encoders]

    @property
    def num_outputs(self) -> int:
        """Width of the head's output: 1 match logit for ``matching``, else one per label."""
        return 1 if self.head.type == "matching" else len(self.labels)

    def to_dict(self) -> dict[str, Any]:
        """The config as saved in ``fusion_config.json``."""
        return {
            "format": self.format,
            "name": self.name,
            "encoders": {m: e.to_dict() for m, e in self.encoders.items()},
            "fusion": asdict(self.fusion),
            "head": asdict(self.head),
            "labels": list(self.labels),
            "optional_modalities": list(self.optional_modalities),
            "text_max_length": self.text_max_length,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FusionConfig:
        """Parse a ``fusion_config.json`` document.

        Raises:
            UnsupportedModelError: Another format version, or an unknown encoder / fusion / head.
        """
        if data.get("format") != FORMAT:
            raise UnsupportedModelError(
                f"Unsupported fusion config format {data.get('format')!r}; expected {FORMAT!r}."
            )
        try:
            return cls(
                name=data["name"],
                encoders={m: EncoderConfig(**e) for m, e in data["encoders"].items()},
                fusion=FusionSpec(**data.get("fusion", {})),
                head=HeadSpec(**data.get("head", {})),
                labels=list(data.get("labels", [])),
                optional_modalities=list(data.get("optional_modalities", [])),
                text_max_length=int(data.get("text_max_length", 128)),
            )
        except (KeyError, TypeError) as exc:
            raise UsageError(f"Malformed {CONFIG_NAME}: {exc}", hint="Save the model with FusionModel.save_pretrained.") from exc

    def save(self, folder: Path) -> None:
        """Write ``fusion_config.json`` into ``folder``."""
        (folder / CONFIG_NAME).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> FusionConfig:
        """Read ``fusion_config.json`` from a FusionModel directory.

        Raises:
            InputPathError: The directory has no ``fusion_config.json``.
            UnsupportedModelError: The file is not a config this edgemm reads.
        """
        path = Path(folder) / CONFIG_NAME
        if not path.is_file():
            raise InputPathError(f"{folder} has no {CONFIG_NAME}.", hint="Point at a directory saved by FusionModel.save_pretrained.")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise UsageError(f"{path} is not valid JSON: {exc}") from exc
        return cls.from_dict(data)
