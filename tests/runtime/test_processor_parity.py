"""Processor parity: edgemm's feed equals transformers' processors on mixed batches.

Every processor edgemm reproduces is run, per configuration, on the same raw batch of mixed
lengths (English and Chinese sentences, speech of different durations, images of different
sizes) through transformers (the reference, built offline from constructor arguments, the
MiniLM package's tokenizer, or tokenizers trained here) and through the torch-free runtime.
Ids and masks must be identical; floats within a tight tolerance (observed: 0 for the
waveform, Whisper numpy-path and image features).

The reported case is here literally: two WAVs of different length through
``Wav2Vec2FeatureExtractor(do_normalize=True)`` with and without an attention mask, down to
the logits of an exported wav2vec2 model.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as tf
from PIL import Image
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from tokenizers.implementations import ByteLevelBPETokenizer

from edgemm.data.synthetic import synthesize_image, synthesize_speechlike
from edgemm.models.processors import TOKENIZER_FILE, audio_section, text_section, tokenizer_json
from edgemm.runtime.preprocess import audio as A
from edgemm.runtime.preprocess.image import image_preprocessing_from_hf, preprocess_images
from edgemm.runtime.preprocess.pipeline import Preprocessor
from edgemm.runtime.preprocess.text import TextPreprocessor

RATE = 16000
FLOAT_ATOL = 1e-6

TEXTS = [
    "seven",
    "I think the answer is seven, because three plus four makes seven.",
    "我认为答案是七。",
    "这是一只猫的照片，它坐在垫子上。今天天气很好，我们去公园吧。",
    "",
    "A photo of a handwritten digit drawn by a child on the kiosk's screen, slowly and carefully, "
    "with a blue pen, after the lesson about numbers between one and twenty.",
    "The cat sat on the mat. 猫坐在垫子上。",
    "I typed [SEP] and <s> and </s> and <|endoftext|> myself",
]
CORPUS = [
    "The cat sat on the mat.", "I think the answer is seven.", "A photo of a handwritten digit.",
    "我认为答案是七。", "这是一只猫的照片。", "今天天气很好，我们去公园吧。", "seven plus three is ten",
    "Children draw numbers on paper at the kiosk.", "because three plus four makes seven",
] * 30


# --- text: tokenizers of every family edgemm exports --------------------------------------------


def _unigram(template: str, specials: list[str]) -> Tokenizer:
    """A SentencePiece-style Unigram tokenizer (XLM-R, T5/SigLIP family) trained here."""
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(CORPUS, trainers.UnigramTrainer(vocab_size=300, special_tokens=specials, unk_token="<unk>"))
    tok.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(t, tok.token_to_id(t)) for t in specials if t in template])
    return tok


def _bert(folder: Path, minilm: Path) -> tf.PreTrainedTokenizerFast:
    return tf.AutoTokenizer.from_pretrained(minilm)


def _distilbert(folder: Path, minilm: Path) -> tf.PreTrainedTokenizerFast:
    # Converted from the slow DistilBertTokenizer over the real MiniLM WordPiece vocabulary.
    return tf.DistilBertTokenizerFast(vocab_file=str(minilm / "vocab.txt"))


def _roberta(folder: Path, minilm: Path) -> tf.PreTrainedTokenizerFast:
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS, vocab_size=400, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(folder))
    return tf.RobertaTokenizerFast(vocab_file=str(folder / "vocab.json"), merges_file=str(folder / "merges.txt"))


def _xlm_roberta(folder: Path, minilm: Path) -> tf.PreTrainedTokenizerFast:
    tok = _unigram("<s> $A </s>", ["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    return tf.XLMRobertaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                      cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")


def _clip(folder: Path, minilm: Path) -> tf.PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>", continuing_subword_prefix=""))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator([line.lower() for line in CORPUS], trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|startoftext|>", "<|endoftext|>"], end_of_word_suffix="</w>",
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.model.save(str(folder))
    # Converted from the slow CLIPTokenizer (CLIP's normaliser, pre-tokenizer and template).
    return tf.CLIPTokenizerFast(vocab_file=str(folder / "vocab.json"), merges_file=str(folder / "merges.txt"))


def _siglip(folder: Path, minilm: Path) -> tf.PreTrainedTokenizerFast:
    # SigLIP checkpoints ship a T5-style SentencePiece vocabulary; transformers has no fast
    # SiglipTokenizer, so edgemm takes the fast tokenizer a SigLIP directory carries.
    tok = _unigram("$A </s>", ["<pad>", "</s>", "<unk>"])
    return tf.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                                      model_max_length=64)


TOKENIZERS = {"bert-minilm": _bert, "distilbert": _distilbert, "roberta": _roberta, "xlm-roberta": _xlm_roberta,
              "clip": _clip, "siglip": _siglip}

# (tokenizer, max_length, padding, padding_side, truncation_side, mask input)
TEXT_CASES = [
    *[(name, 32, "longest", "right", "right", "attention_mask") for name in TOKENIZERS if name != "siglip"],
    ("bert-minilm", 12, "longest", "left", "right", "attention_mask"),
    ("bert-minilm", 12, "longest", "right", "left", "attention_mask"),
    ("bert-minilm", 12, "longest", "left", "left", "attention_mask"),
    ("bert-minilm", 20, "max_length", "right", "right", "attention_mask"),
    ("xlm-roberta", 10, "longest", "left", "left", "attention_mask"),
    ("roberta", 9, "max_length", "left", "right", "attention_mask"),
    ("clip", 16, "longest", "right", "right", "attention_mask"),
    ("siglip", 64, "max_length", "right", "right", None),
    ("siglip", 16, "max_length", "right", "right", None),
]


@pytest.fixture(scope="module")
def tokenizer_factory(tmp_path_factory, minilm_dir):
    cache: dict[str, tf.PreTrainedTokenizerFast] = {}

    def get(name: str) -> tf.PreTrainedTokenizerFast:
        if name not in cache:
            cache[name] = TOKENIZERS[name](tmp_path_factory.mktemp(name), minilm_dir)
            assert cache[name].is_fast
        return cache[name]

    return get


@pytest.mark.parametrize("case", TEXT_CASES, ids=lambda c: "-".join(str(v) for v in c[:5]))
def test_text_feed_equals_the_tokenizer(case, tokenizer_factory, tmp_path):
    name, max_length, padding, padding_side, truncation_side, mask = case
    hf = tokenizer_factory(name)
    # The user's tokenizer as configured at training time (what save_pretrained records).
    hf.padding_side, hf.truncation_side = padding_side, truncation_side
    (tmp_path / "text").mkdir()
    (tmp_path / TOKENIZER_FILE).write_bytes(tokenizer_json(hf))
    section = text_section(hf, TOKENIZER_FILE, max_length, padding=padding, attention_mask=mask,
                           token_type_ids="token_type_ids")
    assert (section["padding_side"], section["truncation_side"]) == (padding_side, truncation_side)

    expected = hf(TEXTS, padding=padding, truncation=True, max_length=max_length, return_tensors="np",
                  return_token_type_ids=True)
    feed = TextPreprocessor(tmp_path, section)(TEXTS)
    assert set(feed) == {"input_ids", "token_type_ids"} | ({mask} if mask else set())
    for key in feed:
        assert feed[key].dtype == np.int64
        np.testing.assert_array_equal(feed[key], expected[key], err_msg=key)
    if padding == "max_length":
        assert feed["input_ids"].shape == (len(TEXTS), max_length)
    # The batch really mixes lengths: some rows are padded, some truncated.
    lengths = [len(ids) for ids in hf(TEXTS)["input_ids"]]
    assert min(lengths) < feed["input_ids"].shape[1] and (padding == "max_length" or max(lengths) > max_length)


def test_old_text_sections_keep_right_padding(tokenizer_factory, tmp_path):
    """A section written before the sides were recorded pads and truncates on the right."""
    hf = tokenizer_factory("bert-minilm")
    hf.padding_side = hf.truncation_side = "right"
    (tmp_path / "text").mkdir()
    (tmp_path / TOKENIZER_FILE).write_bytes(tokenizer_json(hf))
    section = text_section(hf, TOKENIZER_FILE, 12)
    old = {k: v for k, v in section.items() if k not in ("padding_side", "truncation_side", "pad_type_id")}
    expected = hf(TEXTS, padding=True, truncation=True, max_length=12, return_tensors="np")
    feed = TextPreprocessor(tmp_path, old)(TEXTS)
    np.testing.assert_array_equal(feed["input_ids"], expected["input_ids"])
    np.testing.assert_array_equal(feed["attention_mask"], expected["attention_mask"])


# --- audio ---------------------------------------------------------------------------------------


def _espeak_wavs(folder: Path) -> list[bytes]:
    """Real speech from espeak-ng when the machine has it (English and Chinese)."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        return []
    wavs = []
    for i, (voice, words) in enumerate((("en", "seven"), ("en", "I think the answer is three hundred and twelve"),
                                        ("cmn", "七"))):
        path = folder / f"spoken{i}.wav"
        # A file, not --stdout: a pipe leaves the data size unset, which the WAV parser refuses.
        done = subprocess.run([exe, "-v", voice, "-w", str(path), words], capture_output=True, timeout=60)
        if done.returncode == 0 and path.is_file():
            wavs.append(path.read_bytes())
    return wavs


