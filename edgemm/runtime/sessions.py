"""The one place ONNX Runtime sessions are made: providers, options, threads and error types.

The runtime's backend, the accuracy gate, bench's IO-binding contender and the Optimum peer all
create their sessions here, so a kiosk setting (threads, spin policy, graph optimization, log
level) means the same thing everywhere and an engine error is recognised as one.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from edgemm._deps import require
from edgemm.errors import BackendUnavailableError, UsageError

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")


def onnxruntime() -> ModuleType:
    """ONNX Runtime, imported on first use (``edgemm --help`` must not pay for it)."""
    return require("onnxruntime", extra="runtime", purpose="running ONNX models")


@functools.lru_cache(maxsize=1)
def engine_errors() -> tuple[type[BaseException], ...]:
    """ONNX Runtime's own exception types (``Fail``, ``InvalidArgument``, ``RuntimeException`` …).

    Only these become :class:`~edgemm.errors.RuntimeFailure` at the backend boundary; any other
    exception is a bug in edgemm and keeps its traceback.
    """
    state = require("onnxruntime.capi.onnxruntime_pybind11_state", extra="runtime")
    return tuple(value for value in vars(state).values()
                 if isinstance(value, type) and issubclass(value, Exception))


def available_devices() -> list[str]:
    """Devices ONNX Runtime can use here, best first (e.g. ``["cuda", "cpu"]``)."""
    providers = set(onnxruntime().get_available_providers())
    return [d for d in ("cuda", "cpu") if PROVIDERS[d] in providers]


def default_threads() -> int:
    """Intra-op threads for a kiosk CPU: the cores this process may use, at most 4.

    More threads than cores thrash; beyond 4 a small fusion model gains little while the
    kiosk UI and the HTTP server starve.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS / Windows
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


# The CPU thread policy of every session edgemm makes (issue 16). A kiosk shares its cores with a
# browser: ONNX Runtime's default spin-waiting workers burn the core another process needs and
# then wait for the thread that lost its core, so one busy core made batch 1 1.6-3.9x slower, and
# erratically. Blocking workers kept the contended p50 within 1.07-1.18x (b1) / 1.25-1.32x (b8) of
# the quiet one, at a price: ~1 ms more at batch 1 on an idle machine (measured interleaved on a
# 2-core EPYC: benchmarks/results/cpu-amd-epyc-2c/thread-policy.md). Multi-threaded CPU sessions
# therefore adapt (:class:`AdaptiveSession`): spinning while the machine is otherwise idle,
# blocking (batches) or single-threaded (one row) while other processes keep a core busy; these
# entries are the blocking half.
CPU_SESSION_CONFIG = {
    "session.intra_op.allow_spinning": "0",
    "session.inter_op.allow_spinning": "0",
}
SPIN_MODES = ("auto", "1", "0")
# Sessions that run back to back with other sessions (a split artifact's parts) stop their workers'
# spin-wait when a run ends: a part's idle workers otherwise spin on the cores the next part needs.
# On the 2-core EPYC this took a split answer from 2.28 to 1.38 ms (batch 1, new answer) and from
# 22.9 to 8.9 ms (batch 8, four new rows); a lone session gains nothing from it (1.18 vs 1.22 ms).
STOP_SPINNING_ENTRY = ("session.force_spinning_stop", "1")


def spin_mode() -> str:
    """The spin policy asked for by ``EDGEMM_SPIN``: ``auto`` (default), ``1`` (always spin), ``0`` (never).

    Raises:
        UsageError: Any other value.
    """
    value = os.environ.get("EDGEMM_SPIN", "auto").strip().lower() or "auto"
    if value not in SPIN_MODES:
        raise UsageError(f"EDGEMM_SPIN={value!r} is not a spin policy.",
                         hint="Use auto (adapt to contention), 1 (always spin) or 0 (never spin).")
    return value


def cpu_session_config(spin: bool | None = None) -> dict[str, str]:
    """ONNX Runtime session config entries of edgemm's CPU thread policy (see ``CPU_SESSION_CONFIG``).

    Args:
        spin: True: ONNX Runtime's spin-waiting workers (no entries); False: blocking workers;
            None: from ``EDGEMM_SPIN`` -- ``1`` spins, ``0`` and ``auto`` block (a single session
            cannot adapt, and blocking is the steady choice beside a browser).

    Returns:
        Config entries for ``SessionOptions.add_session_config_entry``.
    """
    if spin is None:
        spin = spin_mode() == "1"
    return {} if spin else dict(CPU_SESSION_CONFIG)


