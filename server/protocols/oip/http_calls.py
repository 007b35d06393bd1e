"""What every HTTP endpoint shares: the one core-error → HTTP status table, the per-call wrapper, the request
body limit and the protocol messages' JSON form.

`observed("ModelInfer")` wraps an endpoint `handler(self, request, call)` so that each call is counted in
flight, timed, labelled with the model that served it (`call.model`) and its HTTP status, and so that a core
error (server/core/errors.py) becomes its status with `{"error": "<message>"}`, as Triton answers. An
unexpected exception is logged with its traceback and answered 500 without details.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from typing import Any

from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from starlette.requests import Request
from starlette.responses import Response

from server.core.errors import (
    DeadlineExceeded,
    InvalidRequest,
    ModelNotFound,
    QueueFull,
    ServerError,
    ShuttingDown,
)
from server.protocols.grpc_calls import Call
from server.protocols.oip.binary import JSON_CONTENT_TYPE
from server.protocols.oip.http_limits import RequestTimeout

log = logging.getLogger("aegen.server.http")


class BodyTooLarge(ServerError):
    """The request body is larger than --max-body-bytes: 413."""


STATUS: dict[type[ServerError], int] = {
    InvalidRequest: 400,
    ModelNotFound: 404,
    BodyTooLarge: 413,
    RequestTimeout: 408,
    QueueFull: 429,
    DeadlineExceeded: 504,
    ShuttingDown: 503,
}
# The client may try again: after a second for a full queue, elsewhere (another replica) for a stopping one.
RETRY_AFTER_SECONDS = {429: "1", 503: "1"}
INTERNAL_ERROR = "internal error; the server log has the details"
CLIENT_GONE = "499"  # the call was cancelled before it was answered (nginx's code; HTTP has none)


def status_of(exc: BaseException) -> int:
    for kind, status in STATUS.items():
        if isinstance(exc, kind):
            return status
    return 500


def json_response(document: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(document, separators=(",", ":")).encode(), status, headers,
                    media_type=JSON_CONTENT_TYPE)


def error_response(status: int, message: str) -> Response:
    retry = RETRY_AFTER_SECONDS.get(status)
    headers = {"Retry-After": retry} if retry else {}
    if status in (408, 413, 431):
        headers["Connection"] = "close"  # rather than reading the rest of a body that will not be used
    return json_response({"error": message}, status, headers)


def observed(method: str):
    """Wrap an endpoint `handler(self, request, call) -> Response`; `self.calls` is a CallObserver, and
    `self.admission` (an Admission, if there is one) is what ModelInfer's handler admits its call through."""

    def decorate(handler):
        @functools.wraps(handler)
        async def endpoint(self, request: Request) -> Response:
            # ModelInfer's handler admits the call once it has read the deadline from the body (call.admit).
            call = Call(getattr(self, "admission", None) if method == "ModelInfer" else None)
            code, started = "500", time.perf_counter()
            self.calls.call_started()
            try:
                try:
                    response = await handler(self, request, call)
                except ServerError as exc:
                    response = error_response(status_of(exc), str(exc))
                except asyncio.CancelledError:
                    code = CLIENT_GONE
                    raise
                except Exception:
                    log.exception("unexpected error", extra={"method": method})
                    response = error_response(500, INTERNAL_ERROR)
                code = str(response.status_code)
                return response
            finally:
                call.release()
                self.calls.call_finished(method, call.model, code, time.perf_counter() - started)

        return endpoint

    return decorate


async def read_body(request: Request, limit: int) -> bytes:
    """The whole request body; BodyTooLarge as soon as Content-Length or the bytes received pass `limit`."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"the request body is {declared} bytes, more than the {limit} the server accepts "
                           f"(--max-body-bytes)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"the request body is more than the {limit} bytes the server accepts "
                               f"(--max-body-bytes)")
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def read_json_object(request: Request, limit: int) -> dict[str, Any]:
    """A small JSON request body (the repository index's); an empty body is {}."""
    body = await read_body(request, limit)
    if not body.strip():
        return {}
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from None
    except RecursionError:  # arrays or objects nested thousands deep
        raise InvalidRequest("the request body is JSON nested too deeply") from None
    if not isinstance(document, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return document


# ----------------------------------------------------------------------------- protocol messages as JSON

_INT64_TYPES = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
                FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64}


def message_json(message: Message, *, complete: bool = False) -> dict[str, Any]:
    """A protocol message as Triton's HTTP JSON: proto field names, enums by name, and 64-bit integers as
    JSON numbers (ProtoJSON writes them as strings; perf_analyzer and tritonclient read numbers).

    `complete` also writes every field left at its default, nested messages included (perf_analyzer
    reads each statistics duration without checking that it is there)."""
    document = json_format.MessageToDict(message, preserving_proto_field_name=True,
                                         always_print_fields_with_no_presence=complete)
    _as_numbers(document, message.DESCRIPTOR, complete)
    return document


def _as_numbers(document: dict[str, Any], descriptor: Descriptor, complete: bool) -> None:
    for field in descriptor.fields:
        kind = field.message_type
        if field.name not in document:
            if complete and kind is not None and not field.is_repeated and field.containing_oneof is None:
                document[field.name] = message_json(message_factory.GetMessageClass(kind)(), complete=True)
            continue
        value = document[field.name]
        if kind is not None and kind.GetOptions().map_entry:
            entry = kind.fields_by_name["value"]
            for key in value:
                value[key] = _field_value(value[key], entry, complete)
        elif field.is_repeated:
            document[field.name] = [_field_value(v, field, complete) for v in value]
        else:
            document[field.name] = _field_value(value, field, complete)


def _field_value(value: Any, field: FieldDescriptor, complete: bool) -> Any:
    if field.message_type is not None and isinstance(value, dict):
        _as_numbers(value, field.message_type, complete)
        return value
    return int(value) if field.type in _INT64_TYPES else value
