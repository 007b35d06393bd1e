"""perf_analyzer (NVIDIA's, .tools/bin/perf_analyzer) against aegen's Open Inference Protocol, over gRPC and
HTTP: a second load generator, independent of our Python clients (C++, its own threads and connection).

perf_analyzer asks for every output the model's metadata lists (IMAGES, IMAGES_FP32 and LATENTS): two
decodes and about 5x the bytes of an IMAGES-only call, so its figures measure more work per sample."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from bench.common import BenchError
from bench.perf_analyzer import perf_analyzer_command


@dataclass(frozen=True)
class Sweep:
    protocol: str
    n: int
    in_flight: int
    samples_per_s: float
    p50_ms: float
    p99_ms: float


def _number(pattern: str, text: str) -> float:
    found = re.search(pattern, text)
    return float(found.group(1)) if found else float("nan")


def perf_analyzer(protocol: str, url: str, model: str, n: int, in_flight: int, duration: float) -> Sweep:
    argv, env = perf_analyzer_command()
    result = subprocess.run(
        [*argv, "-m", model, "-i", protocol, "-u", url, "-b", str(n), "--concurrency-range", str(in_flight),
         "--measurement-interval", str(int(duration * 1000)), "--max-trials", "4", "--stability-percentage", "200",
         "--percentile", "99"],
        env=env, capture_output=True, text=True, timeout=600, check=False)
    out = result.stdout
    if "Throughput:" not in out:
        raise BenchError(f"perf_analyzer {protocol} N={n} at {in_flight} failed (exit {result.returncode}):\n"
                         f"{out[-1500:]}{result.stderr[-1500:]}")
    client = out[out.rfind("Client:"):]  # the last (reported) measurement
    return Sweep(protocol, n, in_flight, _number(r"Throughput: ([\d.]+) infer/sec", client),
                 _number(r"p50 latency: ([\d.]+) usec", client) / 1000,
                 _number(r"p99 latency: ([\d.]+) usec", client) / 1000)


def perf_sweep(grpc_url: str, http_url: str, model: str, sizes: Sequence[int], levels: Sequence[int],
               duration: float) -> list[Sweep]:
    sweeps = []
    for protocol, url in (("grpc", grpc_url), ("http", http_url)):
        for n in sizes:
            for in_flight in levels:
                sweep = perf_analyzer(protocol, url, model, n, in_flight, duration)
                print(f"  perf_analyzer {protocol} N={n} at {in_flight}: {sweep.samples_per_s:,.0f} samples/s",
                      file=sys.stderr, flush=True)
                sweeps.append(sweep)
    return sweeps
