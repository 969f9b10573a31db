"""Postprocessing types on real model outputs: each activation applied once, every output carried,
and anything that does not fit the head refused with a typed error."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgemm.bundle.manifest import Artifact, Manifest, TensorSpec
from edgemm.data.synthetic import synthesize_image
from edgemm.errors import BundleError, OutputMismatchError, RuntimeFailure
from edgemm.runtime.postprocess import POSTPROCESSING_TYPES, postprocess
from edgemm.runtime.preprocess.image import default_image_preprocessing, preprocess_images
from tests.fixtures.cli_models import IMAGE_SIZE, LABELS, image_model

SECTION = default_image_preprocessing(size=IMAGE_SIZE, mean=0.5, std=0.5, channels=1)


def _pixels(n: int = 6) -> torch.Tensor:
    images = [synthesize_image(20 + 3 * i, 30 - 2 * i, seed=i) for i in range(n)]
    return torch.from_numpy(preprocess_images(images, SECTION))


def _run(activation: str | None, pixels: torch.Tensor) -> dict[str, np.ndarray]:
    """The real outputs of the user's model (PyTorch) on real preprocessed images."""
    with torch.no_grad():
        return {k: v.numpy() for k, v in image_model(activation)(pixels).items()}


def _manifest(postprocessing: dict, outputs: list[TensorSpec], labels: list[str] | None = None,
              task: str = "classification") -> Manifest:
    return Manifest(
        name="user-model", task=task,
        modalities={"image": {"required": True, "inputs": ["pixel_values"], "presence_input": None}},
        inputs=[TensorSpec("pixel_values", "float32", ["batch", 1, IMAGE_SIZE, IMAGE_SIZE])],
        outputs=outputs, preprocessing={"image": SECTION}, postprocessing=postprocessing,
        artifacts=[Artifact("fp32", "model/fp32.onnx", "onnx", "fp32", ["model/fp32.onnx"])],
        labels=list(LABELS) if labels is None else labels,
    )


TWO_OUTPUTS = [TensorSpec("logits", "float32", ["batch", 4]), TensorSpec("embedding", "float32", ["batch", 16])]
PROBS = [TensorSpec("probs", "float32", ["batch", 4])]


def test_softmax_on_logits_and_probabilities_on_a_softmax_head_agree():
    pixels = _pixels()
    logits = postprocess(_run(None, pixels), _manifest({"type": "softmax", "output": "logits", "top_k": 4}, TWO_OUTPUTS))
    probs = postprocess(_run("softmax", pixels), _manifest({"type": "probabilities", "output": "probs", "top_k": 4}, PROBS))
    for a, b in zip(logits, probs):
        assert a.label == b.label and a.labels == b.labels == [a.label]
        assert list(a.scores) == list(b.scores)
        assert a.scores == pytest.approx(b.scores, abs=1e-6)
        # No second softmax: the score is the head's own probability.
        assert b.score == pytest.approx(max(b.outputs["probs"]), abs=1e-7)


def test_multilabel_probabilities_flag_exactly_the_labels_over_the_threshold():
    outputs = _run("sigmoid", _pixels())
    right = postprocess(outputs, _manifest({"type": "multilabel_probabilities", "output": "probs", "threshold": 0.5},
                                           PROBS, task="multilabel"))
    # The double-activation mistake: sigmoid over values that already are sigmoids.
    doubled = postprocess(outputs, _manifest({"type": "sigmoid", "output": "probs", "threshold": 0.5},
                                             PROBS, task="multilabel"))
    for row, pred, wrong in zip(outputs["probs"], right, doubled):
        expected = {LABELS[j] for j in range(len(LABELS)) if row[j] >= 0.5}
        assert set(pred.labels) == expected and 0 < len(expected) < len(LABELS)
        assert pred.scores == pytest.approx(dict(zip(LABELS, row.tolist())), abs=1e-7)  # scores as given
        assert set(wrong.labels) == set(LABELS)  # every label flagged: the bug this type exists for
        assert min(wrong.scores.values()) > 0.5


