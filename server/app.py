"""aegen-serve: wire the servicer, health, reflection and metrics into one gRPC server, and run it.

    aegen-serve --repository model-repository --port 50051 --metrics-port 9464
    python -m server --repository model-repository          # the same, from a checkout

Start-up: the port opens at once with health NOT_SERVING, models load and warm up, then health turns
SERVING. SIGTERM (or SIGINT): health NOT_SERVING, health Watch streams end, no new calls, in-flight calls
get --grace-seconds to finish, exit 0. Bad configuration, an unusable device or a repository with nothing
loadable: one line on stderr, exit 2. With --workers N > 1 this process supervises N such servers sharing
the port (server/workers.py); each of them runs `serve` as a worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from server.config import HEALTH_SERVICES, ConfigError, ServerConfig
from server.core.errors import ServerError
from server.gpu_memory import REFRESH_SECONDS, GpuMemoryGauges, gpu_memory_metrics
from server.logs import configure_logging
from server.metrics import ServerMetrics
from server.models import ModelRegistry
from server.runner import Device, ExecutionConfig, select_device
from server.servicer import SERVICE_NAME, GeneratorServicer, add_to_server
from server.workers import WorkerIdentity, run_workers

log = logging.getLogger("aegen.server")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class StartError(ServerError):
    """The server cannot start: a port is taken, a TLS file is unreadable."""


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
    if config.max_connection_age_seconds > 0:
        # Long-lived HTTP/2 connections pin a client to one pod; closing them lets load spread to new pods.
        options += [("grpc.max_connection_age_ms", int(config.max_connection_age_seconds * 1000)),
                    ("grpc.max_connection_age_grace_ms", int(config.grace_seconds * 1000))]
    return options


async def serve(config: ServerConfig, worker: WorkerIdentity | None = None) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code. Raises ServerError when it cannot start.

    As one of --workers (`worker` given): the port is shared, metrics go to the parent through
    PROMETHEUS_MULTIPROC_DIR, and the server stops by itself should the parent disappear."""
    device = select_device(ExecutionConfig.from_server_config(config))
    metrics = ServerMetrics(multiprocess=worker is not None)
    registry = ModelRegistry(config, device, metrics)
    server = grpc.aio.server(options=server_options(config, reuse_port=worker is not None))
    add_to_server(GeneratorServicer(registry, config, metrics), server)
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for service in HEALTH_SERVICES:
        await health_servicer.set(service, NOT_SERVING)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server)
    _add_port(server, config)
    await server.start()
    metrics_http = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    background: list[asyncio.Task] = []
    if worker is not None:
        background.append(loop.create_task(_stop_when_orphaned(worker, stop)))
    try:
        if config.metrics_port and worker is None:
            metrics_http = _serve_metrics(metrics, config)
        log.info("listening", extra={"port": config.port, "metrics_port": config.metrics_port, "tls": config.tls,
                                     "device": device.name, "repository": config.repository})
        if not await _until_loaded(registry, stop):
            return 0
        background += _gpu_memory_metrics(device, metrics)
        for service in HEALTH_SERVICES:
            await health_servicer.set(service, SERVING)
        log.info("ready", extra={"models": [f"{m.name}:{m.number}" for m in registry.models()]})
        if config.repository_poll_seconds > 0:
            background.append(loop.create_task(registry.poll_forever(config.repository_poll_seconds)))
        await stop.wait()
        log.info("shutting down", extra={"grace_seconds": config.grace_seconds})
        await health_servicer.enter_graceful_shutdown()
        for task in background:
            task.cancel()
        await server.stop(config.grace_seconds)
        log.info("stopped")
        return 0
    finally:
        for task in background:
            task.cancel()
        await server.stop(0)
        await registry.close()
        if metrics_http is not None:
            metrics_http.shutdown()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def _gpu_memory_metrics(device: Device, metrics: ServerMetrics) -> list[asyncio.Task]:
    """GPU memory gauges on CUDA (after loading: the CUDA runtime is in the process by now)."""
    if device.name != "cuda":
        return []
    found = gpu_memory_metrics(metrics.registry, multiprocess=metrics.multiprocess)
    if isinstance(found, GpuMemoryGauges):  # a worker: the parent cannot call us at scrape time
        return [asyncio.get_running_loop().create_task(_refresh_gpu_memory(found))]
    return []


async def _refresh_gpu_memory(gauges: GpuMemoryGauges) -> None:
    while await asyncio.to_thread(gauges.refresh):
        await asyncio.sleep(REFRESH_SECONDS)


async def _stop_when_orphaned(worker: WorkerIdentity, stop: asyncio.Event) -> None:
    # A killed parent cannot forward SIGTERM: a worker left alone drains and exits like on SIGTERM.
    while worker.parent_alive():
        await asyncio.sleep(1.0)
    log.warning("parent process gone; shutting down", extra={"parent_pid": worker.parent_pid})
    stop.set()


async def _until_loaded(registry: ModelRegistry, stop: asyncio.Event) -> bool:
    """Load the models; False if told to stop first. ModelLoadError propagates."""
    loading = asyncio.ensure_future(registry.load_initial())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait((loading, stopping), return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not loading.done():
        loading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loading
        return False
    loading.result()
    return True


def _add_port(server: grpc.aio.Server, config: ServerConfig) -> None:
    address = f"{config.host}:{config.port}"
    try:
        if config.tls:
            credentials = grpc.ssl_server_credentials(
                [(_read(config.tls_key, "--tls-key"), _read(config.tls_cert, "--tls-cert"))])
            server.add_secure_port(address, credentials)
        else:
            server.add_insecure_port(address)
    except RuntimeError as exc:
        raise StartError(f"cannot listen on {address}: {exc}") from None


def _serve_metrics(metrics: ServerMetrics, config: ServerConfig):
    try:
        return metrics.serve(config.host, config.metrics_port)
    except OSError as exc:
        raise StartError(f"cannot serve metrics on {config.host}:{config.metrics_port}: {exc.strerror}") from None


def _read(path: str, flag: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise StartError(f"{flag} {path}: {exc.strerror}") from None


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        config = ServerConfig.from_args(argv)
    except ConfigError as exc:
        print(f"aegen-serve: error: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_format, config.log_level)
    worker = WorkerIdentity.from_environ(os.environ)
    try:
        if worker is None and config.workers > 1:
            return asyncio.run(run_workers(config, argv))
        if worker is not None:
            _label_logs(worker)
        return asyncio.run(serve(config, worker))
    except ServerError as exc:
        print(f"aegen-serve: error: {exc}", file=sys.stderr)
        return 2


def _label_logs(worker: WorkerIdentity) -> None:
    """Every log record of a worker says which worker wrote it (all share the pod's stdout)."""

    def label(record: logging.LogRecord) -> bool:
        record.worker = worker.index
        return True

    for handler in logging.getLogger().handlers:
        handler.addFilter(label)


if __name__ == "__main__":
    sys.exit(main())
