"""What every gRPC protocol adapter shares: the one core-error → status table and the per-call wrapper.

`rpc` wraps a handler `method(self, request, context, call)` (a coroutine, or an async generator for a
server-streaming method) so that each call is counted in flight, timed, labelled with the model that served
it (`call.model`) and its status, and so that a core error (server/core/errors.py) aborts the call with its
status and message. An unexpected exception is logged with its traceback and answered INTERNAL without
details: the client never sees a traceback.

`add_service` registers a service's handlers with `parse_request` as every request deserializer: bytes that
do not parse as the method's request message become an `Unparsable` request, which the wrapper answers
INVALID_ARGUMENT with the parser's message (grpcio itself answers a deserializer's exception UNKNOWN).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from typing import Protocol

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError

from server.core.admission import Admission
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
    """What a call's metrics need beyond its method: which model served it; and its admission, where the
    handler admits the call itself once it knows the deadline (HTTP: parameters.timeout is in the body)."""

    __slots__ = ("admission", "admitted", "code", "deadline", "model")

    def __init__(self, admission: Admission | None = None, deadline: float | None = None) -> None:
        self.model = ""
        self.deadline = deadline  # time.monotonic(), or None: the gRPC call's, read once by the wrapper
        self.code = grpc.StatusCode.OK  # the gRPC wrapper's record of how the call ended
        self.admission = admission
        self.admitted = False

    def admit(self, deadline: float | None) -> None:
        """Admit the call (Overloaded when refused); a no-op without an admission."""
        if self.admission is not None and not self.admitted:
            self.admission.admit(deadline)
            self.admitted = True

    def release(self) -> None:
        if self.admitted:
            self.admission.release()
            self.admitted = False


class Unparsable:
    """A request whose bytes do not parse as the method's request message."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def parse_request(message: type):
    """A request deserializer for `message` that never raises: a parse failure is an `Unparsable`."""
    full_name = message.DESCRIPTOR.full_name

    def parse(data: bytes):
        try:
            return message.FromString(data)
        except (DecodeError, RecursionError, ValueError) as exc:  # RecursionError: past the nesting limit
            return Unparsable(f"the request does not parse as {full_name}: {exc or type(exc).__name__}")

    return parse


def check_parsed(request) -> None:
    """InvalidRequest for an `Unparsable` request (what `rpc` answers INVALID_ARGUMENT)."""
    if isinstance(request, Unparsable):
        raise InvalidRequest(request.reason)


def add_service(server: grpc.aio.Server, service: ServiceDescriptor, messages, behaviour, serializer) -> None:
    """Register every method of `service`: `behaviour(method)` is its handler, `messages` the module
    holding its request classes, `serializer` every answer's serializer."""
    handlers = {}
    for method in service.methods:
        if method.client_streaming and method.server_streaming:
            kind = grpc.stream_stream_rpc_method_handler
        elif method.server_streaming:
            kind = grpc.unary_stream_rpc_method_handler
        elif method.client_streaming:
            kind = grpc.stream_unary_rpc_method_handler
        else:
            kind = grpc.unary_unary_rpc_method_handler
        handlers[method.name] = kind(behaviour(method), response_serializer=serializer,
                                     request_deserializer=parse_request(getattr(messages, method.input_type.name)))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)


def status_of(exc: BaseException) -> grpc.StatusCode:
    for kind, code in STATUS.items():
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The call's deadline as time.monotonic(), or None."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


# The inference methods: what server/core/admission.py admits (or refuses at once under overload).
ADMITTED = frozenset({"GenerateSamples", "StreamSamples", "Encode", "Reconstruct", "ModelInfer"})


def _outcome(exc: BaseException, method: str) -> tuple[grpc.StatusCode, str | None]:
    """The status a handler's exception ends its call with, and the message to abort with (None: re-raise)."""
    if isinstance(exc, ServerError):
        return status_of(exc), str(exc)
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        return grpc.StatusCode.CANCELLED, None
    if isinstance(exc, Exception):
        log.exception("unexpected error", extra={"method": method})
        return grpc.StatusCode.INTERNAL, "internal error; the server log has the details"
    return grpc.StatusCode.INTERNAL, None  # SystemExit, KeyboardInterrupt: not ours to answer


async def _failed(call: Call, exc: BaseException, method: str, context: grpc.aio.ServicerContext) -> None:
    """(In an except block.) Record the call's status, then abort it with its message or re-raise."""
    call.code, message = _outcome(exc, method)
    if message is None:
        raise exc
    await context.abort(call.code, message)


def _finished(observer: CallObserver, method: str, call: Call, started: float) -> None:
    call.release()
    observer.call_finished(method, call.model, call.code.name, time.perf_counter() - started)


def rpc(method):
    """Wrap a unary or server-streaming handler; the servicer has `self.calls`, a CallObserver, and
    `self.admission`, an Admission or None. Written out in each wrapper rather than as an async context
    manager, which costs an async generator and two awaits per call (a measurable share of a one-sample
    call's own work)."""
    name = method.__name__
    admitted = name in ADMITTED

    if inspect.isasyncgenfunction(method):
        @functools.wraps(method)
        async def streaming(self, request, context: grpc.aio.ServicerContext):
            call, started = Call(self.admission if admitted else None, deadline_of(context)), time.perf_counter()
            self.calls.call_started()
            try:
                call.admit(call.deadline)
                check_parsed(request)
                async for reply in method(self, request, context, call):
                    yield reply
            except BaseException as exc:  # noqa: BLE001 - _failed re-raises or aborts
                await _failed(call, exc, name, context)
            finally:
                _finished(self.calls, name, call, started)

        return streaming

    @functools.wraps(method)
    async def unary(self, request, context: grpc.aio.ServicerContext):
        call, started = Call(self.admission if admitted else None, deadline_of(context)), time.perf_counter()
        self.calls.call_started()
        try:
            call.admit(call.deadline)
            check_parsed(request)
            return await method(self, request, context, call)
        except BaseException as exc:  # noqa: BLE001 - _failed re-raises or aborts
            await _failed(call, exc, name, context)
        finally:
            _finished(self.calls, name, call, started)

    return unary