def test_sigmoid_on_logits_equals_multilabel_probabilities_on_a_sigmoid_head():
    pixels = _pixels()
    on_logits = postprocess(_run(None, pixels), _manifest({"type": "sigmoid", "output": "logits"}, TWO_OUTPUTS,
                                                          task="multilabel"))
    on_probs = postprocess(_run("sigmoid", pixels), _manifest({"type": "multilabel_probabilities", "output": "probs"},
                                                              PROBS, task="multilabel"))
    for a, b in zip(on_logits, on_probs):
        assert a.labels == b.labels and a.scores == pytest.approx(b.scores, abs=1e-6)


def test_probability_types_refuse_values_that_are_not_probabilities():
    pixels = _pixels()
    logits = {"probs": _run(None, pixels)["logits"]}
    with pytest.raises(OutputMismatchError, match=r"expects probabilities in \[0, 1\]") as info:
        postprocess(logits, _manifest({"type": "probabilities", "output": "probs"}, PROBS))
    assert "'softmax'" in info.value.hint
    with pytest.raises(OutputMismatchError, match=r"expects probabilities in \[0, 1\]") as info:
        postprocess(logits, _manifest({"type": "multilabel_probabilities", "output": "probs"}, PROBS, task="multilabel"))
    assert "'sigmoid'" in info.value.hint
    # Per-label sigmoids are in [0, 1] but do not sum to 1: not single-label probabilities.
    with pytest.raises(OutputMismatchError, match="sum to 1") as info:
        postprocess(_run("sigmoid", pixels), _manifest({"type": "probabilities", "output": "probs"}, PROBS))
    assert "multilabel_probabilities" in info.value.hint
    # Reduced precision rounds probabilities a little; that is still an answer.
    fp16 = {"probs": _run("softmax", pixels)["probs"].astype(np.float16)}
    assert postprocess(fp16, _manifest({"type": "probabilities", "output": "probs"}, PROBS))[0].label in LABELS


@pytest.mark.parametrize("labels", [LABELS[:3], [*LABELS, "extra"], []])
@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_a_label_list_that_does_not_fit_the_output_is_a_bundle_error(labels, kind):
    outputs = _run(None, _pixels(2))
    with pytest.raises(BundleError, match=r"but output 'logits' has 4 values per row") as info:
        postprocess(outputs, _manifest({"type": kind, "output": "logits"}, TWO_OUTPUTS, labels=labels))
    assert isinstance(info.value, OutputMismatchError) and info.value.details["labels"] == len(labels)
    assert "one label per class" in info.value.hint


def test_every_output_is_carried_by_name():
    outputs = _run(None, _pixels(3))
    preds = postprocess(outputs, _manifest({"type": "softmax", "output": "logits"}, TWO_OUTPUTS))
    for i, pred in enumerate(preds):
        assert list(pred.outputs) == ["logits", "embedding"]
        np.testing.assert_allclose(pred.outputs["logits"], outputs["logits"][i], atol=1e-7)
        np.testing.assert_allclose(pred.outputs["embedding"], outputs["embedding"][i], atol=1e-7)
        document = json.loads(json.dumps(pred.to_dict()))
        assert set(document) == {"label", "score", "scores", "labels", "values", "outputs", "entities"}
        assert len(document["outputs"]["embedding"]) == 16


def test_identity_names_values_by_label_or_by_output():
    outputs = _run(None, _pixels(2))
    named = postprocess(outputs, _manifest({"type": "identity", "output": "logits"}, TWO_OUTPUTS, task="regression"))
    assert named[0].values == pytest.approx(dict(zip(LABELS, outputs["logits"][0].tolist())))
    assert named[0].label is None and named[0].labels == []
    unnamed = postprocess(outputs, _manifest({"type": "identity", "output": "embedding"}, TWO_OUTPUTS, labels=[],
                                             task="embedding"))
    assert list(unnamed[1].values)[:2] == ["embedding[0]", "embedding[1]"] and len(unnamed[1].values) == 16
    single = {"score": outputs["logits"][:, :1]}
    one = postprocess(single, _manifest({"type": "identity", "output": "score"},
                                        [TensorSpec("score", "float32", ["batch", 1])], labels=[], task="regression"))
    assert one[0].values == {"score": pytest.approx(float(single["score"][0, 0]))}


