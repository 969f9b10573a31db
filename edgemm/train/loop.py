"""The epoch loop both training paths share: AdamW, warm-up + schedule, gradient clipping,
early stopping on the validation metric, and the best epoch's weights restored at the end."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgemm import progress
from edgemm.data.dataset import Record
from edgemm.train.config import TrainConfig

log = logging.getLogger("edgemm.train")


@dataclass
class FitResult:
    """The best epoch, its validation metrics, and every epoch's loss and metrics."""

    best_epoch: int
    val: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)


def lr_lambda(schedule: str, total: int, warmup: int) -> Callable[[int], float]:
    """Learning-rate factor per step: linear warm-up, then linear / cosine decay or constant."""

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return max(0.0, 1.0 - progress) if schedule == "linear" else 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def fit(model: Any, groups: list[dict[str, Any]], records: list[Record], config: TrainConfig, *,
        batch_loss: Callable[[list[Record], np.random.Generator], Any],
        validate: Callable[[], dict[str, float]],
        train_mode: Callable[[], None]) -> FitResult:
    """Train ``model`` on ``records`` and leave it holding its best epoch's weights.

    Args:
        model: The torch module (its ``state_dict`` is snapshotted at each improvement).
        groups: AdamW parameter groups (params, lr, weight_decay).
        records: Training records; shuffled each epoch with a generator seeded by ``config.seed``.
        config: Epochs, batch size, schedule, warm-up, patience and the metric to select on.
        batch_loss: Loss of one batch; gets the generator for any per-batch randomness.
        validate: Validation metrics (``accuracy``, ``macro_f1``) of the model as it is now.
        train_mode: Puts the model in training mode (and keeps frozen parts in eval mode).

    Returns:
        The :class:`FitResult`.
    """
    import torch

    optimizer = torch.optim.AdamW(groups)
    steps_per_epoch = math.ceil(len(records) / config.batch_size)
    total = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config.schedule, total, int(config.warmup * total)))
    params = [p for g in groups for p in g["params"]]
    rng = np.random.default_rng(config.seed)
    best: tuple[float, int, dict[str, Any], dict[str, float]] | None = None
    history: list[dict[str, float]] = []
    stale = 0
    with progress.stage("Training", total=config.epochs) as training:
        for epoch in range(1, config.epochs + 1):
            train_mode()
            order = rng.permutation(len(records))
            losses = []
            for b in progress.track(range(steps_per_epoch), label=f"epoch {epoch}/{config.epochs}: batches"):
                chunk = [records[i] for i in order[b * config.batch_size:(b + 1) * config.batch_size]]
                loss = batch_loss(chunk, rng)
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                scheduler.step()
                losses.append(float(loss.detach()))
            with progress.stage(f"epoch {epoch}/{config.epochs}: validating"):
                val = validate()
            history.append({"epoch": epoch, "loss": float(np.mean(losses)), **{f"val_{k}": v for k, v in val.items()}})
            log.info("epoch %d  loss %.4f  val accuracy %.4f  macro-F1 %.4f", epoch, np.mean(losses), val["accuracy"],
                     val["macro_f1"])
            training.advance()
            training.update(f"Training (epoch {epoch}: loss {np.mean(losses):.4f}, val accuracy {val['accuracy']:.4f})")
            score = val[config.metric]
            if best is None or score > best[0]:
                state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                best, stale = (score, epoch, state, val), 0
            else:
                stale += 1
                if stale >= config.patience:
                    log.info("early stopping: no validation improvement for %d epochs", stale)
                    break
    assert best is not None  # config guarantees at least one epoch
    model.load_state_dict(best[2])
    return FitResult(best_epoch=best[1], val=best[3], history=history)
