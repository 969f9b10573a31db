"""What ``edgemm train`` can be told and what it reports (shared by both training paths).

Two things train: an edgemm FusionModel assembled from encoder choices (``--text/--image/
--audio``), and a Hugging Face classification checkpoint directory fine-tuned as it is
(``--model DIR``). Both take the same data, schedule and method options and write the same
``training.json`` record next to the weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgemm.errors import UsageError

TRAINING_FILE = "training.json"
SCHEDULES = ("linear", "cosine", "constant")
# Which parameters train: LoRA adapters (+ new parts), BitFit (bias terms + new parts), or all.
METHODS = ("lora", "bitfit", "full")
# Token budget when none is given: the fusion reference task's answers are short; a
# fine-tuned classifier sees users' sentences and reviews.
FUSION_MAX_LENGTH = 32
HF_MAX_LENGTH = 128


@dataclass(frozen=True)
class LoraOptions:
    """LoRA adapters on the attention projections (merged before saving)."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    targets: tuple[str, ...] = ("query", "value")


@dataclass
class TrainConfig:
    """Everything ``edgemm train`` can set. Defaults train the digit-match reference model.

    ``model`` switches to fine-tuning a Hugging Face checkpoint directory (``"minilm"`` names
    the packaged all-MiniLM-L6-v2); the encoder and fusion options then do not apply.
    ``method`` picks what trains (:data:`METHODS`); when it is not given, ``lora`` decides
    (LoRA with those options, full fine-tuning with ``lora=None``), as before ``method`` existed.
    """

    output: Path
    data: str = "digit-match"
    name: str | None = None
    model: str | None = None
    text: str | None = "minilm"
    image: str | None = "resnet-tiny"
    audio: str | None = None
    optional: tuple[str, ...] = ("audio",)
    fusion: str = "concat"
    fusion_dim: int = 128
    freeze: tuple[str, ...] = ()
    unfreeze_last: int | None = None
    method: str | None = None
    lora: LoraOptions | None = LoraOptions()
    add_missing_tokens: bool = True
    epochs: int = 6
    batch_size: int = 32
    lr: float = 1e-3
    encoder_lr: float = 5e-5
    weight_decay: float = 0.01
    warmup: float = 0.1
    schedule: str = "linear"
    patience: int = 3
    metric: str = "accuracy"
    seed: int = 0
    image_size: int = 32
    text_max_length: int | None = None
    audio_max_seconds: float = 10.0
    modality_dropout: float = 0.3
    allow_pickle: bool = False
    data_cache: Path | None = None
    max_train_records: int | None = None

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise UsageError(f"Unknown schedule {self.schedule!r}.", hint=f"Choose one of: {', '.join(SCHEDULES)}.")
        if self.metric not in ("accuracy", "macro_f1"):
            raise UsageError(f"Unknown metric {self.metric!r}.", hint="Choose accuracy or macro_f1.")
        if self.epochs < 1 or self.batch_size < 1:
            raise UsageError("epochs and batch size must be at least 1.")
        if self.model is None and not any((self.text, self.image, self.audio)):
            raise UsageError("Training needs at least one encoder.", hint="Give --text, --image and/or --audio.")
        if self.method is None:
            self.method = "lora" if self.lora is not None else "full"
        if self.method not in METHODS:
            raise UsageError(f"Unknown training method {self.method!r}.", hint=f"Choose one of: {', '.join(METHODS)}.")
        if self.method == "lora" and self.lora is None:
            self.lora = LoraOptions()
        elif self.method != "lora":
            self.lora = None

    def max_length(self) -> int:
        """Token budget of the text inputs (``text_max_length`` or the path's default)."""
        if self.text_max_length is not None:
            return self.text_max_length
        return HF_MAX_LENGTH if self.model else FUSION_MAX_LENGTH

    def to_dict(self) -> dict[str, Any]:
        """The config as saved in ``training.json`` (paths as strings)."""
        data = asdict(self)
        data["output"] = str(self.output)
        data["data_cache"] = str(self.data_cache) if self.data_cache else None
        return data


@dataclass
class TrainReport:
    """Where the checkpoint went and how it did.

    ``trainable`` says what the method trained: ``method``, ``trainable`` and ``total``
    parameter counts and their ``fraction``.
    """

    checkpoint: Path
    best_epoch: int
    val: dict[str, float]
    test: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    added_tokens: list[str] = field(default_factory=list)
    trainable: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The report as ``edgemm train --json`` prints it."""
        return {"checkpoint": str(self.checkpoint), "best_epoch": self.best_epoch, "val": self.val, "test": self.test,
                "history": self.history, "added_tokens": self.added_tokens, "trainable": self.trainable,
                "seconds": round(self.seconds, 1)}


def data_reference(spec: str) -> str:
    """How ``training.json`` names the data: a built-in name as is, a path made absolute so an
    export run from another directory still finds the held-out split."""
    from edgemm.data.resolve import BUILTIN_DATA

    return spec if spec in BUILTIN_DATA else str(Path(spec).resolve())


def checked_display(data: str, labels: list[str]) -> dict[str, Any] | None:
    """The display texts that go with training data ``data`` (:func:`edgemm.data.resolve.training_display`),
    checked against its labels; None: it has none.

    Raises:
        DisplayError: The dataset's display file leaves out a label or is not plain short text.
    """
    from edgemm.bundle.display import Display
    from edgemm.data.resolve import training_display

    texts = training_display(data)
    return Display.from_dict(texts, labels).to_dict() if texts is not None else None
