"""Benchmark f: the Open Inference Protocol side against aegen.v1, and what per-seed latents cost.

1. Seed → latent at n = 8192: drawing one Philox row per seed (server/core/samplers.py) against decoding the
   same batch with the uint8 graph in this process (2 intra-op threads). Target: < 10 % of the decode.
2. One server, N = 1024 samples per request, 4 in flight: aegen-loadtest over aegen.v1 against NVIDIA's
   perf_analyzer over OIP gRPC and OIP HTTP (binary tensors), rounds alternating. Targets: OIP gRPC
   >= 0.9x aegen.v1 samples/s; OIP HTTP >= 0.7x.

    python -m bench.oip [--repository R --model M] [--duration 5] [--rounds 2]
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench.common import (
    BenchError,
    bench_model,
    fmt,
    load,
    load_parser,
    machine_details,
    markdown_table,
    report_or_fail,
    serve_model,
    write_result,
)
from bench.perf_analyzer import perf_analyzer_command
from client.local import free_port
from export.repository import load_version
from protos.cli import run_async
from server.core.samplers import draw

N, IN_FLIGHT = 1024, 4


def seed_cost(repository: Path, model: str, n: int = 8192, repeats: int = 15) -> dict[str, float]:
    version = load_version(repository, model)
    d = version.manifest.latent_dim
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(version.graph_path("decoder_uint8")), options,
                                   providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    seeds = np.random.default_rng(0).integers(0, 2**63, n, dtype=np.uint64)
    rows = np.zeros(n, np.uint64)

    def timed(call) -> float:
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            call()
            times.append(time.perf_counter() - started)
        return statistics.median(times) * 1000

    latents = draw(None, "standard_normal", seeds, rows, d)
    draw_ms = timed(lambda: draw(None, "standard_normal", seeds, rows, d))
    per_row_ms = timed(lambda: [np.random.Generator(np.random.PCG64(int(s))).standard_normal(d) for s in seeds[:512]]
                       ) * n / 512
    decode_ms = timed(lambda: session.run(None, {name: latents}))
    return {"draw_ms": draw_ms, "per_row_generators_ms": per_row_ms, "decode_ms": decode_ms}


def oip_closed_loop(target: str, model: str, duration: float, warmup: float) -> float:
    """samples/s of a Python grpc.aio closed loop (like aegen-loadtest's) sending OIP ModelInfer with N seeds,
    IN_FLIGHT at a time, asking for IMAGES only: the OIP path doing exactly aegen.v1's work."""
    import asyncio

    import grpc

    from protos.inference import grpc_service_pb2 as pb
    from protos.inference import grpc_service_pb2_grpc as pb_grpc

    seeds = np.arange(N, dtype="<u8")
    request = pb.ModelInferRequest(
        model_name=model, inputs=[pb.ModelInferRequest.InferInputTensor(name="SEED", datatype="UINT64", shape=[N, 1])],
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="IMAGES")], raw_input_contents=[seeds.tobytes()])

    async def loop() -> float:
        options = [("grpc.max_receive_message_length", 1 << 30)]
        async with grpc.aio.insecure_channel(target, options=options) as channel:
            infer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer
            done, start, stop = 0, time.perf_counter() + warmup, time.perf_counter() + warmup + duration

            async def worker() -> None:
                nonlocal done
                while time.perf_counter() < stop:
                    await infer(request, timeout=60)
                    if time.perf_counter() > start:
                        done += 1

            await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
            return done * N / duration

    return run_async(loop())


