"""What a bundle means in words a child reads: the manifest's ``display`` section.

Per language the bundle declares (``"en"``, ``"zh"`` …): one instruction line for the task and,
per label, a display name and a short message. The kiosk page shows these instead of raw labels
(``no_match``) and follows the browser's language; without them it humanises the label.

In ``edgemm.json`` (hashed with the rest of the manifest)::

    "display": {
      "default_language": "en",
      "languages": {
        "en": {"instruction": "Does the word match the picture?",
               "labels": {"match": {"name": "Yes, that's right!", "message": "Great job!"}, ...}},
        "zh": {...}
      }
    }

Every label must be covered in every language; every string is bounded, plain text (never HTML:
no ``<`` or ``>``, no control characters). The same shape is accepted from a JSON or TOML file by
``edgemm export --display FILE`` and from ``display.json`` in a checkpoint directory (written by
``edgemm train`` for the built-in tasks). Torch-free.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgemm.errors import DisplayError, InputPathError

# A checkpoint directory's display texts (``edgemm train`` writes it; ``edgemm export`` reads it).
DISPLAY_FILE = "display.json"
MAX_LANGUAGES = 32
MAX_INSTRUCTION_CHARS = 160
MAX_NAME_CHARS = 60
MAX_MESSAGE_CHARS = 160
MAX_FILE_BYTES = 1 << 20
# BCP 47 as browsers report it (``en``, ``zh-CN``, ``zh-Hant-TW``); compared case-insensitively.
_LANGUAGE = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8}){0,3}$")
_TOP_KEYS = frozenset({"default_language", "languages"})
_LANGUAGE_KEYS = frozenset({"instruction", "labels"})
_LABEL_KEYS = frozenset({"name", "message"})
_HINT = "Give every label a name and a message in every language, as plain text (see `edgemm export --help`)."


@dataclass(frozen=True)
class LabelText:
    """How one label reads in one language: a display name (large type) and a short message."""

    name: str
    message: str


@dataclass(frozen=True)
class LanguageText:
    """One language's texts: the task's instruction line and every label's :class:`LabelText`."""

    instruction: str
    labels: dict[str, LabelText]


@dataclass(frozen=True)
class Display:
    """The validated ``display`` section of a manifest.

    Attributes:
        default_language: The language shown when the browser asks for none the bundle declares.
        languages: Texts per language tag, in the order the bundle declares them.
    """

    default_language: str
    languages: dict[str, LanguageText]

    @classmethod
    def from_dict(cls, data: Any, labels: Sequence[str]) -> Display:
        """Validate a ``display`` section against the bundle's labels.

        Args:
            data: The parsed section (JSON or TOML).
            labels: The bundle's labels; each must be covered in every language, and no other.

        Returns:
            The typed :class:`Display`.

        Raises:
            DisplayError: A missing or unknown key, a label left out, a string too long, empty,
                or not plain text.
        """
        top = _obj(data, "display")
        _keys(top, _TOP_KEYS, "display")
        languages_raw = _obj(top.get("languages"), "display.languages")
        if not languages_raw:
            raise DisplayError("The display texts declare no language.", hint=_HINT)
        if len(languages_raw) > MAX_LANGUAGES:
            raise DisplayError(f"The display texts declare {len(languages_raw)} languages; at most {MAX_LANGUAGES}.",
                               hint=_HINT)
        seen: set[str] = set()
        languages: dict[str, LanguageText] = {}
        for tag, entry in languages_raw.items():
            if not isinstance(tag, str) or not _LANGUAGE.match(tag):
                raise DisplayError(f"display.languages has {tag!r}, which is not a language tag such as 'en' or 'zh-CN'.",
                                   hint=_HINT)
            if tag.lower() in seen:
                raise DisplayError(f"display.languages declares {tag!r} twice.", hint=_HINT)
            seen.add(tag.lower())
            languages[tag] = _language(entry, labels, f"display.languages.{tag}")
        default = top.get("default_language")
        if default is None:
            default = "en" if "en" in languages else next(iter(languages))
        if default not in languages:
            raise DisplayError(f"display.default_language {default!r} is not one of the declared languages "
                               f"({', '.join(languages)}).", hint=_HINT)
        return cls(default_language=default, languages=languages)

    def to_dict(self) -> dict[str, Any]:
        """The section as it is stored in ``edgemm.json`` (and served to the kiosk page)."""
        return {"default_language": self.default_language, "languages": {
            tag: {"instruction": lang.instruction,
                  "labels": {label: {"name": t.name, "message": t.message} for label, t in lang.labels.items()}}
            for tag, lang in self.languages.items()}}

    def choose_language(self, preferred: Iterable[str]) -> str:
        """The declared language that best matches ``preferred`` (the browser's order), as the page picks it.

        An exact tag wins (case-insensitive), then the same primary language (``zh-CN`` → ``zh``);
        the first preference that matches decides. None matching: :attr:`default_language`.
        """
        return best_language(preferred, list(self.languages), self.default_language)


def best_language(preferred: Iterable[str], declared: Sequence[str], default: str) -> str:
    """The tag of ``declared`` that best serves ``preferred``; ``default`` when none does.

    (The kiosk page implements the same rule in JavaScript; this one is for tests and tools.)
    """
    by_tag = {d.lower(): d for d in declared}
    for want in preferred:
        want = want.lower()
        if want in by_tag:
            return by_tag[want]
        primary = want.split("-", 1)[0]
        for tag in declared:
            if tag.lower().split("-", 1)[0] == primary:
                return tag
    return default


