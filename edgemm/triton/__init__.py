"""Triton Inference Server model repositories from verified bundles. Torch-free.

:func:`write_repository` turns a bundle into a versioned repository: ONNX artifacts as
``onnxruntime`` models, TensorRT plans as ``tensorrt`` models, edgemm's preprocessing and
postprocessing as Python-backend models, a Python-backend variant of the model (ONNX Runtime
inside) and ensembles that take raw text / image bytes / audio bytes. Every ``config.pbtxt`` is
built as Triton's own ``ModelConfig`` protobuf, checked, and rendered by protobuf's text format
before anything is published.
"""

from __future__ import annotations

from edgemm.triton.repository import RepositoryOptions, RepositoryReport, write_repository

__all__ = ["RepositoryOptions", "RepositoryReport", "write_repository"]
