"""Fine-tune a Hugging Face classification checkpoint directory on the user's data.

``edgemm train --model DIR`` takes a transformers directory (``config.json`` + safetensors
weights + the processor saved beside them) of a text, image or audio classifier, or of the bare
encoder (``BertModel``, ``ViTModel`` …), replaces the head's label set with the data's labels,
trains it with LoRA, BitFit or fully, and writes a plain checkpoint (``save_pretrained``, the
processor beside it, ``training.json``) that ``edgemm export DIR`` takes with no flags.

Batches are encoded with the directory's own processor (tokenizer / image processor / feature
extractor), the one transformers' ``pipeline`` and the exported bundle's runtime reproduce.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgemm.data.dataset import Dataset, Record
from edgemm.data.metrics import classification_metrics
from edgemm.data.resolve import resolve_dataset
from edgemm.errors import InputPathError, UnsupportedModelError, UsageError
from edgemm.fsio import check_output_dir
from edgemm.models.encoders import check_weights_format
from edgemm.models.specs.hf import read_config, require_fast_tokenizer
from edgemm.staging import staged_directory
from edgemm.train import methods
from edgemm.train.config import (
    TRAINING_FILE,
    TrainConfig,
    TrainReport,
    checked_display,
    data_reference,
)
from edgemm.train.loop import fit

log = logging.getLogger("edgemm.train")

# model_type → the head class fine-tuned for it, per modality: the encoders issue 15 exports.
HEADS: dict[str, dict[str, str]] = {
    "text": {
        "bert": "BertForSequenceClassification",
        "distilbert": "DistilBertForSequenceClassification",
        "roberta": "RobertaForSequenceClassification",
        "xlm-roberta": "XLMRobertaForSequenceClassification",
        "electra": "ElectraForSequenceClassification",
        "mpnet": "MPNetForSequenceClassification",
        "deberta-v2": "DebertaV2ForSequenceClassification",
    },
    "image": {
        "vit": "ViTForImageClassification",
        "deit": "DeiTForImageClassification",
        "convnext": "ConvNextForImageClassification",
        "resnet": "ResNetForImageClassification",
        "swin": "SwinForImageClassification",
    },
    "audio": {
        "wav2vec2": "Wav2Vec2ForSequenceClassification",
        "hubert": "HubertForSequenceClassification",
        "wavlm": "WavLMForSequenceClassification",
        "audio-spectrogram-transformer": "ASTForAudioClassification",
    },
}
PROCESSOR_FILES = {"text": "tokenizer.json or vocab.txt", "image": "preprocessor_config.json",
                   "audio": "preprocessor_config.json"}


@dataclass(frozen=True)
class HFSource:
    """A checkpoint directory to fine-tune: what it holds and what it trains as."""

    path: Path
    architecture: str
    model_type: str
    modality: str
    head: str


def resolve_source(name: str) -> Path:
    """``minilm`` (the packaged all-MiniLM-L6-v2) or a checkpoint directory.

    Raises:
        InputPathError: The path does not exist or is not a directory.
    """
    if name == "minilm":
        from edgemm.train.presets import minilm_path

        return minilm_path()
    path = Path(name)
    if not path.exists():
        raise InputPathError(f"--model {name}: no such directory.", hint="Give a directory written by save_pretrained.")
    if not path.is_dir():
        raise InputPathError(f"--model {name} is a file; give the checkpoint directory that holds config.json.")
    return path


def inspect_source(path: Path) -> HFSource:
    """Read ``config.json`` and decide the modality and head class.

    Raises:
        UsageError: No readable ``config.json``.
        UnsupportedModelError: A model type no training head is set up for.
    """
    config = read_config(path)
    if config is None:
        raise UsageError(f"{path} has no readable config.json: not a transformers checkpoint directory.",
                         hint="Save the model with save_pretrained(); for an edgemm fusion model use --text/--image/--audio.")
    model_type = config.get("model_type")
    names = config.get("architectures") or []
    architecture = names[0] if isinstance(names, list) and names and isinstance(names[0], str) else str(model_type)
    for modality, heads in HEADS.items():
        if model_type in heads:
            return HFSource(path, architecture, model_type, modality, heads[model_type])
    supported = "; ".join(f"{m}: {', '.join(sorted(h))}" for m, h in HEADS.items())
    raise UnsupportedModelError(
        f"{path} holds a {architecture} (model_type {model_type!r}); edgemm train fine-tunes classification "
        f"checkpoints of these model types only — {supported}.",
        hint="Train it with transformers' Trainer and export the result, or pick a supported checkpoint.",
        details={"architecture": architecture},
    )


def load_processor(source: HFSource) -> Any:
    """The directory's tokenizer (fast), image processor or feature extractor, offline.

    Raises:
        UsageError: The directory has no processor for its modality.
    """
    import transformers as tf

    loader = {"text": tf.AutoTokenizer, "image": tf.AutoImageProcessor, "audio": tf.AutoFeatureExtractor}[source.modality]
    try:
        processor = loader.from_pretrained(source.path, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(
            f"{source.path} has no {source.modality} processor ({PROCESSOR_FILES[source.modality]}): {str(exc).splitlines()[0]}",
            hint="Save the processor next to the weights: processor.save_pretrained(DIR).",
        ) from exc
    if source.modality == "text":
        require_fast_tokenizer(processor, source.path)
    return processor


def load_model(source: HFSource, labels: list[str], *, allow_pickle: bool) -> Any:
    """The head class from the directory's weights with the data's label set.

    A head trained on other labels (another count) is re-initialised (``ignore_mismatched_sizes``);
    an encoder-only directory gets a new head.

    Raises:
        UnsafeCheckpointError: Only pickle weights and no ``allow_pickle``.
        CheckpointError: No weights.
    """
    import transformers as tf

    check_weights_format(source.path, allow_pickle=allow_pickle)
    cls = getattr(tf, source.head)
    return cls.from_pretrained(
        source.path, local_files_only=True, use_safetensors=None if allow_pickle else True,
        num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)},
        problem_type="single_label_classification", ignore_mismatched_sizes=True,
    )


def head_prefixes(model: Any) -> list[str]:
    """Top-level submodules outside the pretrained encoder: the task head (``classifier``,
    ``pre_classifier``, ``projector`` …), which every method trains fully."""
    base = model.base_model_prefix
    return sorted({name.split(".", 1)[0] for name, _ in model.named_parameters() if not name.startswith(f"{base}.")})


def configure(model: Any, config: TrainConfig) -> tuple[Any, list[dict[str, Any]]]:
    """Apply the method; returns the (possibly LoRA-wrapped) model and AdamW parameter groups.

    Full fine-tuning of a speech model keeps its convolutional feature encoder frozen, as the
    transformers audio-classification recipe does.
    """
    head = tuple(f"{p}." for p in head_prefixes(model))
    if config.method == "bitfit":
        methods.apply_bitfit(model)
    elif config.method == "lora":
        assert config.lora is not None  # TrainConfig resolves it
        targets = methods.lora_targets(model, config.lora.targets, exclude=head_prefixes(model))
        model.requires_grad_(False)
        model = methods.wrap_lora(model, config.lora, targets)
    elif hasattr(model, "freeze_feature_encoder"):
        model.freeze_feature_encoder()
    for name, param in _base(model).named_parameters():
        if name.startswith(head):
            param.requires_grad_(True)
    # New parts (head, adapters, BitFit's biases) learn at --lr; pretrained weights at --encoder-lr.
    groups: dict[tuple[float, float], list[Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        new = config.method != "full" or _strip_peft(name).startswith(head)
        lr = config.lr if new else config.encoder_lr
        decay = 0.0 if methods.no_decay(name) else config.weight_decay
        groups.setdefault((lr, decay), []).append(param)
    return model, [{"params": params, "lr": lr, "weight_decay": decay} for (lr, decay), params in groups.items()]


def _base(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _strip_peft(name: str) -> str:
    return name.removeprefix("base_model.model.")


class HFBatchEncoder:
    """Records → model inputs with the checkpoint's own processor (decoded files cached)."""

    def __init__(self, source: HFSource, processor: Any, config: TrainConfig):
        self.modality = source.modality
        self.processor = processor
        self.max_length = config.max_length()
        self.max_seconds = config.audio_max_seconds
        # Speech models pad a batch to its longest clip; AST's extractor pads every clip to a fixed length itself.
        self._audio_options = {"padding": True} if source.modality == "audio" and "padding" in _parameters(
            processor.__call__) else {}
        self._cache: dict[Path, np.ndarray] = {}

    def _pixels(self, path: Path) -> np.ndarray:
        if path not in self._cache:
            from transformers.image_utils import load_image

            # load_image is what the image-classification pipeline does: EXIF rotation, RGB.
            self._cache[path] = self.processor(images=load_image(str(path)), return_tensors="np")["pixel_values"][0]
        return self._cache[path]

    def _wave(self, path: Path) -> np.ndarray:
        if path not in self._cache:
            from edgemm.runtime.preprocess.audio import load_audio

            rate = int(self.processor.sampling_rate)
            self._cache[path] = load_audio(str(path), target_rate=rate, max_seconds=None)[: int(self.max_seconds * rate)]
        return self._cache[path]

    def __call__(self, records: list[Record]) -> dict[str, Any]:
        """Tensors for one batch (padded to its longest member)."""
        import torch

        if self.modality == "text":
            return dict(self.processor([r.text for r in records], padding=True, truncation=True,
                                       max_length=self.max_length, return_tensors="pt"))
        if self.modality == "image":
            return {"pixel_values": torch.from_numpy(np.stack([self._pixels(r.image) for r in records]))}
        waves = [self._wave(r.audio) for r in records]
        return dict(self.processor(waves, sampling_rate=int(self.processor.sampling_rate), return_tensors="pt",
                                   **self._audio_options))


