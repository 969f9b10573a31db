"""edgemm: fine-tuned multimodal fusion models → verified, torch-free edge bundles.

Importing ``edgemm`` is cheap: it loads neither torch nor onnxruntime. Use
:class:`edgemm.runtime.Predictor` on the device and ``edgemm export`` on the workstation.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
