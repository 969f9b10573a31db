"""Preprocessing speed: per-stage and whole-request timings, optionally against an earlier edgemm.

    python benchmarks/preprocess_speed.py BUNDLE [--before CHECKOUT] [--rounds 400] [--out DIR]

Times the runtime :class:`~edgemm.runtime.preprocess.pipeline.Preprocessor` of BUNDLE (a text +
image bundle such as ``out/reference.bundle``) on text "seven" + a small PNG and on a 640x480
JPEG, at batch 1 and 8, each twice: **fresh** (every call sends texts and pictures never seen
before, so nothing is served from the per-text or per-picture caches) and **repeated** (the same
inputs every call, as a kiosk's fixed question cards and common answers). It also times the
stages (tokenize, decode, render + resize, rescale + normalise) and the whole
``Predictor.predict`` against ``Predictor.run`` (model only), so the share of preprocessing in
an end-to-end batch-1 request is measured, not inferred.

``--before CHECKOUT`` (a checkout of an earlier commit, e.g. ``git worktree add /tmp/before
<commit>``) loads that checkout's ``edgemm/runtime/preprocess`` beside this one (renamed, in this
process) and runs every measurement of both interleaved, call by call; its feeds are checked
equal to this version's first. The end-to-end share swaps the predictor's preprocessor between
calls, so both sides share one model session.

Medians in microseconds. The CPU is often shared: compare the ratios of one run, not absolute
times across runs. Results go to ``benchmarks/results/<machine id>/preprocess/`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import io
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
TEXTS8 = ["seven", "eight", "it is a seven", "nine", "one", "I think three", "zero", "two"]


def _load_before(checkout: Path, tmp: Path) -> Any:
    """The earlier checkout's preprocess package, imported as ``before_preprocess``."""
    source = checkout / "edgemm" / "runtime" / "preprocess"
    if not source.is_dir():
        raise SystemExit(f"{checkout} has no edgemm/runtime/preprocess")
    target = tmp / "before_preprocess"
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    for path in target.rglob("*.py"):
        path.write_text(re.sub(r"edgemm\.runtime\.preprocess", "before_preprocess", path.read_text()))
    sys.path.insert(0, str(tmp))
    return importlib.import_module("before_preprocess.pipeline")


def _fresh(text: str, i: int) -> str:
    """A string never sent before that tokenizes like ``text`` on an uncased tokenizer (letter
    case and trailing spaces vary), so fresh and repeated requests feed the model alike."""
    cased = "".join(c.upper() if (i >> k) & 1 else c for k, c in enumerate(text[:5])) + text[5:]
    return cased + " " * (i >> min(5, len(text)))


