"""Fine-tuning (build side, needs torch): ``edgemm train`` produces checkpoints for export."""

from __future__ import annotations
