"""A closed-loop Open Inference Protocol client (grpc.aio, like aegen-loadtest's: the request serialized
once, the answers' bytes not parsed): ModelInfer with N seeds (SEED, [N, 1] UINT64, raw) asking for IMAGES,
K calls in flight, one channel. The same client drives aegen's
OIP gRPC side and MLServer, so the two differ only in the server."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import grpc
import numpy as np

from protos.cli import run_async
from protos.inference import grpc_service_pb2 as pb

METHOD = "/inference.GRPCInferenceService/ModelInfer"


@dataclass
class LoopResult:
    samples_per_s: float
    calls_per_s: float
    latency_ms: dict[str, float]
    errors: dict[str, int] = field(default_factory=dict)


def request(model: str, n: int, first_seed: int = 0) -> pb.ModelInferRequest:
    seeds = np.arange(first_seed, first_seed + n, dtype="<u8")
    return pb.ModelInferRequest(
        model_name=model,
        inputs=[pb.ModelInferRequest.InferInputTensor(name="SEED", datatype="UINT64", shape=[n, 1])],
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="IMAGES")],
        raw_input_contents=[seeds.tobytes()])


def closed_loop(target: str, model: str, n: int, in_flight: int, duration: float, warmup: float,
                call_timeout: float = 120.0) -> LoopResult:
    """Throughput counts the calls that completed inside the measured window (warm-up excluded); calls still
    in flight at its end are cancelled, so a slow server cannot stretch the window. Latency: those calls'."""
    async def run() -> LoopResult:
        options = [("grpc.max_receive_message_length", 1 << 30), ("grpc.max_send_message_length", 1 << 30)]
        message = request(model, n).SerializeToString()  # bytes in, bytes out, as aegen-loadtest sends
        done: list[tuple[float, float, str | None]] = []  # (ended, seconds, error code or None)
        async with grpc.aio.insecure_channel(target, options=options) as channel:
            infer = channel.unary_unary(METHOD)
            start = time.perf_counter() + warmup
            stop = start + duration

            async def worker() -> None:
                while (began := time.perf_counter()) < stop:
                    try:
                        reply = await infer(message, timeout=call_timeout)
                        code = None if reply else "EMPTY"
                    except grpc.aio.AioRpcError as exc:
                        code = exc.code().name
                    ended = time.perf_counter()
                    done.append((ended, ended - began, code))

            tasks = [asyncio.create_task(worker()) for _ in range(in_flight)]
            await asyncio.sleep(max(0.0, stop - time.perf_counter()))
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        window = [(seconds, code) for ended, seconds, code in done if start <= ended <= stop]
        ok = [seconds for seconds, code in window if code is None]
        errors: dict[str, int] = {}
        for _, code in window:
            if code is not None:
                errors[code] = errors.get(code, 0) + 1
        ms = np.array(ok) * 1000 if ok else np.array([np.nan])
        return LoopResult(len(ok) * n / duration, len(ok) / duration,
                          {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99))}, errors)

    return run_async(run())