@pytest.fixture(scope="module")
def waves(tmp_path_factory) -> list[np.ndarray]:
    """Mono 16 kHz recordings of different lengths, decoded from WAV bytes by the runtime."""
    wavs = [A.encode_wav(synthesize_speechlike(seconds, RATE, seed=i), RATE)
            for i, seconds in enumerate([1.0, 2.3, 0.4])]
    wavs += _espeak_wavs(tmp_path_factory.mktemp("espeak"))
    loaded = [A.load_audio(wav, target_rate=RATE, max_seconds=None) for wav in wavs]
    assert len({w.size for w in loaded}) == len(loaded)
    return loaded


WAV2VEC2_CASES = [
    dict(do_normalize=normalize, return_attention_mask=mask, padding_value=padding)
    for normalize in (True, False) for mask in (False, True) for padding in (0.0, -0.25)
]


@pytest.mark.parametrize("kwargs", WAV2VEC2_CASES, ids=lambda k: "-".join(f"{a}={b}" for a, b in k.items()))
def test_waveform_feed_equals_wav2vec2_extractor(kwargs, waves):
    fe = tf.Wav2Vec2FeatureExtractor(**kwargs)
    section = audio_section(fe)
    assert section["normalize_includes_padding"] is (not kwargs["return_attention_mask"])

    expected = fe(waves, sampling_rate=RATE, padding=True, return_tensors="np")
    feed = A.prepare_audio_batch(waves, section)
    np.testing.assert_allclose(feed["input_values"], expected["input_values"], rtol=0, atol=FLOAT_ATOL)
    lengths = np.array([w.size for w in waves])
    np.testing.assert_array_equal(feed["audio_attention_mask"].sum(axis=1), lengths)
    if kwargs["return_attention_mask"]:
        np.testing.assert_array_equal(feed["audio_attention_mask"], expected["attention_mask"])

    # Truncated and padded to a fixed length (parity shapes): still transformers' numbers.
    expected = fe(waves, sampling_rate=RATE, padding="max_length", max_length=20000, truncation=True,
                  return_tensors="np")
    feed = A.prepare_audio_batch(waves, section, pad_to=20000)
    np.testing.assert_allclose(feed["input_values"], expected["input_values"], rtol=0, atol=FLOAT_ATOL)


