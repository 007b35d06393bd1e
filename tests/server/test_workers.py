"""--workers 2: real worker processes sharing one port on 127.0.0.1, their merged metrics, and their lifecycle."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from client.client import CHANNEL_OPTIONS, AegenClient
from protos.aegen.v1 import generator_pb2_grpc
from tests.plugins.server import (
    ROOT,
    copy_repository,
    free_port,
    launch_aegen_server,
    promtool_check_metrics,
    wait_until,
    wait_until_serving,
)

VAE = "digits-vae"
CHANNELS = 24  # the kernel spreads connections at random: all 24 on one of 2 workers has odds 2^-23


def _start_workers(model_repository: Path, tmp: Path, started: list, *flags: str):
    # TMPDIR shows where the parent put PROMETHEUS_MULTIPROC_DIR, so a test can see it removed.
    (tmp / "tmp").mkdir(exist_ok=True)
    server = launch_aegen_server(copy_repository(model_repository, tmp / "repository"), tmp, "--workers", "2",
                                 *flags, env={"TMPDIR": str(tmp / "tmp")})
    started.append(server)  # the caller stops it, whatever happens next
    wait_until_serving(server)
    wait_until(lambda: len(_model_info(server)) == 4, "both workers to load both models")
    return server


@pytest.fixture(scope="module")
def workers_server(model_repository: Path, tmp_path_factory: pytest.TempPathFactory):
    started: list = []
    try:
        yield _start_workers(model_repository, tmp_path_factory.mktemp("workers"), started)
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def start_workers(model_repository: Path, tmp_path: Path):
    """start_workers(*flags) → a --workers 2 server with both workers warm; stopped at teardown."""
    started: list = []
    yield lambda *flags: _start_workers(model_repository, tmp_path, started, *flags)
    for server in started:
        server.stop()


def test_same_seed_same_bytes_whichever_worker_answers(workers_server):
    clients = [_own_connection(workers_server.target) for _ in range(CHANNELS)]
    try:
        with ThreadPoolExecutor(8) as pool:
            uint8 = list(pool.map(lambda c: c.generate(VAE, 20, seed=7).images.tobytes(), clients))
            float32 = list(pool.map(lambda c: c.generate(VAE, 3, seed=11, dtype="float32").images.tobytes(),
                                    clients))
        connections = _connections_per_worker(workers_server)
    finally:
        for client in clients:
            client.close()
    assert len(set(uint8)) == 1 and len(uint8[0]) == 20 * 784
    assert len(set(float32)) == 1 and len(float32[0]) == 3 * 784 * 4
    assert len(connections) == 2 and all(count > 0 for count in connections.values()), connections


def test_metrics_sum_over_workers_and_name_each_worker(workers_server):
    before = _samples(workers_server.metrics_text())
    clients = [_own_connection(workers_server.target) for _ in range(CHANNELS)]
    try:
        for client in clients:
            client.generate(VAE, 5, seed=1)
        with pytest.raises(grpc.RpcError):
            clients[0].generate(VAE, 0)
    finally:
        for client in clients:
            client.close()
    after = _samples(workers_server.metrics_text())

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    ok = {"protocol": "aegen_v1", "method": "GenerateSamples", "model": VAE, "code": "OK"}
    assert delta("aegen_requests_total", **ok) == CHANNELS
    assert delta("aegen_request_duration_seconds_count", **ok) == CHANNELS
    assert delta("aegen_requests_total", **{**ok, "code": "INVALID_ARGUMENT"}) == 1
    assert delta("aegen_samples_generated_total", model=VAE) == 5 * CHANNELS
    assert after[("aegen_requests_in_flight", ())] == 0
    assert after[("aegen_queue_depth_samples", (("model", VAE),))] == 0
    infos = _model_info(workers_server)
    assert {s.labels["pid"] for s in infos} == set(map(str, _worker_pids(workers_server)))
    assert {(s.labels["name"], s.labels["device"], s.value) for s in infos} == {
        (VAE, "cpu", 1.0), ("digits-ae", "cpu", 1.0)}


def test_promtool_accepts_the_merged_metrics(workers_server):
    with AegenClient(workers_server.target, timeout=30) as client:
        client.generate(VAE, 3)
    promtool_check_metrics(workers_server.metrics_text())


_WORKER_METRICS = """
from server.core.cudart import CudaRuntime
from server.telemetry.gpu_memory import gpu_memory_metrics
from server.telemetry.metrics import ServerMetrics

def mem_get_info(free, total):
    free.contents.value, total.contents.value = 3 << 30, 80 << 30
    return 0

