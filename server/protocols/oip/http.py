"""The Open Inference Protocol over HTTP/REST (KServe v2, as Triton serves it), on --http-port.

    GET  /v2                                   server metadata
    GET  /v2/health/live, /v2/health/ready     200, or 503 until the models are warm and from SIGTERM on
    GET  /v2/models/{m}[/versions/{v}]         model metadata         .../ready    model readiness
    GET  /v2/models/{m}[/versions/{v}]/config  model configuration    .../stats    statistics
    POST /v2/models/{m}[/versions/{v}]/infer   inference: JSON tensors, or Triton's binary-tensor extension
    GET  /v2/models/stats                      every model's statistics
    POST /v2/repository/index                  the models and versions, with their states
    GET  /, /ui/...                            the latent explorer page (server/ui; --no-ui turns it off)

The endpoints only decode, call `OipModels` (models.py) and encode; binary.py parses and builds inference
bodies and http_calls.py maps errors to statuses. The app runs on uvicorn's server inside the process's
event loop, beside the gRPC server, on a socket bound here (SO_REUSEPORT for --workers); the process owns
the signals.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from server import ui as explorer
from server.config import ServerConfig
from server.core.admission import Admission
from server.core.errors import InvalidRequest
from server.protocols.grpc_calls import Call, CallObserver
from server.protocols.grpc_listener import StartError
from server.protocols.oip import binary, http_limits
from server.protocols.oip.http_calls import (
    error_response,
    json_response,
    message_json,
    observed,
    read_body,
    read_json_object,
)
from server.protocols.oip.models import OipModels

log = logging.getLogger("aegen.server.http")

_JOIN_AT_MOST = 1 << 20  # bytes of one response joined into one write
_KEEP_ALIVE_SECONDS = 75  # longer than clients' usual idle pools, so the server is not the one that hangs up


class Endpoints:
    """The routes' handlers, over one OipModels; `serving` is what the readiness endpoints report."""

    def __init__(self, oip: OipModels, calls: CallObserver, max_body_bytes: int) -> None:
        self.oip = oip
        self.calls = calls
        self.max_body_bytes = max_body_bytes
        self.serving = False

    def routes(self) -> list[Route]:
        model = "/v2/models/{model}"
        version = "/v2/models/{model}/versions/{version}"
        routes = [Route("/v2", self.server_metadata), Route("/v2/health/live", self.server_live),
                  Route("/v2/health/ready", self.server_ready),
                  Route("/v2/models/stats", self.model_statistics),
                  Route("/v2/repository/index", self.repository_index, methods=["POST"])]
        for prefix in (model, version):
            routes += [Route(prefix, self.model_metadata), Route(prefix + "/ready", self.model_ready),
                       Route(prefix + "/config", self.model_config),
                       Route(prefix + "/stats", self.model_statistics),
                       Route(prefix + "/infer", self.model_infer, methods=["POST"])]
        return routes

    @observed("ServerLive")
    async def server_live(self, request: Request, call: Call) -> Response:
        return json_response({"live": True})

    @observed("ServerReady")
    async def server_ready(self, request: Request, call: Call) -> Response:
        ready = self.serving and self.oip.plane.ready()
        return json_response({"ready": ready}, 200 if ready else 503)

    @observed("ServerMetadata")
    async def server_metadata(self, request: Request, call: Call) -> Response:
        return json_response(message_json(self.oip.server_metadata()))

    @observed("ModelReady")
    async def model_ready(self, request: Request, call: Call) -> Response:
        name, version = _model(request, call, self.oip)
        self.oip.view(name, version)  # ModelNotFound (404) names what is loaded
        return json_response({"name": name, "ready": self.serving}, 200 if self.serving else 503)

    @observed("ModelMetadata")
    async def model_metadata(self, request: Request, call: Call) -> Response:
        return json_response(message_json(self.oip.metadata(*_model(request, call, self.oip))))

    @observed("ModelConfig")
    async def model_config(self, request: Request, call: Call) -> Response:
        return json_response(message_json(self.oip.config(*_model(request, call, self.oip))))

    @observed("ModelStatistics")
    async def model_statistics(self, request: Request, call: Call) -> Response:
        name, version = _model(request, call, self.oip) if "model" in request.path_params else ("", "")
        return json_response(message_json(self.oip.statistics_response(name, version), complete=True))

    @observed("RepositoryIndex")
    async def repository_index(self, request: Request, call: Call) -> Response:
        ready = (await read_json_object(request, self.max_body_bytes)).get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidRequest(f"'ready' must be true or false, got {ready!r}")
        return json_response(message_json(self.oip.index_response(ready_only=ready)).get("models", []))

    @observed("ModelInfer")
    async def model_infer(self, request: Request, call: Call) -> Response:
        name, version = _model(request, call, self.oip)
        view = self.oip.view(name, version)  # an unknown model is 404 whatever the body holds
        body = await read_body(request, self.max_body_bytes)
        parsed = binary.parse_request(body, request.headers.get(binary.HEADER_LENGTH))
        header = parsed.header
        inputs = binary.decode_inputs(parsed)
        parameters = header.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise InvalidRequest("'parameters' must be an object")
        listed = binary.requested_outputs(header, view.output_names) if header.get("outputs") else []
        deadline = _deadline(parameters)
        call.admit(deadline)  # refused at once under overload (server/core/admission.py)
        result = await self.oip.infer(name, version, inputs, parameters, [n for n, _ in listed] or None,
                                      deadline)
        # Outputs nobody listed go binary as the request's parameters.binary_data_output says.
        binary_output = dict(listed or binary.requested_outputs({"parameters": parameters},
                                                                [n for n, _ in result.outputs]))
        head: dict[str, Any] = {"model_name": name, "model_version": str(result.view.model.version)}
        if "id" in header:
            head["id"] = header["id"]
        content, header_length = binary.build_response(
            head, [binary.OutputTensor(n, array, binary_output[n]) for n, array in result.outputs])
        if header_length is None:
            return Response(content, media_type=binary.JSON_CONTENT_TYPE)
        return Response(content, headers={binary.HEADER_LENGTH: str(header_length)},
                        media_type=binary.BINARY_CONTENT_TYPE)


