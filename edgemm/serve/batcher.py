"""Dynamic micro-batching over a bounded queue with per-request deadlines.

Requests wait in a bounded queue (full → 503 with Retry-After, never unbounded waiting). One
worker takes the first waiting request, gathers more for at most ``max_delay_ms`` or until
``max_batch``, drops those whose client went away or whose deadline passed, and runs the rest
as one model call on a single inference thread (ONNX Runtime parallelises inside the call).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from edgemm.errors import EdgemmError, RuntimeFailure
from edgemm.runtime.postprocess import Prediction
from edgemm.runtime.predictor import Predictor
from edgemm.serve.config import ServeConfig
from edgemm.serve.host import ModelHost, poisons_gpu
from edgemm.serve.httperrors import ApiError, api_error, from_edgemm
from edgemm.serve.inputs import DecodedInputs
from edgemm.serve.metrics import Metrics

log = logging.getLogger("edgemm.serve")


@dataclass
class Job:
    """One request waiting for, or in, a batch.

    Attributes:
        inputs: The decoded request.
        deadline: ``time.monotonic()`` after which it is refused instead of run.
        future: Resolved with its :class:`Prediction`, or failed with an :class:`ApiError`.
        cancelled: The client went away; the job is dropped before its model call.
        batch_size / artifact: The model call that answered it (reported to the client).
    """

    inputs: DecodedInputs
    deadline: float
    future: asyncio.Future = field(repr=False)
    cancelled: bool = False
    batch_size: int = 0
    artifact: str = ""

    @property
    def batchable(self) -> bool:
        """Whether it may share a model call (not a similarity request with candidate texts)."""
        # Candidate lists of similarity models sit on their own axis: such requests run alone.
        return not isinstance(self.inputs.text, list)


class MicroBatcher:
    """See the module docstring.

    Args:
        host: Supplies the serving predictor (read once per batch, so swaps are clean).
        config: Batch size, delay, queue size and deadline.
        metrics: Batch sizes and cancellations are recorded here.
        on_fatal: Called on the event loop with a reason once the GPU context is poisoned and
            the failing batch is answered (the server then exits with status 70).
    """

    def __init__(self, host: ModelHost, config: ServeConfig, metrics: Metrics,
                 on_fatal: Callable[[str], None] | None = None):
        self.host = host
        self.config = config
        self.metrics = metrics
        self.on_fatal = on_fatal
        # Set (on the inference thread) when the GPU context is poisoned: no model call follows.
        self.fatal: str | None = None
        self.queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=config.max_queue)
        self.in_flight = 0
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="edgemm-infer")
        self._task: asyncio.Task | None = None

    @property
    def depth(self) -> int:
        """Requests waiting or running."""
        return self.queue.qsize() + self.in_flight

    def start(self) -> None:
        """Start the batching loop on the running event loop (the app's lifespan calls it)."""
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="edgemm-batcher")

    async def stop(self) -> None:
        """Stop the loop and the inference thread; a model call in progress is not waited for."""
        if self._task is not None:
            self._task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def submit(self, inputs: DecodedInputs) -> Job:
        """Queue one request.

        Args:
            inputs: The decoded, checked request.

        Returns:
            Its job; await ``job.future`` for the answer.

        Raises:
            ApiError: ``overloaded`` (503 + Retry-After) when the queue is full.
        """
        loop = asyncio.get_running_loop()
        job = Job(inputs, time.monotonic() + self.config.deadline_s, loop.create_future())
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            raise api_error("overloaded", f"The kiosk is busy ({self.config.max_queue} requests waiting).",
                            hint="Try again in a moment.", headers={"Retry-After": "1"}) from None
        return job

    async def _gather(self) -> list[Job]:
        jobs = [await self.queue.get()]
        until = time.monotonic() + self.config.max_delay_ms / 1000.0
        while len(jobs) < self.config.max_batch:
            try:
                jobs.append(self.queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = until - time.monotonic()
            if remaining <= 0:
                break
            try:
                jobs.append(await asyncio.wait_for(self.queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return jobs

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._gather()
            now = time.monotonic()
            live: list[Job] = []
            for job in jobs:
                if job.cancelled or job.future.done():
                    continue
                if now > job.deadline:
                    job.future.set_exception(api_error(
                        "deadline_exceeded", f"The request waited longer than {self.config.deadline_s:g} s.",
                        hint="The kiosk is overloaded; try again.", headers={"Retry-After": "1"}))
                    continue
                live.append(job)
            if not live:
                continue
            groups = [[j for j in live if j.batchable]] + [[j] for j in live if not j.batchable]
            for group in (g for g in groups if g):
                cur = self.host.current
                if cur is None or self.fatal is not None:
                    for job in group:
                        job.future.set_exception(api_error(
                            "not_ready", "No model is loaded." if cur is None else f"The model stopped: {self.fatal}",
                            headers={"Retry-After": "5"}))
                    continue
                self.in_flight += len(group)
                try:
                    results = await loop.run_in_executor(self._executor, self._run, cur.predictor, group)
                finally:
                    self.in_flight -= len(group)
                self.metrics.observe_batch(len(group))
                for job, result in zip(group, results):
                    job.batch_size, job.artifact = len(group), cur.predictor.artifact.name
                    if job.future.done():
                        continue
                    if isinstance(result, BaseException):
                        job.future.set_exception(result)
                    else:
                        job.future.set_result(result)
                if self.fatal is not None:
                    # Only now, with this batch's 500s on their way, may the server begin to exit.
                    self.host.withdraw(self.fatal)
                    if self.on_fatal is not None:
                        self.on_fatal(self.fatal)

    def _run(self, predictor: Predictor, jobs: list[Job]) -> list[Prediction | ApiError]:
        """One model call for ``jobs``; on a failure, retry one by one to isolate the request at fault.

        An engine failure that poisoned the CUDA context sets :attr:`fatal`: no later call on that
        context can succeed, so the loop answers this batch and then ends the process
        (``on_fatal``); the supervisor starts a fresh one.
        """
        if len(jobs) > 1 and not predictor.preprocessor.rows_independent:
            # Each request must get the answer it gets alone (see Preprocessor.rows_independent).
            return self._one_by_one(predictor, jobs)
        try:
            return _predict(predictor, [j.inputs for j in jobs])
        except RuntimeFailure as exc:  # the engine failed; its own error is the cause
            engine_error = exc.__cause__ or exc
            if poisons_gpu(engine_error, predictor.device):
                log.critical("the CUDA context is poisoned (%s): %s", type(engine_error).__name__, engine_error)
                self.fatal = f"the GPU context is poisoned ({type(engine_error).__name__})"
                return [_internal() for _ in jobs]
            if len(jobs) > 1:
                return self._one_by_one(predictor, jobs)
            log.error("the model failed on a request: %s", exc.message)
            return [_internal()]
        except EdgemmError as exc:  # the input was refused
            if len(jobs) == 1:
                return [from_edgemm(exc)]
            return self._one_by_one(predictor, jobs)
        except Exception:  # a bug in edgemm: keep its traceback in the log, answer 500
            log.exception("model call failed for a batch of %d", len(jobs))
            return [_internal() for _ in jobs]

    def _one_by_one(self, predictor: Predictor, jobs: list[Job]) -> list[Prediction | ApiError]:
        """Run each job alone; once the GPU context is poisoned, answer the rest without a model call."""
        return [self._run(predictor, [job])[0] if self.fatal is None else _internal() for job in jobs]


def _internal() -> ApiError:
    return api_error("internal", "The model failed on this request.", hint="The kiosk log has the details.")


def _predict(predictor: Predictor, batch: list[DecodedInputs]) -> list[Prediction]:
    """Run decoded requests as one batch through the predictor."""
    if len(batch) == 1 and isinstance(batch[0].text, list):
        one = batch[0]
        return [predictor.predict(text=one.text, image=one.image, audio=one.audio)]  # type: ignore[list-item]
    kwargs: dict[str, Any] = {}
    for modality in ("text", "image", "audio"):
        items = [getattr(inputs, modality) for inputs in batch]
        if any(item is not None for item in items):
            kwargs[modality] = items
    result = predictor.predict(**kwargs)
    return result if isinstance(result, list) else [result]
