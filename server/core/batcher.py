"""Dynamic batching of decode requests for one model version (one inference thread; no gRPC in here).

Requests wait in a bounded queue, one FIFO per output dtype. One long-lived inference thread per batcher
takes up to `max_batch_size` samples at a time, decodes them and hands the results back to the event loop
in one callback per batch; the event loop only appends to the queue and resolves futures. A request larger
than a batch is split across consecutive batches. Each request brings its own latents, or the (seed, row)
pairs to draw them from (`SeededRows`: each row's latents depend on its seed and index only, never on its
neighbours); they are drawn on the inference thread when the request's first rows are batched, with one
draw per sampler for all the requests of a batch.

How long a batch waits for company:
- `max_queue_delay_us` > 0: a fixed delay, at most that long after its oldest request (Triton's rule);
- else, the adaptive delay (`adaptive_queue_delay_us`, the default): a batch waits only while calls keep
  arriving, i.e. after a batch that merged several requests: until as many requests as it answered have
  arrived since (their callers are likely to come back next), or a batch is full, at most the delay after
  its oldest request; never once 1024 samples are queued (ADAPTIVE_WAIT_BELOW_SAMPLES). One call in flight
  (a batch of one before, or a queue idle for longer than the delay) never waits.
- both 0: a batch is whatever queued while the previous one was decoding.

A lone call is decoded on the event loop itself (`inline_batch_samples`, unless a fixed delay is set): when
the inference thread is idle and the previous batch answered one request, a small request is not handed to
the thread, which would cost two thread wake-ups (the thread's, then the loop's) on a call that has nobody
to wait for. The decode is deferred to the end of the event loop's turn, so that requests which arrived
together still merge; a batch that merged several sends the next ones back to the thread and its adaptive
delay. The inference thread and the event loop never decode at once: the loop decodes only while the thread
sleeps with nothing queued, and only the loop can queue.

Cancelled requests and requests whose deadline passed are dropped before decoding.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import threading
import time
from queue import Empty, SimpleQueue
from typing import Protocol

from server.core.batches import (
    Batch,
    BatchRunner,
    Decoded,
    Decoder,
    DrawFunction,
    Job,
    LatentSource,
    SeededRows,
)
from server.core.errors import DeadlineExceeded, InvalidRequest, QueueFull, ShuttingDown
from server.core.settings import BatcherConfig

# The adaptive delay waits only for a batch smaller than this: one of 1024 samples or more takes milliseconds to
# decode on a CPU against ~0.1 ms of fixed cost per batch, so waiting for more only leaves the decoder idle
# (N = 1024, 4 calls in flight: 111 k samples/s with the wait, 158 k with batching off).
ADAPTIVE_WAIT_BELOW_SAMPLES = 1024


class BatchObserver(Protocol):
    """Metrics hooks; called on the event loop."""

    def queue_depth_changed(self, delta_samples: int) -> None: ...
    def queue_waited(self, seconds: list[float]) -> None: ...  # one batch's new requests, in one call
    def batch_decoded(self, samples: int, seconds: float) -> None: ...


class _NullObserver:
    def queue_depth_changed(self, delta_samples: int) -> None: ...
    def queue_waited(self, seconds: list[float]) -> None: ...
    def batch_decoded(self, samples: int, seconds: float) -> None: ...


class Batcher:
    """Queue, merge and decode requests for one model version. Use `submit`; `start` and `close` bracket it."""

    def __init__(self, decoders: dict[str, Decoder], config: BatcherConfig,
                 observer: BatchObserver | None = None, name: str = "model", draw: DrawFunction | None = None
                 ) -> None:
        if not decoders:
            raise ValueError("a batcher needs at least one decoder")
        self.decoders = decoders
        self.config = config
        self.observer = observer or _NullObserver()
        self.draw = draw  # for SeededRows sources
        self.name = name
        self._runner = BatchRunner(decoders, draw, config.max_batch_size)  # used by the inference thread only
        # Lone small calls decoded on the event loop (module docstring); its own runner, its own buffer.
        self._inline_samples = (min(config.inline_batch_samples, config.max_batch_size)
                                if config.max_queue_delay_us == 0 else 0)
        self._inline_runner = BatchRunner(decoders, draw, self._inline_samples) if self._inline_samples else None
        self._inline_pending = False  # (event loop only) _run_inline is scheduled
        self.latent_dim = self._runner.latent_dim
        self.image_shape = self._runner.image_shape
        # Shared between the event loop (submit appends) and the inference thread (everything else): _lock.
        self._lock = threading.Lock()
        # The thread sleeps on this queue (C code, unlike threading.Condition's notify): submit puts a token
        # only while it sleeps and only when it has something new to decide.
        self._wakeup: SimpleQueue[None] = SimpleQueue()
        self._sleeping = False
        self._queues: dict[str, collections.deque[Job]] = {k: collections.deque() for k in decoders}
        self._queued = {k: 0 for k in decoders}  # samples not yet handed to a batch, per dtype
        self._queued_total = 0  # their sum
        # (Event loop only.) Samples queued since the last batch's callback: the depth gauge moves once per
        # batch, by what was queued minus what left, not twice per request.
        self._unreported = 0
        self._wake_at = 1  # queued requests that wake the inference thread (it raises this while it waits)
        self._idle = False  # the inference thread sleeps with nothing queued (until a submit wakes it)
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        # The inference thread's own state: the previous batch's request count (the adaptive delay waits for
        # as many).
        self._last_requests = 0
        self._answered_at = 0.0  # time.monotonic() when the previous batch's answers were handed to the loop

    @property
    def queued_samples(self) -> int:
        return self._queued_total

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._serve, name=f"decode-{self.name}", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        """Stop taking requests, decode what is queued, then stop."""
        with self._lock:
            self._closing = True
            self._wakeup.put(None)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            await asyncio.sleep(0)  # the last batch's callback, posted before the thread ended

    def submit(self, n: int, source: LatentSource, dtype: str,
               deadline: float | None = None) -> asyncio.Future:
        """Queue a request of `n` samples; the future resolves to Decoded. Raises QueueFull at once."""
        if self._closing:
            raise ShuttingDown("this model version is being unloaded; retry")
        queue = self._queues.get(dtype)
        if queue is None:
            raise InvalidRequest(f"output dtype {dtype!r} is not served; expected one of {sorted(self._queues)}")
        if isinstance(source, SeededRows) and self.draw is None:
            raise ValueError("this batcher has no draw function for SeededRows")
        loop = self._loop or asyncio.get_running_loop()
        job = Job(n, source, self.decoders[dtype].dtype, loop.create_future(), deadline, time.monotonic())
        with self._lock:
            queued = self._queued_total
            if queued + n > self.config.max_queue_samples:
                raise QueueFull(f"queue full: {queued} samples waiting, limit "
                                f"{self.config.max_queue_samples}; retry later")
            queue.append(job)
            self._queued[dtype] += n
            self._queued_total = queued + n
            if (self._idle and self._last_requests <= 1 and self._queued_total <= self._inline_samples
                    and self._queued[dtype] == self._queued_total):
                # A lone call (so far): decoded on the event loop at the end of this turn, not by the thread.
                if not self._inline_pending:
                    self._inline_pending = True
                    loop.call_soon(self._run_inline)
            # Wake the thread only when it has something new to decide: no per-request wake-ups while it waits.
            elif self._sleeping and (len(queue) >= self._wake_at
                                     or self._queued[dtype] >= self.config.max_batch_size):
                self._sleeping = False
                self._wakeup.put(None)
        self._unreported += n
        return job.future

    # ------------------------------------------------------------------------- on the inference thread

    def _serve(self) -> None:
        while True:
            with self._lock:
                batch = self._next_batch()
            if batch is None:
                return
            if batch.pieces:
                started = time.perf_counter()
                self._runner.run(batch)
                batch.seconds = time.perf_counter() - started
                self._last_requests = len(batch.pieces)
                self._drop_failed_rest(batch)
            self._answered_at = time.monotonic()
            try:
                self._loop.call_soon_threadsafe(self._finish, batch)
            except RuntimeError:  # the event loop is closed: nobody is waiting for these answers
                return

    def _next_batch(self) -> Batch | None:
        """(Holding the lock.) Wait for work, then for company as the config says, and take a batch."""
        idle_since = time.monotonic()
        while not any(self._queues.values()):
            if self._closing:
                return None
            self._wake_at = 1
            self._idle = True
            self._sleep(None)
            self._idle = False
        # (The event loop may have answered lone calls itself meanwhile: the last answer counts, not the sleep.)
        if time.monotonic() - max(idle_since, self._answered_at) > self.config.adaptive_queue_delay_us / 1e6:
            self._last_requests = 1  # the queue sat idle: calls are not arriving back to back
        dtype = min((q[0].enqueued, k) for k, q in self._queues.items() if q)[1]
        self._wait_for_company(dtype)
        self._wake_at = 1
        return self._take(dtype)

    def _wait_for_company(self, dtype: str) -> None:
        queue, full = self._queues[dtype], self.config.max_batch_size
        if self.config.max_queue_delay_us > 0:
            delay, wanted = self.config.max_queue_delay_us / 1e6, full + 1  # fixed: until full or due
        else:
            # The previous batch's requests were just answered: in a closed loop their callers come back
            # next. Wait for them, on top of what queued before they were answered (requests queued since
            # may be those callers already), unless that batch answered a lone call.
            delay = self.config.adaptive_queue_delay_us / 1e6
            if (delay <= 0 or self._last_requests <= 1 or self._queued[dtype] >= full
                    or self._queued[dtype] >= ADAPTIVE_WAIT_BELOW_SAMPLES):
                return
            earlier = sum(1 for _ in itertools.takewhile(lambda job: job.enqueued < self._answered_at, queue))
            wanted = earlier + self._last_requests
        due = queue[0].enqueued + delay
        while len(queue) < wanted and self._queued[dtype] < full and not self._closing:
            remaining = due - time.monotonic()
            if remaining <= 0:
                return
            self._wake_at = wanted
            self._sleep(remaining)

    def _sleep(self, timeout: float | None) -> None:
        """(Holding the lock; released while asleep.) Until a submit wakes the thread, or timeout seconds."""
        self._sleeping = True
        self._lock.release()
        try:
            self._wakeup.get(timeout=timeout)
        except Empty:
            pass
        finally:
            self._lock.acquire()
            self._sleeping = False  # a token put after a timeout only makes the next sleep return at once

    def _take(self, dtype: str) -> Batch:
        """(Holding the lock.) Hand up to max_batch_size queued rows to a batch, dropping cancelled and
        expired requests."""
        queue, batch = self._queues[dtype], Batch(dtype)
        now, capacity = time.monotonic(), self.config.max_batch_size
        while queue and batch.samples < capacity:
            job = queue[0]
            left = job.n - job.assigned
            if job.future.done() or (job.deadline is not None and now > job.deadline):
                queue.popleft()
                self._queued[dtype] -= left
                self._queued_total -= left
                batch.dequeued += left
                batch.expired.append(job)
                continue
            count = min(left, capacity - batch.samples)
            batch.pieces.append((job, job.assigned, count))
            batch.samples += count
            job.assigned += count
            self._queued[dtype] -= count
            self._queued_total -= count
            batch.dequeued += count
            if not job.waited:
                job.waited = True
                batch.waits.append(now - job.enqueued)
            if job.assigned == job.n:
                queue.popleft()
        return batch

    def _drop_failed_rest(self, batch: Batch) -> None:
        """A request that failed in this batch leaves the rows it still had queued."""
        for job, _, _ in batch.pieces:
            if job.error is not None and job.assigned < job.n:
                with self._lock:
                    queue = self._queues[batch.dtype]
                    if queue and queue[0] is job:
                        queue.popleft()
                        left = job.n - job.assigned
                        self._queued[batch.dtype] -= left
                        self._queued_total -= left
                        batch.dequeued += left
                        job.assigned = job.n

    # ------------------------------------------------------------------------------- on the event loop

    def _run_inline(self) -> None:
        """(Scheduled by submit.) Decode what queued this turn here, unless a later submit of the turn woke
        the inference thread (a larger request, another dtype) or close did: the thread then takes it all.
        Every submit that did not wake it kept the queue a small lone call of one dtype."""
        self._inline_pending = False
        with self._lock:
            if not (self._idle and self._sleeping) or self._closing:
                return
            batch = self._take(next(k for k, q in self._queues.items() if q))
        if batch.pieces:
            started = time.perf_counter()
            self._inline_runner.run(batch)
            batch.seconds = time.perf_counter() - started
        with self._lock:
            # Only while the thread sleeps: it reads these when it wakes, under the lock.
            self._last_requests = len(batch.pieces)
            self._answered_at = time.monotonic()
        self._finish(batch)

    def _finish(self, batch: Batch) -> None:
        """One callback per batch: metrics first, then every answer of the batch."""
        observer = self.observer
        delta, self._unreported = self._unreported - batch.dequeued, 0
        if delta:
            observer.queue_depth_changed(delta)
        if batch.waits:
            observer.queue_waited(batch.waits)
        if batch.pieces:
            observer.batch_decoded(batch.samples, batch.seconds)
        for job in batch.expired:
            if not job.future.done():
                job.future.set_exception(DeadlineExceeded("deadline passed while queued"))
        for job, _, _ in batch.pieces:
            if job.future.done():
                continue
            if job.error is not None:
                job.future.set_exception(job.error)
            elif job.decoded == job.n:
                job.future.set_result(Decoded(job.images, job.latents))


__all__ = ["BatchObserver", "Batcher"]
