"""The gRPC listener: one grpc.aio server carrying every gRPC service, health and reflection, on one port.

Health starts NOT_SERVING and turns SERVING once the core's models are warm (`set_serving`). At shutdown
health turns NOT_SERVING, its Watch streams end, and in-flight calls get the grace period (`stop`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from server.config import HEALTH_SERVICES, GrpcSettings, ServerConfig
from server.core.errors import ServerError

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

# A service registers itself on a grpc.aio.Server and names itself for reflection.
ServiceAdder = Callable[[grpc.aio.Server], str]


class StartError(ServerError):
    """A listener cannot start: a port is taken, a TLS file is unreadable."""


class HealthServicer(health.aio.HealthServicer):
    """grpc.health.v1 whose Watch streams end (status OK, after sending NOT_SERVING) at shutdown.

    The reference servicer keeps a Watch open forever, so one watching client would hold server.stop() for
    the whole grace period."""

    def __init__(self) -> None:
        super().__init__()
        self._statuses: dict[str, int] = {}
        self._changed = asyncio.Condition()
        self._closing = False

    async def set(self, service: str, status: int) -> None:
        await super().set(service, status)
        if not self._closing:
            await self._publish(lambda: self._statuses.__setitem__(service, status))

    async def enter_graceful_shutdown(self) -> None:
        await super().enter_graceful_shutdown()

        def close() -> None:
            self._closing = True
            self._statuses = dict.fromkeys(self._statuses, NOT_SERVING)

        await self._publish(close)

    async def Watch(self, request: health_pb2.HealthCheckRequest, context) -> None:
        last = None
        async with self._changed:
            while True:
                status = self._statuses.get(request.service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
                if status != last:
                    await context.write(health_pb2.HealthCheckResponse(status=status))
                    last = status
                if self._closing:
                    return
                await self._changed.wait()

    async def _publish(self, change) -> None:
        async with self._changed:
            change()
            self._changed.notify_all()


def server_options(config: ServerConfig, *, reuse_port: bool = False) -> list[tuple[str, int]]:
    limit = config.max_message_bytes()
    options = [
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
        # gRPC enables SO_REUSEPORT by default: a second server on a taken port would start silently. Workers
        # share their port on purpose (the parent checked that it was free).
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ]
    age = config.grpc.max_connection_age_seconds
    if age > 0:
        # Long-lived HTTP/2 connections pin a client to one pod; closing them lets load spread to new pods.
        options += [("grpc.max_connection_age_ms", int(age * 1000)),
                    ("grpc.max_connection_age_grace_ms", int(config.process.grace_seconds * 1000))]
    return options


class GrpcListener:
    def __init__(self, config: ServerConfig, services: Iterable[ServiceAdder], *, reuse_port: bool) -> None:
        self.config = config
        self.server = grpc.aio.server(options=server_options(config, reuse_port=reuse_port))
        names = [add(self.server) for add in services]
        self.health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self.server)

    async def start(self) -> None:
        for service in HEALTH_SERVICES:
            await self.health.set(service, NOT_SERVING)
        _add_port(self.server, self.config.process.host, self.config.grpc)
        await self.server.start()

    async def set_serving(self) -> None:
        for service in HEALTH_SERVICES:
            await self.health.set(service, SERVING)

    async def drain(self, grace: float) -> None:
        """Health NOT_SERVING (Watch streams end), no new calls, in-flight calls get `grace` seconds."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)

    async def stop(self) -> None:
        await self.server.stop(0)


def _add_port(server: grpc.aio.Server, host: str, settings: GrpcSettings) -> None:
    address = f"{host}:{settings.port}"
    try:
        if settings.tls:
            credentials = grpc.ssl_server_credentials(
                [(_read(settings.tls_key, "--tls-key"), _read(settings.tls_cert, "--tls-cert"))])
            server.add_secure_port(address, credentials)
        else:
            server.add_insecure_port(address)
    except RuntimeError as exc:
        raise StartError(f"cannot listen on {address}: {exc}") from None


def _read(path: str, flag: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise StartError(f"{flag} {path}: {exc.strerror}") from None
