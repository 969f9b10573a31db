"""What trains: full fine-tuning, BitFit and LoRA over a torch module, and how much that is.

BitFit (Ben Zaken et al., 2022) trains only the bias terms of a pretrained network (LayerNorm
shifts included) plus the new task head: about 0.1 % of a BERT's parameters. LoRA (peft) adds
low-rank adapters beside chosen projections; they are merged into the weights before saving,
so the saved checkpoint is a plain model any loader (and ``edgemm export``) takes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from edgemm.errors import UsageError
from edgemm.train.config import LoraOptions

# Attention projections LoRA adapts, per naming scheme, in order of preference (query/value, as
# the LoRA paper does); the convolutional families have no attention, so their pointwise
# projections (ConvNeXt) or convolutions (ResNet) take the adapters.
LORA_TARGETS = (
    ("query", "value"),            # BERT, RoBERTa, XLM-R, ELECTRA, ViT, DeiT, Swin, AST
    ("q_lin", "v_lin"),            # DistilBERT
    ("query_proj", "value_proj"),  # DeBERTa-v2
    ("q_proj", "v_proj"),          # Wav2Vec2, HuBERT, WavLM
    ("q", "v"),                    # MPNet
    ("pwconv1", "pwconv2"),        # ConvNeXt
    ("convolution",),              # ResNet
)


def is_bias(name: str) -> bool:
    """Whether a parameter name is a bias term (``….bias``, LayerNorm shifts included)."""
    return name.rsplit(".", 1)[-1] == "bias"


def apply_bitfit(module: Any) -> None:
    """Freeze every parameter of ``module`` except its bias terms."""
    for name, param in module.named_parameters():
        param.requires_grad_(is_bias(name))


def lora_targets(module: Any, preferred: Iterable[str] = (), *, exclude: Iterable[str] = ()) -> list[str]:
    """The module names LoRA should adapt in ``module``: ``preferred`` when all of them exist,
    else the first scheme of :data:`LORA_TARGETS` the model uses.

    Args:
        module: The network to adapt.
        preferred: Names asked for (e.g. ``("query", "value")``).
        exclude: Name prefixes to ignore (the task head, which trains fully instead).

    Raises:
        UsageError: No known projection exists in the model.
    """
    import torch

    skip = tuple(f"{prefix}." for prefix in exclude)
    present = {name.rsplit(".", 1)[-1] for name, sub in module.named_modules()
               if isinstance(sub, (torch.nn.Linear, torch.nn.Conv2d)) and not name.startswith(skip)}
    preferred = tuple(preferred)
    if preferred and set(preferred) <= present:
        return list(preferred)
    for scheme in LORA_TARGETS:
        if set(scheme) <= present:
            return list(scheme)
    raise UsageError(f"LoRA: no attention projection or convolution to adapt in {type(module).__name__}.",
                     hint="Use --method bitfit or --method full.")


def wrap_lora(module: Any, options: LoraOptions, targets: list[str]) -> Any:
    """``module`` with LoRA adapters on ``targets``; every original parameter frozen."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=options.r, lora_alpha=options.alpha, lora_dropout=options.dropout,
                      target_modules=targets, bias="none")
    return get_peft_model(module, lora)


def merge_adapters(module: Any) -> Any:
    """The plain model with LoRA adapters folded into its weights (``module`` itself without)."""
    return module.merge_and_unload() if hasattr(module, "merge_and_unload") else module


def freeze_norm_statistics(module: Any) -> None:
    """Put BatchNorm layers in eval mode: frozen weights keep their running statistics too."""
    import torch

    for sub in module.modules():
        if isinstance(sub, torch.nn.modules.batchnorm._BatchNorm):
            sub.eval()


def parameter_summary(module: Any, method: str) -> dict[str, Any]:
    """``method``, trainable and total parameter counts (LoRA adapters count as trainable but not
    in the total: they are merged away on save), and the trainable fraction."""
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    total = sum(p.numel() for name, p in module.named_parameters() if "lora_" not in name)
    return {"method": method, "trainable": int(trainable), "total": int(total),
            "fraction": round(trainable / total, 6) if total else 0.0}


def no_decay(name: str) -> bool:
    """Parameters AdamW should not decay: biases and normalisation scales."""
    lowered = name.lower()
    return is_bias(name) or "layernorm" in lowered or "layer_norm" in lowered or ".norm" in lowered
