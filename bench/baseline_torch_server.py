"""The baseline: what a user would write without aegen's server.

A synchronous grpcio server (a thread pool, as in gRPC's own Python examples) whose GenerateSamples loads
the PyTorch model from the checkpoint and decodes each request on its own: no batching across requests,
no onnxruntime. bench/batching.py measures aegen's server against it.

    python -m bench.baseline_torch_server CHECKPOINT --port 0   # prints "listening on 127.0.0.1:PORT"
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from concurrent import futures

import grpc
import numpy as np
import torch

from protos.aegen.v1 import generator_pb2, generator_pb2_grpc
from training.checkpoint import load_model

MAX_MESSAGE_BYTES = 256 * 1024 * 1024


class TorchGenerator(generator_pb2_grpc.GeneratorServiceServicer):
    """GenerateSamples only: N(0, I) seeds through the decoder, one request at a time per thread."""

    def __init__(self, checkpoint: str) -> None:
        self.model, config = load_model(checkpoint)
        self.latent_dim = config.model.latent_dim
        self.image_shape = config.model.image_shape

    def GenerateSamples(self, request: generator_pb2.GenerateSamplesRequest,
                        context: grpc.ServicerContext) -> generator_pb2.GenerateSamplesResponse:
        n = request.num_samples
        if not 1 <= n <= 65536:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"num_samples must be in 1..65536, got {n}")
        seed = request.seed if request.HasField("seed") else int(np.random.default_rng().integers(2**63))
        generator = torch.Generator().manual_seed(seed)
        with torch.inference_mode():
            z = torch.randn(n, self.latent_dim, generator=generator)
            images = self.model.decode(z)
            if request.output_dtype == generator_pb2.DTYPE_FLOAT32:
                dtype, payload = generator_pb2.DTYPE_FLOAT32, images.numpy().tobytes()
            else:
                dtype, payload = generator_pb2.DTYPE_UINT8, (images * 255).round().to(torch.uint8).numpy().tobytes()
        return generator_pb2.GenerateSamplesResponse(
            shape=[n, *self.image_shape], dtype=dtype, samples=payload, model_name=request.model_name,
            model_version=1, sampler=generator_pb2.SAMPLER_STANDARD_NORMAL, seed=seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--workers", type=int, default=10, help="thread pool size (gRPC's examples use 10)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.workers),
                         options=[("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                                  ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)])
    generator_pb2_grpc.add_GeneratorServiceServicer_to_server(TorchGenerator(args.checkpoint), server)
    port = server.add_insecure_port(f"{args.host}:{args.port}")
    server.start()
    print(f"listening on {args.host}:{port}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=1.0).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
