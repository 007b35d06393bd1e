"""What a fuzz run checks on the server before and after its inputs: health, the bytes of a few reference
calls on each protocol, and the server process's resident memory."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.aegen.v1 import generator_pb2 as aegen_pb
from protos.inference import grpc_service_pb2 as oip_pb

MODEL = "digits-vae"


def health(target: str) -> str:
    """The gRPC health status of the whole server ("" service), by name."""
    with grpc.insecure_channel(target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def http_ready(url: str) -> int:
    try:
        with urllib.request.urlopen(url + "/v2/health/ready", timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def grpc_reference(target: str) -> list[bytes]:
    """The reply bytes of one seeded call of each inference method that has a fixed answer."""
    seeds = oip_pb.ModelInferRequest.InferInputTensor(name="SEED", datatype="UINT64", shape=[2, 1])
    with grpc.insecure_channel(target) as channel:
        def raw(path: str, request) -> bytes:
            return channel.unary_unary(path)(request.SerializeToString(), timeout=30)

        return [
            raw("/aegen.v1.GeneratorService/GenerateSamples",
                aegen_pb.GenerateSamplesRequest(model_name=MODEL, num_samples=4, seed=7)),
            raw("/aegen.v1.GeneratorService/Reconstruct",
                aegen_pb.ReconstructRequest(model_name=MODEL, shape=[1, 1, 28, 28], dtype=aegen_pb.DTYPE_UINT8,
                                            images=bytes(range(256)) * 3 + bytes(16))),
            raw("/inference.GRPCInferenceService/ModelInfer",
                oip_pb.ModelInferRequest(model_name=MODEL, inputs=[seeds],
                                         raw_input_contents=[(7).to_bytes(8, "little") * 2])),
        ]


def http_reference(url: str) -> bytes:
    """The body of one seeded HTTP inference."""
    body = json.dumps({"inputs": [{"name": "SEED", "datatype": "UINT64", "shape": [2, 1], "data": [7, 8]}],
                       "parameters": {"binary_data_output": True}}).encode()
    request = urllib.request.Request(f"{url}/v2/models/{MODEL}/infer", body, method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read()


def rss_bytes(pid: int) -> int:
    """Resident memory of process `pid` (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"no VmRSS for process {pid}")


@dataclass(frozen=True)
class ServerState:
    health: str
    ready: int
    grpc_replies: list[bytes]
    http_reply: bytes
    rss: int


def server_state(target: str, http_url: str, pid: int) -> ServerState:
    return ServerState(health(target), http_ready(http_url), grpc_reference(target), http_reference(http_url),
                       rss_bytes(pid))


def compare(before: ServerState, after: ServerState, rss_bound: int) -> list[str]:
    """What changed that must not have: health, readiness, reference bytes, memory beyond `rss_bound`."""
    problems = []
    if after.health != "SERVING" or after.ready != 200:
        problems.append(f"after the run: health {after.health}, HTTP ready {after.ready}")
    if after.grpc_replies != before.grpc_replies:
        problems.append("a gRPC reference call answers other bytes than before the run")
    if after.http_reply != before.http_reply:
        problems.append("the HTTP reference call answers other bytes than before the run")
    if after.rss - before.rss > rss_bound:
        problems.append(f"resident memory grew by {(after.rss - before.rss) / 2**20:.0f} MiB, more than "
                        f"{rss_bound / 2**20:.0f} MiB")
    return problems