@pytest.mark.parametrize("return_attention_mask", [False, True], ids=["no-mask", "mask"])
def test_reported_case_two_wavs_of_different_length(return_attention_mask, tmp_path):
    """The report: two WAVs in one request, Wav2Vec2FeatureExtractor(do_normalize=True)."""
    import wave

    fe = tf.Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=return_attention_mask)
    files = []
    for i, seconds in enumerate([1.2, 3.1]):
        path = tmp_path / f"answer{i}.wav"
        path.write_bytes(A.encode_wav(synthesize_speechlike(seconds, RATE, seed=40 + i), RATE))
        files.append(path)
    section = audio_section(fe)
    preprocess = Preprocessor(tmp_path, {"audio": section},
                              {"audio": {"required": True, "inputs": ["input_values", "audio_attention_mask"]}})
    feed = preprocess({"audio": [str(p) for p in files]})

    # The reference decodes the WAVs with the standard library, as a user's script would.
    decoded = []
    for path in files:
        with wave.open(str(path)) as w:
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        decoded.append(pcm.astype(np.float32) / 32768.0)
    expected = fe(decoded, sampling_rate=RATE, padding=True, return_tensors="np")
    np.testing.assert_allclose(feed["input_values"], expected["input_values"], rtol=0, atol=FLOAT_ATOL)
    assert preprocess.rows_independent is return_attention_mask

    # A bundle written before the key existed keeps normalising each recording alone.
    old = {k: v for k, v in section.items() if k != "normalize_includes_padding"}
    old_feed = Preprocessor(tmp_path, {"audio": old}, {"audio": {"required": True, "inputs": ["input_values"]}})(
        {"audio": [str(p) for p in files]})
    gap = float(np.abs(old_feed["input_values"] - expected["input_values"]).max())
    if return_attention_mask:
        assert gap <= FLOAT_ATOL
    else:
        assert gap > 0.1, "without a mask the padding shifts the shorter row's statistics"


