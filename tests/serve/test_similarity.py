"""CLIP-style bundles behind the kiosk API: candidate texts per request, and zero-shot labels."""

from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from benchmarks.serve_load import multipart
from edgemm.export.pipeline import ExportOptions, export_bundle
from edgemm.runtime.predictor import Predictor
from tests.models.test_clip_export import _save
from tests.serve.conftest import png_bytes, start_server, stop_server


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("clip") / "tiny-clip", "clip")


def test_similarity_bundle_scores_each_requests_candidates(clip_dir, tmp_path):
    bundle = export_bundle(clip_dir, tmp_path / "sim").bundle
    image = png_bytes(50, 40, (200, 120, 40))
    candidates = [["a cat and a dog", "handwritten seven"], ["the number seven", "a photo of a cat", "a dog"]]
    with Predictor.load(bundle, device="cpu") as predictor:
        expected = [predictor.predict(text=c, image=image).values for c in candidates]
    srv = start_server(tmp_path, str(bundle), "--device", "cpu")
    try:
        def ask(texts):
            body = json.dumps({"text": texts, "image": base64.b64encode(image).decode()}).encode()
            return srv.request("POST", "/v1/predict", body, {"Content-Type": "application/json"})

        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(ask, candidates * 4))
        for res, exp in zip(results, expected * 4):
            assert res.status == 200, res.body
            assert res.json()["values"] == pytest.approx(exp, abs=1e-4)
        single = srv.request("POST", "/v1/predict?text=one", image, {"Content-Type": "image/png"})
        assert single.status == 200 and list(single.json()["values"]) == ["one"]
    finally:
        stop_server(srv)


def test_zero_shot_bundle_takes_an_image_only(clip_dir, tmp_path):
    bundle = export_bundle(clip_dir, tmp_path / "zs", options=ExportOptions(
        labels=("cat", "dog", "seven"), prompt="a photo of a {}")).bundle
    image = png_bytes(50, 40, (10, 10, 10))
    with Predictor.load(bundle, device="cpu") as predictor:
        expected = predictor.predict(image=image)
    srv = start_server(tmp_path, str(bundle), "--device", "cpu")
    try:
        body, headers = multipart({"image": ("x.png", image, "image/png")})
        got = srv.request("POST", "/v1/predict", body, headers).json()
        assert got["label"] == expected.label and got["scores"] == pytest.approx(expected.scores, abs=1e-5)
        refused = srv.request("POST", "/v1/predict", *multipart({"text": (None, b"cat", "text/plain"),
                                                                  "image": ("x.png", image, "image/png")}))
        assert (refused.status, refused.code) == (400, "invalid_input")
        listed = srv.request("POST", "/v1/predict", json.dumps({"text": ["a", "b"]}).encode(),
                             {"Content-Type": "application/json"})
        assert listed.status == 400
    finally:
        stop_server(srv)
