"""The whole preprocessing step: raw text / images / audio → the model's feed dict.

Driven entirely by the manifest's ``preprocessing`` and ``modalities`` sections; used by the
runtime on the device and by the exporter to build parity inputs from realistic raw samples.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from edgemm.bundle.manifest import ModalitySpec
from edgemm.errors import InvalidInputError, MissingModalityError
from edgemm.runtime.preprocess.audio import load_audio, prepare_audio_batch
from edgemm.runtime.preprocess.image import decode_image
from edgemm.runtime.preprocess.image.transforms import (
    ImageRecipe,
    parse_image_section,
    picture_rows,
    recipe_feed,
    stack_rows,
)
from edgemm.runtime.preprocess.text import TextPreprocessor

# The picture-row cache: at most this many rows and bytes of rows; payloads larger than
# _ROWS_MAX_PAYLOAD are not keyed (hashing them costs more than a kiosk gains).
_ROWS_ENTRIES = 512
_ROWS_BYTES = 8 * 2**20
_ROWS_MAX_PAYLOAD = 8 * 2**20


def _payload_key(item: Any) -> tuple[int, bytes] | None:
    """The cache key of an encoded picture: its length and BLAKE2b digest (None: not cached)."""
    if not isinstance(item, (bytes, bytearray, memoryview)):
        return None
    size = item.nbytes if isinstance(item, memoryview) else len(item)
    if size > _ROWS_MAX_PAYLOAD:
        return None
    try:
        return size, hashlib.blake2b(item, digest_size=20).digest()
    except (TypeError, ValueError, BufferError):
        return None  # a non-contiguous memoryview: decode_image judges it


# What an absent optional modality is replaced with (its presence flag is 0, so the model
# ignores it; the placeholder only has to be a valid, finite input).
_PLACEHOLDER_SECONDS = 0.25


class Preprocessor:
    """Callable turning per-modality lists of raw inputs into a feed dict.

    Texts are tokenized one by one and cached by string (see :class:`TextPreprocessor`);
    encoded pictures (bytes) are cached by payload digest as their finished rows of the model
    input, within a bounded budget (512 rows, 8 MiB): a kiosk sees the same question cards and
    answers all day. Either cache returns exactly what preprocessing would compute; callers get
    fresh arrays every call. Safe to call from several threads.

    Args:
        bundle_dir: Directory that preprocessing paths (``tokenizer.json``) are relative to.
        preprocessing: The manifest's ``preprocessing`` section.
        modalities: The manifest's ``modalities`` section.
    """

    def __init__(self, bundle_dir: Path, preprocessing: dict[str, dict[str, Any]], modalities: dict[str, dict[str, Any]]):
        self.preprocessing = preprocessing
        self.modalities = {name: ModalitySpec.from_dict(info) for name, info in modalities.items()}
        self.text = TextPreprocessor(Path(bundle_dir), preprocessing["text"]) if "text" in preprocessing else None
        self._image_recipe: ImageRecipe | None = None
        # Rows of pictures seen before, by payload digest (see _payload_key): a kiosk shows the
        # same question cards all day. A row depends on its payload and this section alone.
        self._rows: OrderedDict[tuple[int, bytes], np.ndarray] = OrderedDict()
        self._rows_bytes = 0
        self._rows_lock = threading.Lock()

    def __call__(
        self,
        batch: dict[str, list[Any]],
        *,
        text_pad_to: int | None = None,
        audio_pad_to: int | None = None,
        image_pad_to: tuple[int, int] | None = None,
    ) -> dict[str, np.ndarray]:
        """Preprocess a batch.

        Args:
            batch: ``modality → list of raw items``; ``None`` items (or a missing modality) mark
                rows without that modality, allowed only for optional modalities.
            text_pad_to / audio_pad_to: Force the sequence / audio axis length (parity shapes).
            image_pad_to: Pad pictures of sections that pad each batch (ViLT) to at least this
                ``(height, width)``.

        Returns:
            The model feed: every preprocessed input by ONNX input name, plus each optional
            modality's presence flags (float32 ``[B]``) where the model takes them.

        Raises:
            MissingModalityError: A required modality is missing for some row.
            InvalidInputError: Inputs are malformed, or list lengths disagree.
        """
        unknown = sorted(set(batch) - set(self.modalities))
        if unknown:
            raise InvalidInputError(
                f"This model does not take {', '.join(unknown)}.",
                hint=f"It takes: {', '.join(self.modalities)}.",
            )
        sizes = {m: len(items) for m, items in batch.items() if items is not None and self._shares_batch(m)}
        if len(set(sizes.values())) > 1:
            raise InvalidInputError(f"Batch sizes differ between modalities: {sizes}.")
        rows = next(iter(sizes.values()), None)
        feed: dict[str, np.ndarray] = {}
        for modality, info in self.modalities.items():
            items = batch.get(modality)
            n = len(items) if items is not None and not self._shares_batch(modality) else rows
            if n is None:
                raise MissingModalityError(f"The request has no {modality}.", hint="Send at least one input.")
            items = list(items) if items is not None else [None] * n
            missing = sum(item is None for item in items)
            if missing and info.required:
                raise MissingModalityError(
                    f"The model requires {modality} but {missing} of {n} request(s) lack it.",
                    hint=f"Send {modality} with every request.",
                )
            feed.update(self._modality_feed(modality, items, text_pad_to=text_pad_to, audio_pad_to=audio_pad_to,
                                            image_pad_to=image_pad_to))
            if info.presence_input:
                feed[info.presence_input] = np.array([item is not None for item in items], dtype=np.float32)
        return feed

    @property
    def rows_independent(self) -> bool:
        """Whether each row's features are the same whatever else shares its batch.

        False when the audio section normalises padded rows (``normalize_includes_padding``,
        transformers' Wav2Vec2 extractors without an attention mask): a recording's features
        then depend on the longest recording of its batch, exactly as in training, so requests
        from different people must not share a batch (a server runs them one by one).
        """
        audio = self.preprocessing.get("audio")
        return not (
            audio is not None
            and audio.get("features") == "waveform"
            and audio.get("normalize", True)
            and audio.get("normalize_includes_padding", False)
        )

    def _shares_batch(self, modality: str) -> bool:
        # CLIP-style similarity models take the text candidates on their own batch axis.
        spec = self.modalities.get(modality)
        return spec is None or spec.batch_axis == "batch"

    def _image_feed(self, items: list[Any], cfg: dict[str, Any], pad_to: tuple[int, int] | None) -> dict[str, np.ndarray]:
        pad = cfg.get("pad_to_batch_max", False)
        if not (pad is False or pad is None) or not items:
            # ViLT keeps each picture's own size (and the empty batch keeps its error): no rows.
            images = [self._decode(item, cfg) for item in items]
            return recipe_feed(images, cfg, self._recipe(cfg), pad_to=pad_to)
        keys = [_payload_key(item) for item in items]
        with self._rows_lock:
            rows: list[np.ndarray | None] = [None if key is None else self._rows.get(key) for key in keys]
        # Decode every new picture first, then prepare them: errors come in the order they did.
        pictures = [(index, self._decode(item, cfg)) for index, (item, row) in enumerate(zip(items, rows))
                    if row is None]
        recipe = self._recipe(cfg)
        for (index, _), row in zip(pictures, picture_rows(pictures, recipe)):
            rows[index] = row
            key = keys[index]
            if key is not None:
                self._remember(key, row)
        return {cfg["input"]: stack_rows(rows)}

    def _decode(self, item: Any, cfg: dict[str, Any]) -> Any:
        if item is None:
            return np.zeros((32, 32, cfg.get("channels", 3)), dtype=np.uint8).squeeze()
        # Pictures live only until they are pixels: no detached copy of each decoded file.
        return decode_image(item, max_pixels=cfg["max_pixels"], formats=cfg["formats"], max_bytes=cfg["max_bytes"],
                            detach=False)

    def _recipe(self, cfg: dict[str, Any]) -> ImageRecipe:
        # Parsed on first use, once: a malformed section still fails the request, as before.
        if self._image_recipe is None:
            self._image_recipe = parse_image_section(cfg)
        return self._image_recipe

    def _remember(self, key: tuple[int, bytes], row: np.ndarray) -> None:
        with self._rows_lock:
            if key in self._rows:
                return
            self._rows[key] = row
            self._rows_bytes += row.nbytes
            while self._rows_bytes > _ROWS_BYTES or len(self._rows) > _ROWS_ENTRIES:
                self._rows_bytes -= self._rows.popitem(last=False)[1].nbytes

    def _modality_feed(self, modality: str, items: list[Any], *, text_pad_to: int | None,
                       audio_pad_to: int | None, image_pad_to: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
        cfg = self.preprocessing[modality]
        if modality == "text":
            texts = ["" if item is None else item for item in items]
            return self.text(texts, pad_to=text_pad_to)
        if modality == "image":
            return self._image_feed(items, cfg, image_pad_to)
        rate = int(cfg["sampling_rate"])
        waves = [
            np.zeros(int(_PLACEHOLDER_SECONDS * rate), dtype=np.float32) if item is None
            else load_audio(item, target_rate=rate, max_seconds=cfg.get("max_seconds"))
            for item in items
        ]
        return prepare_audio_batch(waves, cfg, pad_to=audio_pad_to)
