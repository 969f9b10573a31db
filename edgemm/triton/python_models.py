"""Triton Python-backend models built from edgemm's torch-free runtime.

Each generated ``model.py`` in a repository is a three-line shim::

    import triton_python_backend_utils as pb_utils
    from edgemm.triton.python_models import model_class
    TritonPythonModel = model_class("preprocess", pb_utils)

so the logic lives here, versioned with edgemm and unit-testable with a fake ``pb_utils``. The
bundle files a model needs are copied next to it (``<version>/bundle/``); at ``initialize`` it
parses ``edgemm.json`` strictly and hash-checks exactly the files it reads, as the Predictor does.

Roles:

* ``preprocess``: raw text (UTF-8) / image bytes / WAV bytes → the model feed
  (:class:`~edgemm.runtime.preprocess.pipeline.Preprocessor`). Text is padded to a fixed length
  so that requests have equal shapes and Triton's dynamic batcher can batch them downstream.
* ``model``: the ONNX artifact on ONNX Runtime (:class:`~edgemm.runtime.backends.onnxruntime.OrtBackend`)
  for Triton builds without the onnxruntime backend; requests of equal shape run as one batch.
* ``postprocess``: model outputs → ``LABEL``, ``SCORE`` and ``PREDICTION`` (the JSON of
  :meth:`~edgemm.runtime.postprocess.Prediction.to_dict`, as ``edgemm predict --json`` prints it).
* ``similarity``: image–text similarity bundles, whose candidate texts have their own axis and so
  cannot share Triton's batch axis: one ``IMAGE`` and its own ``TEXTS`` per request → ``SCORES``
  (one per candidate, in order), ``LABEL`` and ``PREDICTION``, through the
  :class:`~edgemm.runtime.predictor.Predictor` (preprocessing, artifact, postprocessing in one model).

An :class:`~edgemm.errors.EdgemmError` in one request becomes that request's error response
(``E_CODE: message Hint: ...``); other requests of the batch are unaffected.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from edgemm.bundle.manifest import Manifest
from edgemm.bundle.verify import read_manifest, verify_hashes
from edgemm.errors import EdgemmError, InvalidInputError

log = logging.getLogger("edgemm.triton")

ROLES = ("preprocess", "model", "postprocess", "similarity", "entities")
BUNDLE_DIR = "bundle"
# Raw-input tensor names of the preprocess model (and the ensemble), per modality.
RAW_INPUTS = {"text": "TEXT", "image": "IMAGE", "audio": "AUDIO"}
# Outputs of the postprocess model (and the ensemble).
PREDICTION, LABEL, SCORE = "PREDICTION", "LABEL", "SCORE"
# Inputs and per-candidate output of the similarity model.
CANDIDATES, SCORES = "TEXTS", "SCORES"


def model_class(role: str, pb_utils: ModuleType) -> type:
    """The ``TritonPythonModel`` class for ``role``, bound to Triton's ``pb_utils`` module.

    Args:
        role: ``"preprocess"``, ``"model"``, ``"postprocess"``, ``"similarity"`` or ``"entities"``.
        pb_utils: ``triton_python_backend_utils`` (or a stand-in in tests).
    """
    classes = {"preprocess": _Preprocess, "model": _OnnxModel, "postprocess": _Postprocess, "similarity": _Similarity,
               "entities": _Entities}
    if role not in classes:
        raise ValueError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    return type("TritonPythonModel", (classes[role],), {"pb_utils": pb_utils})


def _parameters(config: dict[str, Any]) -> dict[str, str]:
    return {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}


class _Base:
    """Shared ``initialize`` / error handling of the three roles."""

    pb_utils: ModuleType

    def initialize(self, args: dict[str, str]) -> None:
        self.model_config = json.loads(args["model_config"])
        self.params = _parameters(self.model_config)
        self.root = Path(args["model_repository"]) / str(args["model_version"]) / BUNDLE_DIR
        self.manifest: Manifest = read_manifest(self.root)
        self._setup(args)

    def _setup(self, args: dict[str, str]) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def finalize(self) -> None:
        """Nothing to release by default."""

    def _error(self, exc: Exception) -> Any:
        pb = self.pb_utils
        if isinstance(exc, EdgemmError):
            message = f"{exc.code}: {exc.message}" + (f" Hint: {exc.hint}" if exc.hint else "")
            code = getattr(pb.TritonError, "INVALID_ARG", None) if isinstance(exc, InvalidInputError) else None
        else:
            log.exception("edgemm Triton model failed")
            message, code = f"E_INTERNAL: {type(exc).__name__}: {exc}", None
        error = pb.TritonError(message, code) if code is not None else pb.TritonError(message)
        return pb.InferenceResponse(output_tensors=[], error=error)

    def _input(self, request: Any, name: str) -> np.ndarray | None:
        tensor = self.pb_utils.get_input_tensor_by_name(request, name)
        return None if tensor is None else tensor.as_numpy()


    def _inputs(self, request: Any) -> dict[str, np.ndarray]:
        """Every input named in ``self.inputs``; a missing one is that request's error."""
        arrays = {}
        for name in self.inputs:
            array = self._input(request, name)
            if array is None:
                raise InvalidInputError(f"The request has no input {name!r}.")
            arrays[name] = array
        return arrays


