"""Build side: torch → ONNX, parity against PyTorch, bundle assembly. Imports torch lazily."""

from __future__ import annotations
