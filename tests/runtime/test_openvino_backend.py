"""OpenVinoBackend: the runtime side of OpenVINO artifacts (torch-free, thread-safe, clear refusals)."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edgemm.bundle.compare import Tolerance, compare_all
from edgemm.bundle.golden import GoldenSet
from edgemm.bundle.verify import verify_bundle
from edgemm.errors import BackendUnavailableError, InvalidInputError, RuntimeFailure, UsageError
from edgemm.runtime.backends import openvino as ovb
from edgemm.runtime.backends.onnxruntime import OrtBackend
from edgemm.runtime.backends.openvino import OpenVinoBackend, ov_properties, unavailable_reason
from tests.optimize.test_openvino_variants import export_ov_bundle

pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def ov_bundle(work, tiny_ckpt, edgemm_cache) -> Path:
    return export_ov_bundle(work, tiny_ckpt)


@pytest.fixture(scope="module")
def golden(ov_bundle) -> GoldenSet:
    return GoldenSet.load(ov_bundle / "golden.npz")


def test_outputs_match_onnx_runtime_fp32(ov_bundle, golden, edgemm_cache):
    manifest = verify_bundle(ov_bundle)
    with OrtBackend(ov_bundle / "model" / "fp32.onnx", manifest.inputs, manifest.outputs) as ort:
        reference = ort.run(golden.feed)
    outputs = {}
    for name in ("ov-fp32", "ov-int8"):
        with OpenVinoBackend.from_artifact(ov_bundle, manifest.artifact(name), manifest.inputs, manifest.outputs, threads=1) as backend:
            outputs[name] = backend.run(golden.feed)
            assert backend.properties["INFERENCE_PRECISION_HINT"] == "f32"
            assert backend.properties["INFERENCE_NUM_THREADS"] == "1" and backend.device == "cpu"
        # The compiled form is cached on this machine, outside the bundle, for the next cold start.
        assert backend.cache_dir is not None and edgemm_cache in backend.cache_dir.parents
        assert any(backend.cache_dir.iterdir()) and not (ov_bundle / "openvino").exists()
        assert set(outputs[name]) == {o.name for o in manifest.outputs}
        # The runtime reproduces what the export's gate measured (same compile path, same numerics).
        np.testing.assert_allclose(outputs[name]["logits"], golden.artifacts[name]["logits"], atol=1e-5)
    results = compare_all("golden", reference, outputs["ov-fp32"], Tolerance(),
                          classify_outputs=manifest.classifying_outputs)
    assert all(r.passed for r in results), [r.to_dict() for r in results]
    # INT8 of a random-weight tiny model: close in direction, not elementwise (the gate judges
    # accuracy). Its logits are near zero (±0.3), so INT8's steps are large against them: the
    # seeded tiny model measures 0.93.
    a, b = outputs["ov-int8"]["logits"].ravel(), reference["logits"].ravel()
    assert float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) > 0.9


def test_dynamic_shapes_and_concurrent_callers(ov_bundle, golden):
    manifest = verify_bundle(ov_bundle)
    backend = OpenVinoBackend.from_artifact(ov_bundle, manifest.artifact("ov-fp32"), manifest.inputs, manifest.outputs).activate()
    one = {k: v[:1] for k, v in golden.feed.items()}
    shorter = {k: (v[:, :5] if v.ndim == 2 else v) for k, v in golden.feed.items()}
    expected = {"full": backend.run(golden.feed), "one": backend.run(one), "short": backend.run(shorter)}
    assert expected["one"]["logits"].shape[0] == 1
    np.testing.assert_allclose(expected["one"]["logits"], expected["full"]["logits"][:1], atol=1e-4)
    errors: list[BaseException] = []

    def worker(kind: str, feed: dict) -> None:
        try:
            for _ in range(10):
                np.testing.assert_allclose(backend.run(feed)["logits"], expected[kind]["logits"], atol=1e-5)
        except BaseException as exc:  # collected: a thread's assertion must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=args) for args in
               (("full", golden.feed), ("one", one), ("short", shorter), ("full", golden.feed))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    with pytest.raises(InvalidInputError):
        backend.run({k: v.astype(np.int32) for k, v in golden.feed.items()})
    backend.deactivate()


def test_unavailable_reasons_and_refusals(ov_bundle, monkeypatch):
    manifest = verify_bundle(ov_bundle)
    art = manifest.artifact("ov-int8")
    assert unavailable_reason(art) is None
    assert "not an OpenVINO artifact" in unavailable_reason(manifest.artifact("fp32"))
    bf16 = replace(art, precision="bf16", requirements={**art.requirements, "inference_precision": "bf16",
                                                         "cpu_flags_any": ["avx512_bf16", "amx_bf16"]})
    monkeypatch.setattr(ovb, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert "lacks avx512_bf16 / amx_bf16" in unavailable_reason(bf16)
    assert unavailable_reason(art) is None  # INT8 / FP32 need no particular flag
    with pytest.raises(BackendUnavailableError, match="cannot run here") as info:
        OpenVinoBackend.from_artifact(ov_bundle, bf16, manifest.inputs, manifest.outputs)
    assert info.value.exit_code == 3
    monkeypatch.setattr(ovb, "openvino_installed", lambda: False)
    assert unavailable_reason(art) == "openvino is not installed: pip install 'edgemm[openvino]'"
    with pytest.raises(BackendUnavailableError) as info:
        OpenVinoBackend.from_artifact(ov_bundle, art, manifest.inputs, manifest.outputs)
    assert info.value.hint == "pip install 'edgemm[openvino]'"


def test_properties_and_engine_errors(ov_bundle, tmp_path):
    props = ov_properties("bf16", 3)
    assert props["INFERENCE_PRECISION_HINT"] == "bf16" and props["INFERENCE_NUM_THREADS"] == "3"
    assert props["PERFORMANCE_HINT"] == "LATENCY" and props["NUM_STREAMS"] == "1"
    with pytest.raises(UsageError, match="inference precision 'fp16'") as info:
        ov_properties("fp16")
    assert info.value.hint == "Choose one of: f32, bf16."
    manifest = verify_bundle(ov_bundle)
    broken = tmp_path / "broken.xml"
    broken.write_text("<net>not an IR</net>")
    with pytest.raises(RuntimeFailure, match=r"OpenVINO could not load broken\.xml"):
        OpenVinoBackend(Path(broken), manifest.inputs, manifest.outputs).activate()