class _PerRequest(_Base):
    """Roles that answer each request on its own (``_one``), so each gets its own error."""

    def _one(self, request: Any) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            try:
                responses.append(self._one(request))
            except Exception as exc:
                responses.append(self._error(exc))
        return responses


class _Preprocess(_PerRequest):
    """Raw bytes → model feed, one request at a time (each request gets its own error)."""

    def _setup(self, args: dict[str, str]) -> None:
        from edgemm.runtime.preprocess.pipeline import Preprocessor

        verify_hashes(self.root, self.manifest, self.manifest.asset_paths())
        self.preprocessor = Preprocessor(self.root, self.manifest.preprocessing, self.manifest.modalities)
        pad = self.params.get("text_pad_to", "")
        self.text_pad_to = int(pad) if pad else None
        self.outputs = [o["name"] for o in self.model_config["output"]]

    def _one(self, request: Any) -> Any:
        batch: dict[str, list[Any]] = {}
        rows = None
        for modality in self.manifest.modalities:
            array = self._input(request, RAW_INPUTS[modality])
            if array is None:
                continue
            items = [_item(modality, v) for v in array.reshape(array.shape[0], -1)[:, 0]]
            batch[modality] = items
            rows = len(items)
        if rows is None:
            raise InvalidInputError("The request carries no input.",
                                    hint=f"Send one of: {', '.join(RAW_INPUTS[m] for m in self.manifest.modalities)}.")
        for modality in self.manifest.modalities:
            batch.setdefault(modality, [None] * rows)
        feed = self.preprocessor(batch, text_pad_to=self.text_pad_to)
        tensors = [self.pb_utils.Tensor(name, np.ascontiguousarray(feed[name])) for name in self.outputs]
        return self.pb_utils.InferenceResponse(output_tensors=tensors)


def _item(modality: str, value: Any) -> Any:
    """One raw item from a BYTES tensor; an empty element means "absent" (optional modalities)."""
    data = value if isinstance(value, bytes) else bytes(value) if isinstance(value, (bytearray, memoryview)) else value
    if isinstance(data, bytes) and not data:
        return None
    if modality == "text":
        if not isinstance(data, bytes):
            return str(data)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInputError("TEXT is not valid UTF-8.", hint="Send UTF-8 encoded text.") from exc
    return data


class _OnnxModel(_Base):
    """The bundle's ONNX artifact on ONNX Runtime inside the Python backend."""

    def _setup(self, args: dict[str, str]) -> None:
        from edgemm.runtime.backends.onnxruntime import OrtBackend
        from edgemm.runtime.sessions import available_devices

        artifact = self.manifest.artifact(self.params["artifact"])
        verify_hashes(self.root, self.manifest, artifact.files)
        device = self.params.get("device", "cpu")
        if device == "auto":  # the instance group is KIND_CPU (the Python stub); ONNX Runtime takes the GPU itself
            device = "cuda" if "cuda" in available_devices() else "cpu"
        threads = int(self.params["threads"]) if self.params.get("threads") else None
        self.backend = OrtBackend(self.root / artifact.path, self.manifest.inputs, self.manifest.outputs,
                                  device=device, device_id=int(args.get("model_instance_device_id", 0) or 0),
                                  threads=threads, allow_cpu_fallback=True)
        self.backend.activate()
        self.max_batch = max(1, int(self.model_config.get("max_batch_size", 0)) or 1)
        self.inputs = [t.name for t in self.manifest.inputs]
        self.outputs = [o["name"] for o in self.model_config["output"]]
        log.info("edgemm model %s: artifact %s on %s", args.get("model_name"), artifact.name, self.backend.device)

    def finalize(self) -> None:
        self.backend.deactivate()

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        feeds: list[tuple[int, dict[str, np.ndarray]]] = []
        for i, request in enumerate(requests):
            try:
                feeds.append((i, self._inputs(request)))
            except Exception as exc:
                responses[i] = self._error(exc)
        # Requests of equal shapes (and only those) are concatenated into one batch: that is
        # where Triton's dynamic batching pays off.
        groups: dict[tuple, list[tuple[int, dict[str, np.ndarray]]]] = {}
        for index, feed in feeds:
            key = tuple((n, a.dtype.str, a.shape[1:]) for n, a in feed.items())
            groups.setdefault(key, []).append((index, feed))
        for members in groups.values():
            start = 0
            while start < len(members):
                chunk, rows = [], 0
                while start < len(members):
                    n = next(iter(members[start][1].values())).shape[0]
                    if chunk and rows + n > self.max_batch:
                        break
                    chunk.append(members[start])
                    rows += n
                    start += 1
                self._run_chunk(chunk, responses)
        return responses

    def _run_chunk(self, chunk: list[tuple[int, dict[str, np.ndarray]]], responses: list[Any]) -> None:
        try:
            if len(chunk) == 1:
                feed = chunk[0][1]
            else:
                feed = {n: np.concatenate([f[n] for _, f in chunk], axis=0) for n in self.inputs}
            outputs = self.backend.run(feed)
        except Exception as exc:
            for index, _ in chunk:
                responses[index] = self._error(exc)
            return
        offset = 0
        for index, feed in chunk:
            n = next(iter(feed.values())).shape[0]
            tensors = [self.pb_utils.Tensor(name, np.ascontiguousarray(outputs[name][offset:offset + n]))
                       for name in self.outputs]
            responses[index] = self.pb_utils.InferenceResponse(output_tensors=tensors)
            offset += n