def _model(request: Request, call: Call, oip: OipModels) -> tuple[str, str]:
    name = request.path_params["model"]
    call.model = oip.label(name)
    return name, request.path_params.get("version", "")


def _deadline(parameters: dict[str, Any]) -> float | None:
    """tritonclient's `timeout` request parameter (microseconds) as a time.monotonic() deadline."""
    timeout = parameters.get("timeout")
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 0:
        raise InvalidRequest(f"parameters.timeout must be a non-negative integer (microseconds), got {timeout!r}")
    return time.monotonic() + timeout / 1e6 if timeout else None


async def _no_route(request: Request, exc: HTTPException) -> Response:
    if exc.status_code == 404:
        return error_response(404, f"no such endpoint: {request.method} {request.url.path}")
    if exc.status_code == 405:
        return error_response(405, f"{request.url.path} does not take {request.method}")
    return error_response(exc.status_code, str(exc.detail))


def build_app(endpoints: Endpoints, ui: bool = False) -> Starlette:
    """The API's routes; with `ui`, the latent explorer's page at / as well (server/ui, --no-ui)."""
    routes: list[BaseRoute] = [*endpoints.routes(), *(explorer.routes() if ui else [])]
    return Starlette(routes=routes, exception_handlers={HTTPException: _no_route})


# ------------------------------------------------------------------------------------------ listener


class _OneWrite:
    """A transport whose writes within one event-loop step leave as one write.

    uvicorn's h11 protocol writes the status line and headers, the body and the end of the message
    separately; joined, each response leaves in one send() (asyncio already sets TCP_NODELAY), so no
    client waits on a delayed ACK for the second half of an answer."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not data:
            return
        if not self._pending:
            asyncio.get_running_loop().call_soon(self.flush)
        self._pending.append(data)

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        if not pending or self._transport.is_closing():
            return
        if len(pending) > 1 and sum(map(len, pending)) <= _JOIN_AT_MOST:
            pending = [b"".join(pending)]
        for data in pending:  # a large body fills whole segments anyway: not worth copying
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str):
        return getattr(self._transport, name)


class _Protocol(http_limits.LimitedH11Protocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_OneWrite(transport))  # type: ignore[arg-type]


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):
        yield  # app.py owns SIGTERM/SIGINT and calls drain()


class HttpListener:
    """The HTTP/REST side of the Open Inference Protocol on config.process.host:config.http.http_port."""

    def __init__(self, config: ServerConfig, oip: OipModels, calls: CallObserver, *, reuse_port: bool,
                 admission: Admission | None = None) -> None:
        self.host, self.port = config.process.host, config.http.http_port
        self.reuse_port = reuse_port
        self.endpoints = Endpoints(oip, calls, config.http.max_body_bytes)
        self.endpoints.admission = admission  # ModelInfer admits its calls through it (http_calls.observed)
        limits = config.http  # header size (431) and slow clients (408): http_limits.py
        app = http_limits.limited(build_app(self.endpoints, config.http.ui), limits.max_header_bytes,
                                  limits.client_timeout_seconds, error_response)
        self._uvicorn = uvicorn.Config(
            app, lifespan="off", http=http_limits.protocol(limits.client_timeout_seconds, _Protocol), ws="none",
            log_config=None, access_log=False, server_header=False, proxy_headers=False,
            timeout_keep_alive=_KEEP_ALIVE_SECONDS, timeout_graceful_shutdown=config.process.grace_seconds,
            h11_max_incomplete_event_size=limits.max_header_bytes)
        # uvicorn's own start/stop lines ("press CTRL+C to quit") would describe a server that is not ours.
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
        self._server: _Server | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        sock = _bind(self.host, self.port, self.reuse_port)
        self._server = _Server(self._uvicorn)
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:  # startup creates the asyncio server on the bound socket
            if self._task.done():
                self._task.result()
                raise StartError(f"the HTTP server on {self.host}:{self.port} stopped while starting")
            await asyncio.sleep(0.001)

    def set_serving(self) -> None:
        self.endpoints.serving = True

    async def drain(self, grace: float) -> None:
        """Ready turns false (503) at once, no new connections, in-flight requests get `grace` seconds."""
        self.endpoints.serving = False
        if self._server is None or self._task is None:
            return
        self._server.config.timeout_graceful_shutdown = grace
        for listener in self._server.servers:  # no new connection from now on: uvicorn's own loop would
            listener.close()  # notice should_exit only within 0.1 s, and serve what connected meanwhile
        self._server.should_exit = True
        await self._task

    async def stop(self) -> None:
        self.endpoints.serving = False
        if self._server is None or self._task is None:
            return
        if not self._task.done():
            self._server.config.timeout_graceful_shutdown = 0
            self._server.should_exit = self._server.force_exit = True
        try:
            await self._task
        except Exception:
            log.exception("the HTTP server failed while stopping")
        for connection in list(self._server.server_state.connections):
            connection.transport.close()


def _bind(host: str, port: int, reuse_port: bool) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise StartError(f"cannot listen on {host}:{port} (HTTP): {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no conflict
        if reuse_port:  # --workers: every worker listens on the port; the parent checked that it was free
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(2048)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise StartError(f"cannot listen on {host}:{port} (HTTP): {exc.strerror or exc}") from None
    return sock
