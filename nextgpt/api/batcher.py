"""The request batcher of the HTTP API: :class:`Batcher` collects prepared requests from many clients
and runs them together with :meth:`NextGPT.run_requests`.

One thread owns the model's generation calls. It waits for a first :class:`Job`, then keeps
collecting for ``batch_window_ms`` (or until ``max_batch`` jobs are there) and runs the batch as one
``run_requests(reqs, sinks=...)`` call; jobs that arrive meanwhile wait for the next batch. Each job
brings its own sink (called from this thread with every :class:`~nextgpt.outputs.StreamEvent` of its
row) and its own completion callback; nothing else is shared between jobs.

Failures are kept to the job that caused them: if a batch call raises, the jobs that had not received
any event yet (progress reports aside) are run again one at a time, so a request that fails (say, media the encoder cannot
read) fails alone, and the jobs that had already streamed part of an answer get the error. A job
cancelled before its batch starts is not run.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nextgpt.outputs import GenerationOutput, StreamEvent

logger = logging.getLogger(__name__)

#: How long the batcher waits for more requests after the first one of a batch (ms).
DEFAULT_BATCH_WINDOW_MS = 20.0
#: Most requests run in one ``run_requests`` call.
DEFAULT_MAX_BATCH = 8
#: Most requests waiting for the model; more are answered 503.
DEFAULT_MAX_QUEUE = 64
#: Batch sizes remembered for :attr:`Batcher.batch_sizes`.
_HISTORY = 1024


class Cancelled(Exception):
    """The job was cancelled (its client went away) before it ran."""


class QueueFull(Exception):
    """The batcher's queue holds ``max_queue`` jobs already."""


class BatcherClosed(Exception):
    """The batcher was closed: the server is shutting down."""


@dataclass(eq=False)
class Job:
    """One request waiting for the model.

    Attributes:
        request: what ``model.prepare_request`` returned (it has ``cancel()``).
        sink: called with each ``StreamEvent`` of this request, from the batcher thread (``None``:
            events are not wanted). Exceptions it raises are logged and swallowed.
        on_done: called once, from the batcher thread, with ``(output, None)`` or ``(None, error)``.
        streamed: whether the sink has been given any event but progress (set by the batcher): such a
            job cannot be run again after a failed batch.
        cancelled: set by :meth:`cancel`.
    """

    request: Any
    on_done: Callable[[GenerationOutput | None, BaseException | None], None]
    sink: Callable[[StreamEvent], None] | None = None
    streamed: bool = False
    cancelled: bool = False
    _finished: bool = field(default=False, repr=False)

    def cancel(self) -> None:
        """Stop this request: not run if it is still queued, stopped at its next step if running."""
        self.cancelled = True
        try:
            self.request.cancel()
        except Exception:  # a request without cancel() or one that already finished
            logger.debug("cancel failed", exc_info=True)

    def _forward(self, event: StreamEvent) -> None:
        if getattr(event, "kind", None) != "progress":  # progress reports may be repeated by a re-run
            self.streamed = True
        if self.sink is None:
            return
        try:
            self.sink(event)
        except Exception:
            logger.warning("a request's event sink failed; the request goes on", exc_info=True)

    def _finish(self, output: GenerationOutput | None, error: BaseException | None) -> None:
        if self._finished:
            return
        self._finished = True
        try:
            self.on_done(output, error)
        except Exception:
            logger.warning("a request's completion callback failed", exc_info=True)


