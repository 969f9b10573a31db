"""Text preprocessing with the Rust ``tokenizers`` library from the bundle's ``tokenizer.json``.

Padding and truncation are configured exactly as transformers' fast tokenizers configure the
same library for ``tokenizer(texts, padding=..., truncation=True, max_length=...)``
(``PreTrainedTokenizerFast.set_truncation_and_padding``): the tokenizer's padding and truncation
sides, pad token, pad id and pad token type id, so token ids, masks and token type ids are
identical to the training-time tokenizer. Sections written before ``padding_side``,
``truncation_side`` and ``pad_type_id`` were recorded keep their old behaviour: right, right, 0.

:meth:`TextPreprocessor.alignments` also says where each token came from (characters covered,
special or not, its vocabulary string): token classification names its entities by them.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from edgemm.errors import BundleError, InputTooLargeError, InvalidInputError

DEFAULT_MAX_CHARS = 4096
SIDES = ("right", "left")

# The per-text cache (see TextPreprocessor._row): at most this many entries and bytes; longer
# texts are not cached (tokenizing them dwarfs the lookup, and they are rarely repeated).
_CACHE_ENTRIES = 4096
_CACHE_BYTES = 4 * 2**20
_CACHE_MAX_CHARS = 1024


class _Row(NamedTuple):
    """One text's encoding without padding: int64 ids, attention mask, token type ids (the
    last two only where the section feeds them)."""

    ids: np.ndarray
    mask: np.ndarray | None
    types: np.ndarray | None


def _row_bytes(key: tuple[str, int], row: _Row) -> int:
    # What an entry keeps alive, roughly: the key string, the arrays and their headers.
    arrays = sum(a.nbytes for a in row if a is not None)
    return sys.getsizeof(key[0]) + arrays + 400


def text_preprocessing(
    tokenizer_path: str,
    *,
    max_length: int,
    pad_token_id: int,
    pad_token: str,
    padding: str = "longest",
    attention_mask: str | None = "attention_mask",
    token_type_ids: str | None = None,
    input_ids: str = "input_ids",
    max_chars: int = DEFAULT_MAX_CHARS,
    min_length: int = 1,
    padding_side: str = "right",
    truncation_side: str = "right",
    pad_type_id: int = 0,
) -> dict[str, Any]:
    """Build the manifest's text preprocessing section.

    Args:
        tokenizer_path: Bundle-relative path of ``tokenizer.json``.
        max_length: Truncation length in tokens (also the ``max`` of the sequence profile).
        pad_token_id / pad_token: Padding id and token string.
        padding: ``"longest"`` (pad to the longest in the batch) or ``"max_length"``.
        attention_mask / token_type_ids / input_ids: ONNX input names (``None`` = not fed).
        max_chars: Requests with more characters are refused before tokenizing.
        min_length: Shortest sequence the tokenizer produces (e.g. 2 for ``[CLS] [SEP]``).
        padding_side / truncation_side: ``"right"`` or ``"left"``, as the tokenizer's own.
        pad_type_id: Token type id of padding positions (``pad_token_type_id``).

    Returns:
        The section (``kind: "text"``) that :class:`TextPreprocessor` reads.

    Raises:
        ValueError: ``padding`` is neither ``"longest"`` nor ``"max_length"``, or a side is
            neither ``"right"`` nor ``"left"``.
    """
    if padding not in ("longest", "max_length"):
        raise ValueError(f"padding must be 'longest' or 'max_length', not {padding!r}")
    for what, side in (("padding_side", padding_side), ("truncation_side", truncation_side)):
        if side not in SIDES:
            raise ValueError(f"{what} must be 'right' or 'left', not {side!r}")
    return {
        "kind": "text",
        "tokenizer": tokenizer_path,
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": token_type_ids,
        "max_length": int(max_length),
        "min_length": int(min_length),
        "padding": padding,
        "pad_token_id": int(pad_token_id),
        "pad_token": pad_token,
        "pad_type_id": int(pad_type_id),
        "padding_side": padding_side,
        "truncation_side": truncation_side,
        "max_chars": int(max_chars),
    }


def check_text(text: Any, *, max_chars: int) -> str:
    """Validate one text input (str or UTF-8 bytes) and return it as ``str``.

    Args:
        text: The untrusted input.
        max_chars: Longest accepted text, in characters.

    Returns:
        The text as ``str``.

    Raises:
        InvalidInputError: Not text, invalid UTF-8, or lone surrogates.
        InputTooLargeError: Longer than ``max_chars`` characters.
    """
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInputError(f"Text is not valid UTF-8 ({exc.reason} at byte {exc.start}).",
                                    hint="Send text encoded as UTF-8.") from None
    if not isinstance(text, str):
        raise InvalidInputError(f"Text must be a string, got {type(text).__name__}.")
    if len(text) > max_chars:
        raise InputTooLargeError(f"Text has {len(text)} characters; the limit is {max_chars}.",
                                 hint="Send a shorter answer.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInputError("Text contains lone surrogate code points.", hint="Send valid Unicode text.") from None
    return text


@dataclass(frozen=True)
class TokenAlignment:
    """One row of a tokenized batch as the model sees it, with where each token came from.

    Positions are those of the feed the same texts produce (padding included), so row ``i`` of
    a ``[B, S, labels]`` output lines up with ``alignments[i]``.

    Attributes:
        text: The text as tokenized.
        ids: Token id per position.
        tokens: The vocabulary string of each id (``convert_ids_to_tokens``).
        offsets: ``(start, end)`` character span of each token in ``text`` (``(0, 0)`` for
            special and padding tokens).
        special: True for special tokens (``[CLS]``, ``</s>``) and padding.
        decode: Joins token strings back into text as the tokenizer's decoder does
            (``convert_tokens_to_string``).
    """

    text: str
    ids: list[int]
    tokens: list[str]
    offsets: list[tuple[int, int]]
    special: list[bool]
    decode: Callable[[list[str]], str] = field(repr=False, compare=False)


class TextPreprocessor:
    """Tokenizes a batch of strings into ``input_ids`` / ``attention_mask`` arrays.

    Each text is encoded on its own (truncation configured once per length, no padding on the
    Rust side) and padded in numpy exactly as the tokenizer pads a batch; encodings are cached
    by text (bounded: 4096 texts of at most 1024 characters, 4 MiB), so repeated answers cost a
    lookup. Safe to call from several threads.

    Args:
        bundle_dir: Directory the config's paths are relative to.
        config: The manifest's ``preprocessing["text"]`` section.

    Raises:
        BundleError: The bundle's ``tokenizer.json`` cannot be loaded, or a padding or
            truncation setting is malformed.
    """

    def __init__(self, bundle_dir: Path, config: dict[str, Any]):
        from tokenizers import Tokenizer

        self.config = config
        for key in ("padding_side", "truncation_side"):
            if config.get(key, "right") not in SIDES:
                raise BundleError(f"Text preprocessing: {key} {config.get(key)!r} is not 'right' or 'left'.",
                                  hint="Export the bundle again.")
        pad_type_id = config.get("pad_type_id", 0)
        if isinstance(pad_type_id, bool) or not isinstance(pad_type_id, int) or pad_type_id < 0:
            raise BundleError(f"Text preprocessing: pad_type_id {pad_type_id!r} is not a non-negative integer.",
                              hint="Export the bundle again.")
        path = Path(bundle_dir) / config["tokenizer"]
        try:
            self._tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:
            raise BundleError(f"Cannot load the tokenizer {config['tokenizer']}: {exc}",
                              hint="Export the bundle again.") from exc
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        # Padding/truncation live on the shared Rust tokenizer: serialise callers (serve threads).
        self._lock = threading.Lock()
        # The truncation length the tokenizer is configured with now (None: none); padding is
        # never left on, so that single texts can be encoded (and cached) on their own.
        self._truncation: int | None = None
        self._rows: OrderedDict[tuple[str, int], _Row] = OrderedDict()
        self._rows_bytes = 0

    @property
    def max_length(self) -> int:
        """The configured truncation length in tokens."""
        return int(self.config["max_length"])

    def __call__(
        self, texts: list[Any], *, pad_to: int | None = None, max_length: int | None = None
    ) -> dict[str, np.ndarray]:
        """Tokenize ``texts`` into the model feed.

        Args:
            texts: Strings (or UTF-8 bytes).
            pad_to: Pad (and truncate) every row to exactly this many tokens (parity shapes).
            max_length: Truncate to this many tokens instead of the configured maximum.

        Returns:
            int64 ``[B, T]`` arrays by ONNX input name: ids, plus the attention mask and token
            type ids where the config names those inputs.

        Raises:
            InvalidInputError: An item is not text (or not UTF-8).
            InputTooLargeError: An item has more than ``max_chars`` characters.
        """
        cfg = self.config
        limit = min(pad_to or max_length or self.max_length, self.max_length)
        max_chars = int(cfg["max_chars"])
        with self._lock:
            rows = [self._row(text, limit, max_chars) for text in texts]
        # Padding as the tokenizer's own (``Encoding.pad``): pad id, mask 0 and pad type id, on
        # the configured side, to the longest row or to the fixed length.
        fixed = cfg["padding"] == "max_length" or pad_to is not None
        width = (pad_to if pad_to is not None else limit) if fixed else max((len(r.ids) for r in rows), default=0)
        left = cfg.get("padding_side", "right") == "left"
        names = [(cfg["input_ids"], 0, int(cfg["pad_token_id"]))]
        if cfg.get("attention_mask"):
            names.append((cfg["attention_mask"], 1, 0))
        if cfg.get("token_type_ids"):
            names.append((cfg["token_type_ids"], 2, int(cfg.get("pad_type_id", 0))))
        feed: dict[str, np.ndarray] = {}
        for name, field_index, pad in names:
            if not rows:
                feed[name] = np.zeros((0,), dtype=np.int64)  # what np.asarray([]) gave
                continue
            out = np.full((len(rows), width), pad, dtype=np.int64)
            for i, row in enumerate(rows):
                values = row[field_index]
                if left:
                    out[i, width - len(values):] = values
                else:
                    out[i, :len(values)] = values
            feed[name] = out
        return feed

    def alignments(self, texts: list[Any], *, pad_to: int | None = None) -> list[TokenAlignment]:
        """Tokenize ``texts`` exactly as :meth:`__call__` does and say where every token came from.

        Token classification needs it: the entity of a token is named by the characters it
        covers (see :mod:`edgemm.runtime.entities`).

        Args:
            texts: Strings (or UTF-8 bytes), as for :meth:`__call__`.
            pad_to: As for :meth:`__call__`.

        Returns:
            One :class:`TokenAlignment` per text, positions as in the feed.

        Raises:
            InvalidInputError / InputTooLargeError: As :meth:`__call__`.
        """
        clean = [check_text(t, max_chars=int(self.config["max_chars"])) for t in texts]
        limit = min(pad_to or self.max_length, self.max_length)
        with self._lock:
            encodings = self._encode(clean, limit, pad_to)
        tok = self._tokenizer
        return [TokenAlignment(text=text, ids=list(e.ids), tokens=[tok.id_to_token(i) or "" for i in e.ids],
                               offsets=[(int(s), int(t)) for s, t in e.offsets],
                               special=[bool(s) or not m for s, m in zip(e.special_tokens_mask, e.attention_mask)],
                               decode=self.decode_tokens)
                for text, e in zip(clean, encodings)]

    def decode_tokens(self, tokens: list[str]) -> str:
        """Token strings → text, as transformers' ``convert_tokens_to_string`` for a fast tokenizer
        (the tokenizer's decoder, or the tokens joined by spaces when it has none)."""
        decoder = self._tokenizer.decoder
        return decoder.decode(tokens) if decoder is not None else " ".join(tokens)

    def _row(self, text: Any, limit: int, max_chars: int) -> _Row:
        """One text's unpadded ids, mask and type ids, truncated to ``limit`` (lock held).

        A text's encoding does not depend on the rest of its batch (padding aside), so it is
        cached: a kiosk tokenizes the same few answers all day. Only checked texts are stored,
        under the same ``max_chars``, so a hit needs no second check.
        """
        if type(text) is str:
            row = self._rows.get((text, limit))
            if row is not None:
                self._rows.move_to_end((text, limit))
                return row
        clean = check_text(text, max_chars=max_chars)
        key = (clean, limit)
        row = self._rows.get(key)
        if row is not None:
            self._rows.move_to_end(key)
            return row
        tok = self._tokenizer
        if self._truncation != limit:
            tok.enable_truncation(max_length=limit, stride=0, strategy="longest_first",
                                  direction=self.config.get("truncation_side", "right"))
            self._truncation = limit
        encoding = tok.encode(clean)
        cfg = self.config
        row = _Row(np.asarray(encoding.ids, dtype=np.int64),
                   np.asarray(encoding.attention_mask, dtype=np.int64) if cfg.get("attention_mask") else None,
                   np.asarray(encoding.type_ids, dtype=np.int64) if cfg.get("token_type_ids") else None)
        if len(clean) <= _CACHE_MAX_CHARS:
            self._remember(key, row)
        return row

    def _remember(self, key: tuple[str, int], row: _Row) -> None:
        self._rows[key] = row
        self._rows_bytes += _row_bytes(key, row)
        while self._rows_bytes > _CACHE_BYTES or len(self._rows) > _CACHE_ENTRIES:
            old_key, old_row = self._rows.popitem(last=False)
            self._rows_bytes -= _row_bytes(old_key, old_row)

    def _encode(self, clean: list[str], limit: int, pad_to: int | None) -> list[Any]:
        cfg = self.config
        tok = self._tokenizer
        self._truncation = None  # reset below, whatever happens
        tok.enable_truncation(max_length=limit, stride=0, strategy="longest_first",
                              direction=cfg.get("truncation_side", "right"))
        fixed = cfg["padding"] == "max_length" or pad_to is not None
        tok.enable_padding(
            direction=cfg.get("padding_side", "right"),
            pad_id=cfg["pad_token_id"],
            pad_type_id=cfg.get("pad_type_id", 0),
            pad_token=cfg["pad_token"],
            length=(pad_to if pad_to is not None else limit) if fixed else None,
        )
        try:
            return tok.encode_batch(clean)
        finally:
            tok.no_padding()
            tok.no_truncation()