class _Postprocess(_Base):
    """Model outputs → label, score and the prediction JSON."""

    def _setup(self, args: dict[str, str]) -> None:
        self.inputs = [i["name"] for i in self.model_config["input"]]

    def execute(self, requests: list[Any]) -> list[Any]:
        from edgemm.runtime.postprocess import postprocess

        responses = []
        for request in requests:
            try:
                outputs = self._inputs(request)
                predictions = postprocess(outputs, self.manifest)
                labels = np.array([[(p.label or "").encode("utf-8")] for p in predictions], dtype=object)
                scores = np.array([[np.nan if p.score is None else p.score] for p in predictions], dtype=np.float32)
                docs = np.array([[json.dumps(p.to_dict(), ensure_ascii=False).encode("utf-8")] for p in predictions],
                                dtype=object)
                responses.append(self.pb_utils.InferenceResponse(output_tensors=[
                    self.pb_utils.Tensor(PREDICTION, docs),
                    self.pb_utils.Tensor(LABEL, labels),
                    self.pb_utils.Tensor(SCORE, scores),
                ]))
            except Exception as exc:
                responses.append(self._error(exc))
        return responses


class _WithPredictor(_PerRequest):
    """Roles that answer each request with edgemm's Predictor on the whole bundle."""

    def _setup(self, args: dict[str, str]) -> None:
        from edgemm.runtime.predictor import Predictor

        device = self.params.get("device", "cpu")  # "auto": the Predictor's chain (CUDA when there is one)
        threads = int(self.params["threads"]) if self.params.get("threads") else None
        self.predictor = Predictor.load(self.root, device=device, artifact=self.params.get("artifact") or None,
                                        threads=threads)
        log.info("edgemm %s model %s: artifact %s on %s", type(self).__mro__[1].__name__.strip("_").lower(),
                 args.get("model_name"), self.predictor.artifact.name, self.predictor.device)

    def finalize(self) -> None:
        self.predictor.close()


class _Entities(_WithPredictor):
    """Token classification: one text per request → its entities (words with character offsets)."""

    def _one(self, request: Any) -> Any:
        array = self._input(request, RAW_INPUTS["text"])
        texts = [] if array is None else [_item("text", v) for v in array.reshape(-1)]
        if len(texts) != 1 or texts[0] is None:
            raise InvalidInputError(f"{RAW_INPUTS['text']} must hold exactly one non-empty text; "
                                    f"it holds {len(texts)} element(s).", hint="Send one request per text.")
        prediction = self.predictor.predict(text=texts[0])
        document = json.dumps(prediction.to_dict(), ensure_ascii=False).encode("utf-8")
        return self.pb_utils.InferenceResponse(output_tensors=[
            self.pb_utils.Tensor(PREDICTION, np.array([document], dtype=object))])


class _Similarity(_WithPredictor):
    """Image–text similarity: one image and its candidate texts per request, through the Predictor."""

    def _one(self, request: Any) -> Any:
        image, texts = self._input(request, RAW_INPUTS["image"]), self._input(request, CANDIDATES)
        if image is None or texts is None:
            raise InvalidInputError("A similarity request needs IMAGE and TEXTS.",
                                    hint="Send one image (IMAGE, BYTES [1]) and its candidate texts (TEXTS, BYTES [n]).")
        images = [_item("image", v) for v in image.reshape(-1)]
        if len(images) != 1 or images[0] is None:
            raise InvalidInputError(f"IMAGE must hold exactly one image; it holds {len(images)} element(s).",
                                    hint="Send one request per image.")
        candidates = [_item("text", v) for v in texts.reshape(-1)]
        if not candidates or any(c is None for c in candidates):
            raise InvalidInputError("TEXTS must hold at least one candidate, and no empty one.")
        prediction = self.predictor.predict(text=candidates, image=images[0])
        scores = np.array([prediction.values[c] for c in candidates], dtype=np.float32)
        best = candidates[int(np.argmax(scores))]
        document = json.dumps(prediction.to_dict(), ensure_ascii=False).encode("utf-8")
        return self.pb_utils.InferenceResponse(output_tensors=[
            self.pb_utils.Tensor(PREDICTION, np.array([document], dtype=object)),
            self.pb_utils.Tensor(LABEL, np.array([best.encode("utf-8")], dtype=object)),
            self.pb_utils.Tensor(SCORES, scores),
        ])
