"""A batch of decode requests and how it runs: the seeded requests' latents drawn with one draw per sampler
for the whole batch, the rows merged into one decoder run, each request handed its rows (a view of the
merged output where the request is whole in the batch: no copy).

batcher.py decides what goes into a batch and when; this runs it, on the batcher's inference thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from server.core.errors import InvalidRequest


class Decoder(Protocol):
    """What the batcher needs of a decoder (runner.DecoderRunner provides it)."""

    latent_dim: int
    image_shape: tuple[int, ...]
    dtype: np.dtype

    def decode_into(self, latents: np.ndarray, out: np.ndarray, requests: int = 1) -> None: ...


@dataclass(slots=True)
class SeededRows:
    """Latents still to be drawn: rows `rows` of seeds `seeds` ((n,) uint64 each) from the sampler named by
    `key` (e.g. (sampler, temperature)); or, with `seeds` an int, rows rows..rows+n-1 of that one seed (`rows`
    an int too), whose arrays are then built for the whole batch at once. The batcher draws every such request
    of a batch with one call of its `draw` function per key, on the inference thread: per-call overhead is
    paid per batch, not per request. (Not frozen: a frozen dataclass's __init__ costs 4x, on every request.)"""

    key: Hashable
    seeds: np.ndarray | int
    rows: np.ndarray | int


LatentSource = Callable[[], np.ndarray] | SeededRows
DrawFunction = Callable[[Hashable, np.ndarray, np.ndarray], np.ndarray]


@dataclass(slots=True)
class Decoded:
    images: np.ndarray  # (n, *image_shape), the decoder's dtype; may be a view of its merged batch's output
    latents: np.ndarray  # (n, latent_dim) float32


@dataclass(eq=False, slots=True)
class Job:
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
class Batch:
    dtype: str
    pieces: list[tuple[Job, int, int]] = field(default_factory=list)  # (job, first row, row count)
    samples: int = 0
    dequeued: int = 0  # samples that left the queue (decoded or dropped), for the depth gauge
    waits: list[float] = field(default_factory=list)  # queue waits of the requests batched for the first time
    expired: list[Job] = field(default_factory=list)  # dropped: their deadline passed while queued
    seconds: float = 0.0  # decode time


class BatchRunner:
    """Runs batches on one model version's decoders (one per output dtype), drawing seeded latents with `draw`."""

    def __init__(self, decoders: dict[str, Decoder], draw: DrawFunction | None, max_batch_size: int) -> None:
        self.decoders = decoders
        self.draw = draw
        first = next(iter(decoders.values()))
        self.latent_dim = first.latent_dim
        self.image_shape = tuple(first.image_shape)
        # Reused for every merged batch's latents; images are not reused (they are handed out as views).
        self._latent_buffer = np.empty((max_batch_size, self.latent_dim), np.float32)

    def run(self, batch: Batch) -> None:
        """Draw and decode the batch's rows; a request that fails gets its `error`, the others their rows."""
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

    def _decode_merged(self, decoder: Decoder, pieces: list[tuple[Job, int, int]]) -> None:
        total = sum(count for _, _, count in pieces)
        latents = self._latent_buffer[:total]
        images = np.empty((total, *self.image_shape), decoder.dtype)
        row = 0
        for job, first, count in pieces:
            latents[row:row + count] = job.latents[first:first + count]
            row += count
        decoder.decode_into(latents, images, len(pieces))
        row = 0
        for job, first, count in pieces:
            if count == job.n:  # the whole request: its rows of the batch are its answer, no copy
                job.images = images[row:row + count]
            else:  # one part of a request split across batches: into its own array
                self._rows(job, first, count)[...] = images[row:row + count]
            row += count

    def _rows(self, job: Job, first: int, count: int) -> np.ndarray:
        """Rows first..first+count of the job's own image array, allocated on its first batch."""
        if job.images is None:
            job.images = np.empty((job.n, *self.image_shape), job.dtype)
        return job.images[first:first + count]

    def _draw_seeded(self, jobs: list[Job]) -> None:
        """One draw per sampler key for every job of the batch that still needs its seeded latents."""
        groups: dict[Hashable, list[Job]] = {}
        for job in jobs:
            if job.latents is None and job.error is None and isinstance(job.source, SeededRows):
                groups.setdefault(job.source.key, []).append(job)
        for key, members in groups.items():
            seeds, rows = _seed_arrays(members)
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

    def _ensure_latents(self, job: Job) -> bool:
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


def _seed_arrays(jobs: list[Job]) -> tuple[np.ndarray, np.ndarray]:
    """The (seeds, rows) uint64 arrays of the jobs' SeededRows, in order: a handful of array operations per
    batch, however many one-seed requests it merged."""
    sources = [job.source for job in jobs]
    if len(jobs) == 1:
        return _as_arrays(jobs[0])
    if not all(isinstance(source.seeds, int) for source in sources):
        parts = [_as_arrays(job) for job in jobs]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    seeds = np.array([source.seeds for source in sources], np.uint64)
    firsts = np.array([source.rows for source in sources], np.uint64)
    counts = [job.n for job in jobs]
    if max(counts) == 1:
        return seeds, firsts
    # Sample i of the batch, in request j: row firsts[j] + (i - starts[j]) of seeds[j] (uint64 wraps both ways).
    lengths = np.array(counts, np.int64)
    starts = (np.cumsum(lengths) - lengths).astype(np.uint64)
    return np.repeat(seeds, lengths), np.arange(sum(counts), dtype=np.uint64) - np.repeat(starts - firsts, lengths)


def _as_arrays(job: Job) -> tuple[np.ndarray, np.ndarray]:
    source = job.source
    if isinstance(source.seeds, int):
        first = source.rows
        return np.full(job.n, source.seeds, np.uint64), np.arange(first, first + job.n, dtype=np.uint64)
    return source.seeds, source.rows
