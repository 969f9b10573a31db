"""Peers: what users would otherwise run, measured beside edgemm in the same process.

* ``torch-eager`` — the fine-tuned model in PyTorch (FP32; ``torch-eager-fp16`` on GPU): a
  FusionModel with its training-time transformers processors, or a Hugging Face checkpoint
  directory through its own ``*For…`` class and the processors saved beside it.
* ``torch-compile`` — the same model through ``torch.compile`` (``reduce-overhead``, i.e. CUDA
  graphs, on GPU; the default Inductor mode on CPU). Compilation happens in the warm-up and is
  reported separately.
* ``optimum`` — the Optimum pipeline a user would write: ``ORTModelForCustomTasks`` on the
  bundle's FP32 ONNX graph with transformers preprocessing.
* ``openvino`` — the plain OpenVINO runtime on the bundle's FP32 ONNX graph
  (``Core().read_model`` → ``compile_model("CPU", PERFORMANCE_HINT=LATENCY)``, OpenVINO's defaults
  otherwise: BF16 inference on a CPU with BF16) with transformers preprocessing.
* ``openvino-int8`` — the same after NNCF post-training INT8 quantization with default settings
  (``nncf.quantize(model, nncf.Dataset(feeds), model_type=TRANSFORMER)``), calibrated on the feeds
  edgemm's export calibrates on; quantization happens once, before timing, and is reported.

Build side: needs the ``export`` extra (torch, transformers, optimum); the OpenVINO peers need
transformers and the ``openvino`` extra (openvino, nncf).
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgemm._deps import require
from edgemm.bench.contenders import Contender
from edgemm.errors import InputPathError, UsageError
from edgemm.runtime.postprocess import softmax
from edgemm.runtime.sessions import session_options as ort_session_options

PEERS = ("torch-eager", "torch-eager-fp16", "torch-compile", "optimum", "openvino", "openvino-int8")
OPENVINO_PEERS = ("openvino", "openvino-int8")
OPENVINO_HINT = "pip install 'edgemm[openvino]'"


class HFPreprocessing:
    """transformers processors (as a user of transformers would preprocess), from a checkpoint."""

    def __init__(self, processors: Any, config: Any, input_names: list[str]):
        self.processors = processors
        self.config = config
        self.input_names = input_names

    def __call__(self, raw: dict[str, list[Any]], *, framework: str) -> dict[str, Any]:
        from PIL import Image

        out: dict[str, Any] = {}
        procs = self.processors
        n = max(len(v) for v in raw.values())
        if "text" in self.config.encoders:
            texts = [t or "" for t in raw.get("text", [""] * n)]
            tok = procs.tokenizer(texts, padding=True, truncation=True, max_length=self.config.text_max_length,
                                  return_tensors=framework)
            out["input_ids"], out["attention_mask"] = tok["input_ids"], tok["attention_mask"]
        if "image" in self.config.encoders:
            images = [Image.open(x).convert("RGB") if isinstance(x, (str, Path)) else Image.fromarray(np.asarray(x)).convert("RGB")
                      for x in raw["image"]]
            out["pixel_values"] = procs.image_processor(images, return_tensors=framework)["pixel_values"]
        if "audio" in self.config.encoders:
            out.update(self._audio(raw.get("audio", [None] * n), framework))
        return out

    def _audio(self, items: list[Any], framework: str) -> dict[str, Any]:
        from edgemm.runtime.preprocess.audio import load_audio, prepare_audio_batch

        front = self.processors.audio
        rate = front["sampling_rate"] if isinstance(front, dict) else front.sampling_rate
        waves = [np.zeros(rate // 4, np.float32) if x is None else load_audio(x, target_rate=rate, max_seconds=60.0)
                 for x in items]
        present = np.array([x is not None for x in items], dtype=np.float32)
        if isinstance(front, dict):
            feed = prepare_audio_batch(waves, front)
        else:
            # The extractor's own mask setting: forcing a mask changes Wav2Vec2's normalisation.
            feats = front(waves, sampling_rate=rate, padding=True, return_tensors="np")
            key = "input_features" if "input_features" in feats else "input_values"
            feed = {key: feats[key].astype(np.float32)}
            if "audio_attention_mask" in self.input_names:  # the fusion model's own pooling mask
                lengths = np.array([w.size for w in waves])
                feed["audio_attention_mask"] = (np.arange(feed[key].shape[-1]) < lengths[:, None]).astype(np.int64)
        if "audio_present" in self.input_names:
            feed["audio_present"] = present
        if framework == "pt":
            torch = require("torch")
            return {k: torch.from_numpy(v) for k, v in feed.items()}
        return feed


def is_transformers_checkpoint(checkpoint: Path) -> bool:
    """Whether ``checkpoint`` is a Hugging Face directory (``config.json`` naming its model class)
    rather than an edgemm FusionModel directory."""
    from edgemm.models.specs.hf import architecture

    return not (checkpoint / "fusion_config.json").is_file() and architecture(checkpoint) is not None


class TransformersPreprocessing:
    """The processors saved in a Hugging Face checkpoint directory, called as a transformers user
    calls them (``tokenizer(texts, padding=True, truncation=True)``, ``image_processor(images)``,
    ``feature_extractor(waves, sampling_rate=…, padding=True)``), keeping what the graph takes."""

    def __init__(self, checkpoint: Path, input_names: list[str], modalities: list[str]):
        import transformers as tf

        self.input_names = input_names
        self.tokenizer = tf.AutoTokenizer.from_pretrained(checkpoint, local_files_only=True) if "text" in modalities else None
        self.image_processor = (tf.AutoImageProcessor.from_pretrained(checkpoint, local_files_only=True)
                                if "image" in modalities else None)
        self.feature_extractor = (tf.AutoFeatureExtractor.from_pretrained(checkpoint, local_files_only=True)
                                  if "audio" in modalities else None)

    def __call__(self, raw: dict[str, list[Any]], *, framework: str) -> dict[str, Any]:
        from PIL import Image

        out: dict[str, Any] = {}
        if self.tokenizer is not None:
            out.update(self.tokenizer([t or "" for t in raw["text"]], padding=True, truncation=True,
                                      return_tensors=framework))
        if self.image_processor is not None:
            images = [Image.open(x).convert("RGB") if isinstance(x, (str, Path)) else Image.fromarray(np.asarray(x)).convert("RGB")
                      for x in raw["image"]]
            out.update(self.image_processor(images, return_tensors=framework))
        if self.feature_extractor is not None:
            from edgemm.runtime.preprocess.audio import load_audio

            rate = self.feature_extractor.sampling_rate
            waves = [load_audio(x, target_rate=rate, max_seconds=60.0) for x in raw["audio"]]
            out.update(self.feature_extractor(waves, sampling_rate=rate, padding=True, return_tensors=framework))
        return {k: v for k, v in out.items() if k in self.input_names}


def user_preprocessing(checkpoint: Path, manifest: Any) -> HFPreprocessing | TransformersPreprocessing:
    """The transformers processors a user of ``checkpoint`` would call before an ONNX / OpenVINO model.

    Args:
        checkpoint: A FusionModel directory (its saved processors) or a Hugging Face classifier directory.
        manifest: The bundle's manifest (graph input names, modalities).
    """
    if is_transformers_checkpoint(checkpoint):
        return TransformersPreprocessing(checkpoint, [t.name for t in manifest.inputs], list(manifest.modalities))
    from edgemm.models.config import FusionConfig
    from edgemm.models.processors import Processors

    config = FusionConfig.load(checkpoint)
    return HFPreprocessing(Processors.load(checkpoint, config), config, [t.name for t in manifest.inputs])


def _load_model(checkpoint: Path) -> Any:
    from edgemm.models.model import FusionModel

    if checkpoint is None or not Path(checkpoint).is_dir():
        raise InputPathError(f"Peers need the PyTorch checkpoint; {checkpoint} is not a directory.",
                             hint="Pass --checkpoint (the directory `edgemm train` wrote).")
    return FusionModel.from_pretrained(checkpoint).eval()


class _TransformersForward:
    """A Hugging Face ``*For…`` model called with keyword tensors, returning ``{output: tensor}``
    like a FusionModel (``logits`` is what every classification head returns)."""

    def __init__(self, model: Any, output: str):
        self.model, self.output = model, output

    def __call__(self, **inputs: Any) -> dict[str, Any]:
        result = self.model(**inputs)
        return {self.output: getattr(result, "logits", None) if self.output not in result else result[self.output]}


def _load_transformers(checkpoint: Path, bundle_manifest: Any) -> tuple[Any, Any, str]:
    """(model, preprocessing, output name) of a Hugging Face checkpoint directory."""
    import transformers as tf

    from edgemm.models.specs.hf import architecture

    name = architecture(checkpoint)
    model_class = getattr(tf, name, None)
    if model_class is None:
        raise UsageError(f"transformers has no class {name} for the peers.", hint="Run the bench with --peers none.")
    model = model_class.from_pretrained(checkpoint, local_files_only=True).eval()
    preprocess = TransformersPreprocessing(checkpoint, [t.name for t in bundle_manifest.inputs],
                                           list(bundle_manifest.modalities))
    return model, preprocess, bundle_manifest.primary_output


class TorchEager(Contender):
    """The FusionModel in PyTorch eager mode."""

    kind = "peer"

    def __init__(self, checkpoint: Path, *, device: str = "cpu", threads: int | None = None, fp16: bool = False,
                 compile_mode: str | None = None, bundle: Path | None = None):
        torch = require("torch", purpose="PyTorch peers")
        if threads:
            torch.set_num_threads(threads)
        if fp16 and device != "cuda":
            raise UsageError("torch-eager-fp16 needs a CUDA device.", hint="Use torch-eager on the CPU.")
        start = time.perf_counter()
        self.torch = torch
        if bundle is not None and is_transformers_checkpoint(Path(checkpoint)):
            from edgemm.bundle.verify import verify_bundle

            model, self.preprocess, self.output = _load_transformers(Path(checkpoint), verify_bundle(bundle))
            self.net = model.to(device)
            if fp16:
                self.net = self.net.half()
            self.forward = _TransformersForward(self.net, self.output)
        else:
            self.net = _load_model(checkpoint).to(device)
            if fp16:
                self.net = self.net.half()
            self.preprocess = HFPreprocessing(self.net.processors, self.net.config, self.net.input_names())
            self.output = self.net.output_names()[0]
            self.forward = self.net
        self.dtype = torch.float16 if fp16 else torch.float32
        self.device = device
        self.precision = "fp16" if fp16 else "fp32"
        self.name = "torch-eager" + ("-fp16" if fp16 else "")
        self.info: dict[str, Any] = {"runtime": f"torch {torch.__version__} eager", "threads": torch.get_num_threads()}
        if compile_mode is not None:
            compiled = torch.compile(self.net, mode=compile_mode)
            self.forward = (_TransformersForward(compiled, self.output) if isinstance(self.forward, _TransformersForward)
                            else compiled)
            self.name = "torch-compile"
            self.info["runtime"] = f"torch {torch.__version__} compile(mode={compile_mode})"
        self.info["load_s"] = time.perf_counter() - start

    def _to_device(self, tensors: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for k, v in tensors.items():
            v = v.to(self.device)
            out[k] = v.to(self.dtype) if v.is_floating_point() else v
        return out

    def _sync(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def e2e(self, raw: dict[str, list[Any]]) -> np.ndarray:
        with self.torch.inference_mode():
            logits = self.forward(**self._to_device(self.preprocess(raw, framework="pt")))[self.output]
            result = softmax(logits.float().cpu().numpy())
        return result

    def native(self, feed: dict[str, np.ndarray]) -> dict[str, Any]:
        return self._to_device({k: self.torch.from_numpy(np.ascontiguousarray(v)) for k, v in feed.items()})

    def model(self, native: dict[str, Any]) -> Any:
        with self.torch.inference_mode():
            out = self.forward(**native)[self.output]
        self._sync()
        return out

    def logits(self, native: dict[str, Any]) -> np.ndarray:
        return np.asarray(self.model(native).float().cpu().numpy(), dtype=np.float64)

    def close(self) -> None:
        del self.net, self.forward


class OptimumPipeline(Contender):
    """``optimum.onnxruntime.ORTModelForCustomTasks`` on the bundle's FP32 graph + transformers processors."""

    kind = "peer"
    name = "optimum"
    precision = "fp32"

    def __init__(self, bundle: Path, checkpoint: Path, *, device: str = "cpu", threads: int | None = None):
        require("optimum.onnxruntime", extra="export", purpose="the Optimum peer")
        from optimum.onnxruntime import ORTModelForCustomTasks
        from transformers import PretrainedConfig

        from edgemm.bundle.verify import verify_bundle

        start = time.perf_counter()
        manifest = verify_bundle(bundle)
        fp32 = manifest.artifact("fp32")
        self._dir = Path(tempfile.mkdtemp(prefix="edgemm-optimum-"))
        for rel in fp32.files:
            shutil.copyfile(bundle / rel, self._dir / Path(rel).name)
        PretrainedConfig().save_pretrained(self._dir)
        provider = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
        session_options = ort_session_options(threads=threads) if threads else None
        self.ort_model = ORTModelForCustomTasks.from_pretrained(
            self._dir, file_name=Path(fp32.path).name, provider=provider, session_options=session_options,
            local_files_only=True)
        self.preprocess = user_preprocessing(Path(checkpoint), manifest)
        self.output = manifest.primary_output
        self.device = device
        self.info = {"runtime": "optimum ORTModelForCustomTasks", "provider": provider,
                     "load_s": time.perf_counter() - start}

    def e2e(self, raw: dict[str, list[Any]]) -> np.ndarray:
        inputs = self.preprocess(raw, framework="np")
        logits = getattr(self.ort_model(**inputs), self.output)
        return softmax(np.asarray(logits))

    def native(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return feed

    def model(self, native: dict[str, np.ndarray]) -> Any:
        return self.ort_model(**native)

    def logits(self, native: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(getattr(self.ort_model(**native), self.output), dtype=np.float64)

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)


def calibration_feeds(bundle: Path, manifest: Any, data: str | None = None) -> tuple[list[dict[str, np.ndarray]], str]:
    """The feeds edgemm's export calibrated INT8 on, rebuilt from the bundle: the dataset's
    ``calibration`` split, as many records as the gate recorded, through the bundle's preprocessing
    in fixed-shape batches of 8 (:func:`edgemm.export.pipeline._variants`). Without such data (a
    bundle exported without held-out data): the golden set's feed.

    Args:
        bundle / manifest: The bundle.
        data: Dataset spec (default: the one the export's gate used, else the training data).

    Returns:
        (feeds, a short description of where they came from).
    """
    from edgemm.data.evalset import EvalSet
    from edgemm.runtime.preprocess.pipeline import Preprocessor

    gate = manifest.validation.get("gate") or {}
    spec = data or (gate.get("eval") or {}).get("data") or manifest.source.get("training", {}).get("data")
    if spec:
        from edgemm.data.resolve import resolve_dataset

        dataset = resolve_dataset(spec)
        records = dataset.split("calibration")
        if records:
            count = int((gate.get("calibration") or {}).get("records") or 128)
            records = records[:count]
            required = {m for m in manifest.modalities if manifest.modality(m).required}
            modalities = [m for m in manifest.modalities if m in dataset.modalities or m not in required]
            preprocessor = Preprocessor(bundle, manifest.preprocessing, manifest.modalities)
            feeds = EvalSet.build(records, manifest.labels, preprocessor, modalities, {"data": spec},
                                  batch_size=8, fixed_shapes=True).feeds
            return feeds, f"{spec} calibration split, {len(records)} records (as edgemm's export)"
    from edgemm.runtime.golden import load_golden

    return [load_golden(bundle, manifest).feed], "golden set (the bundle records no calibration data)"


class OpenVinoPeer(Contender):
    """Plain OpenVINO on the bundle's FP32 ONNX graph (``int8``: after NNCF post-training INT8),
    with the checkpoint's transformers processors end to end — what an x86 user would write."""

    kind = "peer"

    def __init__(self, bundle: Path, checkpoint: Path, *, int8: bool = False, threads: int | None = None,
                 data: str | None = None):
        ov = require("openvino", extra="openvino", purpose=f"the OpenVINO peer ({OPENVINO_HINT})")
        nncf = require("nncf", extra="openvino", purpose="the OpenVINO + NNCF INT8 peer") if int8 else None
        from edgemm.bundle.verify import verify_bundle

        start = time.perf_counter()
        manifest = verify_bundle(bundle, check_hashes=False)  # run_bench verified it; a user's script would not
        core = ov.Core()
        model = core.read_model(str(bundle / manifest.artifact("fp32").path))
        self.name = "openvino-int8" if int8 else "openvino"
        self.precision = "int8" if int8 else "fp32"
        self.device = "cpu"
        self.info: dict[str, Any] = {"runtime": f"openvino {ov.get_version()}"}
        if nncf is not None:
            feeds, source = calibration_feeds(bundle, manifest, data)
            t = time.perf_counter()
            with contextlib.redirect_stdout(sys.stderr):  # NNCF's progress bars; stdout carries --json
                model = nncf.quantize(model, nncf.Dataset(feeds), model_type=nncf.ModelType.TRANSFORMER)
            self.info.update({"quantization": f"nncf {nncf.__version__} quantize (default settings)",
                              "calibration": source, "quantize_s": time.perf_counter() - t})
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = core.compile_model(model, "CPU", config)
        self.output = manifest.primary_output
        self._inputs = {port.get_any_name() for port in self.compiled.inputs}
        self.preprocess = user_preprocessing(Path(checkpoint), manifest)
        precision = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        self.info.update({"inference_precision": getattr(precision, "to_string", precision.__str__)(),
                          "threads": int(self.compiled.get_property("INFERENCE_NUM_THREADS")),
                          "load_s": time.perf_counter() - start})

    def _infer(self, feed: dict[str, Any]) -> Any:
        return self.compiled({k: v for k, v in feed.items() if k in self._inputs})

    def e2e(self, raw: dict[str, list[Any]]) -> np.ndarray:
        return softmax(np.asarray(self._infer(self.preprocess(raw, framework="np"))[self.output]))

    def native(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return feed

    def model(self, native: dict[str, np.ndarray]) -> Any:
        return self._infer(native)

    def logits(self, native: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(self._infer(native)[self.output], dtype=np.float64)

    def close(self) -> None:
        del self.compiled


def make_peer(name: str, *, bundle: Path, checkpoint: Path, device: str, threads: int | None,
              data: str | None = None) -> Any:
    """Instantiate one peer by name (``data``: the dataset the OpenVINO INT8 peer calibrates on)."""
    if name == "torch-eager":
        return TorchEager(checkpoint, device=device, threads=threads, bundle=bundle)
    if name == "torch-eager-fp16":
        return TorchEager(checkpoint, device=device, threads=threads, fp16=True, bundle=bundle)
    if name == "torch-compile":
        return TorchEager(checkpoint, device=device, threads=threads, bundle=bundle,
                          compile_mode="reduce-overhead" if device == "cuda" else "default")
    if name == "optimum":
        return OptimumPipeline(bundle, checkpoint, device=device, threads=threads)
    if name in OPENVINO_PEERS:
        if device != "cpu":
            raise UsageError(f"The {name} peer runs on the CPU.", hint="Use --device cpu, or leave it out of --peers.")
        return OpenVinoPeer(bundle, checkpoint, int8=name == "openvino-int8", threads=threads, data=data)
    raise UsageError(f"Unknown peer {name!r}.", hint=f"Peers: {', '.join(PEERS)}.")


def cold_start_child(kind: str, bundle: Path, checkpoint: Path, device: str, threads: int | None,
                     request: dict[str, Any]) -> tuple[float, float, Any]:
    """Child side of a peer's cold start.

    Args:
        kind: ``torch-eager``, ``optimum`` or ``openvino``.
        bundle / checkpoint: What the peer loads.
        device / threads: Where it runs.
        request: The first request, one raw item per modality.

    Returns:
        (import seconds, load seconds, a callable that makes the first prediction).
    """
    import importlib

    modules = {"torch-eager": ("torch", "transformers"), "openvino": ("openvino", "transformers")}.get(
        kind, ("torch", "transformers", "optimum.onnxruntime"))
    t0 = time.perf_counter()
    for module in modules:
        importlib.import_module(module)  # the imports are part of what is measured
    t1 = time.perf_counter()
    peer: Any
    if kind == "torch-eager":
        peer = TorchEager(checkpoint, device=device, threads=threads, bundle=bundle)
    elif kind == "openvino":
        peer = OpenVinoPeer(bundle, checkpoint, threads=threads)
    else:
        peer = OptimumPipeline(bundle, checkpoint, device=device, threads=threads)
    t2 = time.perf_counter()
    batch = {m: [v] for m, v in request.items()}
    return t1 - t0, t2 - t1, lambda: peer.e2e(batch)
