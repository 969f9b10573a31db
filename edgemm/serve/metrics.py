"""Prometheus text exposition, written by hand (no client library on the kiosk).

Thread-safe: request handlers run on the event loop, batches on a worker thread.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Sequence

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Histogram:
    """A cumulative histogram with fixed upper bounds."""

    def __init__(self, buckets: Sequence[float]):
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
                break
        else:
            self.counts[-1] += 1
        self.total += value
        self.n += 1

    def lines(self, name: str) -> list[str]:
        out, running = [], 0
        for bound, count in zip(self.buckets, self.counts):
            running += count
            out.append(f'{name}_bucket{{le="{bound:g}"}} {running}')
        out.append(f'{name}_bucket{{le="+Inf"}} {self.n}')
        out.append(f"{name}_sum {self.total:.6f}")
        out.append(f"{name}_count {self.n}")
        return out


def _label(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


class Metrics:
    """Counters, gauges and histograms of one server process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.responses: dict[str, int] = defaultdict(int)
        self.errors: dict[str, int] = defaultdict(int)
        self.latency = Histogram(LATENCY_BUCKETS)
        self.batch_sizes = Histogram(BATCH_BUCKETS)
        self.cancelled = 0
        self.reloads: dict[str, int] = defaultdict(int)
        self.gauges: dict[str, Callable[[], float]] = {}
        self.info: Callable[[], dict[str, str]] = dict

    def observe_response(self, status: int, seconds: float, error_code: str | None = None) -> None:
        with self._lock:
            self.responses[str(status)] += 1
            self.latency.observe(seconds)
            if error_code:
                self.errors[error_code] += 1

    def observe_batch(self, size: int) -> None:
        with self._lock:
            self.batch_sizes.observe(size)

    def count_cancelled(self) -> None:
        with self._lock:
            self.cancelled += 1

    def count_reload(self, result: str) -> None:
        with self._lock:
            self.reloads[result] += 1

    def render(self) -> str:
        """The exposition text (``text/plain; version=0.0.4``)."""
        with self._lock:
            lines = [
                "# HELP edgemm_requests_total Responses to /v1/predict and to refused requests, by HTTP status.",
                "# TYPE edgemm_requests_total counter",
                *(f'edgemm_requests_total{{status="{s}"}} {n}' for s, n in sorted(self.responses.items())),
                "# HELP edgemm_errors_total Error responses by stable error code.",
                "# TYPE edgemm_errors_total counter",
                *(f'edgemm_errors_total{{code="{_label(c)}"}} {n}' for c, n in sorted(self.errors.items())),
                "# HELP edgemm_request_duration_seconds Time from request start to response.",
                "# TYPE edgemm_request_duration_seconds histogram",
                *self.latency.lines("edgemm_request_duration_seconds"),
                "# HELP edgemm_batch_size Requests per model call (micro-batching).",
                "# TYPE edgemm_batch_size histogram",
                *self.batch_sizes.lines("edgemm_batch_size"),
                "# HELP edgemm_cancelled_total Requests dropped because the client went away.",
                "# TYPE edgemm_cancelled_total counter",
                f"edgemm_cancelled_total {self.cancelled}",
                "# HELP edgemm_reloads_total Bundle swaps by result.",
                "# TYPE edgemm_reloads_total counter",
                *(f'edgemm_reloads_total{{result="{r}"}} {n}' for r, n in sorted(self.reloads.items())),
            ]
        for name, read in sorted(self.gauges.items()):
            lines += [f"# TYPE {name} gauge", f"{name} {float(read()):g}"]
        info = self.info()
        if info:
            labels = ",".join(f'{k}="{_label(v)}"' for k, v in sorted(info.items()))
            lines += ["# HELP edgemm_model_info The model being served, its artifact and device.",
                      "# TYPE edgemm_model_info gauge", f"edgemm_model_info{{{labels}}} 1"]
        return "\n".join(lines) + "\n"
