"""Admission of inference calls: under overload, refuse the excess at once instead of queueing it.

One `Admission` per process is shared by every protocol. An inference call is refused (`Overloaded`, a
`QueueFull`: RESOURCE_EXHAUSTED over gRPC, 429 with Retry-After over HTTP) when

- `max_calls` inference calls are in flight already (--max-inflight-calls), or
- the calls ahead of it and itself would, at the rate calls completed over the last second, take longer to
  finish than half of what its own deadline leaves, or of `max_wait` seconds (--max-wait-seconds) when it has
  none (the margin because that rate varies).

So an accepted call can expect to finish within its deadline, and a refused one learns it at once and may
retry elsewhere. While nothing has completed in the last second (start-up, idle) only the count applies.
Transport-free: the protocols call `admit(deadline)` and, once the call has finished, `release()`.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

from server.core.errors import QueueFull

WINDOW_SECONDS = 1.0
MARGIN = 0.5  # a call is admitted when the expected wait is within half of what it may wait: rates vary


class Overloaded(QueueFull):
    """Too many inference calls in flight, or too long a wait ahead: refused at once."""


class Admission:
    def __init__(self, max_calls: int, max_wait: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_calls = max_calls  # 0: no limit
        self.max_wait = max_wait  # seconds; 0: no limit
        self.in_flight = 0
        self.refused = 0
        self._clock = clock
        self._completions: collections.deque[float] = collections.deque()

    def expected_wait(self) -> float | None:
        """Seconds until the calls in flight have finished, at the last second's completion rate; None when
        nothing completed in that second."""
        now = self._clock()
        while self._completions and self._completions[0] < now - WINDOW_SECONDS:
            self._completions.popleft()
        if not self._completions:
            return None
        return (self.in_flight + 1) / (len(self._completions) / WINDOW_SECONDS)  # the calls ahead, and this one

    def admit(self, deadline: float | None = None) -> None:
        """Count a call in, or raise Overloaded. `deadline` is a time.monotonic() value, or None."""
        if self.max_calls and self.in_flight >= self.max_calls:
            self.refused += 1
            raise Overloaded(f"the server is busy: {self.in_flight} inference calls in flight, the most it "
                             f"takes (--max-inflight-calls); try again later or elsewhere")
        if self.in_flight:
            budget = self.max_wait or None
            if deadline is not None:
                left = deadline - self._clock()
                budget = left if budget is None else min(budget, left)
            wait = self.expected_wait() if budget is not None else None
            if wait is not None and wait > MARGIN * budget:
                self.refused += 1
                raise Overloaded(f"the server is busy: the {self.in_flight} calls ahead need about {wait:.2f} s, "
                                 f"more than half of the {max(budget, 0):.2f} s this call may wait; try again later "
                                 f"or elsewhere")
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1
        self._completions.append(self._clock())
