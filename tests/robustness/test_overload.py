"""Overload, bounded (bench/overload.py measures 2x and 5x capacity for 60 s): the excess is refused at once
on both protocols, what is accepted succeeds, and the server answers normally afterwards."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import grpc

from protos.aegen.v1 import generator_pb2 as pb
from protos.aegen.v1 import generator_pb2_grpc
from server.core.admission import Admission, Overloaded

VAE = "digits-vae"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_admission_refuses_past_the_count_and_when_the_wait_ahead_exceeds_the_deadline():
    clock = Clock()
    admission = Admission(max_calls=8, max_wait=0.0, clock=clock)
    for _ in range(8):
        admission.admit()
    try:
        admission.admit()
        raise AssertionError("a ninth call was admitted")
    except Overloaded as exc:
        assert "--max-inflight-calls" in str(exc)
    for _ in range(5):  # 5 completions in the last second: 3 in flight and a new call need about 0.8 s
        admission.release()
    assert admission.expected_wait() == 0.8
    try:
        admission.admit(deadline=clock.now + 1.5)  # within the deadline, but not within half of it
        raise AssertionError("a call whose deadline is nearer than the wait ahead was admitted")
    except Overloaded as exc:
        assert "half of the 1.50 s this call may wait" in str(exc)
    admission.admit(deadline=clock.now + 1.7)
    clock.now += 2.0  # nothing completed in the last second: only the count applies
    admission.admit(deadline=clock.now + 0.001)
    assert (admission.in_flight, admission.refused) == (5, 2)


async def _burst(target: str, http_url: str, calls: int) -> list[tuple[str, str, bool]]:
    body = json.dumps({"inputs": [{"name": "SEED", "datatype": "UINT64", "shape": [256, 1],
                                   "data": list(range(256))}]}).encode()
    async with grpc.aio.insecure_channel(target) as channel, aiohttp.ClientSession() as http:
        stub = generator_pb2_grpc.GeneratorServiceStub(channel)

        async def grpc_call() -> tuple[str, str, bool]:
            try:
                await stub.GenerateSamples(pb.GenerateSamplesRequest(model_name=VAE, num_samples=256, seed=1),
                                           timeout=60)
                return "grpc", "OK", False
            except grpc.aio.AioRpcError as exc:
                return "grpc", exc.code().name, "--max-inflight-calls" in (exc.details() or "")

        async def http_call() -> tuple[str, str, bool]:
            async with http.post(f"{http_url}/v2/models/{VAE}/infer", data=body) as response:
                await response.read()
                return "http", str(response.status), response.headers.get("Retry-After") == "1"

        return await asyncio.gather(*(grpc_call() if i % 2 else http_call() for i in range(calls)))


def test_calls_past_the_limit_are_refused_at_once_on_both_protocols_and_the_accepted_ones_succeed(
        server_factory):
    server = server_factory("--max-inflight-calls", "2", "--max-queue-delay-us", "20000")
    results = asyncio.run(_burst(server.target, server.http_url, 40))
    answers = {(protocol, status) for protocol, status, _ in results}
    assert answers <= {("grpc", "OK"), ("grpc", "RESOURCE_EXHAUSTED"), ("http", "200"), ("http", "429")}
    refused = [r for r in results if r[1] in ("RESOURCE_EXHAUSTED", "429")]
    assert refused and all(explained for _, _, explained in refused)  # the limit named / Retry-After: 1
    assert any(s in ("OK", "200") for _, s, _ in results)  # and the admitted ones succeeded
    after = asyncio.run(_burst(server.target, server.http_url, 2))  # two at once, within the limit: both served
    assert [s for _, s, _ in after] == ["200", "OK"]
