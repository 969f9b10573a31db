"""This machine's CPU as ``/proc/cpuinfo`` describes it: model name and feature flags. Torch-free.

One reader for the OpenVINO backend (BF16 support), the artifact ranking (its cache is valid for
one CPU) and bench's machine fingerprint.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CpuInfo:
    """Attributes:
        model: The CPU's model name (``platform`` names where ``/proc/cpuinfo`` has none).
        flags: Its feature flags (x86 ``flags`` / ARM ``Features``); None where they cannot be read.
    """

    model: str
    flags: frozenset[str] | None


@functools.lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """The first processor's model name and flags (all cores of a kiosk CPU are alike)."""
    model, flags = "", None
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and value.strip() and not model:
            model = value.strip()
        elif key in ("flags", "features") and flags is None:
            flags = frozenset(value.split())
        if model and flags is not None:
            break
    return CpuInfo(model or platform.processor() or platform.machine(), flags)