class Batcher:
    """Runs :class:`Job` s on ``model`` in batches from one thread (see the module docstring).

    Args:
        model: a :class:`~nextgpt.NextGPT` (anything with ``run_requests(reqs, sinks=...)``).
        batch_window_ms: how long to wait for more jobs after the first of a batch; 0 runs what is
            queued at that moment.
        max_batch: most jobs per ``run_requests`` call (1: one request at a time).
        max_queue: most jobs waiting; :meth:`submit` raises :class:`QueueFull` beyond it.
        run_kwargs: more keyword arguments of every ``run_requests`` call (``overlap_media``).

    Attributes:
        batch_sizes: the sizes of the last batches run (most recent last).
        batches: batches run so far; ``requests``: jobs run so far.
    """

    def __init__(
        self,
        model: Any,
        *,
        batch_window_ms: float = DEFAULT_BATCH_WINDOW_MS,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_queue: int = DEFAULT_MAX_QUEUE,
        run_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if not (batch_window_ms >= 0 and batch_window_ms < float("inf")):
            raise ValueError(f"batch_window_ms must be a finite number >= 0, got {batch_window_ms!r}")
        if int(max_batch) < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch!r}")
        if int(max_queue) < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue!r}")
        self.model = model
        self.batch_window_s = float(batch_window_ms) / 1000.0
        self.max_batch = int(max_batch)
        self.max_queue = int(max_queue)
        self.run_kwargs = dict(run_kwargs or {})
        self.batch_sizes: deque[int] = deque(maxlen=_HISTORY)
        self.batches = 0
        self.requests = 0
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._pending = 0
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="nextgpt-api-batcher", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Jobs submitted and not finished (queued or running)."""
        return self._pending

    def submit(self, job: Job) -> None:
        """Queue ``job``.

        Raises:
            QueueFull: ``max_queue`` jobs are waiting.
            BatcherClosed: :meth:`close` was called.
        """
        with self._lock:
            if self._closed:
                raise BatcherClosed("the server is shutting down")
            if self._pending >= self.max_queue:
                raise QueueFull(f"{self._pending} requests are waiting for the model")
            self._pending += 1
        self._queue.put(job)

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop taking jobs, fail the queued ones with :class:`BatcherClosed` and stop the thread (the
        batch running now finishes first; ``timeout``: how long to wait for it)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._queue.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # ------------------------------------------------------------------------------------ thread

    def _collect(self, first: Job) -> tuple[list[Job], bool]:
        batch, stop = [first], False
        deadline = time.monotonic() + self.batch_window_s
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                stop = True
                break
            batch.append(job)
        return batch, stop

    def _loop(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            batch, stop = self._collect(first)
            try:
                self._run([j for j in batch if not self._skip(j)])
            except BaseException:  # never let the thread die with jobs waiting on it
                logger.exception("the batcher failed")
                for job in batch:
                    job._finish(None, RuntimeError("the batcher failed"))
            finally:
                with self._lock:
                    self._pending -= len(batch)
        self._drain()

    def _skip(self, job: Job) -> bool:
        if job.cancelled:
            job._finish(None, Cancelled("the request was cancelled"))
            return True
        return False

    def _drain(self) -> None:
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                job._finish(None, BatcherClosed("the server is shutting down"))
                with self._lock:
                    self._pending -= 1

    def _call(self, jobs: list[Job]) -> list[Any]:
        self.batch_sizes.append(len(jobs))
        self.batches += 1
        self.requests += len(jobs)
        outputs = self.model.run_requests(
            [j.request for j in jobs], sinks=[j._forward for j in jobs], **self.run_kwargs
        )
        if len(outputs) != len(jobs):
            raise RuntimeError(f"run_requests returned {len(outputs)} outputs for {len(jobs)} requests")
        return list(outputs)

    def _run(self, jobs: list[Job]) -> None:
        if not jobs:
            return
        try:
            outputs = self._call(jobs)
        except Exception as exc:
            if len(jobs) == 1:
                jobs[0]._finish(None, exc)
                return
            logger.info(
                "a batch of %d failed (%s: %s); running its requests one at a time",
                len(jobs),
                type(exc).__name__,
                exc,
            )
            for job in jobs:
                if job.streamed:  # part of its answer is out: it cannot be run again
                    job._finish(None, exc)
                elif not self._skip(job):
                    try:
                        job._finish(self._call([job])[0], None)
                    except Exception as one:
                        job._finish(None, one)
            return
        for job, out in zip(jobs, outputs):
            job._finish(out, None)


__all__ = [
    "DEFAULT_BATCH_WINDOW_MS",
    "DEFAULT_MAX_BATCH",
    "DEFAULT_MAX_QUEUE",
    "Batcher",
    "BatcherClosed",
    "Cancelled",
    "Job",
    "QueueFull",
]
