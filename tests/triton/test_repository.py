"""The generated Triton repository: protobuf-valid configs, layout, options and error cases."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgemm.bundle.manifest import Artifact
from edgemm.bundle.verify import read_manifest, verify_bundle
from edgemm.bundle.writer import write_manifest
from edgemm.errors import BundleError, EdgemmError, UsageError
from edgemm.triton import RepositoryOptions, write_repository
from edgemm.triton.ensembles import check_ensembles
from edgemm.triton.errors import ModelConfigError, RepositoryExistsError, UnsupportedArtifactError
from edgemm.triton.pbtxt import build_config, model_config_pb2, render, validate_config

pytest.importorskip("google.protobuf", reason="needs protobuf (pip install 'tritonclient[grpc]')")


def _configs(repo: Path) -> dict[str, object]:
    """Parse every config.pbtxt with Triton's ModelConfig protobuf, by model directory."""
    from google.protobuf import text_format

    pb2 = model_config_pb2()
    parsed = {}
    for path in sorted(repo.glob("*/config.pbtxt")):
        message = pb2.ModelConfig()
        text_format.Parse(path.read_text(encoding="utf-8"), message)  # raises on anything Triton would refuse
        parsed[path.parent.name] = message
    return parsed


def test_every_config_parses_as_triton_model_config(triton_repo: Path, tiny_bundle: Path):
    configs = _configs(triton_repo)
    manifest = verify_bundle(tiny_bundle)
    name = "tiny-concat-vit"
    assert set(configs) == {name, f"{name}_python", f"{name}_preprocess", f"{name}_postprocess",
                            f"{name}_fp32", f"{name}_fp32_python"}
    pb2 = model_config_pb2()
    for model, config in configs.items():
        assert config.name == model
        validate_config((triton_repo / model / "config.pbtxt").read_text(), name=model)
        if config.platform != "ensemble":
            assert (triton_repo / model / "1").is_dir()

    ort = configs[f"{name}_fp32"]
    assert (ort.backend, ort.platform, ort.default_model_filename) == ("onnxruntime", "onnxruntime_onnx", "fp32.onnx")
    assert ort.max_batch_size == manifest.inputs[0].profile["batch"][2] == 64
    assert [(i.name, i.data_type, list(i.dims)) for i in ort.input] == [
        ("input_ids", pb2.TYPE_INT64, [-1]), ("attention_mask", pb2.TYPE_INT64, [-1]),
        ("pixel_values", pb2.TYPE_FP32, [3, 32, 32])]
    assert [(o.name, list(o.dims), o.label_filename) for o in ort.output] == [("logits", [3], "labels.txt")]
    assert list(ort.dynamic_batching.preferred_batch_size) == [4, 8, 16]
    assert ort.dynamic_batching.max_queue_delay_microseconds == 5000
    assert ort.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_CPU
    assert ort.optimization.graph.level == 1
    assert (triton_repo / f"{name}_fp32" / "labels.txt").read_text().split() == manifest.labels
    assert (triton_repo / f"{name}_fp32" / "1" / "fp32.onnx").read_bytes() == (tiny_bundle / "model/fp32.onnx").read_bytes()

    # Warm-up from the golden set: one sample per input, the bytes Triton will read.
    warm = ort.model_warmup[0]
    assert warm.batch_size == 1
    ids = warm.inputs["input_ids"]
    data = (triton_repo / f"{name}_fp32" / "warmup" / ids.input_data_file).read_bytes()
    golden = np.load(tiny_bundle / "golden.npz")["feed.input_ids"][0]
    assert np.array_equal(np.frombuffer(data, dtype="<i8"), golden)
    assert list(ids.dims) == [golden.shape[0]]

    pre = configs[f"{name}_preprocess"]
    assert pre.backend == "python"
    assert [(i.name, i.data_type) for i in pre.input] == [("TEXT", pb2.TYPE_STRING), ("IMAGE", pb2.TYPE_STRING)]
    assert pre.parameters["text_pad_to"].string_value == str(manifest.preprocessing["text"]["max_length"])
    image_file = pre.model_warmup[0].inputs["IMAGE"].input_data_file
    image = (triton_repo / f"{name}_preprocess" / "warmup" / image_file).read_bytes()
    assert image[4:12] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(image[:4], "little") == len(image) - 4

    py = configs[f"{name}_fp32_python"]
    assert py.backend == "python" and py.parameters["artifact"].string_value == "fp32"
    assert [t.name for t in py.input] == [t.name for t in ort.input]

    for ensemble, model in ((name, f"{name}_fp32"), (f"{name}_python", f"{name}_fp32_python")):
        config = configs[ensemble]
        assert config.platform == "ensemble"
        assert [s.model_name for s in config.ensemble_scheduling.step] == [f"{name}_preprocess", model,
                                                                           f"{name}_postprocess"]
        assert [o.name for o in config.output] == ["PREDICTION", "LABEL", "SCORE", "logits"]

    # The Python models carry the bundle files they read, byte for byte.
    for model, files in ((f"{name}_preprocess", ["text/tokenizer.json"]), (f"{name}_fp32_python", ["model/fp32.onnx"]),
                         (f"{name}_postprocess", [])):
        copied = triton_repo / model / "1" / "bundle"
        assert sorted(p.relative_to(copied).as_posix() for p in copied.rglob("*") if p.is_file()) == \
            sorted(["edgemm.json", *files])
        assert "from edgemm.triton.python_models import model_class" in (triton_repo / model / "1" / "model.py").read_text()

    provenance = json.loads((triton_repo / "edgemm-triton.json").read_text())
    assert provenance["ensemble"] == name and provenance["python_ensemble"] == f"{name}_python"