def humanize(label: str) -> str:
    """A raw label as a person reads it: ``no_match`` → ``No match`` (the page's fallback)."""
    words = re.sub(r"[_\-]+", " ", label).strip()
    return words[:1].upper() + words[1:] if words else label


def load_display_file(path: Path, labels: Sequence[str] | None = None) -> dict[str, Any]:
    """Read display texts from a ``.json`` or ``.toml`` file (``edgemm export --display``).

    Args:
        path: The file.
        labels: The model's labels, to validate against now (None: validated later, at export).

    Returns:
        The section as a dict (validated when ``labels`` is given).

    Raises:
        InputPathError: The file does not exist or is not a file.
        DisplayError: It is not JSON/TOML, too large, or not a valid display section.
    """
    path = Path(path)
    if not path.is_file():
        raise InputPathError(f"{path} is not a file.", hint="Give a .json or .toml file with the display texts.")
    # Judged by its size before reading, and never more read than the cap allows (the file may
    # grow meanwhile). edgemm.fsio.read_bounded does this above the bundle layer, which may not import it.
    if path.stat().st_size > MAX_FILE_BYTES:
        raise DisplayError(f"{path} is larger than 1 MiB.", hint=_HINT)
    with open(path, "rb") as fh:
        raw = fh.read(MAX_FILE_BYTES + 1)
    if len(raw) > MAX_FILE_BYTES:
        raise DisplayError(f"{path} is larger than 1 MiB.", hint=_HINT)
    try:
        text = raw.decode("utf-8")
        if path.suffix.lower() == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib  # type: ignore[no-redef]
            data: Any = tomllib.loads(text)
        else:
            data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:  # TOMLDecodeError and JSONDecodeError are ValueErrors
        raise DisplayError(f"{path} is not readable {'TOML' if path.suffix.lower() == '.toml' else 'JSON'}: {exc}",
                           hint="Write the display texts as JSON (.json) or TOML (.toml), UTF-8.") from exc
    if labels is not None:
        return Display.from_dict(data, labels).to_dict()
    return _obj(data, "display")


def read_checkpoint_display(folder: Path | None) -> dict[str, Any] | None:
    """The display texts a checkpoint directory carries (:data:`DISPLAY_FILE`), unvalidated; else None."""
    if folder is None or not Path(folder).is_dir() or not (Path(folder) / DISPLAY_FILE).is_file():
        return None
    return load_display_file(Path(folder) / DISPLAY_FILE)


# -- validation ---------------------------------------------------------------------------------


def _obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise DisplayError(f"{where} must be a table of keys, got {type(value).__name__}.", hint=_HINT)
    return dict(value)


def _keys(obj: Mapping[str, Any], allowed: frozenset[str], where: str) -> None:
    unknown = sorted(str(k) for k in obj if k not in allowed)
    if unknown:
        raise DisplayError(f"{where} has unknown keys {unknown}; allowed: {sorted(allowed)}.", hint=_HINT)


def _language(entry: Any, labels: Sequence[str], where: str) -> LanguageText:
    obj = _obj(entry, where)
    _keys(obj, _LANGUAGE_KEYS, where)
    instruction = _text(obj.get("instruction"), f"{where}.instruction", MAX_INSTRUCTION_CHARS)
    texts = _obj(obj.get("labels", {}), f"{where}.labels")
    unknown = sorted(str(k) for k in texts if k not in labels)
    if unknown:
        raise DisplayError(f"{where}.labels names {unknown}, which the model does not have "
                           f"(its labels: {list(labels)}).", hint=_HINT)
    missing = [label for label in labels if label not in texts]
    if missing:
        raise DisplayError(f"{where}.labels leaves out {missing}.", hint=_HINT)
    out: dict[str, LabelText] = {}
    for label in labels:
        item = _obj(texts[label], f"{where}.labels.{label}")
        _keys(item, _LABEL_KEYS, f"{where}.labels.{label}")
        out[label] = LabelText(name=_text(item.get("name"), f"{where}.labels.{label}.name", MAX_NAME_CHARS),
                               message=_text(item.get("message"), f"{where}.labels.{label}.message",
                                             MAX_MESSAGE_CHARS))
    return LanguageText(instruction=instruction, labels=out)


def _text(value: Any, where: str, limit: int) -> str:
    if not isinstance(value, str):
        raise DisplayError(f"{where} must be text, got {type(value).__name__}.", hint=_HINT)
    text = value.strip()
    if not text:
        raise DisplayError(f"{where} is empty.", hint=_HINT)
    if len(text) > limit:
        raise DisplayError(f"{where} is {len(text)} characters long; at most {limit}.",
                           hint="A kiosk shows it in large type: keep it short.")
    if "<" in text or ">" in text:
        raise DisplayError(f"{where} contains '<' or '>'; display texts are plain text, never HTML.", hint=_HINT)
    # Cc: control characters (newlines included: one line); Cf bidi overrides could reorder what a child reads.
    bad = [c for c in text if unicodedata.category(c) == "Cc" or c in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"]
    if bad:
        raise DisplayError(f"{where} contains control or bidi-override characters {[hex(ord(c)) for c in bad[:3]]}.",
                           hint="Display texts are one line of plain text.")
    return text
