"""Semantically hostile manifests: a bundle is closed, and its manifest means what it says.

Every case starts from the real exported ``tiny_bundle`` (text + image, 3 labels), edits
``edgemm.json`` and re-hashes the files, so the attack is on meaning, not on hashes. Each must be
refused by ``edgemm verify`` (exit 1, an ``Error:`` line naming the field, no traceback) and by
``Predictor.load`` — before any ONNX Runtime session, tokenizer or golden-set parser runs, and
with the refusing process's peak memory under 300 MB.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgemm.bundle.golden import GoldenSet
from edgemm.bundle.manifest import MANIFEST_NAME, Manifest
from edgemm.bundle.verify import read_manifest, verify_bundle
from edgemm.bundle.writer import list_bundle_files, write_manifest
from edgemm.errors import BundleError, BundleIntegrityError, GoldenSetError
from tests.conftest import REPO, run_edge

PEAK_LIMIT_MB = 300

Mutation = Callable[[dict[str, Any], Path], None]


def _set(path: str, value: Any) -> Mutation:
    """Set ``a.b.c`` (list indices as ints) of the manifest dict."""

    def mutate(data: dict[str, Any], bundle: Path) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        target = data
        for key in parents:
            target = target[key]
        target[last] = value

    return mutate


def _outside_tokenizer(kind: str) -> Mutation:
    """Point the tokenizer at a real tokenizer.json outside the bundle (absolute, or via ``..``)."""

    def mutate(data: dict[str, Any], bundle: Path) -> None:
        outside = bundle.parent / "outside"
        outside.mkdir(exist_ok=True)
        shutil.copy(bundle / "text" / "tokenizer.json", outside / "tokenizer.json")
        data["preprocessing"]["text"]["tokenizer"] = (str(outside / "tokenizer.json") if kind == "absolute"
                                                      else "../outside/tokenizer.json")

    return mutate


def _drop(path: str) -> Mutation:
    def mutate(data: dict[str, Any], bundle: Path) -> None:
        *parents, last = path.split(".")
        target = data
        for key in parents:
            target = target[key]
        del target[last]

    return mutate


def _add_audio_section(data: dict[str, Any], bundle: Path) -> None:
    data["preprocessing"]["audio"] = {"kind": "audio", "features": "waveform", "input": "input_values",
                                      "mask_input": None, "sampling_rate": 16000, "max_seconds": 10.0,
                                      "normalize": True, "padding_value": 0.0, "log_mel": None}


def _grayscale(data: dict[str, Any], bundle: Path) -> None:
    data["preprocessing"]["image"].update(channels=1, mean=[0.5], std=[0.5])


# (case id, mutation, what the Error: line must name)
CASES: list[tuple[str, Mutation, str]] = [
    ("tokenizer-absolute-path", _outside_tokenizer("absolute"), r"preprocessing\.text\.tokenizer"),
    ("tokenizer-dotdot-path", _outside_tokenizer("dotdot"), r"preprocessing\.text\.tokenizer"),
    ("tokenizer-is-the-golden-set", _set("preprocessing.text.tokenizer", "golden.npz"),
     r"preprocessing\.text\.tokenizer names 'golden\.npz', which is the golden set"),
    ("tokenizer-is-the-model", _set("preprocessing.text.tokenizer", "model/fp32.onnx"),
     r"preprocessing\.text\.tokenizer names 'model/fp32\.onnx', which is a file of artifact 'fp32'"),
    ("tokenizer-not-listed", _set("preprocessing.text.tokenizer", "text/vocab.json"),
     r"preprocessing\.text\.tokenizer names 'text/vocab\.json', which the bundle does not list"),
    ("tokenizer-missing", _drop("preprocessing.text.tokenizer"), r"preprocessing\.text\.tokenizer is missing"),
    ("postprocessing-output-missing", _set("postprocessing.output", "probabilities"),
     r"postprocessing\.output names 'probabilities', which is not a graph output"),
    ("postprocessing-type-unknown", _set("postprocessing.type", "argmax"), r"postprocessing.*'argmax'.*softmax"),
    ("postprocessing-threshold-7", _set("postprocessing.threshold", 7), r"postprocessing\.threshold is 7"),
    ("image-format-unknown", _set("preprocessing.image.formats", ["PNG", "XYZ"]),
     r"preprocessing\.image\.formats .*Unknown image format 'XYZ'"),
    ("image-format-ghostscript", _set("preprocessing.image.formats", ["EPS"]),
     r"preprocessing\.image\.formats enables EPS"),
    ("labels-too-few", _set("labels", ["zero", "one"]), r"labels: The bundle has 2 labels but output 'logits' has 3"),
    ("labels-too-many", _set("labels", ["zero", "one", "two", "three"]),
     r"labels: The bundle has 4 labels but output 'logits' has 3"),
    ("resize-4096", lambda d, b: d["preprocessing"]["image"]["resize"].update(height=4096, width=4096),
     r"preprocessing\.image\.resize\.height gives height 4096, but graph input 'pixel_values' takes 32x32"),
    ("resize-100000", lambda d, b: d["preprocessing"]["image"]["resize"].update(height=100000, width=100000),
     r"preprocessing\.image\.resize\.height asks for 100000 px; image sizes are at most 4096"),
    ("center-crop-64", _set("preprocessing.image.center_crop", {"height": 64, "width": 64}),
     r"preprocessing\.image\.center_crop\.height gives height 64"),
    ("image-channels-1-for-3", _grayscale, r"preprocessing\.image\.channels is 1, but graph input 'pixel_values' takes 3"),
    ("image-resample-unknown", _set("preprocessing.image.resample", "magic"), r"preprocessing\.image.*resample"),
    ("max-pixels-2^40", _set("preprocessing.image.max_pixels", 2**40), r"preprocessing\.image\.max_pixels is 1099511627776"),
    ("max-bytes-2^40", _set("preprocessing.image.max_bytes", 2**40), r"preprocessing\.image\.max_bytes is 1099511627776"),
    ("max-chars-2^40", _set("preprocessing.text.max_chars", 2**40), r"preprocessing\.text\.max_chars is 1099511627776"),
    ("text-max-length-beyond-profile", _set("preprocessing.text.max_length", 512),
     r"preprocessing\.text\.max_length is 512, outside the 'seq' profile 2\.\.40"),
    ("text-max-length-2^40", _set("preprocessing.text.max_length", 2**40),
     r"preprocessing\.text\.max_length is 1099511627776; it must be an integer in 1\.\.65536"),
    ("modality-input-not-in-graph", _set("modalities.text.inputs", ["input_ids", "token_type_ids"]),
     r"modalities\.text\.inputs names 'token_type_ids', which is not a graph input"),
    ("graph-input-fed-by-nobody", _set("modalities.image.inputs", []), r"'pixel_values'.* fed by no modality"),
    ("dtype-nonsense", _set("inputs.2.dtype", "float128"), r"Unknown dtype 'float128' at inputs\[2\]"),
    ("dtype-known-but-wrong", _set("inputs.2.dtype", "int64"),
     r"inputs\.pixel_values\.dtype is int64, but preprocessing\.image produces float32"),
    ("profile-upside-down", _set("inputs.0.profile.seq", [40, 16, 2]), r"inputs\[0\]\.profile\.seq is \[40, 16, 2\]"),
    ("modality-without-preprocessing", _drop("preprocessing.image"), r"modalities\.image has no preprocessing\.image"),
    ("preprocessing-for-undeclared-modality", _add_audio_section,
     r"preprocessing\.audio configures audio, which the bundle does not take"),
]

# Runs the CLI and then Predictor.load in one process, as a kiosk would; reports both refusals and
# the process's peak resident memory (VmHWM) after them.
_PROBE = r"""
import json, sys
from edgemm.cli import main
from edgemm.errors import EdgemmError
bundle = sys.argv[1]
try:
    main(["verify", bundle])
    code = 0
