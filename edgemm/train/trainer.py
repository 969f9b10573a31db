"""``edgemm train``: fine-tune a fusion model on a dataset and save an exportable checkpoint.

Preprocessing during training is the *runtime* preprocessing (the same numpy / PIL /
tokenizers code the kiosk runs), built from the model's processors, so what the model learns
on is exactly what it will see after export.
"""

from __future__ import annotations

import json
import logging
import math
import random
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgemm.data.dataset import Dataset, Record
from edgemm.data.metrics import classification_metrics
from edgemm.data.resolve import resolve_dataset
from edgemm.errors import UsageError
from edgemm.models.config import FusionConfig, FusionSpec, HeadSpec
from edgemm.runtime.preprocess.audio import load_audio, prepare_audio_batch
from edgemm.runtime.preprocess.image import decode_image, preprocess_images
from edgemm.runtime.preprocess.text import TextPreprocessor

log = logging.getLogger("edgemm.train")

TRAINING_FILE = "training.json"
SCHEDULES = ("linear", "cosine", "constant")


@dataclass(frozen=True)
class LoraOptions:
    """LoRA adapters on the text encoder's attention projections (merged before saving)."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    targets: tuple[str, ...] = ("query", "value")


@dataclass
class TrainConfig:
    """Everything ``edgemm train`` can set. Defaults train the digit-match reference model."""

    output: Path
    data: str = "digit-match"
    name: str | None = None
    text: str | None = "minilm"
    image: str | None = "resnet-tiny"
    audio: str | None = None
    optional: tuple[str, ...] = ("audio",)
    fusion: str = "concat"
    fusion_dim: int = 128
    freeze: tuple[str, ...] = ()
    unfreeze_last: int | None = None
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
    text_max_length: int = 32
    modality_dropout: float = 0.3
    data_cache: Path | None = None
    max_train_records: int | None = None

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise UsageError(f"Unknown schedule {self.schedule!r}.", hint=f"Choose one of: {', '.join(SCHEDULES)}.")
        if self.metric not in ("accuracy", "macro_f1"):
            raise UsageError(f"Unknown metric {self.metric!r}.", hint="Choose accuracy or macro_f1.")
        if self.epochs < 1 or self.batch_size < 1:
            raise UsageError("epochs and batch size must be at least 1.")
        if not any((self.text, self.image, self.audio)):
            raise UsageError("Training needs at least one encoder.", hint="Give --text, --image and/or --audio.")

    def to_dict(self) -> dict[str, Any]:
        """The config as saved in ``training.json`` (paths as strings)."""
        data = asdict(self)
        data["output"] = str(self.output)
        data["data_cache"] = str(self.data_cache) if self.data_cache else None
        return data


@dataclass
class TrainReport:
    """Where the checkpoint went and how it did."""

    checkpoint: Path
    best_epoch: int
    val: dict[str, float]
    test: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    added_tokens: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The report as ``edgemm train --json`` prints it."""
        return {"checkpoint": str(self.checkpoint), "best_epoch": self.best_epoch, "val": self.val, "test": self.test,
                "history": self.history, "added_tokens": self.added_tokens, "seconds": round(self.seconds, 1)}


# -- data -------------------------------------------------------------------------------------


