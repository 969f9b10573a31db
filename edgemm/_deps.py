"""One place that imports optional heavy dependencies and explains how to get them."""

from __future__ import annotations

import importlib
from types import ModuleType

from edgemm.errors import MissingDependencyError

# Which extra provides each optional top-level module ("runtime": the base install).
_EXTRA_FOR = {
    # build side: torch → ONNX, training
    "torch": "export",
    "transformers": "export",
    "optimum": "export",
    "onnx": "export",
    "onnxscript": "export",
    "safetensors": "export",
    "peft": "export",
    # bench: the plots, and scikit-learn's scans behind the built-in digit-match data
    "matplotlib": "bench",
    "sklearn": "bench",
    # OpenVINO artifacts (runtime) and NNCF INT8 (export)
    "openvino": "openvino",
    "nncf": "openvino",
    # kiosk server and signed archives
    "starlette": "serve",
    "uvicorn": "serve",
    "h11": "serve",  # the HTTP/1.1 parser edgemm.serve.protocol subclasses uvicorn's protocol on
    "multipart": "serve",
    "cryptography": "serve",
    "prometheus_client": "serve",
    # Triton model repositories and their test server
    "tritonclient": "triton",
    "pytriton": "triton",
    # GPU runtime and TensorRT
    "pynvml": "gpu",
    "tensorrt": "trt",
    "cuda": "trt",
    # the base install
    "numpy": "runtime",
    "tokenizers": "runtime",
    "onnxruntime": "runtime",
    "PIL": "runtime",
    "click": "runtime",
    "soxr": "runtime",
    "tomli": "runtime",
}

# Where the pip distribution is not named like the module.
_DISTRIBUTION = {
    "sklearn": "scikit-learn",
    "PIL": "pillow",
    "multipart": "python-multipart",
    "prometheus_client": "prometheus-client",
    "pynvml": "nvidia-ml-py",
    "cuda": "cuda-python",
    "pytriton": "nvidia-pytriton",
}


def require(module: str, *, extra: str | None = None, purpose: str | None = None) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming the pip extra to install.

    Args:
        module: Dotted module name, e.g. ``"torch"`` or ``"onnxruntime.quantization"``.
        extra: The edgemm extra that provides it; looked up from the top-level name when omitted.
        purpose: Short phrase for the message, e.g. ``"exporting a model"``.

    Returns:
        The imported module.

    Raises:
        MissingDependencyError: The module is not installed (exit code 3).
    """
    return require_all(module, extra=extra, purpose=purpose)[0]


def require_all(*modules: str, extra: str | None = None, purpose: str | None = None) -> list[ModuleType]:
    """Import every module, or raise one :class:`MissingDependencyError` naming all that are missing.

    A command checks its whole set up front, so a user learns every missing package (and the
    extras that provide them) from one message, before any work starts.

    Args:
        modules: Dotted module names.
        extra: The edgemm extra that provides all of them; looked up per module when omitted.
        purpose: Short phrase for the message, e.g. ``"edgemm train"``.

    Returns:
        The imported modules, in order.

    Raises:
        MissingDependencyError: At least one module cannot be imported (exit code 3).
    """
    found: list[ModuleType] = []
    failed: list[tuple[str, ImportError]] = []
    for module in modules:
        try:
            found.append(importlib.import_module(module))
        except ImportError as exc:
            failed.append((module, exc))
    if failed:
        raise _missing(failed, extra=extra, purpose=purpose) from failed[0][1]
    return found


def _missing(failed: list[tuple[str, ImportError]], *, extra: str | None,
             purpose: str | None) -> MissingDependencyError:
    tops = list(dict.fromkeys(module.split(".")[0] for module, _ in failed))
    names = [f"{_DISTRIBUTION[top]} ({top})" if top in _DISTRIBUTION else top for top in tops]
    extras = sorted({extra or _EXTRA_FOR.get(top, "export") for top in tops} - {"runtime"})
    pip_target = f"edgemm[{','.join(extras)}]" if extras else "edgemm"
    why = f" for {purpose}" if purpose else ""
    if len(names) == 1:
        message = f"{names[0]} is required{why} but cannot be imported ({failed[0][1]})."
    else:
        message = f"{', '.join(names[:-1])} and {names[-1]} are required{why} but cannot be imported."
    return MissingDependencyError(
        message, hint=f"pip install '{pip_target}'",
        details={"missing": {module: str(exc) for module, exc in failed}, "extras": extras or ["runtime"]},
    )
