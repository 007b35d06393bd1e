"""Shared pytest fixtures: a running server (owned by the server work; other tests reuse them).

`aegen_server` is a REAL `python -m server` process on 127.0.0.1 with free ports, serving a copy of the
exported `model_repository` on CPU; it is started once per session. It unpacks as
(target, metrics_url, process), and has helpers (`metrics_text()`, `log_text()`).
`start_aegen_server(repository, tmp_dir, *flags)` starts another one with custom flags (call `.stop()`);
the `server_factory` fixture does that and stops them all at teardown.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from client import local
from client.local import free_port
from export.repository import VersionWriter, load_version

ROOT = Path(__file__).resolve().parents[2]

# Small buckets keep warm-up (every power of two up to the batch size) quick on a 2-core CI box.
TEST_FLAGS = ("--max-batch-size", "256", "--intra-op-threads", "1", "--repository-poll-seconds", "0")


@dataclass
class RunningServer:
    target: str
    metrics_url: str
    process: subprocess.Popen
    repository: Path
    log_path: Path
    _log_file: object = field(repr=False, default=None)
    http_url: str = ""  # the Open Inference Protocol's HTTP/REST side, e.g. http://127.0.0.1:PORT

    def __iter__(self):
        return iter((self.target, self.metrics_url, self.process))

    def metrics_text(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=10) as response:
            return response.read().decode()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait; returns the exit code (kills it if it does not stop in time)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log_file is not None:
            self._log_file.close()
        return self.process.returncode


def launch_aegen_server(repository: Path, tmp_dir: Path, *flags: str, env: dict | None = None) -> RunningServer:
    """Start `python -m server` without waiting for it; see wait_until_serving."""
    port, metrics_port, http_port = free_port(), free_port(), free_port()
    log_path = Path(tmp_dir) / f"server-{port}.log"
    log_file = open(log_path, "wb")  # noqa: SIM115 - the server writes to it until stop() closes it
    command = [sys.executable, "-m", "server", "--repository", str(repository), "--host", "127.0.0.1",
               "--port", str(port), "--metrics-port", str(metrics_port), "--http-port", str(http_port),
               "--device", "cpu", "--log-format", "json",
               *TEST_FLAGS, *flags]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    process = subprocess.Popen(command, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT, env=environment)
    return RunningServer(f"127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics", process,
                         Path(repository), log_path, log_file, http_url=f"http://127.0.0.1:{http_port}")


def wait_until_serving(server: RunningServer, timeout: float = 90) -> None:
    try:
        local.wait_until_serving(server.target, server.process, timeout)
    except local.NotServing as exc:
        server.stop()
        raise RuntimeError(f"{exc}:\n{server.log_text()}") from None


def promtool_check_metrics(exposition: str) -> None:
    """`promtool check metrics` (Debian's prometheus package) must accept the exposition; skip without it."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus; `make tools`)")
    result = subprocess.run([promtool, "check", "metrics"], input=exposition, text=True,
                            check=False, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """Poll `condition` until it holds; AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def start_aegen_server(repository: Path, tmp_dir: Path, *flags: str, env: dict | None = None) -> RunningServer:
    """Start a server and wait until its health says SERVING."""
    server = launch_aegen_server(repository, tmp_dir, *flags, env=env)
    wait_until_serving(server)
    return server


def copy_repository(repository: Path, destination: Path) -> Path:
    """Servers that get new versions need their own copy: the shared repository stays read-only."""
    shutil.copytree(repository, destination)
    return destination


@pytest.fixture(scope="session")
def aegen_server(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A real server on 127.0.0.1 serving the exported digits-vae and digits-ae on CPU."""
    tmp = tmp_path_factory.mktemp("aegen-server")
    server = start_aegen_server(copy_repository(model_repository, tmp / "repository"), tmp)
    yield server
    server.stop()


@pytest.fixture
def server_factory(model_repository: Path, tmp_path: Path) -> Iterator[Callable[..., RunningServer]]:
    """server_factory(*flags, repository=None, wait=True) → RunningServer; all are stopped at teardown."""
    servers: list[RunningServer] = []

    def start(*flags: str, repository: Path | None = None, wait: bool = True) -> RunningServer:
        repo = repository or copy_repository(model_repository, tmp_path / f"repository-{len(servers)}")
        server = launch_aegen_server(repo, tmp_path, *flags)
        servers.append(server)
        if wait:
            wait_until_serving(server)
        return server

    yield start
    for server in servers:
        server.stop()


def publish_copy(repository: Path, name: str, version: int, *, name_as: str | None = None):
    """Publish a version's files again as the next version (of `name_as`), through the format module."""
    source = load_version(repository, name, version)
    target = name_as or name
    with VersionWriter(repository, target) as writer:
        for entry in source.path.iterdir():
            if entry.name != "manifest.json":
                shutil.copy2(entry, writer.path / entry.name)
        return writer.commit(lambda v: dataclasses.replace(source.manifest, name=target, version=v))


def wait_for_log(server, message: str, version: int) -> None:
    def logged() -> bool:
        for line in server.log_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if entry.get("message") == message and entry.get("version") == version:
                return True
        return False

    wait_until(logged, f"log {message!r} for version {version}")
