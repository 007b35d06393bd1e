"""What every gRPC protocol adapter shares: the one core-error → status table and the per-call wrapper.

`rpc` wraps a handler `method(self, request, context, call)` (a coroutine, or an async generator for a
server-streaming method) so that each call is counted in flight, timed, labelled with the model that served
it (`call.model`) and its status, and so that a core error (server/core/errors.py) aborts the call with its
status and message. An unexpected exception is logged with its traceback and answered INTERNAL without
details: the client never sees a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import time
from collections.abc import AsyncIterator
from typing import Protocol

import grpc

from server.core.errors import (
    DeadlineExceeded,
    InvalidRequest,
    ModelNotFound,
    QueueFull,
    ServerError,
    ShuttingDown,
)

log = logging.getLogger("aegen.server.grpc")

STATUS: dict[type[ServerError], grpc.StatusCode] = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    ModelNotFound: grpc.StatusCode.NOT_FOUND,
    QueueFull: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    ShuttingDown: grpc.StatusCode.UNAVAILABLE,
}


class CallObserver(Protocol):
    """Per-call telemetry (server/telemetry/metrics.py's RequestMetrics provides it)."""

    def call_started(self) -> None: ...
    def call_finished(self, method: str, model: str, code: str, seconds: float) -> None: ...


class Call:
    """What a call's metrics need beyond its method: which model served it."""

    __slots__ = ("model",)

    def __init__(self) -> None:
        self.model = ""


def status_of(exc: BaseException) -> grpc.StatusCode:
    for kind, code in STATUS.items():
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The call's deadline as time.monotonic(), or None."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


@contextlib.asynccontextmanager
async def observed_call(observer: CallObserver, method: str, context: grpc.aio.ServicerContext
                        ) -> AsyncIterator[Call]:
    call, code, started = Call(), grpc.StatusCode.OK, time.perf_counter()
    observer.call_started()
    try:
        yield call
    except ServerError as exc:
        code = status_of(exc)
        await context.abort(code, str(exc))
    except (asyncio.CancelledError, GeneratorExit):
        code = grpc.StatusCode.CANCELLED
        raise
    except Exception:
        code = grpc.StatusCode.INTERNAL
        log.exception("unexpected error", extra={"method": method})
        await context.abort(code, "internal error; the server log has the details")
    finally:
        observer.call_finished(method, call.model, code.name, time.perf_counter() - started)


def rpc(method):
    """Wrap a unary or server-streaming handler; the servicer has `self.calls`, a CallObserver."""
    name = method.__name__
    if inspect.isasyncgenfunction(method):
        @functools.wraps(method)
        async def streaming(self, request, context: grpc.aio.ServicerContext):
            async with observed_call(self.calls, name, context) as call:
                async for reply in method(self, request, context, call):
                    yield reply

        return streaming

    @functools.wraps(method)
    async def unary(self, request, context: grpc.aio.ServicerContext):
        async with observed_call(self.calls, name, context) as call:
            return await method(self, request, context, call)

    return unary