except SystemExit as exc:
    code = int(exc.code or 0)
from edgemm.runtime import Predictor
try:
    Predictor.load(bundle, device="cpu").close()
    load = None
except EdgemmError as exc:
    load = {"type": type(exc).__name__, "message": exc.message}
status = open("/proc/self/status").read()
peak_kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))
print("PROBE " + json.dumps({"verify_exit": code, "load": load, "peak_mb": peak_kb / 1024}), file=sys.stderr)
"""


def _rehash(bundle: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as the manifest with every file's current hash, as an attacker would."""
    data["files"] = [asdict(entry) for entry in list_bundle_files(bundle)]
    (bundle / MANIFEST_NAME).write_text(json.dumps(data, indent=1))


def _hostile_copy(tiny_bundle: Path, tmp_path: Path, mutate: Mutation) -> Path:
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    data = json.loads((bundle / MANIFEST_NAME).read_text())
    mutate(data, bundle)
    _rehash(bundle, data)
    return bundle


def _probe(bundle: Path) -> tuple[dict[str, Any], str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(bundle)], capture_output=True, text=True,
                          timeout=300, env=env, cwd=REPO)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("PROBE ")]
    assert proc.returncode == 0 and lines, proc.stderr
    return json.loads(lines[-1][len("PROBE "):]), proc.stderr