class ContentionDetector:
    """Whether other processes keep a core busy, from ``/proc/stat`` and this process's CPU time.

    Sampled at call time, at most every ``interval`` seconds (no background thread): the busy
    jiffies of all CPUs minus this process's own CPU time, over wall time, is the other
    processes' use in cores. Contention starts at ``enter`` cores and ends below ``leave``
    (hysteresis, so a noisy reading near one threshold does not flip sessions every call).
    Thread-safe; one per process (:func:`contention_detector`) serves every session.

    Args:
        reader: Returns ``(busy_cpu_seconds_of_all_cpus, own_cpu_seconds)`` or None when
            unreadable (tests inject synthetic readings); default :func:`read_cpu_times`.
        clock: Monotonic seconds (injectable for tests).
        interval / enter / leave: Seconds between samples; thresholds in cores.
    """

    def __init__(self, reader: Any = None, *, clock: Any = time.monotonic, interval: float = 0.1,
                 enter: float = 0.5, leave: float = 0.3):
        self._reader = reader or read_cpu_times
        self._clock = clock
        self.interval, self.enter, self.leave = interval, enter, leave
        self._lock = threading.Lock()
        self._last: tuple[float, float, float] | None = None
        self.contended = False
        self.other_cores: float | None = None
        first = self._reader()
        self.available = first is not None
        if first is not None:
            self._last = (self._clock(), *first)

    def check(self) -> bool:
        """True while other processes use at least ``enter`` cores (until they drop below ``leave``)."""
        if not self.available:
            return False
        now = self._clock()
        last = self._last
        if last is not None and now - last[0] < self.interval:
            return self.contended
        # Another thread already sampling: its answer is as good as ours, do not wait for it.
        if not self._lock.acquire(blocking=False):
            return self.contended
        try:
            reading = self._reader()
            if reading is None:
                return self.contended
            last = self._last
            self._last = (now, *reading)
            if last is None or now <= last[0]:
                return self.contended
            others = ((reading[0] - last[1]) - (reading[1] - last[2])) / (now - last[0])
            self.other_cores = others
            self.contended = others >= self.enter if not self.contended else others >= self.leave
            return self.contended
        finally:
            self._lock.release()


def read_cpu_times() -> tuple[float, float] | None:
    """``(busy CPU seconds of all CPUs, this process's CPU seconds)``, or None off Linux.

    Busy is everything but idle and iowait in ``/proc/stat``'s aggregate line, steal included
    (a hypervisor taking the core is contention too).
    """
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = fh.readline().split()
        tick = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None
    if len(fields) < 5 or fields[0] != "cpu":
        return None
    values = [int(v) for v in fields[1:9]]
    busy = sum(values) - values[3] - (values[4] if len(values) > 4 else 0)  # minus idle, iowait
    own = os.times()
    return busy / tick, own.user + own.system


def feed_rows(feed: Any) -> int:
    """The rows of a feed: its first input's leading axis.

    Raises:
        ValueError: The feed has no input, or its first input has no axis.
    """
    first = next(iter(feed.values()), None)
    shape = getattr(first, "shape", ())
    if not shape:
        raise ValueError("the feed's first input has no leading axis")
    return int(shape[0])


@functools.lru_cache(maxsize=1)
def contention_detector() -> ContentionDetector:
    """The process's one :class:`ContentionDetector`, shared by every adaptive session."""
    return ContentionDetector()


