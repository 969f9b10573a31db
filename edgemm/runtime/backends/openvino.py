"""OpenVINO backend for the CPU: an OpenVINO IR artifact (``kind = "openvino"``) of a verified bundle.

Edge side, torch-free: needs only the ``openvino`` package (``pip install 'edgemm[openvino]'``),
imported when a backend activates. The properties every compile uses come from one function,
:func:`ov_properties`, so the build side's accuracy gate and the kiosk run the same numerics
(the artifact's recorded ``inference_precision``), and thread / spin policy lives in one place.

One compiled model per backend; one infer request per calling thread (an OpenVINO infer request
is not thread-safe, a compiled model is), so the server's batcher and a bench's threads can
share a backend.
"""

from __future__ import annotations

import importlib.util
import logging
import platform
import threading
from pathlib import Path
from typing import Any

import numpy as np

from edgemm._deps import require
from edgemm.bundle.manifest import Artifact, TensorSpec
from edgemm.errors import BackendUnavailableError, RuntimeFailure, UsageError
from edgemm.runtime.backends.base import Backend
from edgemm.runtime.cpu import cpu_info
from edgemm.runtime.sessions import default_threads, openvino_cpu_properties

log = logging.getLogger("edgemm.runtime")

KIND = "openvino"
PROVIDER = "OpenVINO:CPU"
INSTALL_HINT = "pip install 'edgemm[openvino]'"
# The CPU features OpenVINO's BF16 kernels need (either one); without them it emulates or refuses.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
INFERENCE_PRECISIONS = ("f32", "bf16")
# OpenVINO's CPU plugin: x86-64 and ARM64.
_MACHINES = {"x86_64", "amd64", "aarch64", "arm64"}


class OpenVinoError(Exception):
    """An error raised by OpenVINO itself during inference (its own type is a bare ``RuntimeError``)."""


def cpu_flags() -> frozenset[str] | None:
    """The CPU feature flags of this machine, or None where they cannot be read."""
    return cpu_info().flags


def has_bf16() -> bool:
    """Whether this CPU has native BF16 (``avx512_bf16`` or ``amx_bf16``); False when unknown."""
    flags = cpu_flags()
    return flags is not None and any(f in flags for f in BF16_FLAGS)


def openvino_installed() -> bool:
    """Whether the ``openvino`` package can be found (without importing it: that costs ~0.3 s)."""
    try:
        return importlib.util.find_spec("openvino") is not None
    except (ImportError, ValueError):
        return False


def unavailable_reason(artifact: Artifact) -> str | None:
    """Why this machine cannot run ``artifact`` through OpenVINO, or None when it can.

    Decided from the manifest record and this machine only (nothing is compiled): the artifact's
    kind, the CPU architecture, whether ``openvino`` is installed, and the CPU flags the artifact
    requires (``requirements.cpu_flags_any``: BF16 artifacts need ``avx512_bf16`` or ``amx_bf16``).
    """
    if artifact.kind != KIND:
        return f"not an OpenVINO artifact (kind {artifact.kind})"
    machine = platform.machine().lower()
    if machine not in _MACHINES:
        return f"OpenVINO's CPU plugin runs on x86-64 and ARM64, not {machine or 'this machine'}"
    if not openvino_installed():
        return f"openvino is not installed: {INSTALL_HINT}"
    needed = artifact.cpu_flags_any
    if needed:
        flags = cpu_flags()
        if flags is None:
            return f"the CPU flags cannot be read here, and the artifact needs one of {', '.join(needed)}"
        if not any(f in flags for f in needed):
            what = str(artifact.requirements.get("inference_precision") or artifact.precision).upper()
            return f"the CPU lacks {' / '.join(needed)} (needed for {what} inference)"
    return None


