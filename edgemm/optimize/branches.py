"""Which part of a fusion model (text / image / audio encoder, fusion, head) each ONNX node is.

The dynamo exporter records each node's module path in ``pkg.torch.onnx.name_scopes``
(``inner.encoders.text.model…``); the TorchScript exporter puts a shortened path in the node
name (``/inner/text/model/…``, projections as ``/inner/text_1/…``). Per-modality precision and
per-encoder graph optimization need this mapping.
"""

from __future__ import annotations

import re
from typing import Any

_DYNAMO = re.compile(r"\binner\.(?:encoders|projections)\.(text|image|audio)\b")
_LEGACY = re.compile(r"^/inner/(text|image|audio)(?:_\d+)?/")


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


def node_branches(model: Any) -> dict[str, str]:
    """Node name → branch for every named node of an ONNX ``ModelProto``.

    Nodes without a module path (fused by an optimizer) take the branch most of their
    producers and consumers have, repeated until nothing changes; leftovers are ``fusion``.
    """
    nodes = [n for n in model.graph.node if n.name]
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


def nodes_in(model: Any, branches: set[str], op_types: set[str] | None = None) -> list[str]:
    """Names of the nodes in ``branches`` (optionally only of ``op_types``)."""
    mapping = node_branches(model)
    return [node.name for node in model.graph.node
            if node.name and mapping.get(node.name) in branches and (op_types is None or node.op_type in op_types)]
