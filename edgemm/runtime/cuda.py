"""A minimal ctypes wrapper of the CUDA runtime (``libcudart``): torch-free, no cuda-python needed.

The native TensorRT backend needs only device memory, streams, async copies and CUDA graphs;
pulling in torch or cupy for that would break the kiosk's torch-free promise, and cuda-python is
one more wheel to match to JetPack. Every call checks its ``cudaError_t`` and raises
:class:`~edgemm.errors.RuntimeFailure` with CUDA's own error string.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import sys
from functools import lru_cache

from edgemm.errors import BackendUnavailableError, RuntimeFailure

# cudaMemcpyKind
MEMCPY_HOST_TO_DEVICE = 1
MEMCPY_DEVICE_TO_HOST = 2
# cudaDeviceAttr
_ATTR_CC_MAJOR = 75
_ATTR_CC_MINOR = 76
# cudaStreamCaptureMode: thread-local, so another thread's CUDA calls cannot invalidate a capture.
_CAPTURE_THREAD_LOCAL = 1

_CANDIDATES = ("libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0")


def _library_paths() -> list[str]:
    """Where libcudart may live: the loader path, pip's nvidia-cuda-runtime wheel, CUDA / JetPack."""
    found = ctypes.util.find_library("cudart")
    paths = [found] if found else []
    paths += list(_CANDIDATES)
    for base in sys.path:
        paths += sorted(glob.glob(os.path.join(base, "nvidia", "cuda_runtime", "lib", "libcudart.so*")))
    paths += sorted(glob.glob("/usr/local/cuda*/lib64/libcudart.so*"))  # JetPack puts CUDA here
    return paths


@lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL:
    errors = []
    for path in _library_paths():
        try:
            lib = ctypes.CDLL(path)
        except OSError as exc:
            errors.append(str(exc))
            continue
        lib.cudaGetErrorString.restype = ctypes.c_char_p
        return lib
    raise BackendUnavailableError(
        "The CUDA runtime library (libcudart) cannot be loaded.",
        hint="Install the CUDA runtime (JetPack ships it under /usr/local/cuda; on a desktop: "
             "pip install nvidia-cuda-runtime-cu12), or use --device cpu.",
        details={"tried": errors[-3:]},
    )


def available() -> bool:
    """True when libcudart loads and sees at least one device."""
    try:
        return device_count() > 0
    except (BackendUnavailableError, RuntimeFailure):
        return False


def _check(code: int, what: str) -> None:
    if code != 0:
        message = _lib().cudaGetErrorString(code)
        text = message.decode(errors="replace") if message else f"error {code}"
        raise RuntimeFailure(f"CUDA {what} failed: {text} ({code}).", hint="Check the GPU with nvidia-smi / tegrastats.")


def device_count() -> int:
    """Number of CUDA devices visible to this process."""
    n = ctypes.c_int(0)
    _check(_lib().cudaGetDeviceCount(ctypes.byref(n)), "cudaGetDeviceCount")
    return n.value


def runtime_version() -> str:
    """The CUDA runtime version as ``"major.minor"`` (e.g. ``"12.6"``)."""
    v = ctypes.c_int(0)
    _check(_lib().cudaRuntimeGetVersion(ctypes.byref(v)), "cudaRuntimeGetVersion")
    return f"{v.value // 1000}.{(v.value % 1000) // 10}"


def driver_version() -> str:
    """The newest CUDA version the installed driver supports, ``"major.minor"``."""
    v = ctypes.c_int(0)
    _check(_lib().cudaDriverGetVersion(ctypes.byref(v)), "cudaDriverGetVersion")
    return f"{v.value // 1000}.{(v.value % 1000) // 10}"


def compute_capability(device: int = 0) -> str:
    """Compute capability of ``device`` as ``"major.minor"`` (Orin: ``"8.7"``, H100: ``"9.0"``)."""
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    _check(_lib().cudaDeviceGetAttribute(ctypes.byref(major), _ATTR_CC_MAJOR, device), "cudaDeviceGetAttribute")
    _check(_lib().cudaDeviceGetAttribute(ctypes.byref(minor), _ATTR_CC_MINOR, device), "cudaDeviceGetAttribute")
    return f"{major.value}.{minor.value}"