class AdaptiveSession:
    """CPU sessions of one model: spinning while the machine is idle, blocking under contention.

    Under contention a run of several rows goes to a session with blocking workers, and a run of
    one row to a single-threaded one: one row is too little work for two threads to gain what
    their synchronisation costs once a core is taken. With one core busy (2-core EPYC, reference
    INT8 model, one row as a kiosk sends it, 8 interleaved rounds; thread-policy.md) one thread
    answered in 1.25 / 1.66 / 1.36 ms (p90 1.71 / 2.22 / 1.86) against blocking two threads' 1.70 /
    1.99 / 1.76 (p90 2.15 / 2.88 / 2.81) for the whole graph / a split's joint / text part; spinning
    two threads were sometimes faster at p50 but had a p90 of 5.5-6 ms, so they are not used there.

    The spinning session is made at once; the others the first time the detector sees contention
    with their kind of run (most kiosks never need their memory). Other attributes
    (``get_inputs``, ``get_providers``, ``io_binding`` …) are the spinning session's.

    Args:
        make: ``make(kind)`` builds the session: ``"spin"`` (spinning workers), ``"block"``
            (blocking workers) or ``"one-thread"`` (a single intra-op thread).
        detector: Contention detector (default: :func:`contention_detector`).
    """

    def __init__(self, make: Any, detector: ContentionDetector | None = None):
        self._make = make
        self._detector = detector or contention_detector()
        self._sessions: dict[str, Any] = {"spin": make("spin")}
        self.last_mode: str | None = None
        self._lock = threading.Lock()

    @property
    def spinning(self) -> Any:
        """The spinning session (made at once; it answers attribute lookups too)."""
        return self._sessions["spin"]

    @property
    def blocking(self) -> Any:
        """The blocking session, None until contention first needed it."""
        return self._sessions.get("block")

    @property
    def single(self) -> Any:
        """The single-threaded session, None until contention first needed it."""
        return self._sessions.get("one-thread")

    def _session(self, rows: int) -> Any:
        kind = "spin" if not self._detector.check() else "one-thread" if rows <= 1 else "block"
        session = self._sessions.get(kind)
        if session is None:
            with self._lock:
                session = self._sessions.get(kind)
                if session is None:
                    session = self._sessions[kind] = self._make(kind)
        self.last_mode = kind
        return session

    def run(self, output_names: Any, input_feed: Any, run_options: Any = None) -> Any:
        """``InferenceSession.run`` on the session the current contention and the feed's rows call for."""
        try:
            rows = feed_rows(input_feed)
        except (AttributeError, TypeError, ValueError):
            rows = 2  # not readable here: ONNX Runtime will say what is wrong; count it as batch work
        return self._session(rows).run(output_names, input_feed, run_options)

    def __getattr__(self, name: str) -> Any:
        if "_sessions" not in self.__dict__:  # during __init__ or unpickling
            raise AttributeError(name)
        return getattr(self.__dict__["_sessions"]["spin"], name)


def openvino_cpu_properties(threads: int | None = None) -> dict[str, str]:
    """OpenVINO CPU plugin properties with the same kiosk policy as ONNX Runtime sessions.

    Latency hint with one stream (one request at a time, as a kiosk asks), ``threads``
    inference threads (default :func:`default_threads`), and no pinning of those threads to
    cores: a pinned thread whose core the browser takes cannot move to the free one.

    Args:
        threads: Inference threads (None: :func:`default_threads`).

    Returns:
        String keys and values, for ``core.compile_model(model, "CPU", properties)``.
    """
    return {
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": "1",
        "INFERENCE_NUM_THREADS": str(threads or default_threads()),
        "ENABLE_CPU_PINNING": "NO",
    }


def session_options(*, threads: int | None = None, optimization: str = "all",
                    free_dims: dict[str, int] | None = None, thread_policy: bool = True,
                    spin: bool | None = None, stop_spinning: bool = False) -> Any:
    """``SessionOptions`` with edgemm's conventions.

    Args:
        threads: Intra-op threads (None: ONNX Runtime's own default, all cores).
        optimization: ``disable`` keeps every tensor as written (activation matching);
            ``basic`` / ``extended`` / ``all`` are ONNX Runtime's levels.
        free_dims: Fix dynamic axes by name (fixed-shape sessions fold shape subgraphs away).
        thread_policy: Apply edgemm's CPU thread policy (:func:`cpu_session_config`: workers
            block instead of spinning); False keeps ONNX Runtime's defaults (e.g. for a peer
            that stands for what a user would write).
        spin: With ``thread_policy``: see :func:`cpu_session_config` (None: ``EDGEMM_SPIN``).
        stop_spinning: Workers stop spin-waiting as soon as a run ends (``STOP_SPINNING_ENTRY``),
            for a session that shares the cores with the session run right after it.

    Raises:
        UsageError: An unknown optimization level or a thread count below 1.
    """
    ort = onnxruntime()
    if optimization not in OPTIMIZATION_LEVELS:
        raise UsageError(f"Unknown graph optimization level {optimization!r}.",
                         hint=f"Choose one of: {', '.join(OPTIMIZATION_LEVELS)}.")
    if threads is not None and threads < 1:
        raise UsageError(f"threads must be at least 1, got {threads}.")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    for axis, size in (free_dims or {}).items():
        options.add_free_dimension_override_by_name(axis, int(size))
    if thread_policy:
        for key, value in cpu_session_config(spin).items():
            options.add_session_config_entry(key, value)
    if stop_spinning:
        options.add_session_config_entry(*STOP_SPINNING_ENTRY)
    return options