class BatchEncoder:
    """Runtime preprocessing with per-file caches → torch tensors for a list of records."""

    def __init__(self, model: Any, modalities: list[str]):
        self.modalities = modalities
        self.optional = [m for m in model.config.optional_modalities if m in modalities]
        sections, assets = model.processors.runtime_preprocessing(model.config)
        self.sections = sections
        self._tmp = tempfile.TemporaryDirectory(prefix="edgemm-train-")
        for rel, data in assets.items():
            path = Path(self._tmp.name) / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        self.text = TextPreprocessor(Path(self._tmp.name), sections["text"]) if "text" in modalities else None
        self._images: dict[Path, np.ndarray] = {}
        self._waves: dict[Path, np.ndarray] = {}

    def _image(self, path: Path) -> np.ndarray:
        if path not in self._images:
            cfg = self.sections["image"]
            self._images[path] = preprocess_images([decode_image(str(path), max_pixels=cfg["max_pixels"])], cfg)[0]
        return self._images[path]

    def _wave(self, path: Path) -> np.ndarray:
        if path not in self._waves:
            cfg = self.sections["audio"]
            self._waves[path] = load_audio(str(path), target_rate=int(cfg["sampling_rate"]), max_seconds=cfg["max_seconds"])
        return self._waves[path]

    def __call__(self, records: list[Record], *, drop: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
        import torch

        feed: dict[str, np.ndarray] = {}
        present = {m: np.array([getattr(r, m) is not None for r in records], dtype=np.float32) for m in self.optional}
        for m, mask in (drop or {}).items():
            present[m] = present[m] * mask
        if self.text is not None:
            feed.update(self.text([r.text or "" for r in records]))
        if "image" in self.modalities:
            feed[self.sections["image"]["input"]] = np.stack([self._image(r.image) for r in records])
        if "audio" in self.modalities:
            cfg = self.sections["audio"]
            silence = np.zeros(int(0.25 * cfg["sampling_rate"]), dtype=np.float32)
            waves = [self._wave(r.audio) if r.audio is not None else silence for r in records]
            feed.update(prepare_audio_batch(waves, cfg))
        for m, flags in present.items():
            feed[f"{m}_present"] = flags
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feed.items()}

    def close(self) -> None:
        """Remove the temporary directory holding the preprocessing assets (the tokenizer file)."""
        self._tmp.cleanup()


# -- model ------------------------------------------------------------------------------------


def build_model(config: TrainConfig, dataset: Dataset) -> Any:
    """The FusionModel to train, from the encoder choices and the dataset's labels."""
    from edgemm.models.model import FusionModel
    from edgemm.models.processors import Processors
    from edgemm.train import presets

    encoders: dict[str, Any] = {}
    procs = Processors()
    chosen = {"text": config.text, "image": config.image, "audio": config.audio}
    for modality, choice in chosen.items():
        if not choice or choice == "none":
            continue
        if modality not in dataset.modalities:
            raise UsageError(f"--{modality} was given but the data has no {modality} column.",
                             hint=f"The data has: {', '.join(dataset.modalities)}.")
        if modality == "text":
            encoders["text"] = presets.text_encoder(choice)
        elif modality == "image":
            encoders["image"], procs.image_processor = presets.image_encoder(choice, config.image_size)
        else:
            encoders["audio"], procs.audio = presets.audio_encoder(choice)
    defaults = Processors.defaults(FusionConfig(name="probe", encoders=dict(encoders), labels=list(dataset.labels)))
    procs.tokenizer = defaults.tokenizer
    procs.image_processor = procs.image_processor or defaults.image_processor
    procs.audio = procs.audio if procs.audio is not None else defaults.audio
    optional = [m for m in config.optional if m in encoders]
    if len(optional) == len(encoders):
        optional = []
    fusion_type = config.fusion
    if len(encoders) == 1:
        fusion_type = "concat"  # a single-modality (ablation) model has nothing to attend across
    fusion = FusionConfig(
        name=config.name or f"{Path(config.data).stem}-{fusion_type}",
        encoders=encoders,
        fusion=FusionSpec(type=fusion_type, dim=config.fusion_dim, heads=4),
        head=HeadSpec(type="classification", hidden=config.fusion_dim),
        labels=list(dataset.labels),
        optional_modalities=optional,
        text_max_length=config.text_max_length,
    )
    return FusionModel(fusion, procs)


def add_missing_tokens(model: Any, texts: list[str]) -> list[str]:
    """Add characters the tokenizer maps to [UNK] (e.g. 七, 六, 九, 零 in MiniLM's vocabulary).

    Without this, "七" and "九" are the same [UNK] input and no training can tell them apart.
    New embedding rows start at the mean embedding; only they are trained (gradient mask).
    """
    import torch

    tokenizer = model.processors.tokenizer
    unk = tokenizer.unk_token_id
    if unk is None:
        return []
    missing = sorted({ch for text in texts for ch in text if not ch.isspace()
                      and tokenizer(ch, add_special_tokens=False)["input_ids"] == [unk]})
    if not missing:
        return []
    tokenizer.add_tokens(missing)
    hf = model.encoders["text"].model
    old = hf.get_input_embeddings().weight.shape[0]
    hf.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    embeddings = hf.get_input_embeddings().weight
    with torch.no_grad():
        embeddings[old:] = embeddings[:old].mean(dim=0, keepdim=True)
    model.config.encoders["text"].config = hf.config.to_dict()
    mask = torch.zeros(embeddings.shape[0], 1)
    mask[old:] = 1.0
    model._new_token_mask = mask
    return missing


