"""Start Seldon MLServer (its own venv, .venv-mlserver) serving the exported decoder through
bench/peers/mlserver_runtime.py, on free ports; always stopped on leaving the block."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from bench.common import ROOT, BenchError
from client.local import free_port
from protos.inference import grpc_service_pb2 as pb
from protos.inference import grpc_service_pb2_grpc as pb_grpc

VENV = ROOT / ".venv-mlserver"
MLSERVER = VENV / "bin" / "mlserver"
VERSION = "1.7.1"


@dataclass(frozen=True)
class MLServerSetting:
    """One MLServer configuration: adaptive batching (max_batch_size requests, max_batch_time seconds; 0/0 is
    off) and parallel_workers (0: inference in the server's own process; N: N worker processes)."""

    max_batch_size: int
    max_batch_time: float
    parallel_workers: int = 0

    @property
    def label(self) -> str:
        batching = (f"batching {self.max_batch_time * 1000:g} ms / {self.max_batch_size}"
                    if self.max_batch_size > 1 else "no batching")
        return f"MLServer, {batching}, {self.parallel_workers} worker(s)"


@dataclass
class RunningMLServer:
    setting: MLServerSetting
    target: str
    process: subprocess.Popen
    stats: Path

    def batch_stats(self) -> dict[str, int]:
        """{batches, samples} the runtime has decoded so far (written by its predict)."""
        try:
            return json.loads(self.stats.read_text())
        except (OSError, ValueError):
            return {"batches": 0, "samples": 0}


def check_installed() -> None:
    if not MLSERVER.exists():
        raise BenchError(f"{MLSERVER.relative_to(ROOT)} is missing: python3 -m venv .venv-mlserver && "
                         f".venv-mlserver/bin/pip install mlserver=={VERSION} (make bench-peers does it)")


@contextlib.contextmanager
def serve_mlserver(decoder: Path, model: str, setting: MLServerSetting, threads: int = 2,
                   timeout: float = 180.0) -> Iterator[RunningMLServer]:
    check_installed()
    directory = Path(tempfile.mkdtemp(prefix="aegen-mlserver-"))
    grpc_port = free_port()
    stats = directory / "batches.json"
    (directory / "settings.json").write_text(json.dumps({
        "http_port": free_port(), "grpc_port": grpc_port, "metrics_port": free_port(),
        "parallel_workers": setting.parallel_workers, "debug": False, "host": "127.0.0.1"}))
    (directory / model).mkdir()
    (directory / model / "model-settings.json").write_text(json.dumps({
        "name": model, "implementation": "bench.peers.mlserver_runtime.AegenDecoderRuntime",
        "max_batch_size": setting.max_batch_size, "max_batch_time": setting.max_batch_time,
        "parameters": {"uri": str(decoder), "extra": {"threads": threads, "stats": str(stats)}}}))
    log = open(directory / "mlserver.log", "wb")  # noqa: SIM115 - closed below
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLSERVER_LOGGING_LEVEL": "WARNING"}
    process = subprocess.Popen([str(MLSERVER), "start", str(directory)], cwd=directory, stdout=log,
                               stderr=subprocess.STDOUT, env=env, start_new_session=True)
    target = f"127.0.0.1:{grpc_port}"
    try:
        _wait_ready(target, model, process, timeout, directory / "mlserver.log")
        yield RunningMLServer(setting, target, process, stats)
    finally:
        _stop(process)
        log.close()
        shutil.rmtree(directory, ignore_errors=True)


def _wait_ready(target: str, model: str, process: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise BenchError(f"MLServer exited with code {process.returncode}:\n{_tail(log)}")
            try:
                if stub.ModelReady(pb.ModelReadyRequest(name=model), timeout=1).ready:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.5)
    raise BenchError(f"MLServer not ready after {timeout:g} s:\n{_tail(log)}")


def _stop(process: subprocess.Popen) -> None:
    # MLServer forks its inference workers: signal the whole process group it leads.
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


def _tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