def _photo(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    planes = [128 + 90 * np.sin(x / (7 + 3 * c) + y / (11 + c)) * np.cos(y / (13 + 2 * c)) + rng.normal(0, 6, x.shape)
              for c in range(3)]
    return np.clip(np.stack(planes, -1), 0, 255).astype(np.uint8)


def _payloads(kind: str, count: int, digit: bytes) -> list[bytes]:
    """``count`` payloads with the same pixels and different bytes (a comment / text chunk),
    so that every one is new to a cache but costs the same to decode."""
    out = []
    if kind == "png":
        from PIL.PngImagePlugin import PngInfo

        image = Image.open(io.BytesIO(digit))
        image.load()
        for i in range(count):
            info = PngInfo()
            info.add_text("n", str(i))
            buf = io.BytesIO()
            image.save(buf, "PNG", pnginfo=info)
            out.append(buf.getvalue())
    else:
        photo = Image.fromarray(_photo(480, 640, 1))
        for i in range(count):
            buf = io.BytesIO()
            photo.save(buf, "JPEG", quality=85, comment=f"n{i}".encode())
            out.append(buf.getvalue())
    return out


def _interleaved(calls: dict[str, Callable[[int], Any]], rounds: int) -> dict[str, float]:
    """Median µs of each callable (given the round number), called in rotating order."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    for i in range(rounds):
        order = names[i % len(names):] + names[:i % len(names)]
        for name in order:
            started = time.perf_counter()
            calls[name](i)
            times[name].append(time.perf_counter() - started)
    return {name: round(statistics.median(values) * 1e6, 1) for name, values in times.items()}


def measure(bundle: Path, before: Any | None, rounds: int) -> dict[str, Any]:
    """Every measurement (see the module docstring); ``before`` is the earlier pipeline module."""
    from edgemm.bundle.verify import read_manifest
    from edgemm.runtime import Predictor
    from edgemm.runtime.preprocess.pipeline import Preprocessor

    manifest = read_manifest(bundle)
    sections, modalities = manifest.preprocessing, manifest.modalities
    if "text" not in sections or "image" not in sections:
        raise SystemExit("The bundle must take text and an image (e.g. out/reference.bundle).")
    png_source = next(iter(sorted((HERE.parent / "out" / "inputs").glob("digit-*.png"))), None)
    digit = png_source.read_bytes() if png_source else _encode_digit()
    payloads = {"png": _payloads("png", rounds * 8 + 8, digit),
                "jpeg640": _payloads("jpeg", 8 * max(20, rounds // 10) + 8, digit)}
    sides = {"now": lambda: Preprocessor(bundle, sections, modalities)}
    if before is not None:
        sides["before"] = lambda: before.Preprocessor(bundle, sections, modalities)
        check = {name: make() for name, make in sides.items()}
        for kind, items in payloads.items():
            for batch in ({"text": ["seven"], "image": items[:1]}, {"text": TEXTS8, "image": items[:8]}):
                feeds = {name: pre(batch) for name, pre in check.items()}
                for key, value in feeds["now"].items():
                    if not np.array_equal(value, feeds["before"][key]) or value.dtype != feeds["before"][key].dtype:
                        raise SystemExit(f"Feeds differ from the earlier version on {kind} ({key}).")
    report: dict[str, Any] = {"bundle": str(bundle), "rounds": rounds, "requests": {}, "stages": {}}
    gc.disable()
    try:
        for kind, items in payloads.items():
            n = rounds if kind == "png" else max(20, rounds // 10)
            for size in (1, 8):
                for mode in ("fresh", "repeated"):
                    pres = {name: make() for name, make in sides.items()}

                    def call(pre: Any, i: int, size: int = size, mode: str = mode, items: list[bytes] = items) -> Any:
                        if mode == "repeated":
                            return pre({"text": TEXTS8[:size], "image": items[:size]})
                        start = (i * size) % (len(items) - size)
                        texts = [_fresh(t, i) for t in TEXTS8[:size]]
                        return pre({"text": texts, "image": items[start:start + size]})

                    calls = {name: (lambda i, pre=pre: call(pre, i)) for name, pre in pres.items()}
                    report["requests"][f"{kind} b{size} {mode}"] = _interleaved(calls, n if size == 1 else max(20, n // 4))
        report["stages"] = _stages(sides, payloads, rounds)
        predictor = Predictor.load(bundle)
        try:
            report["end_to_end_b1"] = _share(predictor, sides, payloads["png"], rounds)
        finally:
            predictor.close()
    finally:
        gc.enable()
    return report


def _encode_digit() -> bytes:
    digit = np.full((8, 8), 255, np.uint8)
    digit[1, 1:7] = 0
    digit[2:7, 5] = 0
    buf = io.BytesIO()
    Image.fromarray(digit).save(buf, "PNG")
    return buf.getvalue()


def _stage_calls(pre: Any, payloads: dict[str, list[bytes]]) -> dict[str, Callable[[int], Any]]:
    """One side's stage callables: its own tokenizer, decoder and transforms."""
    root = type(pre).__module__.rsplit(".", 1)[0]
    transforms = sys.modules[f"{root}.image.transforms"]
    decode = sys.modules[f"{root}.image.decode"]
    section = pre.preprocessing["image"]
    limits = {k: section[k] for k in ("max_pixels", "formats", "max_bytes")}
    recipe = transforms.parse_image_section(section)
    calls: dict[str, Callable[[int], Any]] = {
        "tokenize b1 fresh": lambda i: pre.text([_fresh("seven", i)]),
        "tokenize b1 repeated": lambda i: pre.text(["seven"]),
        "tokenize b8 fresh": lambda i: pre.text([_fresh(t, i) for t in TEXTS8]),
        "parse image section": lambda i: transforms.parse_image_section(section),
    }

    def add(kind: str, items: list[bytes]) -> None:
        image = decode.decode_image(items[0], **limits)
        prepared = transforms._prepare_all([image], recipe, "bench")
        calls[f"{kind} decode"] = lambda i: decode.decode_image(items[i % len(items)], **limits)
        calls[f"{kind} render+resize"] = lambda i: transforms._prepare_all([image], recipe, "bench")
        if hasattr(transforms, "_values"):
            calls[f"{kind} rescale+normalise+NCHW"] = lambda i: transforms._values(prepared, recipe)
        else:
            calls[f"{kind} rescale+normalise+NCHW"] = lambda i: np.ascontiguousarray(
                transforms._rescale_normalize(np.stack(prepared), recipe).transpose(0, 3, 1, 2))

    for kind, items in payloads.items():
        add(kind, items)
    return calls


def _stages(sides: dict[str, Callable[[], Any]], payloads: dict[str, list[bytes]], rounds: int) -> dict[str, Any]:
    """Tokenize / decode / render+resize / rescale+normalise, each side's own functions, interleaved."""
    out = {name: _stage_calls(make(), payloads) for name, make in sides.items()}
    result: dict[str, Any] = {}
    for stage in out["now"]:
        calls = {name: stage_calls[stage] for name, stage_calls in out.items() if stage in stage_calls}
        result[stage] = _interleaved(calls, rounds if "jpeg" not in stage else max(20, rounds // 10))
    return result


def _share(predictor: Any, sides: dict[str, Callable[[], Any]], pngs: list[bytes], rounds: int) -> dict[str, Any]:
    """Batch 1 text + PNG: model only vs whole predict with each side's preprocessor."""
    pres = {name: make() for name, make in sides.items()}
    feed = pres["now"]({"text": ["seven"], "image": pngs[:1]})
    calls: dict[str, Callable[[int], Any]] = {"model only": lambda i: predictor.run(feed)}
    for name, pre in pres.items():
        def fresh(i: int, pre: Any = pre) -> Any:
            predictor.preprocessor = pre
            return predictor.predict(text=_fresh("seven", i), image=pngs[i % len(pngs)])

        def repeated(i: int, pre: Any = pre) -> Any:
            predictor.preprocessor = pre
            return predictor.predict(text="seven", image=pngs[0])

        calls[f"predict {name} fresh"] = fresh
        calls[f"predict {name} repeated"] = repeated
        calls[f"preprocess {name} fresh"] = lambda i, pre=pre: pre({"text": [_fresh("seven", i)],
                                                                     "image": [pngs[i % len(pngs)]]})
        calls[f"preprocess {name} repeated"] = lambda i, pre=pre: pre({"text": ["seven"], "image": pngs[:1]})
    medians = _interleaved(calls, rounds)
    shares = {f"{name} {mode}": round(medians[f"preprocess {name} {mode}"] / medians[f"predict {name} {mode}"], 3)
              for name in pres for mode in ("fresh", "repeated")}
    return {"medians_us": medians, "preprocessing_share_of_predict": shares}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--before", type=Path, help="a checkout of an earlier edgemm to compare with")
    parser.add_argument("--rounds", type=int, default=400)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from edgemm.bench.machine import fingerprint, machine_id

    with tempfile.TemporaryDirectory() as tmp:
        before = _load_before(args.before, Path(tmp)) if args.before else None
        report = measure(args.bundle, before, args.rounds)
    machine = fingerprint()
    report["machine"] = machine
    out = args.out or HERE / "results" / machine_id(machine) / "preprocess"
    out.mkdir(parents=True, exist_ok=True)
    (out / "preprocess-speed.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "machine"}, indent=2))


if __name__ == "__main__":
    main()
