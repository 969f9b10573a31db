"""Which part of a fusion model (text / image / audio encoder, fusion, head) each ONNX node is.

The dynamo exporter records each node's module path in ``pkg.torch.onnx.name_scopes``
(``inner.encoders.text.model…``); the TorchScript exporter puts a shortened path in the node
name (``/inner/text/model/…``, projections as ``/inner/text_1/…``). Per-modality precision and
per-encoder graph optimization need this mapping.

A model of one modality that is not a FusionModel (a Hugging Face ``*For…`` classifier) has no
such paths: with ``single_modality`` given, everything but its classification head (the
:data:`HEAD_MODULES` a transformers head is built from) is that modality's encoder.
"""

from __future__ import annotations

import re
from typing import Any

_DYNAMO = re.compile(r"\binner\.(?:encoders|projections)\.(text|image|audio)\b")
_LEGACY = re.compile(r"^/inner/(text|image|audio)(?:_\d+)?/")
# The modules transformers' classification heads are built from (``BertForSequenceClassification.
# classifier``, DistilBERT's ``pre_classifier``, DeiT's two classifiers, Wav2Vec2's ``projector`` …).
HEAD_MODULES = ("classifier", "pre_classifier", "cls_classifier", "distillation_classifier", "projector", "score",
                "qa_outputs")
# One module path component: between dots, slashes or the quotes of the dynamo scope list.
_HEAD = re.compile(r"(?:^|[./'])(?:" + "|".join(HEAD_MODULES) + r")(?=[./']|$)")


def branch_of(node: Any) -> str | None:
    """``text`` / ``image`` / ``audio`` for encoder nodes (projections included), ``head``,
    ``fusion`` (the fusion module and glue), or ``None`` when the node carries no module path
    (e.g. a node an optimizer fused)."""
    scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), None)
    if scopes is not None:
        match = _DYNAMO.search(scopes)
        if match:
            return match.group(1)
        return "head" if re.search(r"\binner\.head\b", scopes) else "fusion"
    match = _LEGACY.match(node.name)
    if match:
        return match.group(1)
    if node.name.startswith("/inner/head/"):
        return "head"
    return "fusion" if node.name.startswith("/inner/") else None


def _in_head(node: Any) -> bool:
    """Whether ``node`` belongs to a transformers classification head (by its module path)."""
    scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), None)
    return bool(_HEAD.search(scopes if scopes is not None else node.name))


def node_branches(model: Any, single_modality: str | None = None) -> dict[str, str]:
    """Node name → branch for every named node of an ONNX ``ModelProto``.

    Nodes without a module path (fused by an optimizer) take the branch most of their
    producers and consumers have, repeated until nothing changes; leftovers are ``fusion``.
    With ``single_modality`` (the model's only modality) and no encoder path anywhere (not a
    FusionModel), every node outside the classification head is that modality's encoder.
    """
    nodes = [n for n in model.graph.node if n.name]
    if single_modality and not any(branch_of(n) in ("text", "image", "audio") for n in nodes):
        return {n.name: "head" if _in_head(n) else single_modality for n in nodes}
    branch = {n.name: branch_of(n) for n in nodes}
    producer = {out: n.name for n in nodes for out in n.output}
    consumers: dict[str, list[str]] = {}
    for n in nodes:
        for name in n.input:
            consumers.setdefault(name, []).append(n.name)
    neighbours = {n.name: [producer[i] for i in n.input if i in producer]
                  + [c for o in n.output for c in consumers.get(o, [])] for n in nodes}
    changed = True
    while changed:
        changed = False
        for name, value in branch.items():
            if value is not None:
                continue
            votes = [branch[x] for x in neighbours[name] if branch.get(x) in ("text", "image", "audio")]
            if votes:
                branch[name] = max(set(votes), key=votes.count)
                changed = True
    return {name: value or "fusion" for name, value in branch.items()}


def nodes_in(model: Any, branches: set[str], op_types: set[str] | None = None,
             single_modality: str | None = None) -> list[str]:
    """Names of the nodes in ``branches`` (optionally only of ``op_types``); ``single_modality``
    as for :func:`node_branches`."""
    mapping = node_branches(model, single_modality)
    return [node.name for node in model.graph.node
            if node.name and mapping.get(node.name) in branches and (op_types is None or node.op_type in op_types)]
