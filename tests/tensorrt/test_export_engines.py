"""Export records why it did not build a recipe's engines (no fake engine is ever written)."""

from __future__ import annotations

import edgemm.runtime.trt_compat as trt_compat
from edgemm.recipes import load_recipe
from tests.tensorrt.conftest import DESKTOP, NO_TRT, ORIN_NANO


def test_skip_reasons(monkeypatch):
    from edgemm.export.pipeline import _engine_skip_reason

    nano = load_recipe("jetson-orin-nano")
    monkeypatch.setattr(trt_compat, "probe_host", lambda **_: NO_TRT)
    reason = _engine_skip_reason(nano)
    assert "TensorRT is not installed" in reason and "edgemm build-engine BUNDLE --target jetson-orin-nano" in reason
    monkeypatch.setattr(trt_compat, "probe_host", lambda **_: DESKTOP)
    assert "not one" in _engine_skip_reason(nano)
    monkeypatch.setattr(trt_compat, "probe_host", lambda **_: ORIN_NANO)
    assert _engine_skip_reason(nano) is None
    assert _engine_skip_reason(load_recipe("cpu-kiosk")) is None  # no [tensorrt] table: nothing to say
