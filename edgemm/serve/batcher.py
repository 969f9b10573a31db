"""Dynamic micro-batching over a bounded queue with per-request deadlines.

Requests wait in a bounded queue (full → 503 with Retry-After, never unbounded waiting). One
worker takes the first waiting request, gathers more for at most ``max_delay_ms`` or until
``max_batch``, drops those whose client went away or whose deadline passed, and runs the rest
as one model call on a single inference thread (ONNX Runtime parallelises inside the call).

The deadline runs from the request's arrival (reading, waiting for decode memory and decoding
count too): when it passes, the request is answered ``deadline_exceeded`` at once, wherever it
is — never a late 200. A request's memory lease (:mod:`edgemm.serve.budget`) is held until the
batcher is done with its inputs.
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
from edgemm.serve.budget import Lease
from edgemm.serve.config import ServeConfig
from edgemm.serve.host import ModelHost, poisons_gpu
from edgemm.serve.httperrors import ApiError, api_error, from_edgemm
from edgemm.serve.inputs import DecodedInputs, deadline_exceeded
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
        lease: Its hold on the memory budget, released once the batcher is done with ``inputs``.
        started: Its model call has begun (its inputs are in use until the call returns).
    """

    inputs: DecodedInputs
    deadline: float
    future: asyncio.Future = field(repr=False)
    cancelled: bool = False
    batch_size: int = 0
    artifact: str = ""
    lease: Lease | None = field(default=None, repr=False)
    started: bool = False
    _expiry: asyncio.TimerHandle | None = field(default=None, repr=False)

    def finish(self) -> None:
        """The batcher is done with this job: drop its inputs and its hold on the budget (idempotent)."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self.lease is not None:
            self.lease.release()
            self.lease = None
        self.inputs = DecodedInputs()

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

    def submit(self, inputs: DecodedInputs, *, deadline: float | None = None, lease: Lease | None = None) -> Job:
        """Queue one request.

        Args:
            inputs: The decoded, checked request.
            deadline: ``time.monotonic()`` by which it must be answered (default: ``deadline_s``
                from now); at that moment ``job.future`` fails with ``deadline_exceeded``.
            lease: The request's hold on the memory budget; the batcher adds itself as a holder
                and releases it once it no longer needs ``inputs``.

        Returns:
            Its job; await ``job.future`` for the answer.

        Raises:
            ApiError: ``overloaded`` (503 + Retry-After) when the queue is full,
                ``deadline_exceeded`` when the deadline has already passed.
        """
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + self.config.deadline_s if deadline is None else deadline
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise deadline_exceeded(self.config.deadline_s, "before it was queued")
        job = Job(inputs, deadline, loop.create_future())
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            raise api_error("overloaded", f"The kiosk is busy ({self.config.max_queue} requests waiting).",
                            hint="Try again in a moment.", headers={"Retry-After": "1"}) from None
        if lease is not None:
            lease.add_holder()
            job.lease = lease
        job._expiry = loop.call_later(remaining, self._expire, job)
        return job

    def _expire(self, job: Job) -> None:
        """The job's deadline passed: answer it now; free its inputs unless its model call is running."""
        job._expiry = None
        if not job.future.done():
            job.future.set_exception(deadline_exceeded(
                self.config.deadline_s, "in the model's queue" if not job.started else "while the model ran"))
        if not job.started:
            job.finish()

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

    def _wanted(self, jobs: list[Job]) -> list[Job]:
        """The jobs still waiting for their answer; the rest are finished (the expired ones answered)."""
        now = time.monotonic()
        wanted: list[Job] = []
        for job in jobs:
            if not (job.cancelled or job.future.done()) and now > job.deadline:
                job.future.set_exception(deadline_exceeded(self.config.deadline_s, "in the model's queue"))
            if job.cancelled or job.future.done():
                job.finish()
            else:
                wanted.append(job)
        return wanted

    async def _loop(self) -> None:
        while True:
            # One call per batch: no reference to a finished batch outlives it (a job's answered
            # exception carries the request handler's frame, and with it the decoded inputs).
            await self._serve(await self._gather())

    async def _serve(self, jobs: list[Job]) -> None:
        """Run the jobs still waiting as few model calls as they allow, and answer each of them."""
        loop = asyncio.get_running_loop()
        live = self._wanted(jobs)
        groups = [[j for j in live if j.batchable]] + [[j] for j in live if not j.batchable]
        for group in groups:
            group = self._wanted(group)  # a deadline may pass while an earlier group runs
            if not group:
                continue
            cur = self.host.current
            if cur is None or self.fatal is not None:
                for job in group:
                    if not job.future.done():
                        job.future.set_exception(api_error(
                            "not_ready", "No model is loaded." if cur is None else f"The model stopped: {self.fatal}",
                            headers={"Retry-After": "5"}))
                    job.finish()
                continue
            for job in group:
                job.started = True
            self.in_flight += len(group)
            try:
                results = await loop.run_in_executor(self._executor, self._run, cur.predictor, group)
            finally:
                self.in_flight -= len(group)
            self.metrics.observe_batch(len(group))
            now = time.monotonic()
            for job, result in zip(group, results):
                job.batch_size, job.artifact = len(group), cur.predictor.artifact.name
                job.finish()
                if job.future.done():  # its deadline passed during the call: answered already
                    continue
                if now > job.deadline:  # (its timer had no chance to run yet)
                    job.future.set_exception(deadline_exceeded(self.config.deadline_s, "while the model ran"))
                elif isinstance(result, BaseException):
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