WHISPER_CASES = [
    dict(feature_size=80),
    dict(feature_size=128),
    dict(feature_size=80, chunk_length=5, padding_value=-0.1),
]


@pytest.mark.parametrize("kwargs", WHISPER_CASES, ids=lambda k: "-".join(f"{a}={b}" for a, b in k.items()))
def test_whisper_feed_equals_whisper_extractor(kwargs, waves):
    fe = tf.WhisperFeatureExtractor(**kwargs)
    batch = [*waves, synthesize_speechlike(fe.chunk_length + 1.5, RATE, seed=7)]  # one is cut to the window
    section = audio_section(fe, inputs=("input_features", "frame_mask"))
    feed = A.prepare_audio_batch(batch, section)
    frames = fe.n_samples // fe.hop_length
    assert feed["input_features"].shape == (len(batch), fe.feature_size, frames)

    # transformers' numpy path on its own padded batch: bit-identical.
    padded = fe.pad({"input_features": [w[:, None] for w in batch]}, padding="max_length", max_length=fe.n_samples,
                    truncation=True, return_tensors="np")["input_features"][..., 0]
    reference = fe._np_extract_fbank_features(padded, "cpu")
    np.testing.assert_allclose(feed["input_features"], reference, rtol=0, atol=FLOAT_ATOL)

    # The public call (torch.stft in float32 when torch is installed) and its frame mask.
    expected = fe(batch, sampling_rate=RATE, return_attention_mask=True, return_tensors="np")
    np.testing.assert_allclose(feed["input_features"], expected["input_features"], rtol=0, atol=1e-4)
    np.testing.assert_array_equal(feed["frame_mask"], expected["attention_mask"])


