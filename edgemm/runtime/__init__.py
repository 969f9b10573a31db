"""The torch-free edge runtime: :class:`Predictor` loads a verified bundle and predicts.

Nothing in ``edgemm.runtime`` (or ``edgemm.bundle``) imports torch, transformers or optimum; a
test enforces it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgemm.runtime.postprocess import Prediction
    from edgemm.runtime.predictor import Predictor

__all__ = ["Prediction", "Predictor"]


def __getattr__(name: str):  # lazy: importing the package does not load onnxruntime
    if name == "Predictor":
        from edgemm.runtime.predictor import Predictor

        return Predictor
    if name == "Prediction":
        from edgemm.runtime.postprocess import Prediction

        return Prediction
    raise AttributeError(name)
