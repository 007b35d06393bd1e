"""Start-up, shutdown, back-pressure and model updates of a real server process."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client.client import AegenClient
from export.repository import GRAPH_FILES
from tests.plugins.server import (
    ROOT,
    copy_repository,
    launch_aegen_server,
    publish_copy,
    wait_for_log,
    wait_until,
)

VAE = "digits-vae"
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


def _watch(target: str):
    """Health updates of the whole server, from the first moment the port answers."""
    channel = grpc.insecure_channel(target)
    stub = health_pb2_grpc.HealthStub(channel)
    return channel, stub.Watch(health_pb2.HealthCheckRequest(service=""), wait_for_ready=True, timeout=120)


def test_health_is_not_serving_until_every_model_is_warm_then_serving(model_repository, tmp_path):
    # Four models at the default --max-batch-size (fourteen warm-up buckets per decoder) keep loading busy
    # for a while after the port opens; the watch starts the moment it does.
    repository = copy_repository(model_repository, tmp_path / "repository")
    for i in range(2):
        publish_copy(repository, VAE, 1, name_as=f"{VAE}-copy{i}")
    server = launch_aegen_server(repository, tmp_path, "--max-batch-size", "8192")
    try:
        host, port = server.target.rsplit(":", 1)
        wait_until(lambda: _port_open(host, int(port)), "the port to open")
        channel, updates = _watch(server.target)
        seen = []
        for update in updates:
            seen.append(update.status)
            if update.status == SERVING:
                break
        channel.close()
        assert seen[0] == NOT_SERVING and seen[-1] == SERVING, seen
        log = server.log_text()
        assert log.count('"model version serving"') == 4
        assert log.rindex('"model version serving"') < log.index('"ready"')
    finally:
        assert server.stop() == 0


def test_sigterm_lets_calls_in_flight_finish_then_exits_zero(server_factory):
    # A lone request on an idle batcher is decoded at once, so a large one goes first and keeps the
    # decoder busy; the small calls queue behind it and then wait up to 1 s for company, so they are
    # still queued when SIGTERM arrives.
    server = server_factory("--max-queue-delay-us", "1000000", "--grace-seconds", "20")
    channel, updates = _watch(server.target)
    assert next(updates).status == SERVING
    with AegenClient(server.target, timeout=60) as client, ThreadPoolExecutor(9) as pool:
        big = pool.submit(client.generate, VAE, 65536, seed=99)
        calls = [pool.submit(client.generate, VAE, 10, seed=s) for s in range(8)]
        wait_until(lambda: _in_flight(server) >= 7, "at least 7 calls in flight")
        server.process.send_signal(15)
        assert next(updates).status == NOT_SERVING
        results = [c.result(timeout=60) for c in calls]
        assert big.result(timeout=60).images.shape[0] == 65536
    channel.close()
    assert [r.images.shape[0] for r in results] == [10] * 8
    assert server.process.wait(60) == 0
    log = server.log_text()
    assert '"shutting down"' in log and '"stopped"' in log


def _in_flight(server) -> float:
    for line in server.metrics_text().splitlines():
        if line.startswith("aegen_requests_in_flight "):
            return float(line.split()[1])
    return 0.0


def test_full_queue_answers_resource_exhausted_at_once_without_memory_growth(server_factory):
    server = server_factory("--max-queue-samples", "64", "--max-samples-per-request", "64",
                            "--max-queue-delay-us", "300000")
    with AegenClient(server.target, timeout=60) as client, ThreadPoolExecutor(20) as pool:
        def flood() -> list[str]:
            futures = [pool.submit(client.generate, VAE, 16, seed=i) for i in range(20)]
            return [_code(f) for f in futures]

        codes = flood()
        rss_after_first = _rss_kib(server.process.pid)
        for _ in range(5):
            codes += flood()
        rss_after_all = _rss_kib(server.process.pid)
        assert codes.count("OK") >= 6 * 4 and codes.count("RESOURCE_EXHAUSTED") >= 6 * 12
        assert set(codes) == {"OK", "RESOURCE_EXHAUSTED"}
        assert rss_after_all - rss_after_first < 20 * 1024, (rss_after_first, rss_after_all)
        assert client.generate(VAE, 16, seed=1).images.shape[0] == 16
    assert "aegen_queue_depth_samples{model=\"digits-vae\"} 0.0" in server.metrics_text()


def test_corrupt_version_is_refused_while_the_old_one_serves_then_a_good_one_is_swapped_in(server_factory, tmp_path):
    server = server_factory("--repository-poll-seconds", "0.2")
    repository = server.repository
    with AegenClient(server.target, timeout=30) as client:
        old = client.generate(VAE, 4, seed=1)
        corrupt = publish_copy(repository, VAE, old.model_version)
        decoder = corrupt.path / GRAPH_FILES["decoder"]
        data = bytearray(decoder.read_bytes())
        data[len(data) // 2] ^= 0xFF
        decoder.write_bytes(bytes(data))
        wait_for_log(server, "model version refused", corrupt.version)
        still = client.generate(VAE, 4, seed=1)
        assert still.model_version == old.model_version and still.images.tobytes() == old.images.tobytes()

        good = publish_copy(repository, VAE, old.model_version)
        wait_until(lambda: client.generate(VAE, 1).model_version == good.version, "the new version to serve")
        new = client.generate(VAE, 4, seed=1)
        assert new.images.tobytes() == old.images.tobytes()  # the same graphs under a new number
        assert client.model_info(VAE).model_version == good.version
        with pytest.raises(grpc.RpcError) as error:
            client.generate(VAE, 1, version=old.model_version)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
    info = [line for line in server.metrics_text().splitlines() if line.startswith("aegen_model_info{")]
    assert any(f'version="{good.version}"' in line and VAE in line for line in info)
    assert not any(f'version="{old.model_version}"' in line and VAE in line for line in info)


def test_bad_configuration_is_one_line_on_stderr_and_exit_code_2(model_repository, tmp_path):
    cases = [
        ["--port", "not-a-port"],
        ["--device", "gpu"],
        ["--workers", "0"],
        ["--device", "cpu", "--cuda-graphs"],
        ["--repository", str(tmp_path / "missing"), "--port", "0", "--metrics-port", "0", "--http-port", "0"],
    ]
    for flags in cases:
        result = subprocess.run([sys.executable, "-m", "server", "--repository", str(model_repository), *flags],
                                cwd=ROOT, check=False, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, (flags, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("aegen-serve: error:"), (flags, result.stderr)


def test_environment_variables_configure_the_server(model_repository, tmp_path):
    result = subprocess.run([sys.executable, "-m", "server", "--repository", str(model_repository)],
                            env={"PATH": "/usr/bin:/bin", "AEGEN_MAX_BATCH_SIZE": "0"}, cwd=ROOT,
                            check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--max-batch-size must be at least 1" in result.stderr


# ------------------------------------------------------------------------------------------------ helpers


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def _code(future) -> str:
    try:
        future.result(timeout=60)
        return "OK"
    except grpc.RpcError as error:
        return error.code().name


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")



def _wait_for_metric(server, line: str) -> None:
    wait_until(lambda: line in server.metrics_text(), line)


def test_tls_server_answers_a_client_that_trusts_its_certificate(server_factory, tmp_path):
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    server = server_factory("--tls-cert", str(cert), "--tls-key", str(key), wait=False)
    with AegenClient(server.target, root_certificates=cert.read_bytes(), timeout=30) as client:
        wait_until(lambda: _serving_over_tls(server.target, cert.read_bytes()), "the TLS server to serve")
        assert client.generate(VAE, 3, seed=1).images.shape[0] == 3
    with AegenClient(server.target, timeout=5) as plaintext, pytest.raises(grpc.RpcError):
        plaintext.list_models()


def _serving_over_tls(target: str, root: bytes) -> bool:
    with grpc.secure_channel(target, grpc.ssl_channel_credentials(root)) as channel:
        try:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1).status
        except grpc.RpcError:
            return False
    return status == SERVING


def test_each_event_loop_serves_the_same_bytes(server_factory):
    """uvloop (the default where installed) and asyncio's own loop: same answers, and the log says which ran."""
    answers = {}
    for loop in ("uvloop", "asyncio"):
        server = server_factory("--event-loop", loop)
        with AegenClient(server.target, timeout=30) as client:
            answers[loop] = client.generate(VAE, 7, seed=2024).images.tobytes()
        assert f'"event_loop": "{loop}"' in server.log_text(), server.log_text()[-2000:]
    assert answers["uvloop"] == answers["asyncio"] and len(answers["uvloop"]) == 7 * 784
