"""Dynamic batching: concurrent requests for the same signature run as one batch.

Like TF Serving's `--enable_batching`: a request waits at most
`batch_timeout_s` for others to join it, a batch holds at most
`max_batch_size` rows, and the queue is bounded (`max_enqueued_requests`;
beyond it requests fail fast with UNAVAILABLE instead of piling up).
Requests are only merged when every input has the same dtype and non-batch
shape. The server checks each request (shapes, caps, frame headers) before
it is queued, so a bad request fails alone without touching a batch.

If a merged batch still fails (damage only the decoder sees), each request's
`check_function` (decoding its frames, without the model) picks out the
suspects: they run alone, so each gets the graph's own error or answer, and
the rest run merged once more. Clean traffic never pays for the checks; a
batch with bad requests costs one failed run (it stops at the bad frame,
before the model), the checks and one full run. Requests without a check,
or a re-run that fails again, fall back to splitting the batch in halves.
(After such a failure the server decodes JPEG frames before queueing for a
while, so later bad frames fail alone: see `serving.frame_decoder`.)
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from concurrent.futures import Future
from typing import Callable, Hashable, Mapping

import grpc
import numpy as np

from serving.errors import ServingError

logger = logging.getLogger(__name__)

RunFunction = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]
# Raises for inputs that would fail the run; cheaper than the run itself.
CheckFunction = Callable[[Mapping[str, np.ndarray]], None]


@dataclasses.dataclass(frozen=True)
class BatchingOptions:
    """Dynamic batching settings (the fields of TF Serving's `batching.config`).

    Args:
        max_batch_size: most rows (clips) one batch holds. Default 16.
        batch_timeout_s: longest a request waits for others to join.
            Default 0.002.
        max_enqueued_requests: queue bound; more requests fail with
            UNAVAILABLE. Default 256.
        num_batch_threads: threads running batches. Default 2.
    """

    max_batch_size: int = 16
    batch_timeout_s: float = 0.002
    max_enqueued_requests: int = 256
    num_batch_threads: int = 2

    def __post_init__(self) -> None:
        for field in ("max_batch_size", "max_enqueued_requests", "num_batch_threads"):
            value = getattr(self, field)
            if int(value) < 1:
                raise ValueError(f"`{field}` must be at least 1. Received: {field}={value}.")
        if self.batch_timeout_s < 0:
            raise ValueError(
                f"`batch_timeout_s` must be >= 0. Received: batch_timeout_s={self.batch_timeout_s}."
            )


@dataclasses.dataclass
class _Task:
    key: Hashable
    run_function: RunFunction
    inputs: Mapping[str, np.ndarray]
    num_rows: int
    enqueued: float
    future: Future
    check_function: CheckFunction | None = None


def _batch_key(key: Hashable, inputs: Mapping[str, np.ndarray]) -> Hashable:
    layout = tuple(
        sorted((name, value.dtype.str, value.shape[1:]) for name, value in inputs.items())
    )
    return (key, layout)


def _num_rows(inputs: Mapping[str, np.ndarray]) -> int:
    sizes = {value.shape[0] if value.ndim else 1 for value in inputs.values()}
    if len(sizes) != 1:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"All inputs must have the same batch size. Received: {sorted(sizes)}.",
        )
    return sizes.pop()


class DynamicBatcher:
    """Runs requests in merged batches on background threads.

    Args:
        options: a `BatchingOptions`.

    Example:

    ```python
    batcher = DynamicBatcher(BatchingOptions(max_batch_size=8))
    outputs = batcher.run(("selfy", 1, "predict_frames"), version.run_fn, inputs)
    batcher.close()
    ```
    """

    def __init__(self, options: BatchingOptions = BatchingOptions()):
        self.options = options
        self._pending: collections.deque[_Task] = collections.deque()
        self._condition = threading.Condition()
        self._closed = False
        self.batch_sizes: collections.Counter[int] = collections.Counter()
        self._threads = [
            threading.Thread(target=self._work, name=f"batcher-{index}", daemon=True)
            for index in range(options.num_batch_threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(
        self,
        key: Hashable,
        run_function: RunFunction,
        inputs: Mapping[str, np.ndarray],
        check_function: CheckFunction | None = None,
    ) -> Future:
        """Queues one request; its future resolves to the output dict.

        Args:
            key: requests with equal keys (model, version, signature) may be
                merged; `run_function` must be the same for equal keys.
            run_function: maps a dict of batched inputs to a dict of batched
                outputs.
            inputs: input name → array with the batch on axis 0.
            check_function: called with `inputs` only after a merged batch
                holding them failed; raises if they could be the cause.

        Raises:
            ServingError: UNAVAILABLE if the queue is full or closed.
        """
        task = _Task(
            key=_batch_key(key, inputs),
            run_function=run_function,
            inputs=inputs,
            num_rows=_num_rows(inputs),
            enqueued=time.monotonic(),
            future=Future(),
            check_function=check_function,
        )
        with self._condition:
            if self._closed:
                raise ServingError(grpc.StatusCode.UNAVAILABLE, "The batch scheduler is closed.")
            if len(self._pending) >= self.options.max_enqueued_requests:
                raise ServingError(
                    grpc.StatusCode.UNAVAILABLE,
                    f"The batch scheduling queue is full ({self.options.max_enqueued_requests} "
                    "requests waiting). Retry later.",
                )
            self._pending.append(task)
            self._condition.notify_all()
        return task.future

    def run(
        self,
        key: Hashable,
        run_function: RunFunction,
        inputs: Mapping[str, np.ndarray],
        timeout_s: float | None = None,
        check_function: CheckFunction | None = None,
    ) -> dict[str, np.ndarray]:
        """`submit` and wait for the result (re-raises the request's error)."""
        return self.submit(key, run_function, inputs, check_function).result(timeout=timeout_s)

    def _take_batch(self) -> list[_Task] | None:
        with self._condition:
            while True:
                while not self._pending and not self._closed:
                    self._condition.wait()
                if not self._pending:
                    return None
                # Another worker may take the oldest request while this one
                # waits, so the oldest is looked up again on every wake-up.
                first = self._pending[0]
                deadline = first.enqueued + self.options.batch_timeout_s
                batch, num_rows = [], 0
                for task in self._pending:
                    if task.key != first.key:
                        continue
                    if batch and num_rows + task.num_rows > self.options.max_batch_size:
                        break
                    batch.append(task)
                    num_rows += task.num_rows
                remaining = deadline - time.monotonic()
                if num_rows >= self.options.max_batch_size or remaining <= 0 or self._closed:
                    break
                self._condition.wait(remaining)
            for task in batch:
                self._pending.remove(task)
            return batch

    def _work(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            self._run_batch(batch)

    def _run_batch(self, batch: list[_Task]) -> None:
        self.batch_sizes[sum(task.num_rows for task in batch)] += 1
        if self._try_merged(batch):
            return
        # Isolate the request(s) that broke the batch.
        suspects, cleared = self._check_each(batch)
        for task in suspects:
            self._run_alone(task)
        if not cleared or (suspects and self._try_merged(cleared)):
            return
        # The checks missed the cause: halve until the failing requests are alone.
        self._run_halves(cleared)

    def _run_halves(self, failed: list[_Task]) -> None:
        """Runs both halves of a batch that failed merged, halving again where one fails."""
        half = len(failed) // 2
        for part in (failed[:half], failed[half:]):
            if not self._try_merged(part):
                self._run_halves(part)

    @staticmethod
    def _check_each(batch: list[_Task]) -> tuple[list[_Task], list[_Task]]:
        """Splits a failed batch into the requests whose check fails and the rest."""
        suspects, cleared = [], []
        for task in batch:
            try:
                if task.check_function is not None:
                    task.check_function(task.inputs)
                cleared.append(task)
            except Exception:  # its own run (alone) reports the error
                suspects.append(task)
        return suspects, cleared

    def _try_merged(self, batch: list[_Task]) -> bool:
        """Runs `batch` merged and answers each request; False (nothing answered) if it fails.

        A single request is answered even when it fails (with its error).
        """
        if len(batch) == 1:
            self._run_alone(batch[0])
            return True
        names = list(batch[0].inputs)
        merged = {name: np.concatenate([task.inputs[name] for task in batch]) for name in names}
        try:
            outputs = batch[0].run_function(merged)
        except Exception as error:
            logger.debug("merged batch of %d requests failed (%s)", len(batch), error)
            return False
        start = 0
        for task in batch:
            stop = start + task.num_rows
            task.future.set_result({name: value[start:stop] for name, value in outputs.items()})
            start = stop
        return True

    @staticmethod
    def _run_alone(task: _Task) -> None:
        try:
            task.future.set_result(task.run_function(task.inputs))
        except Exception as error:
            task.future.set_exception(error)

    def close(self) -> None:
        """Finishes queued requests and stops the threads."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()
        for thread in self._threads:
            thread.join(timeout=30)
