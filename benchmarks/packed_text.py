"""Padding removed from the text encoder (packed tokens): what would it gain? (issue 16, batches)

In a batch the texts are padded to the longest; on the digit-match test split 70 % of the padded
positions are real tokens (lengths 3-7 at batch 8 and 32), and the reference model's time grows
almost linearly with the padded length. This prototype runs the BERT-family text encoder of a
fusion checkpoint on packed tokens: the per-token work (Q/K/V, output and feed-forward layers,
LayerNorms) on the real tokens only, gathered back to ``[B, S]`` for attention alone. The FP32
graph must equal the padded one; both are quantized by NNCF (the same few calibration batches)
and timed in OpenVINO, interleaved, on the bench's standard feeds. A prototype for measurement,
not an export path: it reimplements ``BertLayer`` (no DistilBERT / CLIP text), and needs the
TorchScript exporter (``nonzero`` is data-dependent).

    python benchmarks/packed_text.py benchmarks/.work/reference-ckpt benchmarks/.work/reference-cpu.bundle
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch

INPUTS = ["input_ids", "attention_mask", "pixel_values"]


def packed_forward(self: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
    """``TextEncoder.forward`` (mean pooling) with every per-token layer run on the real tokens only."""
    from edgemm.models.encoders import EncoderOutput, masked_mean

    bert = self.model
    batch, seq = input_ids.shape
    hidden, heads = bert.config.hidden_size, bert.config.num_attention_heads
    flat = attention_mask.reshape(-1)
    keep = torch.nonzero(flat.bool()).squeeze(1)  # [T]: the real tokens' positions in [B * S]
    # Each padded position's packed row, or the extra zero row T for padding.
    back = torch.where(flat.bool(), torch.cumsum(flat, 0) - 1, torch.zeros_like(flat) + keep.shape[0])
    x = bert.embeddings(input_ids=input_ids).reshape(batch * seq, hidden).index_select(0, keep)
    bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min

    def padded(t: torch.Tensor) -> torch.Tensor:
        rows = torch.cat([t, t.new_zeros(1, t.shape[1])], 0).index_select(0, back)
        return rows.reshape(batch, seq, heads, hidden // heads).transpose(1, 2)

    for layer in bert.encoder.layer:
        att = layer.attention.self
        q, k, v = padded(att.query(x)), padded(att.key(x)), padded(att.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(hidden // heads) + bias
        ctx = torch.matmul(torch.softmax(scores, -1), v).transpose(1, 2).reshape(batch * seq, hidden).index_select(0, keep)
        a = layer.attention.output.LayerNorm(layer.attention.output.dense(ctx) + x)
        x = layer.output.LayerNorm(layer.output.dense(layer.intermediate(a)) + a)
    states = torch.cat([x, x.new_zeros(1, hidden)], 0).index_select(0, back).reshape(batch, seq, hidden)
    mask = attention_mask.bool()
    return EncoderOutput(states, mask, masked_mean(states, mask))


class _Logits(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values)["logits"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args(argv)

    import nncf
    import openvino as ov

    from edgemm.bench.bench import _input_maker, _raw_rows
    from edgemm.bundle.verify import verify_bundle
    from edgemm.data.resolve import resolve_dataset
    from edgemm.models.model import FusionModel

    model = FusionModel.from_pretrained(args.checkpoint).eval()
    text = model.encoders["text"]
    if text.pooling != "mean" or not hasattr(text.model, "encoder"):
        raise SystemExit("the prototype covers a BERT-family text encoder with mean pooling")
    manifest = verify_bundle(args.bundle, check_hashes=False)
    records = resolve_dataset(manifest.source["training"]["data"]).split("test")
    make = _input_maker(args.bundle, manifest, _raw_rows(args.bundle, manifest, records))
    feeds = {b: make(b, None)[1] for b in (1, 8, 32)}
    for b, feed in feeds.items():
        mask = feed["attention_mask"]
        print(f"b{b}: {int(mask.sum())} real tokens of {mask.size} padded positions ({mask.sum() / mask.size:.0%})")
    with torch.no_grad():
        padded = {b: model(**{k: torch.from_numpy(v) for k, v in f.items()})["logits"].numpy() for b, f in feeds.items()}
        text.forward = types.MethodType(packed_forward, text)
        packed = {b: model(**{k: torch.from_numpy(v) for k, v in f.items()})["logits"].numpy() for b, f in feeds.items()}
    print("FP32 packed vs padded, max |diff|:", {b: float(np.abs(padded[b] - packed[b]).max()) for b in feeds})

    core = ov.Core()
    golden = np.load(args.bundle / "golden.npz")
    calibration = [{k[5:]: v for k, v in golden.items() if k.startswith("feed.")}, feeds[8], feeds[32]]
    requests: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        packed_onnx = Path(tmp) / "packed.onnx"
        example = tuple(torch.from_numpy(feeds[8][n]) for n in INPUTS)
        dynamic = {"input_ids": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "s"}, "pixel_values": {0: "b"}, "logits": {0: "b"}}
        torch.onnx.export(_Logits(model), example, str(packed_onnx), input_names=INPUTS, output_names=["logits"],
                          dynamic_axes=dynamic, opset_version=18, dynamo=False)
        for name, path in (("padded", args.bundle / "model" / "fp32.onnx"), ("packed", packed_onnx)):
            quantized = nncf.quantize(core.read_model(str(path)), nncf.Dataset(calibration), subset_size=len(calibration),
                                      model_type=nncf.ModelType.TRANSFORMER, target_device=nncf.TargetDevice.CPU)
            compiled = core.compile_model(quantized, "CPU", {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1",
                                                             "ENABLE_CPU_PINNING": "NO"})
            requests[name] = compiled.create_infer_request()
    for b, feed in feeds.items():
        a, p = (requests[n].infer(feed)[0] for n in ("padded", "packed"))
        print(f"b{b}: INT8 packed vs padded max |diff| {float(np.abs(a - p).max()):.4f}")
    for request in requests.values():
        for feed in feeds.values():
            for _ in range(5):
                request.infer(feed)
    times: dict[tuple[str, int], list[float]] = {(n, b): [] for n in requests for b in feeds}
    for _ in range(args.rounds):
        for b, feed in feeds.items():
            for name, request in requests.items():
                for _ in range(10 if b < 32 else 4):
                    start = time.perf_counter()
                    request.infer(feed)
                    times[(name, b)].append((time.perf_counter() - start) * 1e3)
    for b in feeds:
        p50 = {n: statistics.median(times[(n, b)]) for n in requests}
        print(f"b{b}: OpenVINO INT8 padded {p50['padded']:.3f} ms, packed {p50['packed']:.3f} ms, "
              f"padded / packed {p50['padded'] / p50['packed']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
