"""The build-log gate: TensorRT's warnings about FP16 range are errors unless waived.

TensorRT builds an FP16 engine even when weights or activations do not fit FP16; it only says
so in the log, and the engine then returns Inf/NaN or silently wrong scores on some inputs (the
classic case: LayerNorm after attention). The builder's logger captures every line; this module
classifies them and fails the build on FP16 range findings unless the operator waives them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from edgemm.errors import CheckFailedError

SEVERITIES = ("INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE")

# (category, pattern). Matched case-insensitively against WARNING and ERROR lines.
_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("fp16_overflow", re.compile(r"(outside|exceed\w*|out of)\s+(of\s+)?(the\s+)?(fp16|half)[ -]?(precision\s+)?range", re.I)),
    ("fp16_overflow", re.compile(r"(fp16|half).{0,40}overflow|overflow.{0,60}(fp16|half)", re.I)),
    ("fp16_overflow", re.compile(r"clamp\w*.{0,60}(fp16|half|65504)", re.I)),
    ("fp16_overflow", re.compile(r"layer\s*norm.{0,80}fp16|fp16.{0,80}layer\s*norm", re.I)),
    ("fp16_subnormal", re.compile(r"subnormal", re.I)),
    ("fp16_subnormal", re.compile(r"(smaller|less) than (the )?smallest.{0,40}fp16", re.I)),
)


@dataclass(frozen=True)
class Finding:
    """One log line that the gate cares about."""

    category: str
    severity: str
    message: str

    def to_dict(self) -> dict[str, str]:
        """The finding as recorded in the engine's ``fp16_gate`` record."""
        return {"category": self.category, "severity": self.severity, "message": self.message}


@dataclass
class BuildLog:
    """Every line the builder logged, with severity names from :data:`SEVERITIES`."""

    lines: list[tuple[str, str]] = field(default_factory=list)

    def add(self, severity: str, message: str) -> None:
        """Record one line (called from the TensorRT logger, possibly from builder threads)."""
        self.lines.append((severity, message.rstrip()))

    def errors(self) -> list[str]:
        """TensorRT's ERROR and INTERNAL_ERROR messages, in log order."""
        return [m for s, m in self.lines if s in ("INTERNAL_ERROR", "ERROR")]

    def findings(self) -> list[Finding]:
        """FP16 range findings among WARNING / ERROR lines, in log order, without duplicates."""
        out: list[Finding] = []
        seen: set[tuple[str, str]] = set()
        for severity, message in self.lines:
            if severity not in ("INTERNAL_ERROR", "ERROR", "WARNING"):
                continue
            for category, pattern in _RULES:
                if pattern.search(message) and (category, message) not in seen:
                    seen.add((category, message))
                    out.append(Finding(category, severity, message))
                    break
        return out

    @classmethod
    def parse(cls, text: str) -> BuildLog:
        """Read a ``trtexec`` / TensorRT text log (``[W] ...``, ``[E] ...`` or ``WARNING: ...`` lines)."""
        short = {"F": "INTERNAL_ERROR", "E": "ERROR", "W": "WARNING", "I": "INFO", "V": "VERBOSE"}
        log = cls()
        for line in text.splitlines():
            match = re.search(r"\[([FEWIV])\]\s*(.*)", line)
            if match:
                log.add(short[match.group(1)], match.group(2))
                continue
            match = re.match(r"\s*(INTERNAL_ERROR|ERROR|WARNING|INFO|VERBOSE)[:\]]\s*(.*)", line)
            if match:
                log.add(match.group(1), match.group(2))
        return log


class Fp16RangeError(CheckFailedError):
    """TensorRT reported FP16 overflow / subnormal values; the engine is not written."""

    code = "E_TRT_FP16_RANGE"


def gate(log: BuildLog, *, waive: bool = False) -> dict[str, Any]:
    """Fail on FP16 range findings unless ``waive``; returns what the manifest records.

    Returns:
        ``{"findings": [...], "waived": bool}``.

    Raises:
        Fp16RangeError: Findings exist and are not waived (exit 4).
    """
    findings = log.findings()
    if findings and not waive:
        shown = "\n  ".join(f"[{f.category}] {f.message[:300]}" for f in findings[:8])
        more = f"\n  … and {len(findings) - 8} more" if len(findings) > 8 else ""
        raise Fp16RangeError(
            f"TensorRT reported {len(findings)} FP16 range problem(s); the engine could return Inf/NaN:\n  {shown}{more}",
            hint="Keep LayerNorm in FP32 (the default; check --no-layernorm-fp32 is not set), build from the fp32 "
                 "artifact without --fp16, or accept the risk with --waive-fp16-overflow after checking the golden set.",
            details={"findings": [f.to_dict() for f in findings]},
        )
    return {"findings": [f.to_dict() for f in findings], "waived": bool(findings and waive)}
