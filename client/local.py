"""A server process on this machine: a free loopback port, and waiting until its health says SERVING.

`make demo` (client/demo.py), the benchmarks and the tests all start `python -m server` as a real process
and must not send traffic before its models are loaded and warmed up; this is the one place that waits.
"""

from __future__ import annotations

import socket
import subprocess
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


class NotServing(Exception):
    """The server exited, or did not report SERVING in time. The message says which."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the kernel's choice; another process may still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_until_serving(target: str, process: subprocess.Popen | None = None, timeout: float = 120.0,
                       poll: float = 0.05) -> float:
    """Poll grpc.health.v1 Check("") on `target` until SERVING; returns the seconds it took.

    Raises NotServing as soon as `process` (when given) has exited, or once `timeout` has passed."""
    start = time.monotonic()
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() - start < timeout:
            if process is not None and process.poll() is not None:
                raise NotServing(f"the server exited with code {process.returncode} before it was SERVING")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return time.monotonic() - start
            except grpc.RpcError:
                pass  # not listening yet, or still starting
            time.sleep(poll)
    raise NotServing(f"the server at {target} was not SERVING after {timeout:g} s")
