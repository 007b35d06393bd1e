"""Dynamic batching of decode requests for one model version (asyncio; no gRPC in here).

Requests wait in a bounded queue, one FIFO per output dtype. The batcher takes up to `max_batch_size`
samples, waiting at most `max_queue_delay_us` after the oldest request arrived for others to join. With
the default delay of 0 a batch is whatever queued while the previous batch was decoding: no request waits
for company it may never get, and under load batches still grow by themselves. A request larger than a
batch is split across consecutive batches. Each request brings its own latents, or the (seed, row) pairs to
draw them from (`SeededRows`: each row's latents depend on its seed and index only, never on its
neighbours); they are drawn on the inference thread when the request's first rows are batched, with one
draw per sampler for all the requests of a batch. Decoding runs on one thread per batcher, so
the event loop only moves bookkeeping.

Cancelled requests and requests whose deadline passed are dropped before decoding.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from server.core.errors import DeadlineExceeded, InvalidRequest, QueueFull, ShuttingDown
from server.core.settings import BatcherConfig


class Decoder(Protocol):
    """What the batcher needs of a decoder (runner.DecoderRunner provides it)."""

    latent_dim: int
    image_shape: tuple[int, ...]
    dtype: np.dtype

    def decode_into(self, latents: np.ndarray, out: np.ndarray) -> None: ...


class BatchObserver(Protocol):
    """Metrics hooks; called on the event loop."""

    def queue_depth_changed(self, delta_samples: int) -> None: ...
    def queue_waited(self, seconds: float) -> None: ...
    def batch_decoded(self, samples: int, seconds: float) -> None: ...


class _NullObserver:
    def queue_depth_changed(self, delta_samples: int) -> None:
        pass

    def queue_waited(self, seconds: float) -> None:
        pass

    def batch_decoded(self, samples: int, seconds: float) -> None:
        pass


@dataclass(frozen=True)
class SeededRows:
    """Latents still to be drawn: rows `rows` of seeds `seeds` ((n,) uint64 each) from the sampler named by
    `key` (e.g. (sampler, temperature)). The batcher draws every such request of a batch with one call of
    its `draw` function per key, on the inference thread: per-call overhead is paid per batch, not per request."""

    key: Hashable
    seeds: np.ndarray
    rows: np.ndarray


LatentSource = Callable[[], np.ndarray] | SeededRows
DrawFunction = Callable[[Hashable, np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Decoded:
    images: np.ndarray  # (n, *image_shape), the decoder's dtype; may be a view of its merged batch's output
    latents: np.ndarray  # (n, latent_dim) float32


@dataclass(eq=False)
class _Job:
    n: int
    source: LatentSource
    dtype: np.dtype
    future: asyncio.Future
    deadline: float | None  # time.monotonic()
    enqueued: float
    latents: np.ndarray | None = None
    images: np.ndarray | None = None  # made on the inference thread, or a view of a merged batch's output
    assigned: int = 0  # rows handed to batches so far
    decoded: int = 0
    waited: bool = False
    error: BaseException | None = None


@dataclass
class _Batch:
    dtype: str
    pieces: list[tuple[_Job, int, int]] = field(default_factory=list)  # (job, first row, row count)
    samples: int = 0


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
        first = next(iter(decoders.values()))
        self.latent_dim = first.latent_dim
        self.image_shape = tuple(first.image_shape)
        self._queues: dict[str, collections.deque[_Job]] = {k: collections.deque() for k in decoders}
        self._queued = {k: 0 for k in decoders}  # samples not yet handed to a batch, per dtype
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task | None = None
        # One thread: batches of one model version decode one after another, and the latent buffer is reused.
        # Images are not: a merged batch's output is handed out to its requests as views.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"decode-{name}")
        self._latent_buffer = np.empty((config.max_batch_size, self.latent_dim), np.float32)

    @property
    def queued_samples(self) -> int:
        return sum(self._queued.values())

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="batcher")

    async def close(self) -> None:
        """Stop taking requests, decode what is queued, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    def submit(self, n: int, source: LatentSource, dtype: str,
               deadline: float | None = None) -> asyncio.Future:
        """Queue a request of `n` samples; the future resolves to Decoded. Raises QueueFull at once."""
        if self._closing:
            raise ShuttingDown("this model version is being unloaded; retry")
        if dtype not in self._queues:
            raise InvalidRequest(f"output dtype {dtype!r} is not served; expected one of {sorted(self._queues)}")
        if self.queued_samples + n > self.config.max_queue_samples:
            raise QueueFull(f"queue full: {self.queued_samples} samples waiting, limit "
                            f"{self.config.max_queue_samples}; retry later")
        loop = asyncio.get_running_loop()
        if isinstance(source, SeededRows) and self.draw is None:
            raise ValueError("this batcher has no draw function for SeededRows")
        job = _Job(n, source, self.decoders[dtype].dtype, loop.create_future(), deadline,
                   time.monotonic())
        was_idle = not any(self._queued.values())
        self._queues[dtype].append(job)
        self._queued[dtype] += n
        self.observer.queue_depth_changed(n)
        # Wake the loop only when it has something new to decide: no per-request wake-ups while it waits.
        if was_idle or self._queued[dtype] >= self.config.max_batch_size:
            self._wakeup.set()
        return job.future

    # ------------------------------------------------------------------------------------------ the loop

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not any(self._queues.values()):
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            dtype = self._oldest_dtype()
            await self._wait_for_batch(dtype)
            batch = self._take(dtype)
            if not batch.pieces:
                continue
            started = time.perf_counter()
            await loop.run_in_executor(self._executor, self._decode, batch)
            self.observer.batch_decoded(batch.samples, time.perf_counter() - started)
            self._finish(batch)

    def _oldest_dtype(self) -> str:
        heads = [(q[0].enqueued, k) for k, q in self._queues.items() if q]
        return min(heads)[1]

    async def _wait_for_batch(self, dtype: str) -> None:
        """Wait until a full batch is queued or the oldest request has waited max_queue_delay_us."""
        delay = self.config.max_queue_delay_us / 1e6
        if delay <= 0:
            return
        due = self._queues[dtype][0].enqueued + delay
        while self._queued[dtype] < self.config.max_batch_size and not self._closing:
            remaining = due - time.monotonic()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    def _take(self, dtype: str) -> _Batch:
        """Hand up to max_batch_size queued rows to a batch, dropping cancelled and expired requests."""
        queue, batch = self._queues[dtype], _Batch(dtype)
        now, capacity = time.monotonic(), self.config.max_batch_size
        while queue and batch.samples < capacity:
            job = queue[0]
            left = job.n - job.assigned
            if job.future.done() or (job.deadline is not None and now > job.deadline):
                queue.popleft()
                self._dequeued(dtype, left)
                if not job.future.done():
                    job.future.set_exception(DeadlineExceeded("deadline passed while queued"))
                continue
            count = min(left, capacity - batch.samples)
            batch.pieces.append((job, job.assigned, count))
            batch.samples += count
            job.assigned += count
            self._dequeued(dtype, count)
            if not job.waited:
                job.waited = True
                self.observer.queue_waited(now - job.enqueued)
            if job.assigned == job.n:
                queue.popleft()
        return batch

    def _dequeued(self, dtype: str, count: int) -> None:
        self._queued[dtype] -= count
        self.observer.queue_depth_changed(-count)

    def _finish(self, batch: _Batch) -> None:
        for job, _, count in batch.pieces:
            if job.future.done():
                continue
            if job.error is not None:
                job.future.set_exception(job.error)
                self._drop_rest(batch.dtype, job)
            elif job.decoded == job.n:
                job.future.set_result(Decoded(job.images, job.latents))

    def _drop_rest(self, dtype: str, job: _Job) -> None:
        queue = self._queues[dtype]
        if queue and queue[0] is job:
            queue.popleft()
            self._dequeued(dtype, job.n - job.assigned)

    # ------------------------------------------------------------------------- on the inference thread

    def _decode(self, batch: _Batch) -> None:
        self._draw_seeded([job for job, _, _ in batch.pieces])
        pieces = [p for p in batch.pieces if self._ensure_latents(p[0])]
        if not pieces:
            return
        decoder = self.decoders[batch.dtype]
        try:
            if len(pieces) == 1:  # the common large request: decode straight into its own buffer
                job, first, count = pieces[0]
                decoder.decode_into(job.latents[first:first + count], self._rows(job, first, count))
            else:
                self._decode_merged(decoder, pieces)
        except Exception as exc:  # noqa: BLE001 - fail the batch's requests, keep the batcher alive
            for job, _, _ in pieces:
                job.error = exc
            return
        for job, _, count in pieces:
            job.decoded += count

    def _decode_merged(self, decoder: Decoder, pieces: list[tuple[_Job, int, int]]) -> None:
        total = sum(count for _, _, count in pieces)
        latents = self._latent_buffer[:total]
        images = np.empty((total, *self.image_shape), decoder.dtype)
        row = 0
        for job, first, count in pieces:
            latents[row:row + count] = job.latents[first:first + count]
            row += count
        decoder.decode_into(latents, images)
        row = 0
        for job, first, count in pieces:
            if count == job.n:  # the whole request: its rows of the batch are its answer, no copy
                job.images = images[row:row + count]
            else:  # one part of a request split across batches: into its own array
                self._rows(job, first, count)[...] = images[row:row + count]
            row += count

    def _rows(self, job: _Job, first: int, count: int) -> np.ndarray:
        """Rows first..first+count of the job's own image array, allocated on its first batch."""
        if job.images is None:
            job.images = np.empty((job.n, *self.image_shape), job.dtype)
        return job.images[first:first + count]

    def _draw_seeded(self, jobs: list[_Job]) -> None:
        """One draw per sampler key for every job of the batch that still needs its seeded latents."""
        groups: dict[Hashable, list[_Job]] = {}
        for job in jobs:
            if job.latents is None and job.error is None and isinstance(job.source, SeededRows):
                groups.setdefault(job.source.key, []).append(job)
        for key, members in groups.items():
            seeds = np.concatenate([job.source.seeds for job in members])
            rows = np.concatenate([job.source.rows for job in members])
            try:
                latents = np.ascontiguousarray(self.draw(key, seeds, rows), dtype=np.float32)
            except Exception as exc:  # noqa: BLE001 - e.g. a sampler refusing its parameters
                for job in members:
                    job.error = exc if isinstance(exc, InvalidRequest) else InvalidRequest(str(exc))
                continue
            if latents.shape != (len(seeds), self.latent_dim):
                for job in members:
                    job.error = RuntimeError(f"draw gave shape {latents.shape}, expected {(len(seeds), self.latent_dim)}")
                continue
            start = 0
            for job in members:
                job.latents = latents[start:start + job.n]
                start += job.n

    def _ensure_latents(self, job: _Job) -> bool:
        if job.error is not None:
            return False
        if job.latents is not None:
            return True
        try:
            latents = np.ascontiguousarray(job.source(), dtype=np.float32)
        except Exception as exc:  # noqa: BLE001 - e.g. a sampler refusing its parameters
            job.error = exc if isinstance(exc, InvalidRequest) else InvalidRequest(str(exc))
            return False
        if latents.shape != (job.n, self.latent_dim):
            job.error = RuntimeError(f"latent source gave shape {latents.shape}, "
                                     f"expected {(job.n, self.latent_dim)}")
            return False
        job.latents = latents
        return True