@pytest.mark.parametrize("n_mels, hop", [(64, 160), (32, 256)])
def test_edgemm_log_mel_rows_equal_the_spectrogram_of_each_recording(n_mels, hop, waves):
    """edgemm's own front end: each row is transformers' spectrogram of that recording alone."""
    from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

    section = A.default_log_mel_preprocessing(n_mels=n_mels, hop_length=hop, max_seconds=30.0)
    feed = A.prepare_audio_batch(waves, section)
    filters = mel_filter_bank(num_frequency_bins=201, num_mel_filters=n_mels, min_frequency=0.0,
                              max_frequency=RATE / 2, sampling_rate=RATE, norm="slaney", mel_scale="slaney")
    frames = [1 + w.size // hop for w in waves]
    assert feed["input_features"].shape == (len(waves), n_mels, max(frames))
    np.testing.assert_array_equal(feed["audio_attention_mask"].sum(axis=1), frames)
    for row, wave, n in zip(feed["input_features"], waves, frames, strict=True):
        mel = spectrogram(wave, window_function(400, "hann"), 400, hop, power=2.0, mel_filters=filters, mel_floor=0.0)
        np.testing.assert_allclose(row[:, :n], np.log(mel + A.LOG_MEL_EPS), rtol=0, atol=1e-5)
        assert np.all(row[:, n:] == np.float32(A.LOG_MEL_PAD_VALUE))


# --- images: resize / crop / normalise at batch > 1 with different sizes ---------------------------


IMAGE_CASES = [
    ("ViTImageProcessor", {}),
    ("ViTImageProcessor", {"size": {"height": 32, "width": 48}, "resample": 3}),
    ("DeiTImageProcessor", {}),
    ("CLIPImageProcessor", {}),
    ("CLIPImageProcessor", {"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}}),
    ("SiglipImageProcessor", {}),
    ("ConvNextImageProcessor", {}),
    ("ConvNextImageProcessor", {"size": {"shortest_edge": 224}, "crop_pct": 0.875}),
    ("BitImageProcessor", {}),
]


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    """RGB pictures of different sizes and aspect ratios (a real photo when matplotlib has it)."""
    pictures = [Image.fromarray(synthesize_image(h, w, seed)) for seed, (h, w) in enumerate([(50, 41), (300, 257),
                                                                                               (97, 180), (600, 61)])]
    try:
        import matplotlib

        photo = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
        with Image.open(photo) as image:
            pictures.append(image.convert("RGB"))
    except (ImportError, OSError):
        pass
    return pictures


@pytest.mark.parametrize("case", IMAGE_CASES, ids=lambda c: c[0].replace("ImageProcessor", "") + ("-custom" if c[1] else ""))
def test_pixel_values_equal_the_image_processor(case, images):
    name, kwargs = case
    processor = getattr(tf, name)(**kwargs)
    expected = processor(images, return_tensors="np")["pixel_values"]
    actual = preprocess_images(images, image_preprocessing_from_hf(processor.to_dict()))
    assert actual.shape == expected.shape and actual.dtype == np.float32
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5)


# --- an exported wav2vec2 model: two WAVs of different lengths in one request ---------------------


def _wav2vec2_model(return_attention_mask: bool):
    from edgemm.models.config import EncoderConfig, FusionConfig, FusionSpec, HeadSpec
    from edgemm.models.model import FusionModel
    from edgemm.models.processors import Processors

    # Like the hub's checkpoints: wav2vec2-base (group norm) ships an extractor without a mask,
    # the lv60 family (layer norm) one with it.
    norm = "layer" if return_attention_mask else "group"
    cfg = tf.Wav2Vec2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                            conv_dim=(16, 16, 16, 16), conv_stride=(5, 4, 4, 4), conv_kernel=(10, 4, 4, 4),
                            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, feat_extract_norm=norm,
                            do_stable_layer_norm=return_attention_mask)
    config = FusionConfig(name=f"tiny-wav2vec2-{norm}", encoders={"audio": EncoderConfig.from_hf_config("audio", cfg)},
                          fusion=FusionSpec(type="concat", dim=32, heads=2),
                          head=HeadSpec(type="classification", hidden=32), labels=["zero", "one", "two"])
    torch.manual_seed(3)
    fe = tf.Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=return_attention_mask)
    return FusionModel(config, Processors(audio=fe)).eval(), fe


