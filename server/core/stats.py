"""Per model version statistics, as the Open Inference Protocol's ModelStatistics reports them (Triton's
semantics): requests that succeeded or failed with their cumulative durations, the cumulative time requests
waited in the batch queue, and the batches run (execution count), the samples decoded (inference count)
and their cumulative compute time. Plain integers updated on the event loop; no metrics library."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int) -> None:
        self.count += 1
        self.ns += ns


@dataclass
class VersionStats:
    success: Duration
    fail: Duration
    queue: Duration
    compute: Duration
    inference_count: int = 0  # samples decoded
    execution_count: int = 0  # batches decoded
    last_inference_ms: int = 0  # wall clock, milliseconds since the epoch

    def __init__(self) -> None:
        self.success, self.fail, self.queue, self.compute = Duration(), Duration(), Duration(), Duration()

    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        """Count the enclosed request as a success, or a failure if it raises (a cancelled call is neither)."""
        started = self.begin()
        try:
            yield
        except Exception:
            self.failed(started)
            raise
        self.succeeded(started)

    # The same, written out where a request's own cost matters: begin(), then succeeded or failed.
    @staticmethod
    def begin() -> int:
        return time.perf_counter_ns()

    def succeeded(self, started: int) -> None:
        self.success.add(time.perf_counter_ns() - started)
        self.last_inference_ms = time.time_ns() // 1_000_000

    def failed(self, started: int) -> None:
        self.fail.add(time.perf_counter_ns() - started)

    # BatchObserver (batcher.py), beside the telemetry's
    def queue_depth_changed(self, delta_samples: int) -> None:
        pass

    def queue_waited(self, seconds: list[float]) -> None:
        self.queue.count += len(seconds)
        self.queue.ns += sum(int(s * 1e9) for s in seconds)

    def batch_decoded(self, samples: int, seconds: float) -> None:
        self.compute.add(int(seconds * 1e9))
        self.inference_count += samples
        self.execution_count += 1


class BothObservers:
    """Two batch observers as one (telemetry's metrics and the version's statistics)."""

    def __init__(self, first, second) -> None:
        self._first, self._second = first, second

    def queue_depth_changed(self, delta_samples: int) -> None:
        self._first.queue_depth_changed(delta_samples)
        self._second.queue_depth_changed(delta_samples)

    def queue_waited(self, seconds: list[float]) -> None:
        self._first.queue_waited(seconds)
        self._second.queue_waited(seconds)

    def batch_decoded(self, samples: int, seconds: float) -> None:
        self._first.batch_decoded(samples, seconds)
        self._second.batch_decoded(samples, seconds)
