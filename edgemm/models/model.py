"""FusionModel: encoders → projections → fusion → head, saved and loaded as a directory.

Directory layout (``save_pretrained``)::

    fusion_config.json          FusionConfig (encoder configs included)
    model.safetensors           every weight
    text/                       tokenizer files (tokenizer.json …)
    image/preprocessor_config.json
    audio/preprocessor_config.json   (transformers feature extractor) or
    audio/edgemm_audio.json          (edgemm's log-mel front end)
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from edgemm.errors import (
    CheckpointError,
    InputPathError,
    MissingModalityError,
    UnsafeCheckpointError,
)
from edgemm.models.config import CONFIG_NAME, WEIGHTS_NAME, FusionConfig
from edgemm.models.encoders import EncoderOutput, build_encoder
from edgemm.models.fusion import build_fusion
from edgemm.models.processors import Processors

PICKLE_WEIGHTS = ("pytorch_model.bin", "model.pt", "model.pth", "model.ckpt")


class Head(nn.Module):
    """Two-layer MLP producing ``logits`` (classification, multilabel, matching) or ``values``."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fused features ``[B, D]`` → the head's outputs ``[B, num_outputs]``."""
        return self.net(x)


class FusionModel(nn.Module):
    """A multimodal fusion model built from a :class:`FusionConfig`.

    ``forward`` takes the graph inputs by name (see :meth:`input_names`) and returns a dict:
    ``logits`` ``[B, C]`` (``[B, 1]`` for matching) or ``values`` ``[B, N]`` for regression;
    the dual encoder also returns ``text_embeds`` and ``image_embeds``.

    Args:
        config: The model description.
        processors: Tokenizer / image processor / audio front end; defaults are derived from the
            encoders (their source directories, else the architecture's standard processor).
        allow_pickle: Allow pickle weights in encoder source directories.
    """

    def __init__(self, config: FusionConfig, processors: Processors | None = None, *, allow_pickle: bool = False):
        super().__init__()
        self.config = config
        self.encoders = nn.ModuleDict({m: build_encoder(config.encoders[m], allow_pickle=allow_pickle) for m in config.modalities})
        for m, encoder in self.encoders.items():
            enc_cfg = config.encoders[m]
            if enc_cfg.architecture != "logmel_cnn":
                # Keep the *loaded* config so the saved model rebuilds without its source dir.
                enc_cfg.config = encoder.model.config.to_dict()
        dim = config.fusion.dim
        self.projections = nn.ModuleDict({m: nn.Linear(self.encoders[m].hidden_size, dim) for m in config.modalities})
        self.fusion = build_fusion(config.fusion, config.modalities)
        self.head = None
        if config.fusion.type != "dual":
            self.head = Head(self.fusion.out_dim, config.head.hidden, config.num_outputs, config.head.dropout)
        self.processors = processors or Processors.defaults(config)

    # -- interface ------------------------------------------------------------------------

    def input_names(self) -> list[str]:
        """Graph input names in order: each modality's inputs, then presence flags."""
        names: list[str] = []
        for m in self.config.modalities:
            names.extend(self.encoders[m].input_names)
        names.extend(f"{m}_present" for m in self.config.optional_modalities)
        return names

    def output_names(self) -> list[str]:
        """Names of the graph's outputs, in order (``logits``; ``values`` for regression; dual encoders add the embeddings)."""
        if self.config.fusion.type == "dual":
            return ["logits", "text_embeds", "image_embeds"]
        return ["values" if self.config.head.type == "regression" else "logits"]

    def forward(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run every encoder on its inputs, fuse and apply the head.

        Args:
            inputs: Graph inputs by name (an optional modality's presence flag is ``<modality>_present``).

        Returns:
            Outputs by name, as :meth:`output_names` lists them.
        """
        feats: dict[str, EncoderOutput] = {}
        present: dict[str, torch.Tensor] = {}
        for m in self.config.modalities:
            encoder = self.encoders[m]
            missing = [n for n in encoder.input_names if inputs.get(n) is None]
            if missing:
                raise MissingModalityError(
                    f"The model needs {m} input(s) {missing}.",
                    hint=f"Provide {m}; optional modalities: {self.config.optional_modalities or 'none'}.",
                )
            out = encoder(**{n: inputs[n] for n in encoder.input_names})
            proj = self.projections[m]
            feats[m] = EncoderOutput(proj(out.tokens), out.mask, proj(out.pooled))
            flag = inputs.get(f"{m}_present") if m in self.config.optional_modalities else None
            batch = out.pooled.shape[0]
            present[m] = flag.to(out.pooled.dtype) if flag is not None else torch.ones(batch, dtype=out.pooled.dtype, device=out.pooled.device)
        fused = self.fusion(feats, present)
        if self.head is None:
            text, image = self.fusion.embeddings(feats)
            return {"logits": fused, "text_embeds": text, "image_embeds": image}
        name = "values" if self.config.head.type == "regression" else "logits"
        return {name: self.head(fused)}

    # -- persistence ----------------------------------------------------------------------

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write config, safetensors weights and processors to ``folder``."""
        from safetensors.torch import save_file

        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        self.config.save(out)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(out / WEIGHTS_NAME), metadata={"format": "pt", "edgemm": self.config.format})
        self.processors.save(out)
        return out

    @classmethod
    def from_pretrained(cls, folder: str | Path, *, allow_pickle: bool = False) -> FusionModel:
        """Load a model saved with :meth:`save_pretrained`.

        Raises:
            InputPathError: ``folder`` is missing or has no ``fusion_config.json``.
            UnsafeCheckpointError: Only pickle weights exist and ``allow_pickle`` is False.
            CheckpointError: The weights are corrupt or do not match the config.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise InputPathError(f"{folder} is not a directory.", hint="Point at a FusionModel directory.")
        config = FusionConfig.load(folder)
        state = load_state_dict(folder, allow_pickle=allow_pickle)
        model = cls(config, Processors.load(folder, config))
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shape mismatches
            detail = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc)[:300])
            raise CheckpointError(f"The weights do not match {CONFIG_NAME}: {detail}",
                                  hint="Save config and weights together with FusionModel.save_pretrained.") from exc
        if missing or unexpected:
            raise CheckpointError(
                f"The weights do not match {CONFIG_NAME}: {len(missing)} missing (e.g. {missing[:2]}), "
                f"{len(unexpected)} unexpected (e.g. {unexpected[:2]}).",
                hint="Save config and weights together with FusionModel.save_pretrained.",
            )
        return model.eval()


def load_state_dict(folder: Path, *, allow_pickle: bool) -> dict[str, torch.Tensor]:
    """Read ``model.safetensors`` (or, only with ``allow_pickle``, a pickle checkpoint)."""
    weights = folder / WEIGHTS_NAME
    if weights.is_file():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(weights))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{weights} is not a readable safetensors file: {exc}",
                                  hint="The file is corrupt or truncated; save the model again.") from exc
    pickles = [folder / name for name in PICKLE_WEIGHTS if (folder / name).is_file()]
    if not pickles:
        raise CheckpointError(f"{folder} has no {WEIGHTS_NAME}.", hint="Save the model with FusionModel.save_pretrained.")
    if not allow_pickle:
        raise UnsafeCheckpointError(
            f"{pickles[0].name} is a pickle checkpoint; loading pickle can run arbitrary code.",
            hint="Convert it to safetensors, or pass --allow-pickle if you trust its origin.",
        )
    try:
        # weights_only stays on even when pickle is allowed: tensors and containers only.
        state = torch.load(pickles[0], map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"Cannot load {pickles[0].name}: {exc}") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{pickles[0].name} does not hold a state dict.")
    return state
