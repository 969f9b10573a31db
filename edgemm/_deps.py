"""One place that imports optional heavy dependencies and explains how to get them."""

from __future__ import annotations

import importlib
from types import ModuleType

from edgemm.errors import MissingDependencyError

# Which extra provides each optional top-level module.
_EXTRA_FOR = {
    "torch": "export",
    "transformers": "export",
    "optimum": "export",
    "onnx": "export",
    "onnxscript": "export",
    "safetensors": "export",
    "tokenizers": "runtime",
    "onnxruntime": "runtime",
    "PIL": "runtime",
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
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        extra = extra or _EXTRA_FOR.get(top, "export")
        why = f" for {purpose}" if purpose else ""
        pip_target = "edgemm" if extra == "runtime" else f"edgemm[{extra}]"
        raise MissingDependencyError(
            f"{top} is required{why} but cannot be imported ({exc}).",
            hint=f"pip install '{pip_target}'",
        ) from exc
