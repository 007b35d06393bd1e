"""The container's HEALTHCHECK: asks the server's grpc.health.v1 service whether the model service is SERVING.

Kubernetes ignores HEALTHCHECK and uses its native gRPC probes (deploy/k8s/base/deployment.yaml); this
is for `docker run` and Compose. Exit 0 when SERVING, 1 otherwise, one line on stderr saying why.
It reads the port from AEGEN_PORT as the server does, and needs only grpcio and grpcio-health-checking.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVICE = "aegen.v1.GeneratorService"
TIMEOUT_SECONDS = 3.0


def check(target: str, service: str = SERVICE, timeout: float = TIMEOUT_SECONDS) -> str:
    """The health status name of `service` at `target` (e.g. "SERVING"); raises grpc.RpcError."""
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    environ = os.environ if environ is None else environ
    target = argv[0] if argv else f"127.0.0.1:{environ.get('AEGEN_PORT', '50051')}"
    try:
        status = check(target)
    except grpc.RpcError as e:
        print(f"aegen-healthcheck: {target}: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    if status != "SERVING":
        print(f"aegen-healthcheck: {target}: {SERVICE} is {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
