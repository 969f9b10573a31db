"""``python -m tests.serve.fault_launcher serve BUNDLE ...``: the real CLI over a backend that fails on demand.

The ONNX Runtime backend keeps its real session (loading, the known-answer canary and ordinary
requests run the model) but reports the device ``cuda``, and its ``_run_impl`` hook fails while
the file named by ``EDGEMM_TEST_FAULT_FILE`` exists. The file lists failures separated by blanks;
each model call takes the first one off the list (the file goes when the list is empty):

* ``poison``: ONNX Runtime's own ``RuntimeException`` with the message of a CUDA illegal address;
* ``engine``: ONNX Runtime's ``RuntimeException`` of an ordinary node failure;
* ``bug``: a ``TypeError``, as a bug in edgemm would raise.

Only the hook is replaced, so the public ``Backend.run`` does its real wrapping into
:class:`~edgemm.errors.RuntimeFailure` and everything above it (predictor, batcher, server) is the
shipped code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

FAULT_FILE_ENV = "EDGEMM_TEST_FAULT_FILE"

# Worded as ONNX Runtime words them (onnxruntime/core/providers/cuda/cuda_call.cc, session run).
POISON_MESSAGE = ("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while running "
                  "MatMul node. Name:'/text/MatMul' Status Message: CUDA failure 700: an illegal memory access "
                  "was encountered ; GPU=0 ; hostname=kiosk ; expr=cudaStreamSynchronize(stream);")
ENGINE_MESSAGE = ("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while running "
                  "Gemm node. Name:'/head/Gemm' Status Message: gemm_helper.h:14 GemmHelper left operand "
                  "cannot broadcast on dim 0")


def fault(kind: str) -> BaseException:
    """The exception the stand-in raises for ``kind`` (``poison``, ``engine`` or ``bug``).

    Raises:
        ValueError: An unknown kind (a mistake in the test that wrote the fault file).
    """
    from onnxruntime.capi.onnxruntime_pybind11_state import RuntimeException

    if kind == "poison":
        return RuntimeException(POISON_MESSAGE)
    if kind == "engine":
        return RuntimeException(ENGINE_MESSAGE)
    if kind == "bug":
        return TypeError("unsupported operand type(s) for +: 'NoneType' and 'int'")
    raise ValueError(f"unknown fault {kind!r}; write poison, engine or bug")


def install(fault_file: Path) -> None:
    """Patch :class:`~edgemm.runtime.backends.onnxruntime.OrtBackend` for this process (see the module docstring)."""
    from edgemm.runtime.backends.onnxruntime import OrtBackend

    real_run = OrtBackend._run_impl

    def run_or_fail(self: OrtBackend, feed: dict[str, Any]) -> dict[str, Any]:
        try:
            kind, *rest = fault_file.read_text().split()
        except FileNotFoundError:
            return real_run(self, feed)
        if rest:
            fault_file.write_text(" ".join(rest))
        else:
            fault_file.unlink()
        raise fault(kind)

    OrtBackend._run_impl = run_or_fail  # type: ignore[method-assign]
    OrtBackend._device_impl = lambda self: "cuda"  # type: ignore[method-assign]


def main() -> None:
    """Install the stand-in, then run ``edgemm`` with this process's arguments."""
    install(Path(os.environ[FAULT_FILE_ENV]))
    from edgemm.cli import main as edgemm_main

    edgemm_main()


if __name__ == "__main__":
    main()
