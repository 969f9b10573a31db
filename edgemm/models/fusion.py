"""Fusion modules: combine per-modality encoder outputs into one representation.

Inputs to every module: ``feats`` (modality → :class:`EncoderOutput` already projected to
``dim``) and ``present`` (modality → float ``[B]`` presence flag, 1 = the request carried it).
An absent optional modality contributes nothing: zeroed in concat, gated out, masked as keys.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from edgemm.models.config import FusionSpec
from edgemm.models.encoders import EncoderOutput, masked_mean

# Large finite negative: exp() underflows to 0 without the NaN that -inf gives on all-masked rows.
_MASKED = -1e4


class ConcatFusion(nn.Module):
    """Pooled vectors side by side (absent modalities zeroed): output ``[B, M*dim]``."""

    def __init__(self, spec: FusionSpec, modalities: list[str]):
        super().__init__()
        self.modalities = modalities
        self.norm = nn.LayerNorm(spec.dim * len(modalities))
        self.out_dim = spec.dim * len(modalities)

    def forward(self, feats: dict[str, EncoderOutput], present: dict[str, torch.Tensor]) -> torch.Tensor:
        """Concatenate each modality's pooled vector (zeroed where the row lacks it), then normalise."""
        parts = [feats[m].pooled * present[m].unsqueeze(-1) for m in self.modalities]
        return self.norm(torch.cat(parts, dim=-1))


class GatedFusion(nn.Module):
    """Input-dependent weighted sum: softmax gate over modalities, absent ones gated out."""

    def __init__(self, spec: FusionSpec, modalities: list[str]):
        super().__init__()
        self.modalities = modalities
        self.transforms = nn.ModuleDict({m: nn.Linear(spec.dim, spec.dim) for m in modalities})
        self.gate = nn.Linear(spec.dim * len(modalities), len(modalities))
        self.norm = nn.LayerNorm(spec.dim)
        self.out_dim = spec.dim

    def forward(self, feats: dict[str, EncoderOutput], present: dict[str, torch.Tensor]) -> torch.Tensor:
        """Weighted sum of per-modality projections; the weights come from the input and absent modalities get none."""
        pooled = [feats[m].pooled * present[m].unsqueeze(-1) for m in self.modalities]
        logits = self.gate(torch.cat(pooled, dim=-1))
        mask = torch.stack([present[m] for m in self.modalities], dim=-1)
        weights = torch.softmax(logits + (1.0 - mask) * _MASKED, dim=-1)
        values = torch.stack([torch.tanh(self.transforms[m](p)) for m, p in zip(self.modalities, pooled)], dim=1)
        return self.norm((weights.unsqueeze(-1) * values).sum(dim=1))


class CrossAttentionBlock(nn.Module):
    """Pre-norm transformer block whose attention reads from a separate key/value sequence."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.ffn = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, kv: torch.Tensor, kv_valid: torch.Tensor) -> torch.Tensor:
        """Let ``x`` attend to ``kv``; ``kv_valid`` ``[B, T]`` masks padding (1 valid, 0 padding)."""
        b, n, d = x.shape
        h = self.heads
        q = self.q(self.norm_q(x)).view(b, n, h, d // h).transpose(1, 2)
        k, v = self.kv(self.norm_kv(kv)).chunk(2, dim=-1)
        k = k.view(b, -1, h, d // h).transpose(1, 2)
        v = v.view(b, -1, h, d // h).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // h)
        scores = scores + (1.0 - kv_valid.to(scores.dtype))[:, None, None, :] * _MASKED
        attn = self.dropout(torch.softmax(scores, dim=-1))
        x = x + self.out((attn @ v).transpose(1, 2).reshape(b, n, d))
        return x + self.dropout(self.ffn(x))


class CrossAttentionFusion(nn.Module):
    """Text tokens attend to image patches and audio frames; output ``[B, 2*dim]``.

    A learned "null" key is always valid, so a row whose only context modality is absent still
    has something to attend to (no NaN from an all-masked softmax).
    """

    def __init__(self, spec: FusionSpec, modalities: list[str]):
        super().__init__()
        self.context = [m for m in modalities if m != "text"]
        self.null_key = nn.Parameter(torch.zeros(1, 1, spec.dim))
        self.kind_embedding = nn.ParameterDict({m: nn.Parameter(torch.zeros(1, 1, spec.dim)) for m in self.context})
        self.blocks = nn.ModuleList(CrossAttentionBlock(spec.dim, spec.heads, spec.dropout) for _ in range(spec.layers))
        self.norm = nn.LayerNorm(spec.dim)
        self.out_dim = 2 * spec.dim

    def forward(self, feats: dict[str, EncoderOutput], present: dict[str, torch.Tensor]) -> torch.Tensor:
        """Text tokens attend to image patches / audio frames (absent rows to a learned null key), then pool."""
        text = feats["text"]
        batch = text.tokens.shape[0]
        keys = [self.null_key.expand(batch, -1, -1)]
        valid = [torch.ones(batch, 1, dtype=text.tokens.dtype, device=text.tokens.device)]
        for m in self.context:
            out = feats[m]
            keys.append(out.tokens + self.kind_embedding[m])
            token_valid = torch.ones(out.tokens.shape[:2], dtype=out.tokens.dtype, device=out.tokens.device)
            if out.mask is not None:
                token_valid = out.mask.to(out.tokens.dtype)
            valid.append(token_valid * present[m].unsqueeze(-1))
        kv = torch.cat(keys, dim=1)
        kv_valid = torch.cat(valid, dim=1)
        x = text.tokens
        for block in self.blocks:
            x = block(x, kv, kv_valid)
        attended = masked_mean(self.norm(x), text.mask)
        context = torch.stack(
            [feats[m].pooled * present[m].unsqueeze(-1) for m in self.context], dim=0
        ).sum(dim=0)
        return torch.cat([attended, context], dim=-1)


class DualEncoderFusion(nn.Module):
    """CLIP-style late fusion: normalised text and image embeddings and their scaled cosine."""

    def __init__(self, spec: FusionSpec, modalities: list[str]):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.logit_bias = nn.Parameter(torch.tensor(0.0))
        self.out_dim = 1

    def embeddings(self, feats: dict[str, EncoderOutput]) -> tuple[torch.Tensor, torch.Tensor]:
        """L2-normalised text and image embeddings (the CLIP-style towers' outputs)."""
        text = torch.nn.functional.normalize(feats["text"].pooled, dim=-1)
        image = torch.nn.functional.normalize(feats["image"].pooled, dim=-1)
        return text, image

    def forward(self, feats: dict[str, EncoderOutput], present: dict[str, torch.Tensor]) -> torch.Tensor:
        """Scaled cosine similarity of text and image, one match logit per row."""
        text, image = self.embeddings(feats)
        cosine = (text * image).sum(dim=-1, keepdim=True)
        return cosine * self.logit_scale.exp().clamp(max=100.0) + self.logit_bias


FUSIONS = {
    "concat": ConcatFusion,
    "gated": GatedFusion,
    "cross_attention": CrossAttentionFusion,
    "dual": DualEncoderFusion,
}


def build_fusion(spec: FusionSpec, modalities: list[str]) -> nn.Module:
    """The fusion module for ``spec`` over ``modalities`` (canonical order)."""
    return FUSIONS[spec.type](spec, modalities)
