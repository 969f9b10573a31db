"""Fixtures shared by the bundle tests."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def no_parsers(monkeypatch):
    """Fail the test if an ONNX Runtime session, a tokenizer or the golden-set (NPZ) parser is
    created: what is being refused must be refused before any of them touches the bundle."""
    import onnxruntime
    import tokenizers

    def forbidden(*args, **kwargs):
        raise AssertionError("a parser touched the bundle before verification finished")

    monkeypatch.setattr(onnxruntime, "InferenceSession", forbidden)
    monkeypatch.setattr(np, "load", forbidden)
    monkeypatch.setattr(tokenizers.Tokenizer, "from_file", forbidden)
