"""Bounded load test of ``edgemm serve`` over real HTTP on loopback.

    python benchmarks/serve_load.py BUNDLE [--requests 2000] [--concurrency 32]
    python benchmarks/serve_load.py BUNDLE --before CHECKOUT [--rounds 3]

Starts the server on the bundle, sends a mix of requests (multipart text + image, with and
without audio, JSON with base64, raw image bodies, 1 % malformed) from ``concurrency`` client
threads, and records status counts, client-side latency percentiles, server batch sizes and the
server's resident memory after warm-up and after the load, in
``benchmarks/results/<machine id>/serve-load/``. The test suite runs the same function
(``tests/serve/test_load.py``) and asserts the behaviour, not the timings.

``--before`` compares with another version of edgemm side by side: CHECKOUT is a checkout of an
earlier commit (``git worktree add /tmp/before <commit>``); its own ``serve_load.py`` and this one
run ``--rounds`` times each, interleaved, on the same bundle, and the recording (this version's
median run by p50) carries both sides' runs and medians under ``comparison``.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import random
import re
import statistics
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from edgemm.runtime.preprocess.audio import encode_wav  # noqa: E402

BOUNDARY = "edgemmLoadBoundary"


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _wav(seed: int) -> bytes:
    t = np.arange(8000) / 16000
    return encode_wav((0.2 * np.sin(2 * np.pi * (200 + 40 * seed) * t)).astype(np.float32), 16000)


def multipart(parts: dict[str, tuple[str | None, bytes, str]]) -> tuple[bytes, dict[str, str]]:
    """Encode ``name → (filename or None, data, content type)`` as multipart/form-data."""
    chunks = []
    for name, (filename, data, ctype) in parts.items():
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        chunks.append(f"--{BOUNDARY}\r\nContent-Disposition: {disp}\r\nContent-Type: {ctype}\r\n\r\n".encode()
                      + data + b"\r\n")
    return b"".join(chunks) + f"--{BOUNDARY}--\r\n".encode(), {
        "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


def request_mix(n: int, *, malformed: float = 0.01, seed: int = 0,
                audio: bool = True) -> list[tuple[str, bytes, dict[str, str], bool]]:
    """``n`` requests ``(path, body, headers, is_malformed)``: mixed modalities and transports.

    ``audio``: whether the model takes (optional) audio; a quarter of the requests then carry it.
    """
    rng = random.Random(seed)
    images, wavs = [_png(i) for i in range(8)], [_wav(i) for i in range(4)]
    words = ["seven", "七", "sieben", "٣ ثلاثة", "👍 two", "nine", "零", "five"]
    out = []
    bad_count = max(1, round(n * malformed))
    bad_at = set(rng.sample(range(n), bad_count))
    for i in range(n):
        img, text = rng.choice(images), rng.choice(words)
        if i in bad_at:
            kind = rng.choice(["truncated_png", "bad_json", "wrong_type", "invalid_utf8"])
            body, headers = {
                "truncated_png": (img[: len(img) // 3], {"Content-Type": "image/png"}),
                "bad_json": (b'{"text": "x", "image": ', {"Content-Type": "application/json"}),
                "wrong_type": (b"<svg/>", {"Content-Type": "application/xml"}),
                "invalid_utf8": (b"\xff\xfe bad", {"Content-Type": "text/plain; charset=utf-8"}),
            }[kind]
            out.append(("/v1/predict?text=x", body, headers, True))
            continue
        roll = rng.random()
        if roll < 0.5:
            body, headers = multipart({"text": (None, text.encode(), "text/plain; charset=utf-8"),
                                        "image": ("p.png", img, "image/png")})
            out.append(("/v1/predict", body, headers, False))
        elif roll < 0.75 and audio:
            body, headers = multipart({"text": (None, text.encode(), "text/plain; charset=utf-8"),
                                        "image": ("p.png", img, "image/png"),
                                        "audio": ("a.wav", rng.choice(wavs), "audio/wav")})
            out.append(("/v1/predict", body, headers, False))
        elif roll < 0.9:
            doc = {"text": text, "image": base64.b64encode(img).decode()}
            out.append(("/v1/predict", json.dumps(doc).encode(), {"Content-Type": "application/json"}, False))
        else:
            from urllib.parse import quote

            out.append((f"/v1/predict?text={quote(text)}", img, {"Content-Type": "image/png"}, False))
    return out


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def run_load(port: int, requests: list[tuple[str, bytes, dict[str, str], bool]], concurrency: int) -> dict:
    """Send ``requests`` from ``concurrency`` threads (one keep-alive connection each)."""
    local = threading.local()
    results: list[tuple[int, float, bool, str | None]] = []
    lock = threading.Lock()

    def send(item: tuple[str, bytes, dict[str, str], bool]) -> None:
        path, body, headers, bad = item
        if getattr(local, "conn", None) is None:
            local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        started = time.perf_counter()
        try:
            local.conn.request("POST", path, body=body, headers=headers)
            res = local.conn.getresponse()
            data = res.read()
            status = res.status
            code = json.loads(data).get("error", {}).get("code") if status >= 400 else None
            if res.getheader("connection", "").lower() == "close":
                local.conn.close()
                local.conn = None
        except (OSError, http.client.HTTPException) as exc:
            status, code = 0, type(exc).__name__
            local.conn.close()
            local.conn = None
        with lock:
            results.append((status, time.perf_counter() - started, bad, code))

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(send, requests))
    wall = time.perf_counter() - started
    ok = sorted(lat for status, lat, bad, _ in results if status == 200)
    statuses = Counter(str(status) for status, *_ in results)
    unexpected = [(status, code) for status, _, bad, code in results
                  if (status != 200 and not bad) or (bad and not 400 <= status < 500)]
    return {
        "requests": len(results), "concurrency": concurrency, "wall_s": round(wall, 3),
        "throughput_rps": round(len(results) / wall, 1), "statuses": dict(statuses),
        "unexpected": unexpected[:20], "unexpected_count": len(unexpected),
        "server_errors": sum(n for s, n in statuses.items() if s.startswith("5") or s == "0"),
        "latency_ms": {"p50": round(1e3 * statistics.median(ok), 2),
                       "p90": round(1e3 * ok[int(0.9 * (len(ok) - 1))], 2),
                       "p99": round(1e3 * ok[int(0.99 * (len(ok) - 1))], 2),
                       "max": round(1e3 * ok[-1], 2)} if ok else {},
    }


def batch_histogram(metrics_text: str) -> dict[str, int]:
    return {le: int(n) for le, n in re.findall(r'edgemm_batch_size_bucket\{le="([^"]+)"\} (\d+)', metrics_text)}


def measure(bundle: Path, requests: int, concurrency: int) -> dict:
    """One load run against a fresh server on ``bundle``: the report without the machine."""
    from tests.serve.conftest import start_server, stop_server

    manifest = json.loads((bundle / "edgemm.json").read_text())
    audio = "audio" in manifest["modalities"]
    tmp = Path("benchmarks/.work/serve-load")
    tmp.mkdir(parents=True, exist_ok=True)
    server = start_server(tmp, str(bundle), "--device", "cpu")
    try:
        run_load(server.port, request_mix(200, seed=1, audio=audio), concurrency)  # warm-up
        rss_warm = rss_kib(server.proc.pid)
        report = run_load(server.port, request_mix(requests, seed=2, audio=audio), concurrency)
        report["bundle"] = {"name": manifest["name"], "modalities": sorted(manifest["modalities"])}
        report["rss_mib"] = {"after_warmup": round(rss_warm / 1024, 1),
                             "after_load": round(rss_kib(server.proc.pid) / 1024, 1)}
        report["batch_size_histogram"] = batch_histogram(server.metrics())
    finally:
        stop_server(server)
    return report


def _side(code: str, reports: list[dict]) -> dict:
    return {"code": code,
            "runs": [{"p50": r["latency_ms"]["p50"], "p99": r["latency_ms"]["p99"],
                      "throughput_rps": r["throughput_rps"], "unexpected": r["unexpected_count"]} for r in reports],
            "median_p50_ms": statistics.median(r["latency_ms"]["p50"] for r in reports),
            "median_p99_ms": statistics.median(r["latency_ms"]["p99"] for r in reports),
            "median_throughput_rps": statistics.median(r["throughput_rps"] for r in reports)}


def _git_head(folder: Path) -> str:
    import subprocess

    done = subprocess.run(["git", "-C", str(folder), "log", "-1", "--format=%h"], capture_output=True, text=True)
    return done.stdout.strip() or folder.name


def compare(bundle: Path, before: Path, rounds: int, requests: int, concurrency: int) -> dict:
    """``rounds`` runs of ``before``'s serve_load.py and of this one, interleaved; this version's
    median run (by p50) with both sides under ``comparison``."""
    import subprocess
    import tempfile

    theirs, ours = [], []
    with tempfile.TemporaryDirectory() as scratch:
        for i in range(rounds):
            out = Path(scratch) / f"before-{i}"
            subprocess.run([sys.executable, "benchmarks/serve_load.py", str(bundle.resolve()), "--out", str(out),
                            "--requests", str(requests), "--concurrency", str(concurrency)],
                           cwd=before, check=True, stdout=subprocess.DEVNULL)
            theirs.append(json.loads((out / "serve-load.json").read_text()))
            ours.append(measure(bundle, requests, concurrency))
    report = sorted(ours, key=lambda r: r["latency_ms"]["p50"])[len(ours) // 2]
    report["comparison"] = {
        "how": f"benchmarks/serve_load.py --before, {rounds} runs each, interleaved (before, now, ...), same bundle, "
               "same machine, one server at a time",
        "before": _side(f"{_git_head(before)} (before)", theirs),
        "now": _side(f"{_git_head(HERE.parent)} (now; this recording is its median run)", ours),
    }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--before", type=Path, default=None, help="a checkout of an earlier version to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from edgemm.bench.machine import fingerprint, machine_id

    if args.before:
        report = compare(args.bundle, args.before, args.rounds, args.requests, args.concurrency)
    else:
        report = measure(args.bundle, args.requests, args.concurrency)
    machine = fingerprint()
    report["machine"] = machine
    out = args.out or HERE / "results" / machine_id(machine) / "serve-load"
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve-load.json").write_text(json.dumps(report, indent=2, default=str))
    from benchmarks.render import render

    render(HERE / "results", HERE / "README.md")
    print(json.dumps({k: v for k, v in report.items() if k != "machine"}, indent=2))


if __name__ == "__main__":
    main()
