"""The Python-backend models without a server: a stand-in for triton_python_backend_utils."""

from __future__ import annotations

import io
import json
import types
from pathlib import Path

import numpy as np
import pytest

from edgemm.triton.python_models import model_class


class _Error:
    INVALID_ARG = 3

    def __init__(self, message: str, code: int | None = None):
        self.message, self.code = message, code


class _Tensor:
    def __init__(self, name: str, array: np.ndarray):
        self.name, self.array = name, array

    def as_numpy(self) -> np.ndarray:
        return self.array


class _Response:
    def __init__(self, output_tensors: list[_Tensor], error: _Error | None = None):
        self.outputs = {t.name: t.array for t in output_tensors}
        self.error = error


class _Request:
    def __init__(self, **inputs: np.ndarray):
        self.inputs = inputs


FAKE = types.SimpleNamespace(
    Tensor=_Tensor, InferenceResponse=_Response, TritonError=_Error,
    get_input_tensor_by_name=lambda request, name: (_Tensor(name, request.inputs[name]) if name in request.inputs
                                                     else None),
)


def _load(repo: Path, model: str):
    from google.protobuf import json_format, text_format

    from edgemm.triton.pbtxt import model_config_pb2

    message = text_format.Parse((repo / model / "config.pbtxt").read_text(), model_config_pb2().ModelConfig())
    config = json_format.MessageToDict(message, preserving_proto_field_name=True)
    role = {"preprocess": "preprocess", "postprocess": "postprocess"}.get(model.rsplit("_", 1)[-1], "model")
    instance = model_class(role, FAKE)()
    instance.initialize({"model_config": json.dumps(config), "model_repository": str(repo / model),
                         "model_version": "1", "model_name": model, "model_instance_kind": "CPU"})
    return instance


def _png(seed: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_pipeline_of_the_three_roles_matches_the_predictor(triton_repo: Path, tiny_bundle: Path):
    pytest.importorskip("google.protobuf")
    from edgemm.runtime.predictor import Predictor

    name = "tiny-concat-vit"
    pre, model, post = (_load(triton_repo, m) for m in (f"{name}_preprocess", f"{name}_fp32_python",
                                                         f"{name}_postprocess"))
    texts = ["a short one", "a somewhat longer sentence about the picture"]
    requests = [_Request(TEXT=np.array([[t.encode()]], dtype=object), IMAGE=np.array([[_png(i)]], dtype=object))
                for i, t in enumerate(texts)]
    requests.append(_Request(TEXT=np.array([[b"hi"]], dtype=object), IMAGE=np.array([[b"GIF89a broken"]], dtype=object)))
    feeds = pre.execute(requests)
    assert feeds[2].error is not None and feeds[2].error.code == _Error.INVALID_ARG
    assert feeds[2].error.message.startswith("E_")  # a typed edgemm error, per request
    assert all(f.error is None for f in feeds[:2])
    # Fixed text padding: equal shapes, so the model runs both requests as one batch.
    assert feeds[0].outputs["input_ids"].shape == feeds[1].outputs["input_ids"].shape
    outputs = model.execute([_Request(**f.outputs) for f in feeds[:2]])
    predictions = post.execute([_Request(**o.outputs) for o in outputs])
    with Predictor.load(tiny_bundle, device="cpu") as predictor:
        for i, text in enumerate(texts):
            expected = predictor.predict(text=text, image=_png(i))
            served = json.loads(predictions[i].outputs["PREDICTION"][0, 0])
            assert served["label"] == expected.label
            assert served["score"] == pytest.approx(expected.score, abs=1e-5)
            np.testing.assert_allclose(outputs[i].outputs["logits"][0], expected.outputs["logits"], atol=1e-5)
    model.finalize()

    missing = model.execute([_Request(input_ids=feeds[0].outputs["input_ids"])])
    assert missing[0].error is not None and "attention_mask" in missing[0].error.message