def _parameters(func: Any) -> set[str]:
    import inspect

    return set(inspect.signature(func).parameters)


def evaluate_hf(model: Any, encoder: HFBatchEncoder, records: list[Record], labels: list[str], *,
                batch_size: int = 32) -> dict[str, float]:
    """Accuracy and macro-F1 of ``model`` on ``records`` (eval mode)."""
    import torch

    index = {label: i for i, label in enumerate(labels)}
    logits = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(records), batch_size):
            logits.append(model(**encoder(records[start:start + batch_size])).logits.float().numpy())
    return classification_metrics(np.array([index[r.label] for r in records]), np.concatenate(logits))


def _records(dataset: Dataset, split: str, modality: str, *, minimum: int, purpose: str) -> list[Record]:
    records = dataset.require_split(split, minimum=minimum, purpose=purpose) if minimum else dataset.split(split)
    usable = [r for r in records if getattr(r, modality) is not None]
    if len(usable) < len(records):
        log.warning("%s split: %d of %d records have no %s and are skipped", split, len(records) - len(usable),
                    len(records), modality)
    if len(usable) < minimum:
        raise UsageError(f"The {split} split has {len(usable)} records with {modality}; {purpose} needs at least {minimum}.",
                         hint=f"Add {modality} to the {split} records of {dataset.source}.")
    return usable