metrics = ServerMetrics(multiprocess=True)
metrics.model_loaded("m", 1, "cuda", "CUDAExecutionProvider")
metrics.model_loaded("m", 2, "cuda", "CUDAExecutionProvider")
metrics.model_unloaded("m", 1)
gpu_memory_metrics(metrics.registry, multiprocess=True, find_runtime=lambda: CudaRuntime(mem_get_info))
"""


def test_merged_metrics_drop_retired_versions_and_keep_worker_gpu_memory(tmp_path):
    # Two worker processes' metric files (real multiprocess mode), served by the parent's /metrics.
    from server.telemetry.metrics import serve_multiprocess

    for _ in range(2):
        subprocess.run([sys.executable, "-c", _WORKER_METRICS], cwd=ROOT, check=True, timeout=60,
                       env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)})
    port = free_port()
    http = serve_multiprocess("127.0.0.1", port, str(tmp_path))
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            samples = [s for f in text_string_to_metric_families(response.read().decode()) for s in f.samples]
    finally:
        http.shutdown()
    infos = [s for s in samples if s.name == "aegen_model_info"]
    assert [s.labels["version"] for s in infos] == ["2", "2"] and len({s.labels["pid"] for s in infos}) == 2
    gpu = {s.name: s.value for s in samples if s.name.startswith("aegen_gpu_memory")}
    assert gpu == {"aegen_gpu_memory_used_bytes": 77 << 30, "aegen_gpu_memory_total_bytes": 80 << 30}


def test_sigterm_lets_calls_in_flight_finish_then_every_worker_and_the_parent_exit_zero(start_workers, tmp_path):
    # A worker's first call finds its batcher idle and is decoded at once; the others wait up to 3 s for
    # company, so they are still queued when SIGTERM arrives.
    server = start_workers("--max-queue-delay-us", "3000000", "--grace-seconds", "20")
    workers = _worker_pids(server)
    assert len(_metrics_directories(tmp_path)) == 1
    clients = [_own_connection(server.target) for _ in range(8)]
    try:
        for client in clients:  # connected before the first call, so the calls arrive close together
            grpc.channel_ready_future(client.channel).result(timeout=30)
        with ThreadPoolExecutor(8) as pool:
            calls = [pool.submit(c.generate, VAE, 10, seed=s) for s, c in enumerate(clients)]
            def all_arrived_some_queued() -> bool:
                in_flight = _samples(server.metrics_text())[("aegen_requests_in_flight", ())]
                return in_flight >= 2 and in_flight + sum(c.done() for c in calls) == 8

            wait_until(all_arrived_some_queued, "all 8 calls to arrive, some still queued")
            server.process.send_signal(signal.SIGTERM)
            results = [c.result(timeout=60) for c in calls]
    finally:
        for client in clients:
            client.close()
    assert [r.images.shape[0] for r in results] == [10] * 8
    assert server.process.wait(60) == 0
    assert not any(_alive(pid) for pid in workers)
    assert _metrics_directories(tmp_path) == []
    log = server.log_text()
    assert log.count('"shutting down"') == 2 and '"shutting down workers"' in log


def test_a_worker_that_dies_stops_the_others_and_the_parent_exits_non_zero(start_workers, tmp_path):
    server = start_workers()
    victim, survivor = _worker_pids(server)
    os.kill(victim, signal.SIGKILL)
    assert server.process.wait(60) != 0
    assert not _alive(survivor)
    assert '"worker exited unexpectedly; stopping the others"' in server.log_text()
    assert _metrics_directories(tmp_path) == []


def test_workers_refuse_a_port_already_taken_with_one_line_and_exit_code_2(model_repository):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "server", "--repository", str(model_repository), "--host", "127.0.0.1",
             "--port", str(port), "--metrics-port", str(free_port()), "--http-port", "0", "--device", "cpu",
             "--workers", "2"],
            cwd=ROOT, check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aegen-serve: error: cannot listen on"), result.stderr


def test_health_watch_ends_at_shutdown_instead_of_holding_it_for_the_grace_period(server_factory):
    server = server_factory("--grace-seconds", "60")
    with grpc.insecure_channel(server.target) as channel:
        updates = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=120)
        assert next(updates).status == health_pb2.HealthCheckResponse.SERVING
        server.process.send_signal(signal.SIGTERM)
        rest = [u.status for u in updates]  # ends when the server ends the stream (OK), not at the deadline
        assert rest == [health_pb2.HealthCheckResponse.NOT_SERVING]
        assert server.process.wait(30) == 0  # well inside the 60 s grace: the watch did not hold the stop


# ------------------------------------------------------------------------------------------------ helpers


def _own_connection(target: str) -> AegenClient:
    """A client with its own TCP connection: channels of one process share connections unless told not to,
    and the kernel spreads connections, not calls, over the workers."""
    client = AegenClient(target, timeout=60)
    client.channel.close()
    client.channel = grpc.insecure_channel(target, options=[*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)])
    client.stub = generator_pb2_grpc.GeneratorServiceStub(client.channel)
    return client


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _model_info(server) -> list:
    return [s for f in text_string_to_metric_families(server.metrics_text()) for s in f.samples
            if s.name == "aegen_model_info"]


def _worker_pids(server) -> list[int]:
    children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children").read_text().split()
    return sorted(int(pid) for pid in children)


def _connections_per_worker(server) -> dict[int, int]:
    """Established connections on the server's port, by the worker process holding each socket."""
    port = int(server.target.rsplit(":", 1)[1])
    established = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                established.add(fields[9])
    counts = {}
    for pid in _worker_pids(server):
        fd_dir = Path(f"/proc/{pid}/fd")
        inodes = {os.readlink(fd)[len("socket:["):-1] for fd in fd_dir.iterdir()
                  if os.readlink(fd).startswith("socket:[")}
        counts[pid] = len(inodes & established)
    return counts


def _metrics_directories(tmp: Path) -> list[Path]:
    return list((tmp / "tmp").glob("aegen-metrics-*"))


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"