def ov_properties(inference_precision: str = "f32", threads: int | None = None) -> dict[str, Any]:
    """The OpenVINO CPU properties of every edgemm compile (runtime, gate, bench).

    The runtime's CPU policy (:func:`edgemm.runtime.sessions.openvino_cpu_properties`: one
    stream, the LATENCY hint, the thread count, no pinning) plus an explicit inference precision
    (OpenVINO's default on a BF16 CPU is bf16, which moves the logits).

    Args:
        inference_precision: ``"f32"`` or ``"bf16"`` (the artifact's ``requirements.inference_precision``).
        threads: Inference threads (None: :func:`edgemm.runtime.sessions.default_threads`).

    Returns:
        String keys and values, as ``ov.Core.compile_model(..., config)`` takes them.

    Raises:
        UsageError: An unknown inference precision or a thread count below 1.
    """
    if inference_precision not in INFERENCE_PRECISIONS:
        raise UsageError(f"Unknown OpenVINO inference precision {inference_precision!r}.",
                         hint=f"Choose one of: {', '.join(INFERENCE_PRECISIONS)}.")
    if threads is not None and threads < 1:
        raise UsageError(f"threads must be at least 1, got {threads}.")
    # Threads, streams and pinning follow the runtime's one CPU policy (shared with ONNX Runtime).
    return {**openvino_cpu_properties(threads), "INFERENCE_PRECISION_HINT": inference_precision}


_CORE: Any = None
_CORE_LOCK = threading.Lock()


def openvino() -> Any:
    """The ``openvino`` module, imported on first use.

    Raises:
        MissingDependencyError: openvino is not installed (exit 3, names the extra).
    """
    return require("openvino", extra="openvino", purpose="running OpenVINO artifacts")


def core() -> Any:
    """The process's one ``ov.Core`` (creating one per model costs time and memory)."""
    global _CORE
    with _CORE_LOCK:
        if _CORE is None:
            _CORE = openvino().Core()
        return _CORE


def compile_model(model: Any, *, inference_precision: str = "f32", threads: int | None = None,
                  cache_dir: Path | None = None) -> Any:
    """Compile an IR file (``.xml`` beside its ``.bin``) or an ``ov.Model`` for the CPU with :func:`ov_properties`.

    Args:
        model: The IR's ``.xml`` path, or an ``ov.Model``.
        inference_precision / threads: See :func:`ov_properties`.
        cache_dir: OpenVINO's model cache (``CACHE_DIR``): the compiled form is kept there and
            later compiles of the same IR and properties load it (cold start ~0.8 → ~0.25 s for
            the reference model). None: no cache.

    Raises:
        MissingDependencyError: openvino is not installed.
        RuntimeFailure: OpenVINO could not read or compile the model (its error is the cause).
    """
    properties: dict[str, Any] = ov_properties(inference_precision, threads)
    if cache_dir is not None:
        properties["CACHE_DIR"] = str(cache_dir)
    ov_core = core()
    try:
        source = ov_core.read_model(str(model)) if isinstance(model, (str, Path)) else model
        return ov_core.compile_model(source, "CPU", properties)
    except RuntimeError as exc:
        name = Path(model).name if isinstance(model, (str, Path)) else "the model"
        raise RuntimeFailure(f"OpenVINO could not load {name}: {str(exc).splitlines()[0][:300]}",
                             hint="Run `edgemm verify` on the bundle; re-export it if verification fails.") from exc