_GOOD = {"name": "m", "backend": "python", "max_batch_size": 4,
         "input": [{"name": "X", "data_type": "TYPE_FP32", "dims": [2]}],
         "output": [{"name": "Y", "data_type": "TYPE_FP32", "dims": [2]}]}


def test_validation_is_real_protobuf_parsing():
    """Negative controls: what Triton would refuse is refused here too, from the dict and from the text."""
    good = render(build_config(_GOOD, name="m"))
    assert validate_config(good, name="m").max_batch_size == 4
    with pytest.raises(ModelConfigError, match="not a valid ModelConfig"):
        validate_config(good + "dynamic_batching { preferred_batch_sizes: [ 4 ] }\n")  # misspelt field
    with pytest.raises(ModelConfigError, match="not a valid ModelConfig"):
        validate_config(good.replace("TYPE_FP32", "TYPE_FLOAT32", 1))  # unknown enum value
    with pytest.raises(ModelConfigError, match="differs from its directory"):
        validate_config(good, name="other")
    with pytest.raises(ModelConfigError, match="preferred_batch_size 8 outside"):
        validate_config(good + "dynamic_batching { preferred_batch_size: [ 8 ] }\n")

    for bad, match in (({"dynamic_batching": {"preferred_batch_sizes": [4]}}, "no field named"),
                       ({"output": [{"name": "Y", "data_type": "TYPE_FLOAT32", "dims": [2]}]}, "Invalid enum"),
                       ({"max_batch_size": "many"}, "max_batch_size"),
                       ({"dynamic_batching": {"preferred_batch_size": [8]}}, "preferred_batch_size 8 outside"),
                       ({"output": []}, "no outputs")):
        with pytest.raises(ModelConfigError, match=match) as info:
            build_config(_GOOD | bad, name="m")
        assert "config of model 'm'" in info.value.message and "bug in edgemm" in info.value.hint


def test_render_is_protobuf_text_format_with_the_header():
    config = build_config({**_GOOD, "name": 'we"ird\\name\n',
                           "input": [{"name": "ü", "data_type": "TYPE_STRING", "dims": [1]}]})
    text = render(config, header="first line\nsecond line")
    assert text.startswith("# first line\n# second line\nname: ") and text.endswith("\n") and "\n\n" not in text
    parsed = validate_config(text)
    assert parsed == config
    assert parsed.name == 'we"ird\\name\n' and parsed.input[0].name == "ü"


