"""The framework's own ceiling: GenerateSamples (and the Open Inference Protocol's ModelInfer) with no inference.

A grpc.aio server, built like the real one (same message-size limits, same asyncio servicer, same event loop), whose
GenerateSamples returns a preallocated response of the requested size and dtype. What the load tester
reaches against it is what gRPC in Python, the loopback and the client allow; bench/small_requests.py
compares the real server with it.

    python -m bench.echo_server --port 0    # prints "listening on 127.0.0.1:PORT" once serving
"""

from __future__ import annotations

import argparse
import asyncio
import math
import signal
import sys

import grpc
import grpc.aio

from protos.aegen.v1 import generator_pb2, generator_pb2_grpc
from protos.cli import run_async
from protos.inference import grpc_service_pb2 as oip_pb2
from protos.inference import grpc_service_pb2_grpc as oip_grpc

IMAGE_SHAPE = (1, 28, 28)
MAX_SAMPLES = 65536
MAX_MESSAGE_BYTES = 256 * 1024 * 1024


class EchoServicer(generator_pb2_grpc.GeneratorServiceServicer):
    """Answers GenerateSamples from a cache of ready-made responses, one per (count, dtype)."""

    def __init__(self) -> None:
        self._responses: dict[tuple[int, int], generator_pb2.GenerateSamplesResponse] = {}

    def _response(self, num_samples: int, dtype: int) -> generator_pb2.GenerateSamplesResponse:
        key = (num_samples, dtype)
        if key not in self._responses:
            itemsize = 4 if dtype == generator_pb2.DTYPE_FLOAT32 else 1
            self._responses[key] = generator_pb2.GenerateSamplesResponse(
                shape=[num_samples, *IMAGE_SHAPE], dtype=dtype or generator_pb2.DTYPE_UINT8,
                samples=bytes(num_samples * math.prod(IMAGE_SHAPE) * itemsize),
                model_name="echo", model_version=1, sampler=generator_pb2.SAMPLER_STANDARD_NORMAL, seed=0)
        return self._responses[key]

    async def GenerateSamples(self, request: generator_pb2.GenerateSamplesRequest,
                              context: grpc.aio.ServicerContext) -> generator_pb2.GenerateSamplesResponse:
        if not 1 <= request.num_samples <= MAX_SAMPLES:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"num_samples must be in 1..{MAX_SAMPLES}, got {request.num_samples}")
        return self._response(request.num_samples, request.output_dtype)


class EchoInference(oip_grpc.GRPCInferenceServiceServicer):
    """The Open Inference Protocol's ModelInfer as the peer benchmark calls it (SEED [N, 1] in): IMAGES
    [N, 1, 28, 28] UINT8 of zeros, from a cache of ready-made responses, one per N."""

    def __init__(self) -> None:
        self._responses: dict[int, oip_pb2.ModelInferResponse] = {}

    async def ModelInfer(self, request: oip_pb2.ModelInferRequest,
                         context: grpc.aio.ServicerContext) -> oip_pb2.ModelInferResponse:
        n = request.inputs[0].shape[0] if request.inputs and request.inputs[0].shape else 0
        if not 1 <= n <= MAX_SAMPLES:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"SEED must have 1..{MAX_SAMPLES} rows, got {n}")
        if n not in self._responses:
            self._responses[n] = oip_pb2.ModelInferResponse(
                model_name=request.model_name, model_version="1",
                outputs=[oip_pb2.ModelInferResponse.InferOutputTensor(name="IMAGES", datatype="UINT8",
                                                                      shape=[n, *IMAGE_SHAPE])],
                raw_output_contents=[bytes(n * math.prod(IMAGE_SHAPE))])
        return self._responses[n]


async def serve(host: str, port: int) -> None:
    server = grpc.aio.server(options=[("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                                      ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)])
    generator_pb2_grpc.add_GeneratorServiceServicer_to_server(EchoServicer(), server)
    oip_grpc.add_GRPCInferenceServiceServicer_to_server(EchoInference(), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    print(f"listening on {host}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on stdout)")
    args = parser.parse_args(argv)
    run_async(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
