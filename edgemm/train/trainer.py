"""``edgemm train``: fine-tune a fusion model on a dataset and save an exportable checkpoint.

Preprocessing during training is the *runtime* preprocessing (the same numpy / PIL /
tokenizers code the kiosk runs), built from the model's processors, so what the model learns
on is exactly what it will see after export.
"""

from __future__ import annotations

import json
import logging
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgemm.bundle.display import DISPLAY_FILE
from edgemm.data.dataset import Dataset, Record
from edgemm.data.metrics import classification_metrics
from edgemm.data.resolve import resolve_dataset
from edgemm.errors import UsageError
from edgemm.models.config import FusionConfig, FusionSpec, HeadSpec
from edgemm.runtime.preprocess.audio import load_audio, prepare_audio_batch
from edgemm.runtime.preprocess.image import decode_image, preprocess_images
from edgemm.runtime.preprocess.text import TextPreprocessor
from edgemm.train import methods
from edgemm.train.config import (  # noqa: F401  (the public names of edgemm train, importable from here)
    METHODS,
    SCHEDULES,
    TRAINING_FILE,
    LoraOptions,
    TrainConfig,
    TrainReport,
    checked_display,
    data_reference,
)
from edgemm.train.loop import fit

log = logging.getLogger("edgemm.train")


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
        text_max_length=config.max_length(),
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
    """Freeze / partially unfreeze / LoRA / BitFit, and return optimizer parameter groups.

    BitFit trains only the bias terms of the pretrained encoders (the fusion, the head and any
    encoder trained from scratch train fully), at ``lr`` like the other new parts.
    """

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
        hf = model.encoders["text"].model
        hf.requires_grad_(False)
        model.encoders["text"].model = methods.wrap_lora(hf, config.lora, list(config.lora.targets))
    if config.method == "bitfit":
        pretrained = [m for m, enc in model.config.encoders.items() if enc.source is not None and m not in config.freeze]
        if not pretrained:
            raise UsageError("--method bitfit trains the bias terms of pretrained encoders; this model has none.",
                             hint="Give a pretrained encoder (--text minilm or a directory), or use --method full.")
        for modality in pretrained:  # encoders trained from scratch keep training fully
            methods.apply_bitfit(model.encoders[modality])
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
        elif name.startswith("encoders.text.") and text_pretrained and config.method != "bitfit":
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
    model.encoders["text"].model = methods.merge_adapters(model.encoders["text"].model)


# -- loop -------------------------------------------------------------------------------------


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
    if config.model is not None:
        from edgemm.train.hf import train_hf

        return train_hf(config)
    import torch

    start = time.perf_counter()
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)

    dataset = resolve_dataset(config.data, cache=config.data_cache)
    display = checked_display(config.data, dataset.labels)  # before the training, not after it
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
    trainable = methods.parameter_summary(model, config.method or "full")
    modalities = model.config.modalities
    encoder = BatchEncoder(model, modalities)
    index = {label: i for i, label in enumerate(dataset.labels)}

    def batch_loss(chunk: list[Record], rng: np.random.Generator) -> Any:
        drop = {m: (rng.random(len(chunk)) >= config.modality_dropout).astype(np.float32) for m in encoder.optional}
        target = torch.tensor([index[r.label] for r in chunk])
        return torch.nn.functional.cross_entropy(model(**encoder(chunk, drop=drop))["logits"], target)

    def train_mode() -> None:
        model.train()
        for modality in config.freeze:  # frozen means frozen: no dropout, no BatchNorm statistics drift
            model.encoders[modality].eval()

    result = fit(model, groups, train_records, config, batch_loss=batch_loss, train_mode=train_mode,
                 validate=lambda: evaluate(model, encoder, val_records, dataset.labels))
    test = evaluate(model, encoder, test_records, dataset.labels) if test_records else {}
    encoder.close()
    merge_lora(model)
    model.eval()
    checkpoint = model.save_pretrained(config.output)
    report = TrainReport(checkpoint=checkpoint, best_epoch=result.best_epoch, val=result.val, test=test,
                         history=result.history, added_tokens=added, trainable=trainable,
                         seconds=time.perf_counter() - start)
    record = {"config": config.to_dict(), "data": {"source": dataset.source, "spec": data_reference(config.data),
                                                   "fingerprint": dataset.fingerprint(), "labels": dataset.labels,
                                                   "modalities": modalities}, **report.to_dict()}
    (checkpoint / TRAINING_FILE).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if display is not None:  # edgemm export carries it into the manifest (the kiosk page's words)
        (checkpoint / DISPLAY_FILE).write_text(json.dumps(display, indent=2, ensure_ascii=False) + "\n",
                                               encoding="utf-8")
    else:  # an earlier run's texts into this directory would describe other labels
        (checkpoint / DISPLAY_FILE).unlink(missing_ok=True)
    return report

