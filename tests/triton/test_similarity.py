"""A CLIP-style similarity bundle on a real tritonserver: each request scores its own candidate texts."""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from edgemm.errors import UsageError
from edgemm.triton import RepositoryOptions, write_repository
from edgemm.triton.pbtxt import validate_config
from tests.models.test_clip_export import _save
from tests.triton.server import TritonProcess, find_server

httpclient = pytest.importorskip("tritonclient.http", reason="needs tritonclient[http]")
from tritonclient.utils import InferenceServerException  # noqa: E402

CANDIDATES = [["a cat and a dog", "handwritten seven"], ["the number seven", "a photo of a cat", "a dog"],
              ["سبعة", "🐈 a cat"]]


def _png(colour: tuple[int, int, int]) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (50, 40), colour).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def similarity_bundle(tmp_path_factory):
    from edgemm.export.pipeline import export_bundle

    folder = tmp_path_factory.mktemp("clip")
    return export_bundle(_save(folder / "tiny-clip", "clip"), folder / "sim").bundle


def _request(image: bytes, texts: list[str]) -> list:
    image_in = httpclient.InferInput("IMAGE", [1], "BYTES")
    image_in.set_data_from_numpy(np.array([image], dtype=object))
    texts_in = httpclient.InferInput("TEXTS", [len(texts)], "BYTES")
    texts_in.set_data_from_numpy(np.array([t.encode("utf-8") for t in texts], dtype=object))
    return [image_in, texts_in]


def test_repository_has_one_unbatched_python_model(similarity_bundle, tmp_path):
    report = write_repository(similarity_bundle, tmp_path / "repo", RepositoryOptions(device="cpu"))
    assert list(report.models) == [report.ensemble] and report.python_ensemble is None
    config = validate_config((tmp_path / "repo" / report.ensemble / "config.pbtxt").read_text(), name=report.ensemble)
    assert config.backend == "python" and config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert [(t.name, list(t.dims)) for t in config.input] == [("IMAGE", [1]), ("TEXTS", [-1])]
    assert [(t.name, list(t.dims)) for t in config.output] == [("SCORES", [-1]), ("LABEL", [1]), ("PREDICTION", [1])]
    assert (tmp_path / "repo" / report.ensemble / "1" / "bundle" / "edgemm.json").is_file()
    with pytest.raises(UsageError, match="not batched"):
        write_repository(similarity_bundle, tmp_path / "other", RepositoryOptions(max_batch_size=4))
    assert not (tmp_path / "other").exists()


def test_similarity_on_tritonserver_matches_the_predictor(similarity_bundle, tmp_path):
    from edgemm.runtime.predictor import Predictor

    paths, reason = find_server()
    if paths is None:
        pytest.skip(f"cannot run tritonserver here: {reason}")
    report = write_repository(similarity_bundle, tmp_path / "repo", RepositoryOptions(device="cpu"))
    images = [_png((200, 120, 40)), _png((10, 10, 10)), _png((30, 200, 90))]
    with Predictor.load(similarity_bundle, device="cpu") as predictor:
        expected = [predictor.predict(text=texts, image=image).values for image, texts in zip(images, CANDIDATES)]
    server = TritonProcess(paths, report.repository, tmp_path / "server", [report.ensemble])
    try:
        server.wait_ready()
        def ask(index: int) -> tuple[np.ndarray, str, dict]:
            client = httpclient.InferenceServerClient(server.url)  # the gevent client is one thread's
            result = client.infer(report.ensemble, _request(images[index % 3], CANDIDATES[index % 3]))
            return (result.as_numpy("SCORES"), result.as_numpy("LABEL")[0].decode(),
                    json.loads(result.as_numpy("PREDICTION")[0]))

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, range(24)))
        for index, (scores, label, document) in enumerate(answers):
            want = expected[index % 3]
            texts = CANDIDATES[index % 3]
            np.testing.assert_allclose(scores, [want[t] for t in texts], atol=1e-5)
            assert label == max(texts, key=want.get)
            assert document["values"] == pytest.approx(want, abs=1e-5)

        client = httpclient.InferenceServerClient(server.url)
        # Bad requests get an error of their own; the model keeps serving. (Triton itself refuses
        # a second image: IMAGE is declared with dims [1].)
        with pytest.raises(InferenceServerException, match="unexpected shape for input 'IMAGE'"):
            two = httpclient.InferInput("IMAGE", [2], "BYTES")
            two.set_data_from_numpy(np.array([images[0], images[1]], dtype=object))
            client.infer(report.ensemble, [two, _request(images[0], ["x"])[1]])
        with pytest.raises(InferenceServerException, match=r"E_UNSUPPORTED_MEDIA|E_INVALID_INPUT"):
            client.infer(report.ensemble, _request(b"not an image", ["x"]))
        with pytest.raises(InferenceServerException, match="E_INVALID_INPUT: TEXTS must hold"):
            client.infer(report.ensemble, _request(images[0], ["fine", ""]))
        assert ask(0)[1] == max(CANDIDATES[0], key=expected[0].get)
    finally:
        server.stop()