def train_hf(config: TrainConfig) -> TrainReport:
    """Fine-tune ``config.model`` on ``config.data`` and save it to ``config.output``.

    Returns:
        The :class:`TrainReport` (best epoch, validation and test metrics, trainable parameters).

    Raises:
        UsageError / DatasetError / UnsupportedModelError / UnsafeCheckpointError: Bad options,
            data, or checkpoint (exit 2).
    """
    import torch

    assert config.model is not None
    start = time.perf_counter()
    source = inspect_source(resolve_source(config.model))
    check_weights_format(source.path, allow_pickle=config.allow_pickle)  # before any data work
    output = Path(config.output)
    check_output_dir(output, "Output directory")
    if output.resolve() == source.path.resolve():
        raise UsageError(f"-o {output} is the checkpoint being fine-tuned.", hint="Write the result to another directory.")
    if output.is_dir() and any(output.iterdir()) and not (output / TRAINING_FILE).is_file():
        raise UsageError(f"{output} already exists and is not an earlier `edgemm train` output.",
                         hint="Choose another -o directory.")
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)

    dataset = resolve_dataset(config.data, cache=config.data_cache)
    display = checked_display(config.data, dataset.labels)
    if source.modality not in dataset.modalities:
        raise UsageError(f"{source.path} is a {source.modality} classifier ({source.architecture}) but the data has no "
                         f"{source.modality} column.", hint=f"The data has: {', '.join(dataset.modalities)}.")
    ignored = [m for m in dataset.modalities if m != source.modality]
    if ignored:
        log.warning("a %s model: the data's %s column(s) are not used", source.modality, ", ".join(ignored))
    train_records = _records(dataset, "train", source.modality, minimum=2, purpose="training")
    val_records = _records(dataset, "val", source.modality, minimum=1, purpose="early stopping")
    test_records = _records(dataset, "test", source.modality, minimum=0, purpose="testing")
    if config.max_train_records:
        train_records = train_records[: config.max_train_records]

    processor = load_processor(source)
    model = load_model(source, dataset.labels, allow_pickle=config.allow_pickle)
    model, groups = configure(model, config)
    assert config.method is not None
    trainable = methods.parameter_summary(model, config.method)
    log.info("%s: training %d of %d parameters (%.4f %%)", config.method, trainable["trainable"], trainable["total"],
             100 * trainable["fraction"])
    encoder = HFBatchEncoder(source, processor, config)
    index = {label: i for i, label in enumerate(dataset.labels)}

    def batch_loss(chunk: list[Record], _rng: np.random.Generator) -> Any:
        target = torch.tensor([index[r.label] for r in chunk])
        return torch.nn.functional.cross_entropy(model(**encoder(chunk)).logits, target)

    def train_mode() -> None:
        model.train()
        if config.method != "full":  # frozen BatchNorm weights keep their statistics too
            methods.freeze_norm_statistics(model)

    result = fit(model, groups, train_records, config, batch_loss=batch_loss,
                 validate=lambda: evaluate_hf(model, encoder, val_records, dataset.labels), train_mode=train_mode)
    test = evaluate_hf(model, encoder, test_records, dataset.labels) if test_records else {}
    model = methods.merge_adapters(model).eval()
    report = TrainReport(checkpoint=output, best_epoch=result.best_epoch, val=result.val, test=test,
                         history=result.history, trainable=trainable, seconds=time.perf_counter() - start)
    record = {"config": config.to_dict(),
              "model": {"source": str(source.path), "architecture": source.architecture, "trained_as": source.head,
                        "modality": source.modality},
              "data": {"source": dataset.source, "spec": data_reference(config.data), "fingerprint": dataset.fingerprint(),
                       "labels": dataset.labels, "modalities": [source.modality]},
              **report.to_dict()}
    with staged_directory(output, replace=output.exists(), action=f"write the checkpoint {output}") as staging:
        model.save_pretrained(staging, safe_serialization=True)
        processor.save_pretrained(staging)
        (staging / TRAINING_FILE).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        if display is not None:  # edgemm export carries it into the manifest (the kiosk page's words)
            from edgemm.bundle.display import DISPLAY_FILE

            (staging / DISPLAY_FILE).write_text(json.dumps(display, indent=2, ensure_ascii=False) + "\n",
                                                encoding="utf-8")
    return report
