"""What the HTTP listener refuses before an endpoint runs: header blocks over --max-header-bytes (431) and
clients slower than --client-timeout-seconds (408), so that no client holds a connection, a task or memory
without bound.

- `LimitedH11Protocol` (uvicorn's h11 protocol): a request head still incomplete `timeout` seconds after the
  connection opened, or after the previous answer, is answered 408 and the connection closed (a client
  trickling its headers, or one that connects and sends nothing). h11 refuses an incomplete head over its
  buffer limit; uvicorn answers every such refusal 400, this answers it with h11's own hint (431).
- `limited(app)` (ASGI middleware): a complete head over the limit is 431 (h11 bounds only what is still
  incomplete: a head that arrives in one read passes it), and the body must arrive within `timeout` seconds
  of the head: past that, reading it raises `RequestTimeout`, which the endpoints answer 408.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from server.core.errors import ServerError

HEADER_TOO_LARGE = 431
TIMEOUT = 408
_REASONS = {400: b"Bad Request", HEADER_TOO_LARGE: b"Request Header Fields Too Large", TIMEOUT: b"Request Timeout"}


class RequestTimeout(ServerError):
    """The client did not send the request's body within --client-timeout-seconds: 408."""


class LimitedH11Protocol(H11Protocol):
    """Set `client_timeout` on a subclass (seconds; 0: none)."""

    client_timeout: float = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._refusal = 400
        self._head_timer: asyncio.TimerHandle | None = None
        next_event = self.conn.next_event

        def next_event_noting_why():
            try:
                return next_event()
            except h11.RemoteProtocolError as exc:
                self._refusal = exc.error_status_hint
                raise

        self.conn.next_event = next_event_noting_why

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._watch_head()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_head()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_watching()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        if self._refusal == HEADER_TOO_LARGE:
            msg = "the request's header block is larger than the server accepts (--max-header-bytes)"
        self._refuse(self._refusal if self._refusal in _REASONS else 400, msg)

    def _watch_head(self) -> None:
        """Time the request head while one is awaited; stop once it is complete."""
        awaiting = self.conn.their_state is h11.IDLE and (self.cycle is None or self.cycle.response_complete)
        if not awaiting or self.transport.is_closing():
            self._stop_watching()
        elif self._head_timer is None and self.client_timeout > 0:
            self._head_timer = self.loop.call_later(self.client_timeout, self._head_too_slow)

    def _stop_watching(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.conn.our_state is h11.IDLE:
            self._refuse(TIMEOUT, f"the request's head did not arrive within {self.client_timeout:g} s "
                                  f"(--client-timeout-seconds)")
        else:  # between two requests of a kept-alive connection: nothing to answer
            self.transport.close()

    def _refuse(self, status: int, message: str) -> None:
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"connection", b"close")]
        try:
            self.transport.write(self.conn.send(h11.Response(status_code=status, headers=headers,
                                                             reason=_REASONS[status])))
            self.transport.write(self.conn.send(h11.Data(data=message.encode())))
            self.transport.write(self.conn.send(h11.EndOfMessage()))
        except h11.LocalProtocolError:  # h11 is past the point of answering: just close
            pass
        self.transport.close()


def protocol(client_timeout: float, base: type[LimitedH11Protocol] = LimitedH11Protocol) -> type:
    """A protocol class with `client_timeout` set."""
    return type("ClientLimitedProtocol", (base,), {"client_timeout": client_timeout})


ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


def limited(app: ASGIApp, max_header_bytes: int, client_timeout: float,
            refuse: Callable[[int, str], Any]) -> ASGIApp:
    """`app` behind the head-size limit (431, answered by `refuse(status, message)`, an ASGI response) and
    the body deadline (`RequestTimeout` from `receive`)."""

    async def guarded(scope: dict, receive, send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") + sum(
            len(k) + len(v) + 4 for k, v in scope["headers"])
        if size > max_header_bytes:
            await refuse(HEADER_TOO_LARGE, f"the request's header block is {size} bytes, more than the "
                                           f"{max_header_bytes} the server accepts (--max-header-bytes)")(
                scope, receive, send)
            return
        deadline = [time.monotonic() + client_timeout if client_timeout > 0 else None]

        async def receive_in_time() -> dict:
            if deadline[0] is None:  # no limit, or the body is complete (later receives wait for a disconnect)
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline[0] - time.monotonic(), 0.0))
            except TimeoutError:
                raise RequestTimeout(f"the request's body did not arrive within {client_timeout:g} s "
                                     f"(--client-timeout-seconds)") from None
            if not message.get("more_body", False):
                deadline[0] = None
            return message

        await app(scope, receive_in_time, send)

    return guarded
