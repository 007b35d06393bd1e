"""Shutdown and faults: SIGTERM with calls in flight on both protocols and two workers, a worker killed with
SIGKILL under load while a client retries on another replica, and a served version's files corrupted and then
deleted on disk. (tests/server/test_workers.py and test_lifecycle.py cover the single-protocol cases.)"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from bench.fuzz.checks import grpc_reference, health, http_reference
from protos.aegen.v1 import generator_pb2 as pb
from protos.aegen.v1 import generator_pb2_grpc
from tests.plugins.server import wait_until
from tests.server.test_workers import _alive, _own_connection, _samples, _start_workers, _worker_pids

VAE = "digits-vae"


@pytest.fixture
def start_workers(model_repository, tmp_path):
    started: list = []
    yield lambda *flags: _start_workers(model_repository, tmp_path, started, *flags)
    for server in started:
        server.stop()


def _http_infer(url: str, seed: int, rows: int = 10) -> tuple[int, list[int]]:
    body = json.dumps({"inputs": [{"name": "SEED", "datatype": "UINT64", "shape": [rows, 1],
                                   "data": list(range(seed, seed + rows))}]}).encode()
    request = urllib.request.Request(f"{url}/v2/models/{VAE}/infer", body, method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.status, json.loads(response.read())["outputs"][0]["shape"]


def _new_http_call(url: str) -> str:
    try:
        return str(_http_infer(url, 0)[0])
    except urllib.error.HTTPError as exc:
        return str(exc.code)
    except (urllib.error.URLError, ConnectionError) as exc:
        return type(getattr(exc, "reason", exc)).__name__


def test_sigterm_with_calls_in_flight_on_both_protocols_and_two_workers(start_workers):
    # Batches wait up to 3 s for company, so the calls are still queued when SIGTERM arrives.
    server = start_workers("--max-queue-delay-us", "3000000", "--grace-seconds", "20")
    workers = _worker_pids(server)
    clients = [_own_connection(server.target) for _ in range(4)]
    try:
        for client in clients:
            grpc.channel_ready_future(client.channel).result(timeout=30)
        with ThreadPoolExecutor(8) as pool:
            grpc_calls = [pool.submit(c.generate, VAE, 10, seed=s) for s, c in enumerate(clients)]
            http_calls = [pool.submit(_http_infer, server.http_url, s) for s in range(4)]
            calls = grpc_calls + http_calls

            def all_arrived_some_queued() -> bool:
                in_flight = _samples(server.metrics_text())[("aegen_requests_in_flight", ())]
                return in_flight >= 2 and in_flight + sum(c.done() for c in calls) == 8

            wait_until(all_arrived_some_queued, "all 8 calls to arrive, some still queued")
            server.process.send_signal(signal.SIGTERM)
            wait_until(lambda: server.log_text().count('"shutting down"') == 2, "both workers to start draining")
            # A new call while they drain:
            with grpc.insecure_channel(server.target) as channel, pytest.raises(grpc.RpcError) as refused:
                generator_pb2_grpc.GeneratorServiceStub(channel).GenerateSamples(
                    pb.GenerateSamplesRequest(model_name=VAE, num_samples=1), timeout=10)
            new_http = _new_http_call(server.http_url)
            grpc_results = [c.result(timeout=60) for c in grpc_calls]
            http_results = [c.result(timeout=60) for c in http_calls]
    finally:
        for client in clients:
            client.close()
    assert [r.images.shape[0] for r in grpc_results] == [10] * 4  # every accepted call completed
    assert http_results == [(200, [10, 1, 28, 28])] * 4
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # refused cleanly, not INTERNAL/UNKNOWN
    assert new_http in ("ConnectionRefusedError", "ConnectionResetError", "RemoteDisconnected", "503")
    assert server.process.wait(60) == 0
    assert not any(_alive(pid) for pid in workers)


def _generate(stub, seed: int) -> bytes:
    return stub.GenerateSamples(pb.GenerateSamplesRequest(model_name=VAE, num_samples=4, seed=seed),
                                timeout=10).samples


def test_a_worker_killed_under_load_stops_the_replica_and_a_retrying_client_loses_no_request(
        start_workers, server_factory):
    replica = start_workers()  # two workers: the pod
    other = server_factory()  # another pod of the same deployment
    victim, survivor = _worker_pids(replica)
    answers: dict[int, bytes] = {}
    retried = 0
    stop = threading.Event()

    def load() -> None:
        nonlocal retried
        with grpc.insecure_channel(replica.target) as first, grpc.insecure_channel(other.target) as second:
            stubs = [generator_pb2_grpc.GeneratorServiceStub(c) for c in (first, second)]
            seed = 0
            while not stop.is_set():
                for attempt in range(2):  # a client with one retry, on the other replica
                    try:
                        answers[seed] = _generate(stubs[attempt], seed)
                        break
                    except grpc.RpcError:
                        retried += 1
                seed += 1

    thread = threading.Thread(target=load)
    thread.start()
    try:
        wait_until(lambda: len(answers) >= 50, "50 calls answered")
        killed = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        code = replica.process.wait(60)
        stopped_after = time.monotonic() - killed
        count = len(answers)
        wait_until(lambda: len(answers) >= count + 20, "20 more calls answered after the replica stopped")
    finally:
        stop.set()
        thread.join(60)
    print(f"\nworker SIGKILLed: parent exited {code} after {stopped_after:.2f} s; {len(answers)} calls, "
          f"{retried} retried on the other replica")
    assert code != 0 and not _alive(survivor)
    assert '"worker exited unexpectedly; stopping the others"' in replica.log_text()
    assert retried > 0
    with grpc.insecure_channel(other.target) as channel:  # every call has its answer, and the right bytes
        stub = generator_pb2_grpc.GeneratorServiceStub(channel)
        assert sorted(answers) == list(range(len(answers)))
        assert all(answers[s] == _generate(stub, s) for s in range(0, len(answers), 7))


def test_a_served_version_corrupted_then_deleted_on_disk_keeps_serving_the_same_bytes(server_factory):
    server = server_factory("--repository-poll-seconds", "0.2")
    before = grpc_reference(server.target), http_reference(server.http_url)
    version = server.repository / VAE / "1"
    (version / "decoder.onnx").write_bytes(b"not an onnx graph")  # corrupted in place
    (version / "manifest.json").write_text("{")
    time.sleep(1.0)  # five polls
    assert (grpc_reference(server.target), http_reference(server.http_url)) == before
    shutil.rmtree(version)  # then gone
    time.sleep(1.0)
    assert (grpc_reference(server.target), http_reference(server.http_url)) == before
    assert health(server.target) == "SERVING"
    assert "Traceback" not in server.log_text()
