"""Export families ``hf-text-classification`` and ``hf-token-classification``: fine-tuned
transformers text encoders saved with ``save_pretrained``.

A directory whose ``config.json`` names a ``*ForSequenceClassification`` or
``*ForTokenClassification`` of BERT (MiniLM, ``bert-base-chinese`` vocabularies), DistilBERT,
RoBERTa, XLM-RoBERTa, ELECTRA, MPNet or DeBERTa-v2 exports with no flags. The bundle answers as
the transformers pipeline of the task does on the same raw text:

* ``text-classification``: softmax over the labels, or a sigmoid per label when
  ``problem_type`` is ``multi_label_classification`` or the head has one output, raw values for
  ``regression`` (the pipeline's ``function_to_apply`` rules);
* ``token-classification`` with ``aggregation_strategy="simple"``: word-level entities with
  character offsets (:mod:`edgemm.runtime.entities`).

Labels are ``config.id2label`` in id order (``--labels`` renames them, one per output). The runtime tokenizer is the saved fast tokenizer's
``tokenizer.json`` with its padding and truncation sides; the graph takes ``token_type_ids``
when the tokenizer returns them (``model_input_names``), as the pipeline feeds the model, and the
model has token-type embeddings to read them with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from edgemm.bundle.manifest import TensorSpec
from edgemm.errors import UnsupportedModelError, UsageError
from edgemm.models.encoders import check_weights_format
from edgemm.models.processors import TOKENIZER_FILE, text_section, tokenizer_json
from edgemm.models.spec import ExportSpec, LoadedModel, ShapeCase, register_family
from edgemm.models.specs import hf
from edgemm.models.specs.common import BATCH_RANGE, encoder_info, tree_sha256
from edgemm.models.specs.hf_heads import HEAD_TOLERANCE, head_labels

# model_type → the transformers class prefix of its task heads.
ENCODERS = {
    "bert": "Bert",
    "distilbert": "DistilBert",
    "roberta": "Roberta",
    "xlm-roberta": "XLMRoberta",
    "electra": "Electra",
    "mpnet": "MPNet",
    "deberta-v2": "DebertaV2",
}
SEQUENCE_ARCHITECTURES = tuple(f"{prefix}ForSequenceClassification" for prefix in ENCODERS.values())
TOKEN_ARCHITECTURES = tuple(f"{prefix}ForTokenClassification" for prefix in ENCODERS.values())
# Encoders whose position ids start after the padding index (``padding_idx + 1 + position``), so
# ``max_position_embeddings - padding_idx - 1`` tokens fit (514 → 512 for RoBERTa).
_PADDED_POSITIONS = ("roberta", "xlm-roberta", "mpnet")
# What the token-classification pipeline drops after grouping (its ``ignore_labels`` default).
IGNORE_LABELS = ["O"]


class TextTaskModel(nn.Module):
    """A transformers task model as a graph: token ids (+ mask, token types) → ``logits``.

    The model sits at ``encoders["text"]`` so that every node of the exported graph carries the
    ``text`` branch (per-modality precision, per-encoder graph fusion; see
    :mod:`edgemm.optimize.branches`).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.encoders = nn.ModuleDict({"text": model})

    def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> dict[str, Any]:
        """Token ids ``[B, S]`` → ``{"logits": [B, labels]}`` (sequence) or ``[B, S, labels]`` (token)."""
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        return {"logits": self.encoders["text"](**kwargs).logits}


def max_tokens(config: Any, tokenizer: Any) -> int:
    """The longest sequence the model takes: ``max_position_embeddings`` (less the padding
    offset of RoBERTa-style positions), capped by the tokenizer's ``model_max_length``."""
    positions = int(getattr(config, "max_position_embeddings", 512))
    if config.model_type in _PADDED_POSITIONS:
        positions -= int(config.pad_token_id or 0) + 1
    model_max = getattr(tokenizer, "model_max_length", None)
    return min(positions, int(model_max)) if model_max and model_max < 10**6 else positions


def _sequence_head(config: Any, labels: list[str]) -> tuple[str, dict[str, Any]]:
    """Task and postprocessing of a sequence-classification head, by the text-classification
    pipeline's rules for ``function_to_apply``."""
    problem = getattr(config, "problem_type", None)
    if problem == "regression":
        return "regression", {"type": "identity", "output": "logits"}
    if problem == "multi_label_classification" or len(labels) == 1:
        return "multilabel", {"type": "sigmoid", "output": "logits", "threshold": 0.5}
    return "classification", {"type": "softmax", "output": "logits", "top_k": len(labels)}