def test_generated_configs_carry_the_edgemm_header(triton_repo: Path):
    for path in triton_repo.glob("*/config.pbtxt"):
        lines = path.read_text(encoding="utf-8").splitlines()
        assert lines[0].startswith("# Generated by edgemm ") and "from bundle 'tiny-concat-vit'" in lines[0]
        assert lines[1] == "# Regenerate with `edgemm triton` instead of editing."


def test_ensemble_check_names_missing_models_and_tensors(triton_repo: Path):
    configs = {model: validate_config((triton_repo / model / "config.pbtxt").read_text(), name=model)
               for model in _configs(triton_repo)}
    check_ensembles(configs)
    post = configs.pop("tiny-concat-vit_postprocess")
    with pytest.raises(ModelConfigError, match="names a missing model tiny-concat-vit_postprocess"):
        check_ensembles(configs)
    del post.output[0]  # PREDICTION
    configs["tiny-concat-vit_postprocess"] = post
    with pytest.raises(ModelConfigError, match=r"has no tensors \['PREDICTION'\]"):
        check_ensembles(configs)


def test_graph_tensors_named_like_the_ensembles_own_are_refused(tiny_bundle: Path, tmp_path: Path):
    from dataclasses import replace

    from edgemm.triton.errors import UnsupportedForTritonError
    from edgemm.triton.plan import plan_repository

    manifest = verify_bundle(tiny_bundle)
    manifest.outputs = [replace(manifest.outputs[0], name="LABEL")]
    with pytest.raises(UnsupportedForTritonError, match=r"\['LABEL'\] clash"):
        plan_repository(tiny_bundle, manifest, RepositoryOptions())


def _copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_options_shape_the_configs(tiny_bundle: Path, tmp_path: Path):
    report = write_repository(tiny_bundle, tmp_path / "repo", RepositoryOptions(
        name="kiosk", device="gpu", instances=2, max_batch_size=16, preferred_batch_sizes=(2, 8),
        queue_delay_us=100, ort_ep="tensorrt", threads=2, text_padding="longest", warmup=False, version=3))
    configs = _configs(report.repository)
    pb2 = model_config_pb2()
    ort = configs["kiosk_fp32"]
    assert (report.repository / "kiosk_fp32" / "3" / "fp32.onnx").is_file()
    assert ort.max_batch_size == 16 and list(ort.dynamic_batching.preferred_batch_size) == [2, 8]
    assert ort.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_GPU and ort.instance_group[0].count == 2
    accel = ort.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accel.name == "tensorrt" and accel.parameters["precision_mode"] == "FP32"
    assert accel.parameters["trt_profile_max_shapes"] == "input_ids:16x40,attention_mask:16x40,pixel_values:16x3x32x32"
    assert accel.parameters["trt_profile_min_shapes"] == "input_ids:1x2,attention_mask:1x2,pixel_values:1x3x32x32"
    assert ort.parameters["intra_op_thread_count"].string_value == "2"
    assert not ort.model_warmup and not (report.repository / "kiosk_fp32" / "warmup").exists()
    assert configs["kiosk_preprocess"].parameters["text_pad_to"].string_value == ""
    # The Python model variant stays a CPU instance; ONNX Runtime inside picks CUDA where it can.
    assert configs["kiosk_fp32_python"].instance_group[0].kind == pb2.ModelInstanceGroup.KIND_CPU
    assert configs["kiosk_fp32_python"].parameters["device"].string_value == "auto"