def providers_for(device: str, *, device_id: int = 0, provider_options: dict[str, str] | None = None,
                  cuda_graph: bool = False) -> list[Any]:
    """The provider list for ``device``, with the CPU last so unsupported nodes still run.

    Raises:
        UsageError: An unknown device.
        BackendUnavailableError: This ONNX Runtime lacks the device's provider (exit 3).
    """
    if device not in PROVIDERS:
        raise UsageError(f"Unknown device {device!r}.", hint=f"Choose one of: {', '.join(PROVIDERS)}.")
    wanted = PROVIDERS[device]
    available = onnxruntime().get_available_providers()
    if wanted not in available:
        hint = ("Install onnxruntime-gpu instead of onnxruntime (pip uninstall onnxruntime; "
                "pip install 'edgemm[gpu]'), or use --device cpu." if device in ("cuda", "tensorrt")
                else "Reinstall onnxruntime.")
        raise BackendUnavailableError(f"ONNX Runtime here has no {wanted} (available: {', '.join(available)}).",
                                      hint=hint)
    if device == "cpu":
        return ["CPUExecutionProvider"]
    cuda = ("CUDAExecutionProvider", {"device_id": str(device_id), **({"enable_cuda_graph": "1"} if cuda_graph else {})})
    if device == "cuda":
        return [cuda, "CPUExecutionProvider"]
    # TensorRT EP: subgraphs TensorRT cannot take run on CUDA, then the CPU (ORT partitions the graph).
    return [(wanted, {"device_id": str(device_id), **(provider_options or {})}), cuda, "CPUExecutionProvider"]


def create_session(model: str | os.PathLike[str] | bytes, *, device: str = "cpu", device_id: int = 0,
                   threads: int | None = None, optimization: str = "all", free_dims: dict[str, int] | None = None,
                   provider_options: dict[str, str] | None = None, cuda_graph: bool = False,
                   stop_spinning: bool = False) -> Any:
    """An ``InferenceSession`` for ``model`` (a path, so ORT's external-data checks apply, or bytes).

    Args:
        model: The ``.onnx`` file, or a serialized model.
        device: ``cpu``, ``cuda`` or ``tensorrt`` (ORT's TensorRT EP).
        device_id: CUDA device ordinal.
        threads / optimization / free_dims / stop_spinning: See :func:`session_options`.
        provider_options: TensorRT EP options (see :func:`edgemm.runtime.backends.onnxruntime.tensorrt_ep_options`).
        cuda_graph: Capture CUDA graphs on the CUDA provider (fixed shapes only).

    Returns:
        The session. Which provider it really uses is the caller's to check (``get_providers()``).
        A CPU session with ``threads`` > 1 under ``EDGEMM_SPIN=auto`` (the default) on Linux is an
        :class:`AdaptiveSession` (spinning while idle; under contention blocking for batches and
        one thread for a single row).

    Raises:
        BackendUnavailableError: The device's provider is missing.
        One of :func:`engine_errors`: ONNX Runtime refused the model.
    """
    source = model if isinstance(model, bytes) else str(Path(model))
    providers = providers_for(device, device_id=device_id, provider_options=provider_options, cuda_graph=cuda_graph)

    def make(spin: bool | None, session_threads: int | None = threads) -> Any:
        options = session_options(threads=session_threads, optimization=optimization, free_dims=free_dims,
                                  spin=spin, stop_spinning=stop_spinning)
        return onnxruntime().InferenceSession(source, sess_options=options, providers=providers)

    # Only multi-threaded CPU sessions spin-wait at all; where /proc cannot be read (not Linux)
    # there is nothing to adapt to and the blocking policy, steady beside a browser, stays.
    if (device == "cpu" and threads is not None and threads > 1 and spin_mode() == "auto"
            and contention_detector().available):
        return AdaptiveSession(lambda kind: make(kind == "spin", 1 if kind == "one-thread" else threads))
    return make(None)
