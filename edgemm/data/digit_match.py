"""digit-match: the reference task — does a child's answer match their handwritten digit?

Each example pairs a real handwritten digit scan (scikit-learn's bundled 1,797 8×8 digits) with
an answer as text — number words, digits and short phrases in English, Chinese numerals — and,
where ``espeak-ng`` is installed, the answer spoken as a WAV. The label is ``match`` when the
answer names the drawn digit, else ``no_match``; every image gets as many matching as
non-matching answers, so the task is balanced and neither modality alone beats chance.

Splits are by *image* (no scan appears in two splits), deterministic for a seed:
60 % train, 10 % val, 10 % calibration, 20 % test.

``python -m edgemm.data.digit_match OUT`` writes the dataset folder (JSONL per split, PNGs,
WAVs) in the same format users give their own data in.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgemm._deps import require
from edgemm.data.dataset import SPLITS, Dataset, load_dataset
from edgemm.staging import staged_directory

LABELS = ["no_match", "match"]
# What the kiosk page shows for this task (edgemm.bundle.display): edgemm train writes it beside
# the checkpoint, edgemm export carries it into the manifest.
DISPLAY = {
    "default_language": "en",
    "languages": {
        "en": {"instruction": "Does the word match the picture?",
               "labels": {"match": {"name": "Yes, that's right!", "message": "Great job!"},
                          "no_match": {"name": "Not quite — try again", "message": "Look at the picture again."}}},
        "zh": {"instruction": "答案和图片上的数字一样吗？",
               "labels": {"match": {"name": "对了！", "message": "真棒！"},
                          "no_match": {"name": "不太对，再试一次", "message": "再看看图片。"}}},
    },
}
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
CHINESE = ["零", "一", "二", "三", "四", "五", "六", "七", "八", "九"]
# Phrasings a child types or says at a kiosk; {w} = number word, {d} = digit, {c} = Chinese numeral.
TEMPLATES = (
    "{w}", "{d}", "{c}", "{W}", "it is {w}", "I think it is {d}", "the answer is {w}", "maybe {w}?",
    "{w}!", "number {d}", "it's a {w}", "is it {d}?", "{d}!", "我觉得是{c}", "是{c}", "答案是{c}",
)
SPLIT_FRACTIONS = {"train": 0.6, "val": 0.1, "calibration": 0.1, "test": 0.2}
PAIRS_PER_IMAGE = {"train": 2, "val": 1, "calibration": 1, "test": 1}  # × (1 match + 1 no_match)
# espeak-ng (speed words/min, pitch 0-99): three "children" so spoken answers vary.
VOICES = ((140, 40), (170, 55), (190, 70))
AUDIO_RATE = 16000


@dataclass(frozen=True)
class DigitMatchConfig:
    """Generator settings (the defaults define the reference task)."""

    seed: int = 0
    audio: bool | None = None  # None: speak answers when espeak-ng is installed
    image_size: int = 8        # scans are 8×8; the model's processor resizes


def answer_text(digit: int, rng: np.random.Generator) -> str:
    """One way a child might answer ``digit``."""
    template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    return template.format(w=WORDS[digit], W=WORDS[digit].capitalize(), d=digit, c=CHINESE[digit])


def espeak_available() -> bool:
    """True when the ``espeak-ng`` speech synthesizer is on PATH."""
    return shutil.which("espeak-ng") is not None


def speak(text: str, path: Path, *, speed: int, pitch: int) -> None:
    """Speak ``text`` into a 16 kHz mono WAV with espeak-ng (Mandarin voice for Chinese answers)."""
    from edgemm.runtime.preprocess.audio import encode_wav, load_audio

    voice = "cmn" if any("\u4e00" <= ch <= "\u9fff" for ch in text) else "en-us"
    raw = path.with_suffix(".espeak.wav")  # espeak's --stdout WAV has no sizes; a file has them
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(raw), text],
                   check=True, capture_output=True, timeout=30)
    try:
        path.write_bytes(encode_wav(load_audio(raw, target_rate=AUDIO_RATE, max_seconds=30.0), AUDIO_RATE))
    finally:
        raw.unlink(missing_ok=True)


def _split_indices(n: int, seed: int) -> dict[str, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    bounds, start = {}, 0
    for i, (split, fraction) in enumerate(SPLIT_FRACTIONS.items()):
        stop = n if i == len(SPLIT_FRACTIONS) - 1 else start + round(fraction * n)
        bounds[split] = order[start:stop]
        start = stop
    return bounds


def generate(out: Path, config: DigitMatchConfig = DigitMatchConfig()) -> Path:
    """Write the digit-match dataset to ``out`` (atomically) and return it."""
    from PIL import Image

    datasets = require("sklearn.datasets", purpose="generating the digit-match dataset")
    with_audio = espeak_available() if config.audio is None else config.audio
    if with_audio and not espeak_available():
        from edgemm.errors import MissingDependencyError

        raise MissingDependencyError("Spoken answers need espeak-ng.", hint="apt-get install espeak-ng, or generate without audio.")
    digits = datasets.load_digits()
    out = Path(out)
    with staged_directory(out, replace=True) as staging:
        (staging / "images").mkdir()
        if with_audio:
            (staging / "audio").mkdir()
        spoken: dict[tuple[str, int, int], str] = {}
        rng = np.random.default_rng(config.seed + 1)
        for split, indices in _split_indices(len(digits.target), config.seed).items():
            rows = []
            for index in sorted(indices.tolist()):
                image_rel = f"images/{index:04d}.png"
                pixels = 255 - np.round(digits.images[index] / 16.0 * 255).astype(np.uint8)  # dark ink on paper
                Image.fromarray(pixels, mode="L").resize((config.image_size,) * 2, Image.BILINEAR).save(staging / image_rel)
                drawn = int(digits.target[index])
                for _ in range(PAIRS_PER_IMAGE[split]):
                    other = int((drawn + rng.integers(1, 10)) % 10)
                    for said, label in ((drawn, "match"), (other, "no_match")):
                        text = answer_text(said, rng)
                        row = {"id": f"{split}-{len(rows):05d}", "text": text, "image": image_rel, "label": label,
                               "meta": {"drawn": drawn, "said": said, "scan": index}}
                        if with_audio:
                            key = (text, *VOICES[int(rng.integers(len(VOICES)))])
                            if key not in spoken:
                                spoken[key] = f"audio/{len(spoken):05d}.wav"
                                speak(text, staging / spoken[key], speed=key[1], pitch=key[2])
                            row["audio"] = spoken[key]
                        rows.append(row)
            with open(staging / f"{split}.jsonl", "w", encoding="utf-8") as fh:
                for row in rows:
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        (staging / "README.md").write_text(__doc__ or "", encoding="utf-8")
    return out


def load_digit_match(cache: Path, config: DigitMatchConfig = DigitMatchConfig()) -> Dataset:
    """Load digit-match from ``cache``, generating it there first if needed."""
    marker = cache / "test.jsonl"
    if not marker.is_file():
        generate(cache, config)
    return load_dataset(cache, labels=LABELS)


def write_samples(dataset: Dataset, folder: Path, *, digits: tuple[int, ...] = (3, 7)) -> list[Path]:
    """Copy one test-split scan per digit (and its spoken answer, if any) to ``folder``.

    Names: ``digit-<d>.png`` and ``answer-<d>.wav`` — handy inputs for ``edgemm predict``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for digit in digits:
        record = next(r for r in dataset.split("test") if r.meta["drawn"] == digit and r.label == "match")
        target = folder / f"digit-{digit}.png"
        shutil.copyfile(record.image, target)
        written.append(target)
        if record.audio is not None:
            shutil.copyfile(record.audio, folder / f"answer-{digit}.wav")
            written.append(folder / f"answer-{digit}.wav")
    return written


def main() -> None:
    """``python -m edgemm.data.digit_match OUT``: generate the dataset (and sample scans with ``--samples``)."""
    parser = argparse.ArgumentParser(description="Generate the digit-match dataset.")
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-audio", action="store_true", help="skip spoken answers even if espeak-ng exists")
    parser.add_argument("--samples", type=Path, help="also copy a few test scans (digit-3.png, digit-7.png) here")
    args = parser.parse_args()
    if (args.out / "test.jsonl").is_file():
        path = args.out  # already generated: deterministic for its seed
    else:
        path = generate(args.out, DigitMatchConfig(seed=args.seed, audio=False if args.no_audio else None))
    data = load_dataset(path, labels=LABELS)
    if args.samples:
        for sample in write_samples(data, args.samples):
            print(f"sample       {sample}")
    for split in SPLITS:
        print(f"{split:<12} {len(data.split(split)):>5} records")
    print(f"modalities   {', '.join(data.modalities)}\nwritten to   {path}")


if __name__ == "__main__":
    main()