def _load(path: Path, *, token_level: bool, allow_pickle: bool = False, labels: list[str] | None = None,
          **_: Any) -> LoadedModel:
    import transformers as tf

    name = hf.architecture(path) or ""
    kind = hf.model_type(path) or ""
    if kind not in ENCODERS or not name.startswith(ENCODERS[kind]):
        raise hf.unsupported_architecture(path) or UnsupportedModelError(f"{path} is not a transformers directory.")
    check_weights_format(path, allow_pickle=allow_pickle)
    model_cls = getattr(tf, name)
    try:
        tokenizer = tf.AutoTokenizer.from_pretrained(path, local_files_only=True, use_fast=True)
    except (OSError, ValueError, TypeError) as exc:
        raise UsageError(f"{path} holds a {name} but no tokenizer transformers can load: {exc}",
                         hint="Save the tokenizer next to the model: tokenizer.save_pretrained(DIR).") from exc
    hf.require_fast_tokenizer(tokenizer, path)
    model = model_cls.from_pretrained(path, local_files_only=True,
                                      use_safetensors=None if allow_pickle else True).eval()
    config = model.config
    names = head_labels(config, labels, path)  # id2label in id order, or --labels renaming them
    if token_level:
        task = "token_classification"
        post = {"type": "token_classification", "output": "logits", "aggregation": "simple",
                "ignore_labels": list(IGNORE_LABELS), "unk_token_id": tokenizer.unk_token_id}
    else:
        task, post = _sequence_head(config, names)
    # The pipeline feeds what the tokenizer returns (RoBERTa-style tokenizers return no token
    # types); a model without token-type embeddings (DeBERTa-v3: type_vocab_size 0) ignores them,
    # and a graph input nothing reads is dropped by the exporter, so it is not declared.
    takes_types = int(getattr(config, "type_vocab_size", 1) or 0) > 0
    token_types = "token_type_ids" if "token_type_ids" in tokenizer.model_input_names and takes_types else None
    longest = max_tokens(config, tokenizer)
    text = text_section(tokenizer, TOKENIZER_FILE, longest, token_type_ids=token_types)
    seq = (min(int(text["min_length"]), int(text["max_length"])), int(text["max_length"]))
    inputs = [TensorSpec(n, "int64", ["batch", "seq"]) for n in ("input_ids", "attention_mask", token_types) if n]
    width = len(names)
    output = TensorSpec("logits", "float32", ["batch", "seq", width] if token_level else ["batch", width])
    cases = [
        ShapeCase("export", {"batch": 2, "seq": min(max(8, seq[0]), seq[1])}),
        ShapeCase("batch1-shortest", {"batch": 1, "seq": seq[0]}),
        ShapeCase("batch4-longest", {"batch": 4, "seq": seq[1]}),
        ShapeCase("batch3-mixed", {"batch": 3, "seq": (seq[0] + seq[1]) // 2}),
    ]
    spec = ExportSpec(
        name=path.resolve().name or kind,
        family="hf-token-classification" if token_level else "hf-text-classification",
        task=task,
        inputs=inputs,
        outputs=[output],
        axis_ranges={"batch": BATCH_RANGE, "seq": seq},
        export_case=cases[0],
        parity_cases=cases,
        modalities={"text": {"required": True, "inputs": [t.name for t in inputs], "presence_input": None}},
        preprocessing={"text": text},
        postprocessing=post,
        labels=names,
        assets={TOKENIZER_FILE: tokenizer_json(tokenizer)},
        tolerance=HEAD_TOLERANCE,
        encoders={"text": encoder_info(kind, config.to_dict())},
    )
    source = {"kind": kind, "architecture": name, "path": str(path.resolve()), "sha256": tree_sha256(path)}
    return LoadedModel(TextTaskModel(model).eval(), spec, source)


@register_family("hf-text-classification",
                 detect=hf.supports("hf-text-classification", "text classification", *SEQUENCE_ARCHITECTURES),
                 description="a transformers *ForSequenceClassification directory (BERT/MiniLM, DistilBERT, "
                             "RoBERTa, XLM-R, ELECTRA, MPNet, DeBERTa-v2)")
def load_text_classification(path: Path, **options: Any) -> LoadedModel:
    """Load a fine-tuned sequence-classification directory: label + scores per text."""
    return _load(path, token_level=False, **options)


@register_family("hf-token-classification",
                 detect=hf.supports("hf-token-classification", "token classification", *TOKEN_ARCHITECTURES),
                 description="a transformers *ForTokenClassification directory (NER; the same encoders)")
def load_token_classification(path: Path, **options: Any) -> LoadedModel:
    """Load a fine-tuned token-classification (NER) directory: word-level entities per text."""
    return _load(path, token_level=True, **options)
