"""--workers N: N server processes on one port, each with its own onnxruntime sessions and batcher.

One Python gRPC process is wire-bound well below what one GPU decodes (docs/benchmarks/gpu.md), so several processes share
the port through SO_REUSEPORT, the way grpc's examples/python/multiprocessing does: the kernel spreads new
connections over the workers. The parent binds no gRPC port and loads no model; it

- starts each worker as `python -m server <the same flags>` with WORKER_ENV set (a fresh interpreter: no
  forked gRPC or CUDA state) and PROMETHEUS_MULTIPROC_DIR pointing at a fresh directory, so prometheus-client
  starts in multiprocess mode in every worker;
- serves /metrics on --metrics-port: the workers' metric files, merged;
- on SIGTERM/SIGINT forwards SIGTERM to every worker (each drains within --grace-seconds, as one process
  does) and exits 0 once all have exited 0;
- when a worker dies unexpectedly, logs it, stops the others and exits non-zero: Kubernetes restarts the pod.
  (Restarting one worker in place would hide a crash loop from the pod's restart count.)

Each worker serves grpc.health.v1 itself (NOT_SERVING until its models are warm) and exits on its own if
the parent disappears. The metrics directory is removed on exit.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from export.repository import RepositoryError, list_models
from server.config import ServerConfig
from server.core.errors import ServerError

log = logging.getLogger("aegen.server.workers")

WORKER_ENV = "AEGEN_INTERNAL_WORKER"  # "<index>:<parent pid>"; set by the parent only, not a setting
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_KILL_AFTER_GRACE_SECONDS = 10.0  # beyond --grace-seconds, for a worker's own teardown
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])


class WorkersError(ServerError):
    """The workers cannot start: the port is taken, the repository has no models."""


@dataclass(frozen=True)
class WorkerIdentity:
    index: int
    parent_pid: int

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> WorkerIdentity | None:
        value = environ.get(WORKER_ENV)
        if not value:
            return None
        index, parent = value.split(":")
        return cls(int(index), int(parent))

    def parent_alive(self) -> bool:
        return os.getppid() == self.parent_pid


async def run_workers(config: ServerConfig, argv: Sequence[str]) -> int:
    """Start config.workers workers with `argv`, supervise them; the exit code. Raises WorkersError."""
    _check_port_free(config.process.host, config.grpc.port)
    if config.http.http_port:
        _check_port_free(config.process.host, config.http.http_port)
    _check_repository(config)
    directory = tempfile.mkdtemp(prefix="aegen-metrics-")
    metrics_http = None
    workers: list[asyncio.subprocess.Process] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # before the first worker: a SIGTERM now still stops them all
        loop.add_signal_handler(sig, stop.set)
    try:
        if config.metrics.metrics_port:
            metrics_http = _serve_metrics(config, directory)
        for index in range(config.process.workers):
            workers.append(await _start_worker(index, argv, directory))
        log.info("workers started", extra={"workers": [w.pid for w in workers], "port": config.grpc.port,
                                           "metrics_port": config.metrics.metrics_port})
        return await _supervise(workers, stop, config.process.grace_seconds, directory)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        for worker in workers:
            if worker.returncode is None:
                worker.kill()
                await worker.wait()
        if metrics_http is not None:
            metrics_http.shutdown()
        shutil.rmtree(directory, ignore_errors=True)


async def _start_worker(index: int, argv: Sequence[str], directory: str) -> asyncio.subprocess.Process:
    path = os.environ.get("PYTHONPATH", "")
    environment = {**os.environ, WORKER_ENV: f"{index}:{os.getpid()}", MULTIPROC_ENV: directory,
                   # `-m server` must find this very package, whatever the working directory.
                   "PYTHONPATH": os.pathsep.join(p for p in (_PACKAGE_ROOT, path) if p)}
    return await asyncio.create_subprocess_exec(sys.executable, "-m", "server", *argv, env=environment)


async def _supervise(workers: list[asyncio.subprocess.Process], stop: asyncio.Event, grace_seconds: float,
                     directory: str) -> int:
    from prometheus_client.multiprocess import mark_process_dead

    exits = {asyncio.ensure_future(w.wait()): w for w in workers}
    stopping = asyncio.ensure_future(stop.wait())
    try:
        done, _ = await asyncio.wait([*exits, stopping], return_when=asyncio.FIRST_COMPLETED)
        died = [exits[t] for t in done if t in exits]
        code = 0
        if died and not stop.is_set():
            worker = died[0]
            log.error("worker exited unexpectedly; stopping the others",
                      extra={"worker_pid": worker.pid, "exit_code": worker.returncode})
            code = worker.returncode if worker.returncode and worker.returncode > 0 else 1
        else:
            log.info("shutting down workers", extra={"grace_seconds": grace_seconds})
        for worker in workers:
            if worker.returncode is None:
                worker.send_signal(signal.SIGTERM)
        _, late = await asyncio.wait(exits, timeout=grace_seconds + _KILL_AFTER_GRACE_SECONDS)
        for task in late:
            log.error("worker did not stop in time; killing it", extra={"worker_pid": exits[task].pid})
            exits[task].kill()
        await asyncio.gather(*exits)
        for worker in workers:
            mark_process_dead(worker.pid, directory)
        if code == 0 and any(w.returncode != 0 for w in workers):
            code = 1
        log.info("stopped", extra={"exit_codes": [w.returncode for w in workers]})
        return code
    finally:
        stopping.cancel()


def _check_port_free(host: str, port: int) -> None:
    # Workers bind with SO_REUSEPORT, so a server already on the port would silently share it: refuse first.
    # (This probe sets no SO_REUSEPORT, so it fails against any listener.)
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does: TIME_WAIT is no conflict
            probe.bind(address)
    except OSError as exc:
        raise WorkersError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _check_repository(config: ServerConfig) -> None:
    # A repository every worker would refuse is one line from the parent, not one per worker.
    if config.core.models:
        return
    try:
        if not list_models(Path(config.core.repository)):
            raise WorkersError(f"{config.core.repository}: no models in the repository")
    except RepositoryError as exc:
        raise WorkersError(str(exc)) from None


def _serve_metrics(config: ServerConfig, directory: str):
    from server.telemetry.metrics import serve_multiprocess

    host, port = config.process.host, config.metrics.metrics_port
    try:
        return serve_multiprocess(host, port, directory)
    except OSError as exc:
        raise WorkersError(f"cannot serve metrics on {host}:{port}: {exc.strerror}") from None
