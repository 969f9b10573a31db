"""Export tiny fusion models of every kind and check parity, bundles and torch-free predictions."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgemm.bundle.verify import verify_bundle
from edgemm.data.synthetic import synthesize_image, synthesize_speechlike
from edgemm.export.pipeline import ExportOptions, export_bundle
from edgemm.models.model import FusionModel
from edgemm.runtime.postprocess import postprocess
from edgemm.runtime.preprocess.audio import encode_wav
from edgemm.runtime.preprocess.pipeline import Preprocessor
from tests.conftest import REPO, run_edge
from tests.factories import build_fusion

MODELS = {
    "concat-vit": dict(fusion="concat"),
    "gated-vit": dict(fusion="gated"),
    "cross-resnet": dict(fusion="cross_attention", image="resnet"),
    "gated-convnext-logmel": dict(fusion="gated", image="convnext", audio="logmel"),
    "cross-deit-wav2vec2": dict(fusion="cross_attention", image="deit", audio="wav2vec2"),
    "cross-vit-logmel": dict(fusion="cross_attention", audio="logmel", head="multilabel"),
    "concat-resnet-whisper": dict(fusion="concat", image="resnet", audio="whisper", audio_optional=False, text="distilbert"),
    "gated-hubert-regression": dict(fusion="gated", audio="hubert", head="regression", image="clip_vision_model"),
    "dual-clipvision": dict(fusion="dual", image="clip_vision_model", head="matching"),
}


@pytest.fixture(scope="session")
def tokenizer(minilm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir)


@pytest.fixture(scope="session")
def exported(work, tokenizer):
    cache: dict[str, tuple[Path, Path, object]] = {}

    def get(name: str):
        if name not in cache:
            ckpt = build_fusion(work / f"{name}-ckpt", tokenizer, **MODELS[name])
            report = export_bundle(ckpt, work / f"{name}.bundle", options=ExportOptions())
            cache[name] = (ckpt, report.bundle, report)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def inputs(work):
    image = work / "answer.png"
    Image.fromarray(synthesize_image(45, 70, seed=3)).save(image)
    audio = work / "answer.wav"
    audio.write_bytes(encode_wav(synthesize_speechlike(0.8, 22050, seed=5), 22050))
    return image, audio


@pytest.mark.parametrize("name", list(MODELS))
def test_export_passes_parity_at_three_or_more_shapes(exported, name):
    _, bundle, report = exported(name)
    parity = report.parity
    assert parity["passed"], parity
    cases = {c["case"]: c for c in parity["comparisons"]}
    assert len(cases) >= 3
    shapes = {c["case"]: tuple(c["shape"]) for c in parity["comparisons"]}
    assert len({s for case, s in shapes.items() if case != "export"} - {shapes["export"]}) >= 2
    for comparison in parity["comparisons"]:
        assert comparison["max_abs"] < 1e-4 and comparison["cosine"] > 0.9999
    manifest = verify_bundle(bundle)
    assert manifest.validation["parity"]["passed"]
    assert manifest.artifacts[0].validation["parity"]["passed"]
    assert {f.path for f in manifest.files} >= {"model/fp32.onnx", "golden.npz", "text/tokenizer.json"}
    # No local paths (exporter stack traces) ship inside the graph.
    assert str(REPO).encode() not in (bundle / "model" / "fp32.onnx").read_bytes()


@pytest.mark.parametrize("name", list(MODELS))
def test_torch_free_prediction_matches_pytorch(exported, inputs, name):
    ckpt, bundle, _ = exported(name)
    image, audio = inputs
    args = ["predict", str(bundle), "--text", "I think it is 7", "--image", str(image), "--json"]
    manifest = verify_bundle(bundle)
    if "audio" in manifest.modalities:
        args += ["--audio", str(audio)]
    code, out, err, guard = run_edge(*args)
    assert code == 0, err
    assert guard == {"modules": [], "sockets": 0}
    edge = json.loads(out)["predictions"][0]

    # The same request through PyTorch (preprocessed by the same runtime code on the build side).
    model = FusionModel.from_pretrained(ckpt)
    request = {"text": ["I think it is 7"], "image": [image.read_bytes()]}
    if "audio" in manifest.modalities:
        request["audio"] = [audio.read_bytes()]
    feed = Preprocessor(bundle, manifest.preprocessing, manifest.modalities)(request)
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v) for k, v in feed.items()})
    reference = postprocess({k: v.numpy() for k, v in out.items()}, manifest)[0]
    assert edge["label"] == reference.label
    for key, value in reference.scores.items():
        assert edge["scores"][key] == pytest.approx(value, abs=1e-4)
    for key, value in reference.values.items():
        assert edge["values"][key] == pytest.approx(value, abs=1e-4)


def test_optional_modality_absent_and_batch(exported, inputs):
    _, bundle, _ = exported("gated-convnext-logmel")
    from edgemm.runtime import Predictor

    image, audio = inputs
    with Predictor.load(bundle, device="cpu") as predictor:
        without = predictor.predict(text="seven", image=image.read_bytes())
        batch = predictor.predict(text=["seven", "七"], image=[image.read_bytes(), str(image)],
                                  audio=[audio.read_bytes(), None])
        assert len(batch) == 2
        assert batch[1].scores == pytest.approx(predictor.predict(text="七", image=str(image)).scores, abs=1e-5)
        assert without.label in predictor.labels


def test_missing_required_modality_is_a_clear_error(exported, inputs):
    from edgemm.errors import MissingModalityError
    from edgemm.runtime import Predictor

    _, bundle, _ = exported("concat-resnet-whisper")
    image, _ = inputs
    with Predictor.load(bundle, device="cpu") as predictor, pytest.raises(MissingModalityError, match="audio"):
        predictor.predict(text="seven", image=image.read_bytes())
    code, _, err, _ = run_edge("predict", str(bundle), "--text", "seven", "--image", str(image))
    assert code == 2 and "Error:" in err and "Hint:" in err and "Traceback" not in err


def test_model_forward_refuses_missing_modality(exported):
    from edgemm.errors import MissingModalityError

    ckpt, _, _ = exported("concat-vit")
    model = FusionModel.from_pretrained(ckpt)
    with pytest.raises(MissingModalityError, match="image"):
        model(input_ids=torch.ones(1, 4, dtype=torch.long), attention_mask=torch.ones(1, 4, dtype=torch.long))


def test_png_bytes_and_array_inputs_agree(exported):
    from edgemm.runtime import Predictor

    _, bundle, _ = exported("concat-vit")
    array = synthesize_image(40, 40, seed=11)
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    with Predictor.load(bundle) as predictor:
        a = predictor.predict(text="7", image=array)
        b = predictor.predict(text="7", image=buf.getvalue())
    assert a.scores == pytest.approx(b.scores)
    assert np.isclose(sum(a.scores.values()), 1.0)
