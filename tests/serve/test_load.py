"""Bounded load against the real server: no unexpected 5xx, bounded memory, batching at work.

Timings are recorded by ``benchmarks/serve_load.py``, not asserted here.
"""

from __future__ import annotations

from benchmarks.serve_load import batch_histogram, request_mix, rss_kib, run_load

# Resident memory may grow after warm-up by at most this much over 2,000 requests (arenas settle
# during warm-up; a leak of even 50 KB per request would exceed it).
RSS_GROWTH_BOUND_MIB = 64


def test_2000_mixed_requests_at_concurrency_32(server):
    run_load(server.port, request_mix(200, seed=1), 32)
    warm = rss_kib(server.proc.pid)
    report = run_load(server.port, request_mix(2000, malformed=0.01, seed=2), 32)
    grown_mib = (rss_kib(server.proc.pid) - warm) / 1024
    assert report["requests"] == 2000
    assert report["server_errors"] == 0, report
    assert report["unexpected_count"] == 0, report["unexpected"]
    assert 15 <= sum(n for status, n in report["statuses"].items() if int(status) >= 400) <= 25
    assert grown_mib < RSS_GROWTH_BOUND_MIB, f"RSS grew {grown_mib:.1f} MiB"
    hist = {float(le): n for le, n in batch_histogram(server.metrics()).items()}  # le="1.0" or "1"
    assert hist[float("inf")] > hist[1.0], "concurrent requests were never batched"
    assert server.get("/v1/health/ready").status == 200