def test_matching_reads_one_logit():
    logit = {"logits": _run(None, _pixels(2))["logits"][:, :1]}
    spec = [TensorSpec("logits", "float32", ["batch", 1])]
    preds = postprocess(logit, _manifest({"type": "matching", "output": "logits"}, spec, labels=["no", "yes"],
                                         task="matching"))
    p = 1 / (1 + np.exp(-logit["logits"][0, 0]))
    assert preds[0].scores == pytest.approx({"no": 1 - p, "yes": p}) and preds[0].label == ("yes" if p >= 0.5 else "no")
    with pytest.raises(OutputMismatchError, match="one match logit per row"):
        postprocess(_run(None, _pixels(2)), _manifest({"type": "matching", "output": "logits"}, TWO_OUTPUTS,
                                                      labels=["no", "yes"], task="matching"))
    with pytest.raises(OutputMismatchError, match="two labels"):
        postprocess(logit, _manifest({"type": "matching", "output": "logits"}, spec, task="matching"))


def test_similarity_candidates_and_shared_outputs():
    """Image–text similarity: the candidates name the scores; per-candidate outputs are given whole."""
    torch.manual_seed(1)
    image_embeds = torch.from_numpy(_run(None, _pixels(3))["embedding"])
    text_embeds = torch.nn.Embedding(10, 16)(torch.tensor([1, 5]))  # two candidate texts
    with torch.no_grad():
        outputs = {"logits_per_image": (image_embeds @ text_embeds.T * 10).numpy(),
                   "image_embeds": image_embeds.numpy(), "text_embeds": text_embeds.detach().numpy()}
    specs = [TensorSpec("logits_per_image", "float32", ["batch", "text_batch"]),
             TensorSpec("image_embeds", "float32", ["batch", 16]), TensorSpec("text_embeds", "float32", ["text_batch", 16])]
    manifest = _manifest({"type": "softmax", "output": "logits_per_image"}, specs, labels=[], task="image_text_similarity")
    preds = postprocess(outputs, manifest, candidates=["a cat", "a dog"])
    assert len(preds) == 3  # more images than candidates: nothing indexed past the texts
    for i, pred in enumerate(preds):
        assert list(pred.values) == ["a cat", "a dog"] and pred.label in ("a cat", "a dog")
        np.testing.assert_allclose(pred.outputs["image_embeds"], outputs["image_embeds"][i], atol=1e-7)
        np.testing.assert_allclose(pred.outputs["text_embeds"], outputs["text_embeds"], atol=1e-7)
    with pytest.raises(OutputMismatchError, match="3 candidate texts"):
        postprocess(outputs, manifest, candidates=["a", "b", "c"])


def test_unknown_type_missing_output_and_bad_settings_are_bundle_errors():
    outputs = _run(None, _pixels(2))
    with pytest.raises(OutputMismatchError, match="Unknown postprocessing type 'argmax'") as info:
        postprocess(outputs, _manifest({"type": "argmax", "output": "logits"}, TWO_OUTPUTS))
    assert all(kind in info.value.hint for kind in POSTPROCESSING_TYPES)
    with pytest.raises(OutputMismatchError, match=r"reads output 'scores'.*logits, embedding"):
        postprocess(outputs, _manifest({"type": "softmax", "output": "scores"}, TWO_OUTPUTS))
    with pytest.raises(OutputMismatchError, match="top_k"):
        postprocess(outputs, _manifest({"type": "softmax", "output": "logits", "top_k": "5"}, TWO_OUTPUTS))
    with pytest.raises(OutputMismatchError, match="threshold"):
        postprocess(outputs, _manifest({"type": "sigmoid", "output": "logits", "threshold": 2}, TWO_OUTPUTS))


def test_non_finite_outputs_are_a_runtime_failure():
    outputs = _run(None, _pixels(3))
    outputs["logits"][1, 2] = np.nan
    with pytest.raises(RuntimeFailure, match=r"NaN or infinite values in output 'logits' \(row 1\)"):
        postprocess(outputs, _manifest({"type": "softmax", "output": "logits"}, TWO_OUTPUTS))


def test_the_type_names_other_modules_emit_and_validate():
    assert POSTPROCESSING_TYPES == ("softmax", "sigmoid", "probabilities", "multilabel_probabilities",
                                    "matching", "identity", "token_classification")
