"""Overload: open-loop load at 2x and 5x the measured capacity, on aegen.v1 gRPC and OIP HTTP at once.

    python -m bench.overload [--repository R --model M] [--seconds 60] [--samples 1024]

1. Capacity: a closed loop (16 calls in flight, half gRPC GenerateSamples, half HTTP ModelInfer, N samples
   each) for 10 s: completed calls per second.
2. For each factor (2x, 5x): calls are started at factor x capacity per second, on a fixed schedule whatever
   the server answers (open loop), for --seconds, each with a 2 s deadline (gRPC timeout; HTTP
   parameters.timeout and a 2 s client timeout). Per call: accepted (OK) or refused (RESOURCE_EXHAUSTED /
   429, with Retry-After), its latency, and whether an accepted call ran past its deadline. The server's
   resident memory is sampled every 0.5 s.
3. Recovery: right after the load stops, the closed loop again, in 1 s steps, until it reaches 90 % of the
   capacity: the seconds that took.

Writes docs/robustness-overload.md (a table) and docs/robustness_overload_rss.png (RSS and accepted calls
per second over time). A benchmark: it prints and writes figures, it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import grpc

from bench.common import (
    ROOT,
    add_model_arguments,
    bench_model,
    machine_details,
    machine_markdown,
    markdown_table,
)
from bench.fuzz.checks import rss_bytes
from client.local import free_port, wait_until_serving
from protos.aegen.v1 import generator_pb2 as pb
from protos.aegen.v1 import generator_pb2_grpc
from protos.atomic import atomic_write_text
from protos.cli import run_async

DOCS = ROOT / "docs"
DEADLINE_SECONDS = 2.0
CLOSED_LOOP_CALLS = 16


@dataclass
class Outcome:
    started: float
    seconds: float
    protocol: str
    result: str  # ok, refused, deadline, error:<what>
    retry_after: bool = False


@dataclass
class Level:
    factor: float
    rate: float
    outcomes: list[Outcome] = field(default_factory=list)
    rss: list[tuple[float, int]] = field(default_factory=list)
    recovery_seconds: float | None = None


class Clients:
    def __init__(self, target: str, http_url: str, model: str, samples: int) -> None:
        self.channel = grpc.aio.insecure_channel(target)
        self.stub = generator_pb2_grpc.GeneratorServiceStub(self.channel)
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        self.http_url, self.model, self.samples = http_url, model, samples
        seeds = list(range(samples))
        self.body = json.dumps({"inputs": [{"name": "SEED", "datatype": "UINT64", "shape": [samples, 1],
                                            "data": seeds}],
                                "parameters": {"binary_data_output": True,
                                               "timeout": int(DEADLINE_SECONDS * 1e6)}}).encode()

    async def close(self) -> None:
        await self.channel.close()
        await self.http.close()

    async def call(self, protocol: str) -> Outcome:
        started = time.monotonic()
        result, retry = "ok", False
        try:
            if protocol == "grpc":
                await self.stub.GenerateSamples(pb.GenerateSamplesRequest(
                    model_name=self.model, num_samples=self.samples, seed=1), timeout=DEADLINE_SECONDS)
            else:
                async with self.http.post(f"{self.http_url}/v2/models/{self.model}/infer", data=self.body,
                                          timeout=aiohttp.ClientTimeout(total=DEADLINE_SECONDS)) as response:
                    await response.read()
                    retry = "Retry-After" in response.headers
                    if response.status in (429, 503):
                        result = "refused"
                    elif response.status == 504:
                        result = "deadline"
                    elif response.status != 200:
                        result = f"error:{response.status}"
        except grpc.aio.AioRpcError as exc:
            result = {grpc.StatusCode.RESOURCE_EXHAUSTED: "refused",
                      grpc.StatusCode.DEADLINE_EXCEEDED: "deadline"}.get(exc.code(), f"error:{exc.code().name}")
        except TimeoutError:
            result = "deadline"
        except aiohttp.ClientError as exc:
            result = f"error:{type(exc).__name__}"
        return Outcome(started, time.monotonic() - started, protocol, result, retry)


async def closed_loop(clients: Clients, seconds: float) -> float:
    """Completed calls per second with CLOSED_LOOP_CALLS in flight, half on each protocol."""
    end, done = time.monotonic() + seconds, 0

    async def worker(protocol: str) -> None:
        nonlocal done
        while time.monotonic() < end:
            if (await clients.call(protocol)).result == "ok":
                done += 1

    await asyncio.gather(*(worker("grpc" if i % 2 else "http") for i in range(CLOSED_LOOP_CALLS)))
    return done / seconds


async def open_loop(clients: Clients, level: Level, seconds: float, pid: int) -> None:
    start = time.monotonic()
    tasks: list[asyncio.Task] = []

    async def sample_rss() -> None:
        while True:
            level.rss.append((time.monotonic() - start, rss_bytes(pid)))
            await asyncio.sleep(0.5)

    sampler = asyncio.get_running_loop().create_task(sample_rss())
    interval = 1.0 / level.rate
    n = 0
    while (due := start + n * interval) < start + seconds:
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.get_running_loop().create_task(clients.call("grpc" if n % 2 else "http")))
        n += 1
    level.outcomes = list(await asyncio.gather(*tasks))
    for outcome in level.outcomes:
        outcome.started -= start
    sampler.cancel()


async def recovery(clients: Clients, capacity: float, limit: float = 30.0) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if await closed_loop(clients, 1.0) >= 0.9 * capacity:
            return time.monotonic() - started
    return None


@contextlib.contextmanager
def server(repository: Path, extra: list[str]):
    port, http_port = free_port(), free_port()
    log = Path(tempfile.mkdtemp(prefix="aegen-overload-")) / "server.log"
    argv = [sys.executable, "-m", "server", "--repository", str(repository), "--host", "127.0.0.1",
            "--port", str(port), "--http-port", str(http_port), "--metrics-port", "0", "--device", "cpu",
            "--log-level", "WARNING", "--repository-poll-seconds", "0", *extra]
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        wait_until_serving(f"127.0.0.1:{port}", process, 120)
        yield f"127.0.0.1:{port}", f"http://127.0.0.1:{http_port}", process
    finally:
        process.terminate()
        process.wait(60)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary_rows(capacity: float, levels: list[Level]) -> list[list[str]]:
    rows = []
    for level in levels:
        outcomes = level.outcomes
        ok = [o for o in outcomes if o.result == "ok"]
        refused = [o for o in outcomes if o.result == "refused"]
        late = [o for o in ok if o.seconds > DEADLINE_SECONDS]
        refused_ms = [o.seconds * 1000 for o in refused]
        deadline = sum(o.result == "deadline" for o in outcomes)
        deadline_by = "/".join(str(sum(o.result == "deadline" and o.protocol == p for o in outcomes))
                               for p in ("grpc", "http"))
        other = len(outcomes) - len(ok) - len(refused) - deadline
        rss = [r for _, r in level.rss]
        seconds = max((o.started for o in outcomes), default=1.0) or 1.0
        p50, p99 = percentile([o.seconds * 1000 for o in ok], 0.5), percentile([o.seconds * 1000 for o in ok], 0.99)
        rows.append([f"{level.factor:g}x", f"{level.rate:.0f}", f"{len(outcomes)}", f"{len(ok) / seconds:.0f}",
                     f"{100 * len(refused) / max(len(outcomes), 1):.1f} %",
                     f"{percentile(refused_ms, 0.5) or 0:.1f} / {percentile(refused_ms, 0.99) or 0:.1f}",
                     f"{p50 or 0:.0f} / {p99 or 0:.0f}", str(len(late)), deadline_by, str(other),
                     (f"{sum(o.retry_after for o in refused if o.protocol == 'http')}/"
                     f"{sum(o.protocol == 'http' for o in refused)}"),
                     f"{min(rss) / 2**20:.0f} – {max(rss) / 2**20:.0f}",
                     "–" if level.recovery_seconds is None else f"{level.recovery_seconds:.1f}"])
    return rows


HEADER = ["load", "offered calls/s", "calls", "accepted calls/s", "refused", "refusal ms p50 / p99",
          "accepted ms p50 / p99", "accepted past deadline", "deadline exceeded gRPC/HTTP", "errors", "HTTP refusals with Retry-After",
          "server RSS MiB (min – max)", "recovery to 90 % (s)"]


def plot(levels: list[Level], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (rss_axis, rate_axis) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for level in levels:
        times = [t for t, _ in level.rss]
        rss_axis.plot(times, [r / 2**20 for _, r in level.rss], label=f"{level.factor:g}x capacity")
        seconds = int(max(times, default=0)) + 1
        per_second = [0] * seconds
        for outcome in level.outcomes:
            if outcome.result == "ok" and int(outcome.started) < seconds:
                per_second[int(outcome.started)] += 1
        rate_axis.plot(range(seconds), per_second, label=f"{level.factor:g}x: accepted calls/s")
    rss_axis.set_ylabel("server RSS (MiB)")
    top = max((r for level in levels for _, r in level.rss), default=1) / 2**20
    rss_axis.set_ylim(0, top * 1.25)  # room above the line: a flat line at the top edge is hard to see
    rate_axis.set_ylabel("accepted calls / s")
    rate_axis.set_xlabel("seconds into the load")
    for axis in (rss_axis, rate_axis):
        axis.legend()
        axis.grid(alpha=0.3)
    figure.suptitle("Open-loop overload, aegen.v1 gRPC + OIP HTTP at once")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


async def run(args: argparse.Namespace, target: str, http_url: str, pid: int) -> tuple[float, list[Level]]:
    clients = Clients(target, http_url, args.model_name, args.samples)
    try:
        await closed_loop(clients, 3.0)  # warm-up
        capacity = await closed_loop(clients, 10.0)
        print(f"capacity: {capacity:.1f} calls/s of {args.samples} samples", file=sys.stderr)
        levels = []
        for factor in args.factors:
            level = Level(factor, factor * capacity)
            print(f"{factor:g}x: {level.rate:.0f} calls/s for {args.seconds:g} s", file=sys.stderr)
            await open_loop(clients, level, args.seconds, pid)
            level.recovery_seconds = await recovery(clients, capacity)
            levels.append(level)
        return capacity, levels
    finally:
        await clients.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--seconds", type=float, default=60.0)
    # Big enough that decoding, not the per-call overhead, is the limit: the load generator shares the CPU.
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--factors", type=float, nargs="+", default=[2.0, 5.0])
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args(argv)
    model = bench_model(args.repository, args.model, args.checkpoint)
    args.model_name = model.name
    details = machine_details()
    with server(model.repository, ["--intra-op-threads", "1"]) as (target, http_url, process):
        capacity, levels = run_async(run(args, target, http_url, process.pid))
    for level in levels:
        errors = collections.Counter(o.result for o in level.outcomes if o.result.startswith("error"))
        print(f"{level.factor:g}x errors: {dict(errors)}", file=sys.stderr)
    rows = summary_rows(capacity, levels)
    table = markdown_table(HEADER, rows)
    print(table)
    plot(levels, args.out / "robustness_overload_rss.png")
    body = (f"Capacity (closed loop, {CLOSED_LOOP_CALLS} calls in flight, half gRPC GenerateSamples, half HTTP "
            f"ModelInfer, {args.samples} samples a call): **{capacity:.1f} calls/s**. Open loop at each factor "
            f"for {args.seconds:g} s, every call with a {DEADLINE_SECONDS:g} s deadline, server defaults "
            f"(--max-inflight-calls 1024, --max-wait-seconds 10) on one intra-op thread.\n\n{table}\n\n"
            f"![RSS and accepted calls over time](robustness_overload_rss.png)\n\n{machine_markdown(details)}\n")
    atomic_write_text(args.out / "robustness-overload.md", "# Overload, measured (bench/overload.py)\n\n" + body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
