"""Engine compatibility decisions, made from the manifest record before any deserialization."""

from __future__ import annotations

from dataclasses import replace

import pytest

from edgemm.runtime.trt_compat import CompatPolicy, check_engine, jetpack_for_l4t, parse_l4t_release
from tests.tensorrt.conftest import DESKTOP, NO_TRT, ORIN_AGX, ORIN_NANO, engine_record


def test_same_machine_is_ok():
    assert check_engine(engine_record(ORIN_NANO), ORIN_NANO).status == "ok"


def test_tensorrt_upgrade_is_stale_and_rebuildable():
    decision = check_engine(engine_record(ORIN_NANO), replace(ORIN_NANO, tensorrt="10.7.0"))
    assert decision.status == "stale" and decision.rebuildable
    assert "TensorRT 10.3.0" in decision.summary() and "10.7.0" in decision.summary()


def test_jetpack_upgrade_is_stale():
    host = replace(ORIN_NANO, l4t="37.0.0", jetpack=None)
    assert check_engine(engine_record(ORIN_NANO), host).status == "stale"


def test_other_gpu_is_mismatch():
    decision = check_engine(engine_record(ORIN_NANO), DESKTOP)
    assert decision.status == "mismatch"
    text = decision.summary()
    assert "compute capability 8.7" in text and "not a Jetson" in text and "linux-aarch64" in text


def test_desktop_engine_on_jetson_is_mismatch():
    assert "this machine is a Jetson" in check_engine(engine_record(DESKTOP), ORIN_NANO).summary()


def test_cuda_major_change_is_stale():
    record = engine_record(DESKTOP)
    assert check_engine(record, replace(DESKTOP, cuda="12.8")).status == "stale"
    assert check_engine(record, replace(DESKTOP, cuda="13.1")).status == "ok"  # same major


def test_no_tensorrt_is_unavailable_not_a_crash():
    decision = check_engine(engine_record(ORIN_NANO), NO_TRT)
    assert decision.status == "unavailable" and not decision.rebuildable
    assert "TensorRT is not installed" in decision.summary()


@pytest.mark.parametrize("built_with", [{"version_compatible": True}, {"plugins": ["libmyplugin.so"]},
                                        {"serialized_plugin_libraries": ["libx.so"]}])
def test_policy_refuses_version_compatible_and_plugins_by_default(built_with):
    record = engine_record(ORIN_NANO, **built_with)
    # Refused regardless of the host (even one without TensorRT): it is a policy, not a fit.
    assert check_engine(record, ORIN_NANO).status == "refused"
    assert check_engine(record, NO_TRT).status == "refused"
    allowed = CompatPolicy(allow_version_compatible=True, allow_plugins=True)
    assert check_engine(record, ORIN_NANO, allowed).status == "ok"


def test_version_compatible_allows_newer_same_major_only():
    record = engine_record(DESKTOP, version_compatible=True)
    allowed = CompatPolicy(allow_version_compatible=True)
    assert check_engine(record, replace(DESKTOP, tensorrt="11.4.0"), allowed).status == "ok"
    assert check_engine(record, replace(DESKTOP, tensorrt="10.9.0"), allowed).status == "stale"


def test_hardware_compatible_engine_runs_on_newer_desktop_gpus():
    record = engine_record(DESKTOP, hardware_compatibility="ampere_plus")
    assert check_engine(record, replace(DESKTOP, compute_capability="9.0", gpu="H100")).status == "ok"
    assert check_engine(record, replace(DESKTOP, compute_capability="7.5")).status == "mismatch"


def test_same_cc_other_gpu_model_is_a_warning():
    decision = check_engine(engine_record(DESKTOP), replace(DESKTOP, gpu="RTX 4080"))
    assert decision.ok and decision.warnings


def test_dla_engine_needs_dla_cores():
    record = engine_record(ORIN_AGX, dla_core=1)
    assert check_engine(record, ORIN_AGX).status == "ok"
    decision = check_engine(record, ORIN_NANO)  # Orin Nano has no DLA
    assert decision.status == "mismatch" and "DLA" in decision.summary()


def test_incomplete_record_is_refused():
    assert check_engine({"tensorrt": "10.3.0"}, ORIN_NANO).status == "refused"


def test_l4t_and_jetpack_parsing():
    text = "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, DATE: Fri Sep 13"
    assert parse_l4t_release(text) == "36.4.0"
    assert jetpack_for_l4t("36.4.0") == "6.1" and jetpack_for_l4t("36.4.3") == "6.2"
    assert jetpack_for_l4t("36.3.0") == "6.0" and jetpack_for_l4t("99.1") is None
    assert parse_l4t_release("garbage") is None


def test_manifest_validator_requires_a_complete_engine_record(tmp_path):
    from edgemm.bundle.manifest import Manifest
    from edgemm.errors import BundleError
    from tests.tensorrt.conftest import make_bundle

    bundle = make_bundle(tmp_path / "b", engines=[("trt-fp16", engine_record())])
    data = __import__("json").loads((bundle / "edgemm.json").read_text())
    assert Manifest.from_dict(data).artifact("trt-fp16").requirements["tensorrt"] == "10.3.0"
    del data["artifacts"][-1]["requirements"]["compute_capability"]
    with pytest.raises(BundleError, match="compute_capability"):
        Manifest.from_dict(data)
    data["artifacts"][-1]["requirements"].update(compute_capability="8.7", built_with={"version_compatible": "yes"})
    with pytest.raises(BundleError, match="version_compatible"):
        Manifest.from_dict(data)