def infer(request: Any, feed: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
    """Run one infer request on ``feed`` and return copies of the named outputs.

    Raises:
        OpenVinoError: OpenVINO failed (shapes it cannot take, an internal error).
    """
    try:
        result = request.infer(feed, share_inputs=True, share_outputs=False)
    except RuntimeError as exc:
        raise OpenVinoError(str(exc).splitlines()[0][:500] if str(exc) else type(exc).__name__) from exc
    by_name: dict[str, np.ndarray] = {}
    for port, value in result.items():
        for name in port.get_names():
            by_name[name] = value
    missing = [n for n in names if n not in by_name]
    if missing:
        raise OpenVinoError(f"the compiled model has no output(s) {missing} (it has {sorted(by_name)})")
    return {n: np.asarray(by_name[n]) for n in names}


class ThreadRequests:
    """A compiled model run from any thread: one infer request per calling thread, kept.

    A compiled model is thread-safe, an infer request is not; a fresh request per call would
    re-allocate its buffers every time (0.03-0.1 ms at batch 8 / 32 on the reference model).

    Args:
        compiled: The (dynamic-shape) compiled model.
        specializer: Static-shape compiles for the shapes seen often
            (:class:`~edgemm.runtime.backends.ov_shapes.ShapeSpecializer`); None: the compiled
            model answers everything.
    """

    def __init__(self, compiled: Any, specializer: Any = None):
        self.compiled = compiled
        self.specializer = specializer
        self._local = threading.local()

    def infer(self, feed: dict[str, np.ndarray], names: list[str], *, specialize: bool = True) -> dict[str, np.ndarray]:
        """:func:`infer` on this thread's request; through a static-shape compile where one is
        adopted for the feed's shapes (``specialize`` False: always the dynamic model, as the
        accuracy gate measured it)."""
        if self.specializer is None or not specialize:
            return infer(self._request(None, self.compiled), feed, names)
        from edgemm.runtime.backends.ov_shapes import signature

        sig = signature(feed)
        state, compiled = self.specializer.lookup(sig)
        if state == "static":
            try:
                return infer(self._request(sig, compiled), feed, names)
            except OpenVinoError:
                self.specializer.refuse(sig)  # the kiosk keeps serving: the dynamic model answers
                return infer(self._request(None, self.compiled), feed, names)
        dynamic = None
        try:
            dynamic = infer(self._request(None, self.compiled), feed, names)
        finally:
            if state == "check":
                static = None
                if dynamic is not None:
                    try:
                        static = infer(self._request(sig, compiled), feed, names)
                    except OpenVinoError as exc:
                        log.debug("static-shape compile failed to run: %s", exc)
                self.specializer.settle(sig, compiled, static, dynamic)
        return dynamic

    def _request(self, sig: Any, compiled: Any) -> Any:
        """This thread's request on ``compiled`` (``sig`` None: the dynamic model)."""
        if sig is None:
            request = getattr(self._local, "request", None)
            if request is None:
                request = self._local.request = self.compiled.create_infer_request()
            return request
        held = getattr(self._local, "static", None)
        if held is None:
            held = self._local.static = {}
        entry = held.get(sig)
        if entry is None or entry[0] is not compiled:
            # Forget requests on compiles the specializer dropped: they hold its memory.
            for old in [s for s in held if not self.specializer.held(s)]:
                del held[old]
            entry = held[sig] = (compiled, compiled.create_infer_request())
        return entry[1]

    def shape_stats(self) -> dict[str, int] | None:
        """The static-shape compiles' counters (:meth:`ShapeSpecializer.stats`), or None without them."""
        return self.specializer.stats() if self.specializer is not None else None

    def wait_for_compiles(self) -> bool:
        """Wait for a static-shape compile in flight (:meth:`ShapeSpecializer.wait`; False: none)."""
        return self.specializer.wait() if self.specializer is not None else False

    def close(self) -> None:
        """Drop the static-shape compiles (the dynamic model goes with this object)."""
        if self.specializer is not None:
            self.specializer.close()


def kept_requests(xml: Path, *, inference_precision: str, threads: int | None, cache_dir: Path | None,
                  precision: str, specialize_shapes: bool) -> ThreadRequests:
    """The IR ``xml`` compiled (:func:`compile_model`) with per-thread requests and, where
    ``specialize_shapes`` and :func:`~edgemm.runtime.backends.ov_shapes.specializer_for` allow,
    static-shape compiles (:func:`static_compiler`) for the shapes seen often."""
    from edgemm.runtime.backends.ov_shapes import specializer_for

    compiled = compile_model(xml, inference_precision=inference_precision, threads=threads, cache_dir=cache_dir)
    specializer = None
    if specialize_shapes:
        compile_static = static_compiler(Path(xml), inference_precision=inference_precision, threads=threads)
        specializer = specializer_for(Path(xml), compile_static, precision)
    return ThreadRequests(compiled, specializer)


def static_compiler(xml: Path, *, inference_precision: str = "f32", threads: int | None = None) -> Any:
    """``signature → compiled model``: the IR ``xml`` reshaped to one signature's exact input
    shapes and compiled with :func:`ov_properties` (no disk cache: a blob per shape would pile up
    beside the bundle).

    The compile reads the IR again, later, in the background: it refuses to where ``xml`` or its
    ``.bin`` is no longer the file that was there when this was made (right after the bundle's
    hashes were checked) — a bundle swapped or edited under a running kiosk. Reading the model
    up front instead would add OpenVINO's reader to every cold start.

    Raises:
        RuntimeFailure: The files changed, or OpenVINO could not reshape or compile the model.
    """
    identity = _file_identity(xml)

    def compile_static(signature: tuple[tuple[str, tuple[int, ...]], ...]) -> Any:
        if _file_identity(xml) != identity:
            raise RuntimeFailure(f"{Path(xml).name} changed on disk since it was loaded; no static-shape compile")
        try:
            model = core().read_model(str(xml))
            model.reshape({name: list(shape) for name, shape in signature})
        except RuntimeError as exc:
            raise RuntimeFailure(f"OpenVINO could not reshape {Path(xml).name}: {str(exc).splitlines()[0][:300]}") from exc
        return compile_model(model, inference_precision=inference_precision, threads=threads)

    return compile_static


def _file_identity(xml: Path) -> tuple[tuple[int, ...] | None, ...]:
    """Device, inode, size and modification time of an IR's ``.xml`` and ``.bin`` (None: missing)."""
    out = []
    for path in (Path(xml), Path(xml).with_suffix(".bin")):
        try:
            st = path.stat()
        except OSError:
            out.append(None)
            continue
        out.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


def model_cache_dir(root: Path) -> Path | None:
    """The bundle's OpenVINO cache on this machine (outside the read-only, hashed bundle), or
    None where it cannot be created (a read-only home: compile every time)."""
    from edgemm.runtime.trt_compat import bundle_cache_dir

    try:
        path = bundle_cache_dir(root) / "openvino"
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.debug("no OpenVINO model cache: %s", exc)
        return None
    return path


class OpenVinoBackend(Backend):
    """An OpenVINO IR compiled for the CPU.

    Args:
        model_path: The IR's ``.xml`` (its ``.bin`` beside it).
        input_specs / output_specs: The manifest's graph interface (outputs are returned by these names).
        inference_precision: ``"f32"`` or ``"bf16"`` (OpenVINO's ``INFERENCE_PRECISION_HINT``).
        threads: Inference threads (default :func:`edgemm.runtime.sessions.default_threads`).
        cache_dir: OpenVINO's compiled-model cache on this machine (None: compile every time);
            :meth:`from_artifact` uses the bundle's machine-local cache directory.
        precision: What the artifact's weights are (``"int8"``, ``"fp32"``, ``"bf16"``): how far
            a static-shape compile may drift from the dynamic model (``Tolerance.for_precision``).
        specialize_shapes: Compile for the input shapes seen often, in the background
            (:mod:`edgemm.runtime.backends.ov_shapes`; ``EDGEMM_OPENVINO_SHAPES=0`` turns it off).
    """

    name = "openvino"

    def __init__(self, model_path: str | Path, input_specs: list[TensorSpec], output_specs: list[TensorSpec], *,
                 inference_precision: str = "f32", threads: int | None = None, cache_dir: Path | None = None,
                 precision: str = "fp32", specialize_shapes: bool = True):
        super().__init__(input_specs, output_specs)
        ov_properties(inference_precision, threads)  # refuse bad settings before anything loads
        self.model_path = Path(model_path)
        self.inference_precision = inference_precision
        self.threads = threads or default_threads()
        self.cache_dir = cache_dir
        self.precision = precision
        self.specialize_shapes = specialize_shapes
        self._specializing = True
        self.degraded: str | None = None
        self._requests: ThreadRequests | None = None
        self._output_names = [spec.name for spec in output_specs]

    @classmethod
    def from_artifact(cls, root: Path, artifact: Artifact, input_specs: list[TensorSpec],
                      output_specs: list[TensorSpec], *, threads: int | None = None,
                      compile_cache: bool = True) -> OpenVinoBackend:
        """The backend for an OpenVINO artifact of a bundle whose files the caller has verified.

        Args:
            root: The bundle directory.
            artifact: An artifact of kind ``"openvino"`` (its files hashed by
                :func:`edgemm.bundle.verify.verify_bundle` or the caller).
            input_specs / output_specs: The bundle's graph interface (``manifest.inputs`` / ``outputs``).
            threads: Inference threads (None: the default).
            compile_cache: Keep compiled models in the bundle's machine-local cache (off while a
                bundle is still being written: its cache key is not final).

        Raises:
            BackendUnavailableError: This machine cannot run it (:func:`unavailable_reason`; exit 3).
        """
        reason = unavailable_reason(artifact)
        if reason is not None:
            hint = INSTALL_HINT if "not installed" in reason else \
                "Run one of the bundle's ONNX artifacts instead (--artifact fp32 or int8)."
            raise BackendUnavailableError(f"OpenVINO artifact {artifact.name!r} cannot run here: {reason}.", hint=hint)
        precision = str(artifact.requirements.get("inference_precision", "f32"))
        return cls(root / artifact.path, input_specs, output_specs, inference_precision=precision,
                   threads=threads, cache_dir=model_cache_dir(root) if compile_cache else None,
                   precision=artifact.precision)

    def _activate_impl(self) -> None:
        self._requests = kept_requests(self.model_path, inference_precision=self.inference_precision,
                                       threads=self.threads, cache_dir=self.cache_dir, precision=self.precision,
                                       specialize_shapes=self.specialize_shapes)

    def _deactivate_impl(self) -> None:
        if self._requests is not None:
            self._requests.close()
        self._requests = None

    def wait_for_compiles(self) -> bool:
        """Wait for a static-shape compile in flight (True: there was one)."""
        return self._requests.wait_for_compiles() if self._requests is not None else False

    def shape_stats(self) -> dict[str, int] | None:
        """The static-shape compiles' counters, or None without them."""
        return self._requests.shape_stats() if self._requests is not None else None

    def _device_impl(self) -> str:
        return "cpu"

    def _engine_errors(self) -> tuple[type[BaseException], ...]:
        return (OpenVinoError,)

    def set_shape_specialization(self, enabled: bool) -> None:
        """Use (and make) static-shape compiles, or run only the dynamic model (the ranking times
        that: what a shape's first calls get)."""
        self._specializing = bool(enabled)

    def _run_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._requests.infer(feed, self._output_names, specialize=self._specializing)

    def _run_reference_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # Golden sets and the gate measured the dynamic model: never a static-shape compile here.
        return self._requests.infer(feed, self._output_names, specialize=False)

    @property
    def properties(self) -> dict[str, str]:
        """The properties OpenVINO reports for the compiled model (empty before :meth:`activate`)."""
        if self._requests is None:
            return {}
        out = {}
        for key in ("INFERENCE_PRECISION_HINT", "INFERENCE_NUM_THREADS", "NUM_STREAMS", "PERFORMANCE_HINT"):
            try:
                value = self._requests.compiled.get_property(key)
            except RuntimeError:
                continue
            # Precisions come back as ov.Type ("f32"); hints as enums ("PerformanceMode.LATENCY").
            out[key] = value.to_string() if hasattr(value, "to_string") else str(getattr(value, "name", value))
        return out
