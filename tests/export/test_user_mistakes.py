"""Deliberate user mistakes: each refused at export through the real CLI, with a hint that points the
right way, the right exit code, and nothing written at ``-o``.

The models live in ``tests/fixtures/user_models.py``; every one is exported with
``edgemm export --spec tests.fixtures.user_models:<factory>``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from edgemm.bundle.verify import verify_bundle
from edgemm.cli import cli
from edgemm.runtime import Predictor
from tests.conftest import REPO
from tests.fixtures import user_models

SPEC = "tests.fixtures.user_models:"

# factory, extra CLI arguments, exit code, phrases of the Error line(s), phrases of the Hint.
MISTAKES = [
    pytest.param("bright_branch", ["--exporter", "legacy"], 2,
                 ["user_models.py:", "`if pixel_values.mean() > 0.9:`", "Converting a tensor to a Python boolean"],
                 ["torch.where", "--allow-tracer-warnings"], id="unexercised-branch-legacy"),
    pytest.param("bright_branch", [], 2,
                 ["user_models.py:", "pixel_values.mean() > 0.9", "decides on a tensor's value"],
                 ["torch.where", "--allow-tracer-warnings"], id="unexercised-branch-dynamo"),
    pytest.param("renamed_params", [], 2,
                 ["forward() (user_models.py:", "takes `ids`, `mask`, `img`", "`input_ids`, `attention_mask`, "
                  "`pixel_values` match no parameter"],
                 ["argument_names={'input_ids': 'ids', 'attention_mask': 'mask', 'pixel_values': 'img'}",
                  "text_section(..., input_ids="], id="forward-names"),
    pytest.param("output_typo", [], 2, ["`logit`", "did you mean `logits` for `logit`?", "returns a dict with `logits`"],
                 ["Name the spec's outputs"], id="output-name-typo"),
    pytest.param("wrong_label_count", [], 2, ["3 labels (cat, dog, bird)", "'logits' has 4 values per row"],
                 ["one label per output value"], id="label-count"),
    pytest.param("wrong_output_shape", [], 2, ["'logits' is declared [batch, 5]", "returns shape [2, 3]"],
                 ["TensorSpec('logits', 'float32', ['batch', 3])"], id="output-shape"),
    pytest.param("wrong_output_dtype", [], 2, ["'logits' is declared float16 but forward() returns float32"],
                 ["TensorSpec('logits', 'float32', …)"], id="output-dtype"),
    pytest.param("probabilities_over_logits", [], 2, ["postprocessing does not fit", "probabilities"],
                 ["softmax / sigmoid for logits"], id="probabilities-over-logits"),
    pytest.param("export_shape_out_of_range", [], 2, ["'export': seq=40 is outside its range 2..24"],
                 ["axis_ranges['seq']"], id="axis-range"),
    pytest.param("ignored_input", [], 2, ["never uses the input `attention_mask`"],
                 ["attention_mask=None", "padding change its answers"], id="ignored-input"),
    pytest.param("tuple_count", [], 2, ["returns a tuple of 2 values", "1 output (logits)"],
                 ["one TensorSpec per returned value"], id="tuple-count"),
    pytest.param("forward_fails", [], 2, ["forward() failed on the spec's example inputs", "user_models.py:",
                                          "RuntimeError"],
                 ["pixel_values [2, 3, 32, 32] float32"], id="forward-raises"),
    pytest.param("unknown_dtype", [], 2, ["unknown dtype 'float'"], ["float32"], id="unknown-dtype"),
    pytest.param("missing_postprocessing_output", [], 2, ["postprocessing reads output 'scores'"],
                 ["declared outputs: logits"], id="postprocessing-output"),
    pytest.param("returns_spec_only", [], 2, ["returned ExportSpec", "expected (nn.Module, ExportSpec)"],
                 ["Return the module"], id="factory-type"),
]


def _split(stderr: str) -> tuple[str, str]:
    """The ``Error:`` text and the ``Hint:`` text of a CLI failure."""
    error = stderr[stderr.index("Error: "):]
    if "\nHint: " not in error:
        return error, ""
    error, hint = error.split("\nHint: ", 1)
    return error, hint


def _refused(tmp_path, args, code):
    out = tmp_path / "bundle"
    result = CliRunner().invoke(cli, ["export", *args, "-o", str(out)], catch_exceptions=False)
    assert result.exit_code == code, result.output
    assert not out.exists() and not list(tmp_path.glob(".bundle*")), "a refused export left files at -o"
    assert "Traceback" not in result.stderr
    assert "Try --exporter legacy" not in result.stderr
    return _split(result.stderr)


@pytest.mark.parametrize(("factory", "args", "code", "errors", "hints"), MISTAKES)
def test_mistake_is_refused_with_the_right_message(tmp_path, factory, args, code, errors, hints):
    error, hint = _refused(tmp_path, ["--spec", SPEC + factory, *args], code)
    for phrase in errors:
        assert phrase in error, (phrase, error)
    for phrase in hints:
        assert phrase in hint, (phrase, hint)


def test_pickle_weights_without_the_flag_are_refused(tmp_path):
    model, _ = user_models.plain()
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    error, hint = _refused(tmp_path, ["--spec", SPEC + "plain", str(tmp_path / "weights.pt")], 2)
    assert "pickle checkpoint" in error and "--allow-pickle" in hint


def test_double_sigmoid_is_a_warning_and_multilabel_probabilities_the_right_answer(tmp_path):
    out = tmp_path / "double"
    # A subprocess, so the warning is seen exactly where a user sees it: on stderr.
    proc = subprocess.run([sys.executable, "-m", "edgemm", "export", "--spec", SPEC + "double_sigmoid", "-o", str(out),
                           "--json"], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert "multilabel_probabilities" in proc.stderr and "apply it twice" in proc.stderr
    assert doc["warnings"] and "multilabel_probabilities" in doc["warnings"][0]
    assert verify_bundle(out).validation["warnings"] == doc["warnings"]
    with Predictor.load(out, device="cpu") as predictor:
        doubled = predictor.predict(text="a cat", image=_image(3))
    assert sorted(doubled.labels) == sorted(user_models.LABELS)  # sigmoid of probabilities: every label over 0.5

    fixed = tmp_path / "fixed"
    result = CliRunner().invoke(cli, ["export", "--spec", SPEC + "multilabel_probabilities", "-o", str(fixed), "--json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["warnings"] == []
    model, _spec = user_models.multilabel_probabilities()
    with Predictor.load(fixed, device="cpu") as predictor:
        texts = ["a cat", "two dogs", "a bird on a branch", "nothing", "七", "the quick brown fox"]
        images = [_image(seed) for seed in range(len(texts))]
        predictions = predictor.predict(text=texts, image=images)
        feed = predictor.preprocessor({"text": texts, "image": images})
    with torch.no_grad():
        probs = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).numpy()
    for row, prediction in zip(probs, predictions):
        assert sorted(prediction.labels) == sorted(label for label, p in zip(user_models.LABELS, row) if p >= 0.5)
        assert [prediction.scores[label] for label in user_models.LABELS] == pytest.approx(row.tolist(), abs=1e-5)


def _image(seed: int):
    from edgemm.data.synthetic import synthesize_image

    return synthesize_image(40 + seed, 50, seed=seed)
