"""Benchmark c: dynamic batching on vs off, and against the obvious alternative: a synchronous grpcio
server calling the PyTorch decoder per request (bench/baseline_torch_server.py).

Server settings compared:
  batching on (default)   --max-queue-delay-us 0 --max-batch-size 8192 (merges what queued during a decode)
  2 ms queue delay        --max-queue-delay-us 2000 (each batch waits up to 2 ms for company)
  batching off            --max-queue-delay-us 0 --max-batch-size N (each request its own batch)
  one intra-op thread     --intra-op-threads 1 (batching on)

Targets: >= 3x the baseline's samples/s at N = 1 with 64 in flight, >= 2x at N = 1024.

    python -m bench.batching [--repository R --model M --checkpoint C] [--duration 5]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from bench.common import (
    BenchError,
    bench_model,
    fmt,
    load,
    load_parser,
    machine_details,
    markdown_table,
    serve_baseline,
    serve_model,
    write_result,
)
from client.loadtest import LevelResult

# (N, calls in flight, target multiple of the baseline)
LOADS = ((1, 64, 3.0), (1024, 4, 2.0))


BASELINE = "baseline: sync grpcio + PyTorch, per request"
DEFAULT = "aegen, batching on (default)"
# onnxruntime's default pool (one spinning thread per core) fights the gRPC threads and the client for the
# same 2 cores; one intra-op thread leaves them a core.
ONE_THREAD = "aegen, batching on, --intra-op-threads 1"


def _settings(n: int) -> dict[str, list[str]]:
    return {
        DEFAULT: [],
        ONE_THREAD: ["--intra-op-threads", "1"],
        "aegen, 2 ms queue delay": ["--max-queue-delay-us", "2000"],
        "aegen, batching off": ["--max-queue-delay-us", "0", "--max-batch-size", str(n)],
    }


def _row(name: str, n: int, in_flight: int, level: LevelResult, baseline: float | None) -> list[object]:
    split = level.server or {}
    return [name, n, in_flight, fmt(level.samples_per_s), fmt(level.latency_ms["p50"], 2),
            fmt(level.latency_ms["p99"], 2), fmt(split.get("batch_mean_samples", float("nan")), 1),
            "1.00" if baseline is None else fmt(level.samples_per_s / baseline, 2), sum(level.errors.values())]


def run(args: argparse.Namespace) -> Path:
    details = machine_details()
    model = bench_model(args.repository, args.model, args.checkpoint)
    if model.checkpoint is None:
        raise BenchError("the PyTorch baseline needs the checkpoint the model was exported from: pass --checkpoint")
    rows, verdicts = [], []
    for n, in_flight, target in LOADS:
        # Every server of this load runs side by side and the rounds alternate between them, so that all
        # see the same machine; the best round of each counts (others' work only ever slows a round down).
        with contextlib.ExitStack() as stack:
            servers = {BASELINE: stack.enter_context(serve_baseline(model.checkpoint))}
            for name, extra in _settings(n).items():
                servers[name] = stack.enter_context(serve_model(model.repository, extra))
            rounds: dict[str, list[LevelResult]] = {name: [] for name in servers}
            for _ in range(args.rounds):
                for name, served in servers.items():
                    rounds[name] += load(served.target, num_samples=n, concurrency=(in_flight,),
                                         duration=args.duration, warmup=args.warmup, model=model.name,
                                         metrics_url=served.metrics_url).levels
        best = {name: max(levels, key=lambda r: r.samples_per_s) for name, levels in rounds.items()}
        base = best[BASELINE].samples_per_s
        rows.append(_row(BASELINE, n, in_flight, best[BASELINE], None))
        rows += [_row(name, n, in_flight, level, base) for name, level in best.items() if name != BASELINE]
        for name in (DEFAULT, ONE_THREAD):
            multiple = best[name].samples_per_s / base
            verdicts.append(f"- N = {n}, {in_flight} in flight, {name}: {multiple:.2f}x the baseline "
                            f"(target >= {target:g}x: {'met' if multiple >= target else 'missed'})")
    table = markdown_table(["server", "N", "in flight", "samples/s", "p50 ms", "p99 ms",
                            "samples per batch (server)", "x baseline", "errors"], rows)
    body = (f"Closed loop, uint8, {args.duration:g} s per level after {args.warmup:g} s warm-up, one client "
            f"process on the same 2 cores as the server. For each load, all five servers run side by side and "
            f"{args.rounds} rounds alternate between them; the best round of each is shown. The baseline "
            f"is a `grpc.server(ThreadPoolExecutor(10))` decoding each request with PyTorch (default threads). "
            f"Samples per batch: the server's aegen_batch_size_samples histogram over the window.\n\n"
            f"{table}\n" + "\n".join(verdicts) + "\n")
    return write_result("batching", "Benchmark c: dynamic batching, and the PyTorch baseline", body, details,
                        args.out_dir)


def parser() -> argparse.ArgumentParser:
    return load_parser(__doc__, duration=5.0, warmup=1.0,
                       rounds_help="alternating rounds; the best per server counts")


def main(argv: list[str] | None = None) -> int:
    run(parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