def test_there_are_at_least_twenty_hostile_manifests():
    assert len(CASES) >= 20 and len({case for case, _, _ in CASES}) == len(CASES)


@pytest.mark.parametrize("mutate, field", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refused_by_verify_and_load_before_any_allocation(tiny_bundle, tmp_path, mutate, field):
    bundle = _hostile_copy(tiny_bundle, tmp_path, mutate)
    report, stderr = _probe(bundle)
    assert report["verify_exit"] == 1, stderr
    error_lines = [line for line in stderr.splitlines() if line.startswith("Error: ")]
    assert len(error_lines) == 1 and re.search(field, error_lines[0]), stderr
    assert "Hint: " in stderr and "Traceback" not in stderr
    assert report["load"] is not None and report["load"]["type"] in ("BundleError", "OutputMismatchError"), report
    assert re.search(field, report["load"]["message"]), report
    assert report["peak_mb"] < PEAK_LIMIT_MB, report


@pytest.mark.parametrize("mutate, field", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refused_before_any_session_tokenizer_or_golden_set(tiny_bundle, tmp_path, mutate, field, no_parsers):
    from edgemm.runtime import Predictor

    bundle = _hostile_copy(tiny_bundle, tmp_path, mutate)
    with pytest.raises(BundleError, match=field):
        Predictor.load(bundle, device="cpu")


def _leaves(node: Any, path: tuple = ()) -> list[tuple]:
    if isinstance(node, dict):
        return [p for key, value in node.items() for p in _leaves(value, (*path, key))] + [path]
    if isinstance(node, list):
        return [p for i, value in enumerate(node) for p in _leaves(value, (*path, i))] + [path]
    return [path]


def test_every_single_field_corruption_is_accepted_or_refused_never_a_crash(tiny_bundle):
    """Each field of the manifest (files and free-form records aside) set to each odd value: the
    parser and the semantic check either accept it or raise a BundleError naming it."""
    from edgemm.runtime.semantics import check_semantics

    base = json.loads((tiny_bundle / MANIFEST_NAME).read_text())
    odd = [None, -1, 0, 2**40, "x", "", [], {}, 1.5, True, ["PNG"], {"mode": "exact"}]
    refused = 0
    for path in _leaves(base):
        if not path or path[0] in ("files", "created_by", "source", "validation"):
            continue
        for value in odd:
            data = json.loads(json.dumps(base))
            node = data
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value
            try:
                check_semantics(Manifest.from_dict(data))
            except BundleError:
                refused += 1
    assert refused > 1000


def test_the_pristine_bundle_passes_the_same_probe(tiny_bundle, tmp_path):
    """The probe itself is fair: an untouched copy verifies and loads (and stays well under the limit)."""
    bundle = _hostile_copy(tiny_bundle, tmp_path, lambda data, root: None)
    report, stderr = _probe(bundle)
    assert report["verify_exit"] == 0 and report["load"] is None, stderr
    assert report["peak_mb"] < PEAK_LIMIT_MB, report


def test_the_outside_tokenizer_is_never_opened(tiny_bundle, tmp_path, monkeypatch):
    """Even where a caller skips the parser's refusal, the runtime opens only listed, hashed files."""
    bundle = _hostile_copy(tiny_bundle, tmp_path, lambda data, root: None)
    manifest = verify_bundle(bundle)
    manifest.preprocessing["text"]["tokenizer"] = "../outside/tokenizer.json"
    with pytest.raises(BundleError, match=r"preprocessing\.text\.tokenizer names '\.\./outside/tokenizer\.json', "
                                          r"which the bundle does not list"):
        manifest.asset_paths()


# -- the golden set records labels ------------------------------------------------------------


def _with_recorded_labels(tiny_bundle: Path, tmp_path: Path) -> Path:
    """A copy whose golden set records the expected labels, as the export pipeline writes it."""
    from edgemm.runtime.golden import record_labels

    bundle = tmp_path / "labelled"
    shutil.copytree(tiny_bundle, bundle)
    manifest = verify_bundle(bundle)
    golden = GoldenSet.load(bundle / "golden.npz")
    record_labels(golden, manifest)
    golden.save(bundle / "golden.npz")
    manifest.files = []
    write_manifest(bundle, manifest)
    return bundle


def _verify_json(bundle: Path) -> tuple[int, dict[str, Any], str]:
    code, stdout, stderr, guard = run_edge("verify", str(bundle), "--json")
    assert guard["modules"] == [] and guard["sockets"] == 0
    return code, json.loads(stdout), stderr


def test_recorded_labels_are_checked_by_verify(tiny_bundle, tmp_path):
    bundle = _with_recorded_labels(tiny_bundle, tmp_path)
    golden = GoldenSet.load(bundle / "golden.npz")
    manifest = verify_bundle(bundle)
    assert golden.label_names == manifest.labels == ["zero", "one", "two"]
    assert len(golden.labels) == golden.size and set(golden.labels) <= set(manifest.labels)
    code, doc, stderr = _verify_json(bundle)
    assert code == 0, stderr
    labels = doc["artifacts"][0]["labels"]
    assert labels == {**labels, "checked": True, "passed": True, "rows": golden.size, "mismatched": []}


def test_swapped_labels_fail_verify_and_the_canary(tiny_bundle, tmp_path):
    from edgemm.runtime import Predictor

    bundle = _with_recorded_labels(tiny_bundle, tmp_path)
    data = json.loads((bundle / MANIFEST_NAME).read_text())
    data["labels"] = data["labels"][1:] + data["labels"][:1]  # every label moves: one, two, zero
    _rehash(bundle, data)

    code, doc, stderr = _verify_json(bundle)
    assert code == 4, stderr
    assert doc["error"]["code"] == "E_GOLDEN" and "labels differ" in doc["error"]["message"]
    assert "the labels were ['zero', 'one', 'two'] at export" in doc["error"]["message"]
    human_code, _, human_err, _ = run_edge("verify", str(bundle))
    assert human_code == 4 and "Error: Golden set failed for fp32: labels differ: row 0 was" in human_err
    assert "Traceback" not in human_err

    # Load cannot know the label order without the golden set; the known-answer canary (serve's
    # readiness, install) does, through the same check.
    with Predictor.load(bundle, device="cpu") as predictor, pytest.raises(GoldenSetError, match="labels differ"):
        predictor.check_golden()


def test_a_renamed_label_that_no_golden_row_predicts_still_fails(tiny_bundle, tmp_path):
    bundle = _with_recorded_labels(tiny_bundle, tmp_path)
    golden = GoldenSet.load(bundle / "golden.npz")
    data = json.loads((bundle / MANIFEST_NAME).read_text())
    unused = next((i for i, name in enumerate(data["labels"]) if name not in golden.labels), 0)
    data["labels"][unused] = "seven"
    _rehash(bundle, data)
    code, doc, _ = _verify_json(bundle)
    assert code == 4 and doc["error"]["details"]["artifacts"][0]["labels"]["names_changed"] is True


def test_golden_sets_without_labels_skip_the_check_and_say_so(tiny_bundle, tmp_path):
    bundle = tmp_path / "old"
    shutil.copytree(tiny_bundle, bundle)
    golden = GoldenSet.load(bundle / "golden.npz")
    golden.labels = golden.label_names = None
    golden.save(bundle / "golden.npz")
    manifest = read_manifest(bundle)  # golden.npz changed size: the old listing no longer verifies
    manifest.files = []
    write_manifest(bundle, manifest)
    code, doc, stderr = _verify_json(bundle)
    assert code == 0, stderr
    labels = doc["artifacts"][0]["labels"]
    assert labels["checked"] is False and labels["passed"] is True and "export again" in labels["reason"]


def test_a_swapped_vocabulary_in_a_listed_tokenizer_fails_the_golden_check(tiny_bundle, tmp_path):
    """A tokenizer file that is listed and hashed but not the model's: the golden set's texts
    no longer tokenize to the recorded ids, so verify and the canary fail."""
    from edgemm.runtime import Predictor

    bundle = tmp_path / "vocab"
    shutil.copytree(tiny_bundle, bundle)
    tokenizer = json.loads((bundle / "text" / "tokenizer.json").read_text())
    golden = GoldenSet.load(bundle / "golden.npz")
    ids = [int(i) for i in np.unique(golden.feed["input_ids"]) if i > 103][:2]  # two word pieces of its texts
    vocab = tokenizer["model"]["vocab"]
    first, second = (next(t for t, i in vocab.items() if i == wanted) for wanted in ids)
    vocab[first], vocab[second] = vocab[second], vocab[first]
    (bundle / "text" / "swapped.json").write_text(json.dumps(tokenizer))
    data = json.loads((bundle / MANIFEST_NAME).read_text())
    data["preprocessing"]["text"]["tokenizer"] = "text/swapped.json"
    _rehash(bundle, data)

    code, doc, stderr = _verify_json(bundle)
    assert code == 4, stderr
    assert doc["error"]["details"]["artifacts"][0]["preprocessing"]["mismatched_inputs"] == ["input_ids"]
    with Predictor.load(bundle, device="cpu") as predictor, pytest.raises(GoldenSetError, match="input_ids"):
        predictor.check_golden()


# -- integrity: a hash mismatch is a failed check (exit 4), naming the file ------------------------


@pytest.mark.parametrize("name", ["model/fp32.onnx", "text/tokenizer.json", "golden.npz"])
def test_a_hash_mismatch_exits_4_naming_the_file(tiny_bundle, tmp_path, name):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    path = bundle / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    code, _, stderr, _ = run_edge("verify", str(bundle))
    assert code == 4, stderr
    assert f"Error: {name} does not match its sha256" in stderr and "Traceback" not in stderr
    with pytest.raises(BundleIntegrityError) as info:
        verify_bundle(bundle)
    assert info.value.details == {"file": name} and isinstance(info.value, BundleError)


def test_a_truncated_file_exits_4_and_an_unlisted_one_exits_1(tiny_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    model = bundle / "model" / "fp32.onnx"
    model.write_bytes(model.read_bytes()[:-10])
    code, _, stderr, _ = run_edge("verify", str(bundle))
    assert code == 4 and "Error: model/fp32.onnx is" in stderr and "truncated or altered" in stderr
    shutil.copytree(tiny_bundle, bundle, dirs_exist_ok=True)
    (bundle / "notes.txt").write_text("hello")
    code, _, stderr, _ = run_edge("verify", str(bundle))
    assert code == 1 and "notes.txt" in stderr


def test_manifest_round_trip_keeps_the_strict_rules(tiny_bundle):
    """The exporter's own manifest passes every new rule (write_manifest round-trips the parser)."""
    from edgemm.runtime.semantics import semantic_problems

    manifest = Manifest.from_json((tiny_bundle / MANIFEST_NAME).read_text())
    assert manifest.asset_paths() == ["text/tokenizer.json"]
    assert semantic_problems(manifest) == []