def perf_analyzer(protocol: str, url: str, model: str, duration: float) -> float:
    """perf_analyzer's samples/s (its infer/sec counts every batch element) at N per request, 4 in flight."""
    argv, env = perf_analyzer_command()
    result = subprocess.run(
        [*argv, "-m", model, "-i", protocol, "-u", url, "-b", str(N), "--concurrency-range", str(IN_FLIGHT),
         "--measurement-interval", str(int(duration * 1000)), "--max-trials", "3", "--stability-percentage", "50"],
        env=env, capture_output=True, text=True, timeout=300, check=False)
    found = re.search(r"Throughput: ([\d.]+) infer/sec", result.stdout)
    if result.returncode != 0 or not found:
        raise BenchError(f"perf_analyzer {protocol} failed (exit {result.returncode}):\n{result.stdout[-1500:]}"
                         f"{result.stderr[-1500:]}")
    return float(found.group(1))


def run(args) -> Path:
    bench = bench_model(args.repository, args.model, args.checkpoint)
    cost = seed_cost(bench.repository, bench.name)
    print(f"seed→latent {cost}", file=sys.stderr)
    results: dict[str, list[float]] = {"aegen.v1 (aegen-loadtest)": [], "OIP gRPC, IMAGES only (grpc.aio loop)": [],
                                       "OIP gRPC (perf_analyzer)": [], "OIP HTTP (perf_analyzer)": []}
    http_port = free_port()
    with serve_model(bench.repository, ["--http-port", str(http_port), "--intra-op-threads", "2"]) as served:
        for _ in range(args.rounds):
            report = load(served.target, num_samples=N, concurrency=(IN_FLIGHT,), duration=args.duration,
                          warmup=args.warmup, model=bench.name)
            results["aegen.v1 (aegen-loadtest)"].append(report.levels[0].samples_per_s)
            results["OIP gRPC, IMAGES only (grpc.aio loop)"].append(
                oip_closed_loop(served.target, bench.name, args.duration, args.warmup))
            results["OIP gRPC (perf_analyzer)"].append(perf_analyzer("grpc", served.target, bench.name, args.duration))
            results["OIP HTTP (perf_analyzer)"].append(
                perf_analyzer("http", f"127.0.0.1:{http_port}", bench.name, args.duration))
    base = max(results["aegen.v1 (aegen-loadtest)"])
    rows = [[client, " / ".join(fmt(v) for v in values), fmt(max(values)), f"{max(values) / base:.2f}×"]
            for client, values in results.items()]
    share = cost["draw_ms"] / cost["decode_ms"]
    body = "\n".join([
        f"## Seed → latent at n = 8192 (in process, model `{bench.name}`)", "",
        markdown_table(["step", "ms (median of 15)"], [
            ["Philox rows, one per seed (the server's draw)", f"{cost['draw_ms']:.2f}"],
            ["one numpy PCG64 generator per seed (for comparison)", f"{cost['per_row_generators_ms']:.1f}"],
            ["uint8 decoder graph, 2 intra-op threads", f"{cost['decode_ms']:.2f}"]]), "",
        f"Drawing is **{share:.1%}** of the decode (target < 10 %).", "",
        f"## One server, N = {N} per request, {IN_FLIGHT} in flight ({args.rounds} rounds, alternating)", "",
        markdown_table(["client and protocol", "samples/s per round", "best", "vs aegen.v1"], rows), "",
        ("Targets: OIP gRPC >= 0.9x aegen.v1, OIP HTTP >= 0.7x. Client and server share the machine's cores. "
         "perf_analyzer asks for every output the model's metadata lists (IMAGES, IMAGES_FP32 and LATENTS): "
         "two decodes and about 5x the bytes of an aegen.v1 uint8 request, so its rows measure more work; "
         "the grpc.aio row sends the OIP request that does exactly aegen.v1's work (IMAGES only)."),
    ])
    return write_result("oip", "Benchmark f: the Open Inference Protocol against aegen.v1", body, machine_details(),
                        args.out_dir)


def parser():
    return load_parser(__doc__, duration=5.0, warmup=1.0, rounds_help="rounds, alternating the three clients")


def main(argv: list[str] | None = None) -> int:
    return report_or_fail("bench.oip", lambda: run(parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
