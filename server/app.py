"""aegen-serve: the assembly. Config → core → each enabled listener; shut down in the reverse order.

    aegen-serve --repository model-repository --port 50051 --metrics-port 9464
    python -m server --repository model-repository          # the same, from a checkout

Start-up: the gRPC port and the HTTP/REST port (--http-port, the Open Inference Protocol) open at once with
health NOT_SERVING and /v2/health/ready 503, models load and warm up, then both say ready. SIGTERM (or
SIGINT): both listeners drain together (health NOT_SERVING, health Watch streams end, readiness 503, no new
calls or connections, in-flight calls get --grace-seconds to finish), then the core's batchers drain and the
metrics listener stops; exit 0. Bad configuration, an unusable device or a repository with nothing
loadable: one line on stderr, exit 2. With --workers N > 1 this process supervises N such servers sharing
the ports (server/workers.py); each of them runs `serve` as a worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence

from protos.cli import fail, run_async
from server.config import ConfigError, ServerConfig
from server.core.admission import Admission
from server.core.dataplane import DataPlane
from server.core.errors import ServerError
from server.core.registry import ModelRegistry
from server.core.runner import Device, select_device
from server.protocols.aegen_v1 import servicer as aegen_v1
from server.protocols.grpc_listener import GrpcListener, StartError
from server.protocols.oip import grpc_servicer as oip_grpc
from server.protocols.oip.http import HttpListener
from server.protocols.oip.models import OipModels
from server.telemetry.gpu_memory import REFRESH_SECONDS, GpuMemoryGauges, gpu_memory_metrics
from server.telemetry.logs import configure_logging
from server.telemetry.metrics import ServerMetrics
from server.workers import WorkerIdentity, run_workers

log = logging.getLogger("aegen.server")


async def serve(config: ServerConfig, worker: WorkerIdentity | None = None) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code. Raises ServerError when it cannot start.

    As one of --workers (`worker` given): the port is shared, metrics go to the parent through
    PROMETHEUS_MULTIPROC_DIR, and the server stops by itself should the parent disappear."""
    core = config.core
    device = select_device(core.execution)
    metrics = ServerMetrics(multiprocess=worker is not None)
    registry = ModelRegistry(core, device, metrics)
    plane = DataPlane(registry, core)

    oip = OipModels(plane)
    # One admission for every protocol: the excess of an overload is refused at once (core/admission.py).
    admission = Admission(config.process.max_inflight_calls, config.process.max_wait_seconds)

    def add_aegen_v1(server) -> str:
        aegen_v1.add_to_server(aegen_v1.GeneratorServicer(plane, metrics.calls("aegen_v1"), admission), server)
        return aegen_v1.SERVICE_NAME

    def add_oip(server) -> str:
        oip_grpc.add_to_server(oip_grpc.InferenceServicer(oip, metrics.calls("oip_grpc"), admission), server)
        return oip_grpc.SERVICE_NAME

    grpc_listener = GrpcListener(config, [add_aegen_v1, add_oip], reuse_port=worker is not None)
    await grpc_listener.start()
    http_listener = None
    metrics_http = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    background: list[asyncio.Task] = []
    if worker is not None:
        background.append(loop.create_task(_stop_when_orphaned(worker, stop)))
    try:
        if config.http.http_port:
            http_listener = HttpListener(config, oip, metrics.calls("oip_http"), reuse_port=worker is not None,
                                         admission=admission)
            await http_listener.start()
        if config.metrics.metrics_port and worker is None:
            metrics_http = _serve_metrics(metrics, config)
        log.info("listening", extra={"port": config.grpc.port, "http_port": config.http.http_port,
                                     "metrics_port": config.metrics.metrics_port,
                                     "tls": config.grpc.tls, "device": device.name,
                                     "event_loop": type(loop).__module__.split(".")[0],
                                     "repository": core.repository})
        if not await _until_loaded(registry, stop):
            return 0
        background += _gpu_memory_metrics(device, metrics)
        await grpc_listener.set_serving()
        if http_listener is not None:
            http_listener.set_serving()
        log.info("ready", extra={"models": [f"{m.name}:{m.version}" for m in plane.models()]})
        if core.repository_poll_seconds > 0:
            background.append(loop.create_task(registry.poll_forever(core.repository_poll_seconds)))
        await stop.wait()
        log.info("shutting down", extra={"grace_seconds": config.process.grace_seconds})
        for task in background:
            task.cancel()
        grace = config.process.grace_seconds
        await asyncio.gather(grpc_listener.drain(grace), *([http_listener.drain(grace)] if http_listener else []))
        log.info("stopped")
        return 0
    finally:
        for task in background:
            task.cancel()
        await grpc_listener.stop()
        if http_listener is not None:
            await http_listener.stop()
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


def _serve_metrics(metrics: ServerMetrics, config: ServerConfig):
    host, port = config.process.host, config.metrics.metrics_port
    try:
        return metrics.serve(host, port)
    except OSError as exc:
        raise StartError(f"cannot serve metrics on {host}:{port}: {exc.strerror}") from None


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        config = ServerConfig.from_args(argv)
    except ConfigError as exc:
        return fail("aegen-serve", exc)
    configure_logging(config.process.log_format, config.process.log_level)
    worker = WorkerIdentity.from_environ(os.environ)
    try:
        if worker is None and config.process.workers > 1:
            return run_async(run_workers(config, argv), config.process.event_loop)
        if worker is not None:
            _label_logs(worker)
        return run_async(serve(config, worker), config.process.event_loop)
    except ServerError as exc:
        return fail("aegen-serve", exc)


def _label_logs(worker: WorkerIdentity) -> None:
    """Every log record of a worker says which worker wrote it (all share the pod's stdout)."""

    def label(record: logging.LogRecord) -> bool:
        record.worker = worker.index
        return True

    for handler in logging.getLogger().handlers:
        handler.addFilter(label)


if __name__ == "__main__":
    sys.exit(main())
