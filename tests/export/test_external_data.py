"""Large models keep their weights in an external data file that the bundle lists and hashes."""

from __future__ import annotations

import pytest

from edgemm.bundle.verify import verify_bundle
from edgemm.data.synthetic import synthesize_image
from edgemm.errors import BundleError
from edgemm.export.pipeline import ExportOptions, export_bundle
from edgemm.runtime import Predictor


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_external_data_above_threshold(tiny_ckpt, tmp_path, exporter):
    # The real threshold is 2 GiB; a 1-byte threshold exercises the same path on a tiny model.
    report = export_bundle(tiny_ckpt, tmp_path / "b", options=ExportOptions(external_data_threshold=1, exporter=exporter))
    manifest = verify_bundle(report.bundle)
    art = manifest.artifacts[0]
    assert art.files == ["model/fp32.onnx", "model/fp32.onnx.data"]
    sizes = {f.path: f.bytes for f in manifest.files}
    assert sizes["model/fp32.onnx.data"] > sizes["model/fp32.onnx"]
    with Predictor.load(report.bundle) as predictor:
        assert predictor.predict(text="7", image=synthesize_image(32, 32, 0)).label in manifest.labels
    data = report.bundle / "model" / "fp32.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match=r"fp32\.onnx\.data"):
        verify_bundle(report.bundle)