def set_device(device: int) -> None:
    """Make ``device`` current for this thread."""
    _check(_lib().cudaSetDevice(device), "cudaSetDevice")


def malloc(nbytes: int) -> int:
    """Allocate ``nbytes`` of device memory; returns the device pointer as an int."""
    ptr = ctypes.c_void_p()
    _check(_lib().cudaMalloc(ctypes.byref(ptr), ctypes.c_size_t(max(nbytes, 1))), "cudaMalloc")
    return int(ptr.value or 0)


def free(ptr: int) -> None:
    """Free device memory from :func:`malloc` (0 is ignored)."""
    if ptr:
        _check(_lib().cudaFree(ctypes.c_void_p(ptr)), "cudaFree")


def stream_create() -> int:
    """Create a CUDA stream; returns its handle as an int."""
    stream = ctypes.c_void_p()
    _check(_lib().cudaStreamCreate(ctypes.byref(stream)), "cudaStreamCreate")
    return int(stream.value or 0)


def stream_destroy(stream: int) -> None:
    """Destroy a stream from :func:`stream_create`."""
    if stream:
        _check(_lib().cudaStreamDestroy(ctypes.c_void_p(stream)), "cudaStreamDestroy")


def stream_synchronize(stream: int) -> None:
    """Wait for all work queued on ``stream``."""
    _check(_lib().cudaStreamSynchronize(ctypes.c_void_p(stream)), "cudaStreamSynchronize")


def memcpy_htod_async(dst: int, src: int, nbytes: int, stream: int) -> None:
    """Copy ``nbytes`` from host address ``src`` to device pointer ``dst`` on ``stream``."""
    _check(_lib().cudaMemcpyAsync(ctypes.c_void_p(dst), ctypes.c_void_p(src), ctypes.c_size_t(nbytes),
                                  MEMCPY_HOST_TO_DEVICE, ctypes.c_void_p(stream)), "cudaMemcpyAsync (H2D)")


def memcpy_dtoh_async(dst: int, src: int, nbytes: int, stream: int) -> None:
    """Copy ``nbytes`` from device pointer ``src`` to host address ``dst`` on ``stream``."""
    _check(_lib().cudaMemcpyAsync(ctypes.c_void_p(dst), ctypes.c_void_p(src), ctypes.c_size_t(nbytes),
                                  MEMCPY_DEVICE_TO_HOST, ctypes.c_void_p(stream)), "cudaMemcpyAsync (D2H)")


def begin_capture(stream: int) -> None:
    """Start capturing ``stream`` into a CUDA graph (thread-local capture mode)."""
    _check(_lib().cudaStreamBeginCapture(ctypes.c_void_p(stream), _CAPTURE_THREAD_LOCAL), "cudaStreamBeginCapture")


def end_capture(stream: int) -> int:
    """Finish a capture and instantiate it; returns the executable graph handle."""
    graph = ctypes.c_void_p()
    _check(_lib().cudaStreamEndCapture(ctypes.c_void_p(stream), ctypes.byref(graph)), "cudaStreamEndCapture")
    exec_ = ctypes.c_void_p()
    try:
        # WithFlags has the same signature on CUDA 11.4+, 12 and 13 (cudaGraphInstantiate changed in 12).
        _check(_lib().cudaGraphInstantiateWithFlags(ctypes.byref(exec_), graph, ctypes.c_ulonglong(0)),
               "cudaGraphInstantiateWithFlags")
    finally:
        _lib().cudaGraphDestroy(graph)
    return int(exec_.value or 0)


def graph_launch(graph_exec: int, stream: int) -> None:
    """Launch an instantiated graph on ``stream``."""
    _check(_lib().cudaGraphLaunch(ctypes.c_void_p(graph_exec), ctypes.c_void_p(stream)), "cudaGraphLaunch")


def graph_destroy(graph_exec: int) -> None:
    """Destroy an instantiated graph."""
    if graph_exec:
        _check(_lib().cudaGraphExecDestroy(ctypes.c_void_p(graph_exec)), "cudaGraphExecDestroy")
