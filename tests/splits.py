"""A bundle with a ``split`` artifact, built from the tiny FusionModel bundle (no eval data needed)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np

from edgemm.bundle.golden import GoldenSet
from edgemm.bundle.manifest import Manifest
from edgemm.bundle.verify import verify_bundle
from edgemm.bundle.writer import write_manifest
from edgemm.data.synthetic import synthesize_image
from edgemm.optimize.gate import run_artifact
from edgemm.optimize.split import SplitRequest, build_split
from edgemm.runtime.backends.split import WHOLE_PART, SplitBackend
from edgemm.runtime.preprocess.pipeline import Preprocessor

ANSWERS = ["seven", "I think it is three", "maybe a nine or an eight, not sure", "one", "it is a two",
           "zero", "five!", "the answer is four"]


def raw(texts: list[str], seed: int = 0) -> dict[str, list]:
    """Raw requests: the texts, each with a synthetic image."""
    return {"text": list(texts), "image": [synthesize_image(40, 40, seed=seed + i) for i in range(len(texts))]}


def feeds_for(bundle: Path, manifest: Manifest, batches: list[list[str]]) -> list[dict[str, np.ndarray]]:
    """Preprocessed feeds, one per batch of texts (padded to each batch's longest)."""
    pre = Preprocessor(bundle, manifest.preprocessing, manifest.modalities)
    return [pre(raw(texts, seed=10 * i)) for i, texts in enumerate(batches)]


WHOLE_FRACTION = 0.5


def split_bundle(tiny_bundle: Path, target: Path, *, entries: int = 4) -> tuple[Path, dict]:
    """Copy ``tiny_bundle`` to ``target`` and add ``fp32-split`` (the FP32 graph cut at the text branch).

    The gate's labels are FP32's own predictions (the tiny model is untrained): the gate then
    measures agreement with FP32, which is what the split must keep.

    Where the whole graph pays is a timing the export measures (``report["whole"]``); so that
    tests do not depend on this machine's timings, the bundle gets a whole part (the FP32 graph)
    from a share of :data:`WHOLE_FRACTION` new rows whatever was measured.
    """
    shutil.copytree(tiny_bundle, target)
    manifest = verify_bundle(target)
    batches = [ANSWERS[:4], ANSWERS[4:], ANSWERS[2:6], ANSWERS[:1]]
    feeds = feeds_for(target, manifest, batches)
    fp32 = run_artifact(target / "model/fp32.onnx", feeds, manifest.primary_output)
    source = manifest.artifact("fp32")
    request = SplitRequest(staging=target, source=source, name="fp32-split", entries=entries,
                           inputs=manifest.inputs, outputs=manifest.outputs, modalities=manifest.modality_specs(),
                           fp32_path=target / "model/fp32.onnx", feeds=feeds, labels=fp32.argmax(-1),
                           fp32_outputs=fp32, output=manifest.primary_output, budget_points=0.0)
    artifact, report = build_split(request)
    assert artifact is not None, report
    parts = [p for p in artifact.requirements["parts"] if p["name"] != WHOLE_PART]
    parts.append({**parts[-1], "name": WHOLE_PART, "path": source.path, "inputs": [s.name for s in manifest.inputs]})
    artifact = dataclasses.replace(
        artifact, files=[*(f for f in artifact.files if f != source.path), source.path],
        requirements={**artifact.requirements, "parts": parts, "whole": {"min_new_fraction": WHOLE_FRACTION}})
    golden = GoldenSet.load(target / manifest.golden)
    with SplitBackend(target, artifact, manifest.inputs, manifest.outputs) as backend:
        golden.artifacts[artifact.name] = backend.run_reference(golden.feed)
    golden.save(target / manifest.golden)
    manifest.artifacts.append(artifact)
    manifest.validation["split"] = report
    manifest.files = []
    write_manifest(target, manifest)
    return target, report
