"""GPU power, energy and device memory during timed blocks: NVML on desktop GPUs, tegrastats on Jetson.

One background reader runs for the whole benchmark (starting ``tegrastats`` or an NVML poller per
timed block would cost more than short blocks last). A ``with sampler:`` block only marks a time
window; :meth:`Telemetry.summary` integrates the power samples over that window, with the samples
just outside it interpolated to its edges, so blocks shorter than the sampling interval still get
an energy estimate. Torch-free.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import threading
import time

import numpy as np

from edgemm.errors import BackendUnavailableError

_TEGRA_POWER = re.compile(r"\b(?:VDD_IN|POM_5V_IN)\s+(\d+)(?:mW)?/")
_TEGRA_RAM = re.compile(r"\bRAM\s+(\d+)/(\d+)MB")


def parse_tegrastats(line: str) -> tuple[float | None, float | None]:
    """Board input power (W) and used RAM (MB) from one ``tegrastats`` line (None if absent)."""
    power = _TEGRA_POWER.search(line)
    ram = _TEGRA_RAM.search(line)
    return (int(power.group(1)) / 1000.0 if power else None, float(ram.group(1)) if ram else None)


def tegrastats_available() -> bool:
    """True on a Jetson with ``tegrastats`` on PATH (power is then read from it)."""
    return shutil.which("tegrastats") is not None


class Telemetry:
    """Samples ``(time, watts, used MB)`` in a background thread; ``with`` blocks mark windows."""

    source = "telemetry"

    def __init__(self) -> None:
        self._samples: list[tuple[float, float, float]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._window: tuple[float, float] | None = None
        self._opened = 0.0

    # Subclasses implement the reading loop; it calls _record until self._stop is set.
    def _run(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _record(self, watts: float, used_mb: float) -> None:
        with self._lock:
            self._samples.append((time.perf_counter(), watts, used_mb))

    def start(self) -> Telemetry:
        """Start the background reader (idempotent)."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=f"edgemm-{self.source}", daemon=True)
            self._thread.start()
            # A window can only be integrated once a sample precedes it.
            deadline = time.perf_counter() + 2.0
            while not self.samples() and time.perf_counter() < deadline and self._thread.is_alive():
                time.sleep(0.002)
        return self

    def close(self) -> None:
        """Stop the reader and release what it holds."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Telemetry:
        self.start()
        self._opened = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self._window = (self._opened, time.perf_counter())

    def samples(self) -> list[tuple[float, float, float]]:
        """Every sample so far (a copy)."""
        with self._lock:
            return list(self._samples)

    def summary(self, items: int) -> dict[str, float]:
        """Average power, energy per item and peak used memory over the last ``with`` block.

        Empty when the reader has not produced a sample on both sides of the window yet.
        """
        if self._window is None:
            return {}
        start, end = self._window
        data = self.samples()
        # Wait briefly for the first sample after the window (the reader may lag one interval).
        deadline = time.perf_counter() + 1.0
        while (not data or data[-1][0] < end) and time.perf_counter() < deadline and self._thread is not None:
            time.sleep(0.005)
            data = self.samples()
        if len(data) < 2 or data[0][0] > start or data[-1][0] < end:
            return {}
        times = np.array([s[0] for s in data])
        watts = np.array([s[1] for s in data])
        inside = (times > start) & (times < end)
        grid = np.concatenate([[start], times[inside], [end]])
        power = np.interp(grid, times, watts)
        energy = float(np.sum((power[1:] + power[:-1]) * np.diff(grid)) / 2.0)
        lo = max(int(np.searchsorted(times, start)) - 1, 0)
        hi = int(np.searchsorted(times, end))
        return {"avg_power_w": energy / (end - start) if end > start else float(power.mean()),
                "energy_j": energy,
                "energy_per_item_mj": 1000.0 * energy / max(items, 1),
                "peak_memory_mb": float(max(s[2] for s in data[lo:hi + 1]))}


class NvmlTelemetry(Telemetry):
    """Board power and used device memory of one GPU through NVML (``nvidia-ml-py``)."""

    source = "nvml"

    def __init__(self, device_index: int = 0, interval_s: float = 0.005):
        super().__init__()
        try:
            import pynvml
        except ImportError as exc:
            raise BackendUnavailableError("GPU power and memory need nvidia-ml-py.",
                                          hint="pip install 'edgemm[gpu]'") from exc
        try:
            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
        except pynvml.NVMLError as exc:
            raise BackendUnavailableError(f"NVML is not usable here: {exc}.",
                                          hint="Check the NVIDIA driver (nvidia-smi).") from exc
        self._nvml = pynvml
        self.interval_s = interval_s

    def _run(self) -> None:
        nvml, handle = self._nvml, self._handle
        while not self._stop.is_set():
            # nvmlDeviceGetPowerUsage averages over about a second on recent boards; the
            # instantaneous field is preferred where the driver offers it.
            self._record(self._watts(), nvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20)
            time.sleep(self.interval_s)

    def _watts(self) -> float:
        nvml = self._nvml
        field = getattr(nvml, "NVML_FI_DEV_POWER_INSTANT", None)
        if field is not None:
            try:
                value = nvml.nvmlDeviceGetFieldValues(self._handle, [field])[0]
                if value.nvmlReturn == nvml.NVML_SUCCESS:
                    return value.value.uiVal / 1000.0
            except nvml.NVMLError:
                pass
        return nvml.nvmlDeviceGetPowerUsage(self._handle) / 1000.0

    def close(self) -> None:
        super().close()
        with contextlib.suppress(self._nvml.NVMLError):
            self._nvml.nvmlShutdown()


class TegrastatsTelemetry(Telemetry):
    """Jetson board input power and (shared) RAM from one long-running ``tegrastats`` process."""

    source = "tegrastats"

    def __init__(self, interval_ms: int = 20, executable: str = "tegrastats"):
        super().__init__()
        path = shutil.which(executable)
        if path is None:
            raise BackendUnavailableError("tegrastats is not on PATH.", hint="Run on a Jetson with JetPack.")
        self._command = [path, "--interval", str(interval_ms)]
        self._proc: subprocess.Popen[str] | None = None

    def _run(self) -> None:
        self._proc = subprocess.Popen(self._command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            watts, ram = parse_tegrastats(line)
            if watts is not None:
                self._record(watts, ram or 0.0)
            if self._stop.is_set():
                break

    def close(self) -> None:
        self._stop.set()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        super().close()


def open_telemetry() -> Telemetry:
    """tegrastats on a Jetson, NVML elsewhere (BackendUnavailableError when neither works)."""
    sampler = TegrastatsTelemetry() if tegrastats_available() else NvmlTelemetry()
    return sampler.start()