def configure_trainable(model: Any, config: TrainConfig) -> list[dict[str, Any]]:
    """Freeze / partially unfreeze / LoRA, and return optimizer parameter groups."""

    text_pretrained = "text" in model.encoders and model.config.encoders["text"].source is not None
    for modality in config.freeze:
        if modality not in model.encoders:
            raise UsageError(f"--freeze {modality}: the model has no {modality} encoder.")
        model.encoders[modality].requires_grad_(False)
    if "text" in model.encoders and config.unfreeze_last is not None:
        hf = model.encoders["text"].model
        hf.requires_grad_(False)
        layers = _encoder_layers(hf)
        for layer in layers[len(layers) - config.unfreeze_last:] if config.unfreeze_last > 0 else []:
            layer.requires_grad_(True)
    if "text" in model.encoders and config.lora is not None:
        from peft import LoraConfig, get_peft_model

        hf = model.encoders["text"].model
        hf.requires_grad_(False)
        lora = LoraConfig(r=config.lora.r, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
                          target_modules=list(config.lora.targets), bias="none")
        model.encoders["text"].model = get_peft_model(hf, lora)
    mask = getattr(model, "_new_token_mask", None)
    if mask is not None:
        embeddings = _text_hf(model).get_input_embeddings().weight
        embeddings.requires_grad_(True)
        embeddings.register_hook(lambda grad: grad * mask.to(grad.dtype))

    groups: dict[str, list[Any]] = {"new": [], "pretrained": [], "no_decay": []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if "word_embeddings" in name or "lora_" in name:
            groups["no_decay" if "word_embeddings" in name else "new"].append(param)
        elif name.startswith("encoders.text.") and text_pretrained:
            groups["pretrained"].append(param)
        else:
            groups["new"].append(param)
    return [
        {"params": groups["new"], "lr": config.lr, "weight_decay": config.weight_decay},
        {"params": groups["pretrained"], "lr": config.encoder_lr, "weight_decay": config.weight_decay},
        {"params": groups["no_decay"], "lr": config.lr, "weight_decay": 0.0},
    ] if any(groups.values()) else []


def _text_hf(model: Any) -> Any:
    hf = model.encoders["text"].model
    return hf.get_base_model() if hasattr(hf, "get_base_model") else hf


def _encoder_layers(hf: Any) -> list[Any]:
    for attr in ("encoder.layer", "transformer.layer", "encoder.layers", "layers"):
        obj = hf
        try:
            for part in attr.split("."):
                obj = getattr(obj, part)
            return list(obj)
        except AttributeError:
            continue
    raise UsageError("--unfreeze-last: cannot find the text encoder's layers.")


def merge_lora(model: Any) -> None:
    """Fold LoRA adapters into the base weights so the checkpoint is a plain FusionModel."""
    if "text" not in model.encoders:
        return
    hf = model.encoders["text"].model
    if hasattr(hf, "merge_and_unload"):
        model.encoders["text"].model = hf.merge_and_unload()


# -- loop -------------------------------------------------------------------------------------


def _lr_lambda(schedule: str, total: int, warmup: int):
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return max(0.0, 1.0 - progress) if schedule == "linear" else 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def evaluate(model: Any, encoder: BatchEncoder, records: list[Record], labels: list[str], *, batch_size: int = 64,
             modalities_off: tuple[str, ...] = ()) -> dict[str, float]:
    """Accuracy and macro-F1 of ``model`` on ``records`` (PyTorch, eval mode)."""
    import torch

    index = {label: i for i, label in enumerate(labels)}
    logits = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(records), batch_size):
            chunk = records[start:start + batch_size]
            drop = {m: np.zeros(len(chunk), np.float32) for m in modalities_off}
            logits.append(model(**encoder(chunk, drop=drop))["logits"].numpy())
    truth = np.array([index[r.label] for r in records])
    return classification_metrics(truth, np.concatenate(logits))