@pytest.fixture(scope="module", params=[False, True], ids=["no-mask", "mask"])
def wav2vec2_bundle(request, tmp_path_factory):
    from edgemm.export.pipeline import ExportOptions, export_bundle

    model, fe = _wav2vec2_model(request.param)
    root = tmp_path_factory.mktemp("wav2vec2")
    ckpt = model.save_pretrained(root / "ckpt")
    report = export_bundle(ckpt, root / "bundle", options=ExportOptions())
    assert report.parity["passed"], report.parity
    return ckpt, report.bundle, fe, request.param


def test_two_wavs_in_one_request_give_pytorch_logits(wav2vec2_bundle, tmp_path):
    from edgemm.models.model import FusionModel
    from edgemm.runtime import Predictor
    from edgemm.serve.batcher import Job, MicroBatcher
    from edgemm.serve.config import ServeConfig
    from edgemm.serve.host import ModelHost
    from edgemm.serve.inputs import DecodedInputs
    from edgemm.serve.metrics import Metrics

    ckpt, bundle, fe, with_mask = wav2vec2_bundle
    wavs = [A.encode_wav(synthesize_speechlike(seconds, RATE, seed=60 + i), RATE) for i, seconds in enumerate([0.7, 2.2])]
    waves = [A.load_audio(wav, target_rate=RATE, max_seconds=None) for wav in wavs]

    # The reference: transformers' extractor on the two recordings, then the PyTorch model.
    inputs = fe(waves, sampling_rate=RATE, padding=True, return_tensors="pt")
    lengths = torch.tensor([w.size for w in waves])
    sample_mask = (torch.arange(inputs["input_values"].shape[1])[None, :] < lengths[:, None]).long()
    if with_mask:
        assert torch.equal(inputs["attention_mask"].long(), sample_mask)
    # The fusion model pools over valid frames: it takes the sample mask as its own input.
    with torch.no_grad():
        logits = FusionModel.from_pretrained(ckpt)(input_values=inputs["input_values"],
                                                   audio_attention_mask=sample_mask)["logits"].numpy()

    with Predictor.load(bundle, device="cpu") as predictor:
        feed = predictor.preprocessor({"audio": wavs})
        edge = predictor.run(feed)["logits"]
        np.testing.assert_allclose(edge, logits, rtol=0, atol=1e-4)
        if not with_mask:  # what the runtime answered before: normalising before padding
            section = predictor.manifest.preprocessing["audio"]
            before = {k: v for k, v in section.items() if k != "normalize_includes_padding"}
            old = Preprocessor(bundle, {"audio": before}, predictor.manifest.modalities)({"audio": wavs})
            assert np.abs(predictor.run(old)["logits"] - logits).max() > 1e-3
        predictions = predictor.predict(audio=wavs)
        probabilities = torch.softmax(torch.from_numpy(logits), dim=-1).numpy()
        for prediction, row in zip(predictions, probabilities, strict=True):
            assert prediction.label == ["zero", "one", "two"][int(row.argmax())]
            assert [prediction.scores[label] for label in ("zero", "one", "two")] == pytest.approx(row, abs=1e-4)

        # A kiosk server must not let one person's recording change another's answer: with
        # normalisation over padded rows, requests that arrive together still run one by one.
        assert predictor.preprocessor.rows_independent is with_mask
        config = ServeConfig(bundle=bundle)
        metrics = Metrics()
        batcher = MicroBatcher(ModelHost(config, metrics), config, metrics)
        jobs = [Job(inputs=DecodedInputs(audio=(wave, RATE)), deadline=0.0, future=None) for wave in waves]
        served = batcher._run(predictor, jobs)
        alone = [predictor.predict(audio=[wav])[0] for wav in wavs]
        for got, want in zip(served, alone, strict=True):
            assert got.scores == pytest.approx(want.scores, abs=1e-6)