def test_tensorrt_plan_artifacts_become_tensorrt_models(tiny_bundle: Path, tmp_path: Path):
    bundle = _copy_bundle(tiny_bundle, tmp_path / "b")
    (bundle / "engines").mkdir()
    (bundle / "engines" / "fp16.plan").write_bytes(b"not a real engine; only the repository is generated")
    manifest = read_manifest(bundle)  # the new file is not listed yet
    manifest.artifacts.append(Artifact(name="trt-fp16", path="engines/fp16.plan", kind="tensorrt", precision="fp16",
                                       files=["engines/fp16.plan"], providers=["TensorrtExecutionProvider"],
                                       requirements={"tensorrt": "10.3.0", "compute_capability": "8.7",
                                                     "built_with": {"version_compatible": False}}))
    write_manifest(bundle, manifest)
    report = write_repository(bundle, tmp_path / "repo")
    configs = _configs(report.repository)
    trt = configs["tiny-concat-vit_trt-fp16"]
    pb2 = model_config_pb2()
    assert (trt.backend, trt.platform, trt.default_model_filename) == ("tensorrt", "tensorrt_plan", "fp16.plan")
    assert trt.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_GPU
    assert dict(trt.cc_model_filenames) == {"8.7": "fp16.plan"}
    assert (report.repository / "tiny-concat-vit_trt-fp16" / "1" / "fp16.plan").is_file()
    # The ensemble keeps the fp32 ONNX model, which runs on every Triton device.
    assert configs["tiny-concat-vit"].ensemble_scheduling.step[1].model_name == "tiny-concat-vit_fp32"

    only_trt = write_repository(bundle, tmp_path / "repo-trt", RepositoryOptions(artifacts=("trt-fp16",)))
    assert only_trt.python_ensemble is None  # no ONNX artifact for the Python-backend variant
    assert _configs(only_trt.repository)["tiny-concat-vit"].ensemble_scheduling.step[1].model_name == \
        "tiny-concat-vit_trt-fp16"