def train(config: TrainConfig) -> TrainReport:
    """Train, early-stop on the validation metric, test the best epoch, save the checkpoint.

    Raises:
        UsageError / DatasetError: Bad options or data (exit 2).
    """
    import torch

    start = time.perf_counter()
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)

    dataset = resolve_dataset(config.data, cache=config.data_cache)
    train_records = dataset.require_split("train", minimum=2, purpose="training")
    val_records = dataset.require_split("val", minimum=1, purpose="early stopping")
    test_records = dataset.split("test")
    if config.max_train_records:
        train_records = train_records[: config.max_train_records]

    model = build_model(config, dataset)
    added = add_missing_tokens(model, [r.text for r in train_records if r.text]) if (
        config.add_missing_tokens and "text" in model.encoders) else []
    if added:
        log.info("added %d tokens the tokenizer did not know: %s", len(added), "".join(added))
    groups = configure_trainable(model, config)
    if not groups:
        raise UsageError("Every parameter is frozen: nothing to train.", hint="Unfreeze an encoder or drop --freeze.")
    modalities = model.config.modalities
    encoder = BatchEncoder(model, modalities)
    optimizer = torch.optim.AdamW(groups)
    steps_per_epoch = math.ceil(len(train_records) / config.batch_size)
    total = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config.schedule, total, int(config.warmup * total)))
    index = {label: i for i, label in enumerate(dataset.labels)}
    rng = np.random.default_rng(config.seed)
    best: tuple[float, int, dict[str, Any], dict[str, float]] | None = None
    history: list[dict[str, float]] = []
    stale = 0
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    for epoch in range(1, config.epochs + 1):
        model.train()
        for modality in config.freeze:  # frozen means frozen: no dropout, no BatchNorm statistics drift
            model.encoders[modality].eval()
        order = rng.permutation(len(train_records))
        losses = []
        batches = range(steps_per_epoch)
        bar = tqdm(batches, desc=f"epoch {epoch}/{config.epochs}", leave=False, disable=None) if tqdm else batches
        for b in bar:
            chunk = [train_records[i] for i in order[b * config.batch_size:(b + 1) * config.batch_size]]
            drop = {m: (rng.random(len(chunk)) >= config.modality_dropout).astype(np.float32)
                    for m in encoder.optional}
            inputs = encoder(chunk, drop=drop)
            target = torch.tensor([index[r.label] for r in chunk])
            loss = torch.nn.functional.cross_entropy(model(**inputs)["logits"], target)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
        val = evaluate(model, encoder, val_records, dataset.labels)
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), **{f"val_{k}": v for k, v in val.items()}})
        log.info("epoch %d  loss %.4f  val accuracy %.4f  macro-F1 %.4f", epoch, np.mean(losses), val["accuracy"], val["macro_f1"])
        score = val[config.metric]
        if best is None or score > best[0]:
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            best, stale = (score, epoch, state, val), 0
        else:
            stale += 1
            if stale >= config.patience:
                log.info("early stopping: no validation improvement for %d epochs", stale)
                break
    assert best is not None  # at least one epoch ran
    model.load_state_dict(best[2])
    test = evaluate(model, encoder, test_records, dataset.labels) if test_records else {}
    encoder.close()
    merge_lora(model)
    model.eval()
    checkpoint = model.save_pretrained(config.output)
    report = TrainReport(checkpoint=checkpoint, best_epoch=best[1], val=best[3], test=test, history=history,
                         added_tokens=added, seconds=time.perf_counter() - start)
    record = {"config": config.to_dict(), "data": {"source": dataset.source, "spec": config.data,
                                                   "fingerprint": dataset.fingerprint(), "labels": dataset.labels,
                                                   "modalities": modalities}, **report.to_dict()}
    (checkpoint / TRAINING_FILE).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return report
