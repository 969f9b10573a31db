"""Inference backends: one interface for every engine (ONNX Runtime CPU/CUDA today)."""

from __future__ import annotations

from edgemm.runtime.backends.base import Backend
from edgemm.runtime.backends.onnxruntime import OrtBackend
from edgemm.runtime.sessions import available_devices

__all__ = ["Backend", "OrtBackend", "available_devices"]