def _listing(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def test_unsupported_artifact_kind_is_a_clear_error_and_writes_nothing(tiny_bundle: Path, tmp_path: Path):
    bundle = _copy_bundle(tiny_bundle, tmp_path / "b")
    (bundle / "model" / "fp32.mlpackage").write_bytes(b"coreml")
    manifest = read_manifest(bundle)  # the new file is not listed yet
    manifest.artifacts.append(Artifact(name="coreml", path="model/fp32.mlpackage", kind="coreml", precision="fp32",
                                       files=["model/fp32.mlpackage"]))
    write_manifest(bundle, manifest)
    out = tmp_path / "out" / "repo"
    (tmp_path / "out").mkdir()
    with pytest.raises(UnsupportedArtifactError) as info:
        write_repository(bundle, out)
    assert "coreml (coreml)" in info.value.message and "--artifact (fp32)" in info.value.hint
    assert info.value.exit_code == 2
    assert _listing(tmp_path / "out") == []  # no repository, no staging leftovers
    # Selecting the supported artifact works.
    assert write_repository(bundle, out, RepositoryOptions(artifacts=("fp32",))).repository == out
    with pytest.raises(UnsupportedArtifactError):
        write_repository(bundle, tmp_path / "out" / "x", RepositoryOptions(artifacts=("coreml",)))
    with pytest.raises(BundleError, match="no artifact 'nope'"):
        write_repository(bundle, tmp_path / "out" / "y", RepositoryOptions(artifacts=("nope",)))
    assert _listing(tmp_path / "out") == ["repo"]


def test_invalid_bundle_writes_nothing(tiny_bundle: Path, tmp_path: Path):
    bundle = _copy_bundle(tiny_bundle, tmp_path / "b")
    onnx = bundle / "model" / "fp32.onnx"
    data = bytearray(onnx.read_bytes())
    data[-1] ^= 0xFF
    onnx.write_bytes(bytes(data))
    (tmp_path / "out").mkdir()
    with pytest.raises(BundleError, match="does not match its sha256"):
        write_repository(bundle, tmp_path / "out" / "repo")
    with pytest.raises(EdgemmError, match="does not exist"):
        write_repository(tmp_path / "missing", tmp_path / "out" / "repo")
    (bundle / "extra.txt").write_text("x")
    with pytest.raises(BundleError, match="does not list"):
        write_repository(bundle, tmp_path / "out" / "repo")
    assert _listing(tmp_path / "out") == []


def test_existing_output_needs_force(tiny_bundle: Path, tmp_path: Path):
    out = tmp_path / "repo"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(RepositoryExistsError, match="already exists"):
        write_repository(tiny_bundle, out)
    assert _listing(out) == ["keep.txt"]
    write_repository(tiny_bundle, out, force=True)
    assert "keep.txt" not in _listing(out) and (out / "edgemm-triton.json").is_file()
    assert _listing(tmp_path) == ["repo"]  # the old tree and the staging directory are gone


@pytest.mark.parametrize("options, match", [
    ({"device": "tpu"}, "device = 'tpu' in \\[triton\\] is not one of the choices"),
    ({"max_batch_size": 1000}, "exceeds the bundle's batch profile"),
    ({"preferred_batch_sizes": (0, 4)}, "outside 1..64"),
    ({"name": "a/b"}, "not usable by Triton"),
    ({"version": 0}, "version must be at least 1"),
])
def test_bad_options(tiny_bundle: Path, tmp_path: Path, options: dict, match: str):
    with pytest.raises(UsageError, match=match):
        write_repository(tiny_bundle, tmp_path / "repo", RepositoryOptions(**options))
    assert not (tmp_path / "repo").exists()


@pytest.fixture()
def cli(monkeypatch):
    """The edgemm CLI with the triton command registered (as edgemm.cli.COMMANDS does)."""
    from edgemm.cli import COMMANDS, cli

    monkeypatch.setitem(COMMANDS, "triton", ("edgemm.cli.triton_cmd", "triton", "Triton model repository."))
    return cli


def test_cli_writes_a_repository_and_reports_json(cli, tiny_bundle: Path, tmp_path: Path):
    runner = CliRunner()
    result = runner.invoke(cli, ["triton", str(tiny_bundle), str(tmp_path / "repo"), "--device", "cpu",
                                 "--preferred-batch-sizes", "2,4", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["ok"] and doc["ensemble"] == "tiny-concat-vit" and "tiny-concat-vit_fp32" in doc["models"]
    assert list(_configs(tmp_path / "repo")["tiny-concat-vit_fp32"].dynamic_batching.preferred_batch_size) == [2, 4]

    again = runner.invoke(cli, ["triton", str(tiny_bundle), str(tmp_path / "repo")])
    assert again.exit_code == 2
    assert "Error:" in again.stderr and "Hint: Choose another directory or pass --force." in again.stderr
    assert "Traceback" not in again.output

    bad = runner.invoke(cli, ["triton", str(tiny_bundle), str(tmp_path / "r2"), "--preferred-batch-sizes", "x"])
    assert bad.exit_code == 2 and "comma-separated" in bad.stderr


def test_recipe_table_is_the_options():
    from edgemm.errors import RecipeError
    from edgemm.recipes import parse_recipe

    table = {"device": "gpu", "preferred_batch_sizes": [4, 8], "ort_ep": "tensorrt",
             "artifacts": ["fp16", "fp32"], "warmup": False}
    recipe = parse_recipe({"triton": table}, Path("triton.toml"))
    assert recipe.triton == RepositoryOptions(device="gpu", preferred_batch_sizes=(4, 8), ort_ep="tensorrt",
                                              artifacts=("fp16", "fp32"), warmup=False)
    with pytest.raises(RecipeError, match="unknown key 'batch'") as info:
        parse_recipe({"triton": {"batch": 4}}, Path("triton.toml"))
    assert "max_batch_size" in info.value.hint
    with pytest.raises(RecipeError, match="wrong type"):
        parse_recipe({"triton": {"instances": True}}, Path("triton.toml"))


def test_triton_package_is_torch_free():
    """edgemm.triton (and the model.py it generates) runs in a Triton Python without torch."""
    import subprocess
    import sys

    code = """
import sys
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'transformers', 'optimum'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Blocker())
import edgemm.triton, edgemm.triton.python_models, edgemm.recipes, edgemm.cli.triton_cmd
bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'optimum')]
assert not bad, bad
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr


def test_export_target_triton_writes_bundle_and_repository(tiny_ckpt, tmp_path):
    from click.testing import CliRunner

    from edgemm.cli import cli

    out = tmp_path / "x.bundle"
    result = CliRunner().invoke(cli, ["export", str(tiny_ckpt), "-o", str(out), "--target", "triton", "--json"])
    assert result.exit_code == 0, result.output
    repo = Path(str(out) + ".triton")
    assert (out / "edgemm.json").is_file() and repo.is_dir()
    configs = _configs(repo)
    assert len(configs) >= 4 and any(c.platform == "ensemble" for c in configs.values())
