"""Build side: graph optimization, FP16 / INT8 variants, calibration, and the accuracy gate."""

from __future__ import annotations
