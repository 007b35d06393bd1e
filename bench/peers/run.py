"""Peer benchmark: aegen against Seldon MLServer 1.7.1, the server a user would pick instead, on the same
exported uint8 decoder, the same onnxruntime threads (2 intra-op) and the same client.

- aegen: `python -m server --intra-op-threads 2` (its defaults otherwise: adaptive queue delay, the
  single-threaded small-batch session), driven twice: over the Open Inference Protocol's gRPC by the
  closed-loop client of bench/peers/oip_loop.py, and over aegen.v1 by aegen-loadtest;
- MLServer: the custom runtime bench/peers/mlserver_runtime.py (seeds in, uint8 images out), one server
  per adaptive-batching setting (SETTINGS), driven by the same OIP client;
- the echo server (bench/echo_server.py: ModelInfer answered from a cache, no inference), driven by the same
  OIP client: what any grpc.aio server reaches with this client on this machine, the ceiling of each cell.

Every cell (N samples per request × calls in flight) runs each side `--rounds` times, rounds alternating
between the servers, which all run side by side; the best round of each counts (others' work on the
machine only ever slows a round down). Then perf_analyzer sweeps `--concurrency-range` against aegen over
gRPC and HTTP, as a second, independent load generator. Writes docs/benchmarks/peers.md and peers.png.

    python -m bench.peers [--repository R --model M] [--duration 5] [--rounds 2] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from bench.common import (
    PYTHON,
    _process,
    bench_model,
    checkout,
    load,
    load_parser,
    machine_details,
    report_or_fail,
    serve_echo,
    serve_model,
    write_result,
)
from bench.peers.mlserver import VERSION, MLServerSetting, check_installed, serve_mlserver
from bench.peers.oip_loop import LoopResult, closed_loop
from bench.peers.perf_sweep import perf_sweep
from bench.peers.report import AEGEN_OIP, AEGEN_V1, ECHO, Cell, body_markdown, plot
from client.loadtest.scrape import BATCH_SIZE_METRIC, scrape_histograms
from client.local import free_port

AEGEN_BEFORE = "aegen before this issue, OIP gRPC"
# MLServer's threads; a queue that holds 64 calls of 8192 (the default 262,144 samples refuses the 33rd).
BEFORE_FLAGS = ["--intra-op-threads", "2", "--max-queue-samples", "1048576"]
# MLServer queues whatever comes; aegen's admission (--max-wait-seconds, 10 s) would refuse the calls whose
# wait exceeds half of it (N = 8192, 64 in flight: ~5 s ahead), so a throughput cell would count refusals.
AEGEN_FLAGS = [*BEFORE_FLAGS, "--max-wait-seconds", "0"]

SIZES = (1, 64, 1024, 8192)
IN_FLIGHT = (1, 16, 64)
# (max_batch_size requests, max_batch_time s); parallel_workers 1 does not start here (uvloop: "no current
# event loop" in its worker), so inference runs in MLServer's own process, as in its single-process mode.
SETTINGS = (MLServerSetting(1, 0.0), MLServerSetting(16, 0.001), MLServerSetting(64, 0.002),
            MLServerSetting(64, 0.005), MLServerSetting(256, 0.010))
# At N = 8192 a request is a full batch already: MLServer's batching only multiplies memory (a Python list
# per pixel in its codec), so that row runs its unbatched setting alone.
LARGE_ONLY = (MLServerSetting(1, 0.0),)


def _aegen_oip(served, model: str, n: int, in_flight: int, args: argparse.Namespace) -> Cell:
    before = scrape_histograms(served.metrics_url, [BATCH_SIZE_METRIC])
    result = closed_loop(served.target, model, n, in_flight, args.duration, args.warmup)
    after = scrape_histograms(served.metrics_url, [BATCH_SIZE_METRIC])
    count = after[BATCH_SIZE_METRIC].count - before[BATCH_SIZE_METRIC].count
    batch = (after[BATCH_SIZE_METRIC].total - before[BATCH_SIZE_METRIC].total) / count if count else float("nan")
    return Cell(AEGEN_OIP, n, in_flight, result.samples_per_s, result.latency_ms["p50"],
                result.latency_ms["p99"], sum(result.errors.values()), batch)


def _aegen_v1(served, model: str, n: int, in_flight: int, args: argparse.Namespace) -> Cell:
    level = load(served.target, num_samples=n, concurrency=(in_flight,), duration=args.duration,
                 warmup=args.warmup, model=model, metrics_url=served.metrics_url).levels[0]
    split = level.server or {}
    return Cell(AEGEN_V1, n, in_flight, level.samples_per_s, level.latency_ms["p50"], level.latency_ms["p99"],
                sum(level.errors.values()), split.get("batch_mean_samples", float("nan")))


def _mlserver(server, model: str, n: int, in_flight: int, args: argparse.Namespace) -> Cell:
    before = server.batch_stats()
    result: LoopResult = closed_loop(server.target, model, n, in_flight, args.duration, args.warmup)
    after = server.batch_stats()
    batches = after["batches"] - before["batches"]
    batch = (after["samples"] - before["samples"]) / batches if batches else float("nan")
    return Cell(server.setting.label, n, in_flight, result.samples_per_s, result.latency_ms["p50"],
                result.latency_ms["p99"], sum(result.errors.values()), batch)


def _echo(served, model: str, n: int, in_flight: int, args: argparse.Namespace) -> Cell:
    result = closed_loop(served.target, "echo", n, in_flight, args.duration, args.warmup)
    return Cell(ECHO, n, in_flight, result.samples_per_s, result.latency_ms["p50"], result.latency_ms["p99"],
                sum(result.errors.values()), float("nan"))


def _aegen_before(served, model: str, n: int, in_flight: int, args: argparse.Namespace) -> Cell:
    cell = _aegen_oip(served, model, n, in_flight, args)
    cell.side = f"{AEGEN_BEFORE} ({args.before})"
    return cell


@contextlib.contextmanager
def serve_old_aegen(commit: str, repository: Path, extra: list[str]):
    """aegen as of `commit` (git archive into a temporary tree), run with that tree first on sys.path."""
    with checkout(commit, "aegen-before-") as tree:
        port, metrics_port = free_port(), free_port()
        launcher = f"import runpy, sys; sys.path.insert(0, {str(tree)!r}); runpy.run_module('server', run_name='__main__')"
        argv = [PYTHON, "-c", launcher, "--repository", str(repository), "--host", "127.0.0.1", "--port", str(port),
                "--metrics-port", str(metrics_port), "--http-port", "0", "--device", "cpu", "--log-level", "WARNING",
                "--repository-poll-seconds", "0", *extra]
        with _process(argv, f"127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics", None, health=True,
                      timeout=120) as served:
            yield served


def measure(args: argparse.Namespace, model, aegen, mlservers: dict, before=None, echo=None) -> list[Cell]:
    best: list[Cell] = []
    for n in args.sizes:
        for in_flight in args.in_flight:
            sides = {AEGEN_OIP: (_aegen_oip, aegen), AEGEN_V1: (_aegen_v1, aegen)}
            if echo is not None:
                sides[ECHO] = (_echo, echo)
            if before is not None:
                sides[AEGEN_BEFORE] = (_aegen_before, before)
            for setting, server in mlservers.items():
                if n < 8192 or setting in LARGE_ONLY:
                    sides[setting.label] = (_mlserver, server)
            rounds: dict[str, list[Cell]] = {name: [] for name in sides}
            for _ in range(args.rounds):
                for name, (side, served) in sides.items():
                    try:
                        cell = side(served, model.name, n, in_flight, args)
                    except Exception as exc:  # noqa: BLE001 - one side failing must not lose the other cells
                        print(f"  N={n} in flight {in_flight} {name}: failed ({exc})", file=sys.stderr, flush=True)
                        cell = Cell(name, n, in_flight, float("nan"), float("nan"), float("nan"), -1, float("nan"))
                    print(f"  N={n} in flight {in_flight} {name}: {cell.samples_per_s:,.0f} samples/s, "
                          f"p99 {cell.p99_ms:.1f} ms", file=sys.stderr, flush=True)
                    rounds[name].append(cell)
            for cells in rounds.values():
                top = max(cells, key=lambda c: c.samples_per_s if c.samples_per_s == c.samples_per_s else -1)
                top.rounds = [c.samples_per_s for c in cells]
                best.append(top)
    return best


def run(args: argparse.Namespace) -> Path:
    check_installed()
    details = machine_details()
    model = bench_model(args.repository, args.model, args.checkpoint)
    decoder = model.repository / model.name
    decoder = max((p for p in decoder.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)) / "decoder_uint8.onnx"
    http_port = free_port()
    settings = SETTINGS[:1] + SETTINGS[2:3] if args.quick else SETTINGS
    with contextlib.ExitStack() as stack:
        aegen = stack.enter_context(serve_model(model.repository, ["--http-port", str(http_port), *AEGEN_FLAGS]))
        mlservers = {s: stack.enter_context(serve_mlserver(decoder, model.name, s)) for s in settings}
        before = (stack.enter_context(serve_old_aegen(args.before, model.repository, BEFORE_FLAGS))
                  if args.before else None)
        echo = stack.enter_context(serve_echo())
        cells = measure(args, model, aegen, mlservers, before, echo)
        sweeps = [] if args.no_perf_analyzer else perf_sweep(aegen.target, f"127.0.0.1:{http_port}", model.name,
                                                             args.perf_sizes, args.in_flight, args.duration)
    png = args.out_dir / "peers.png"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    plot(cells, png)
    body = body_markdown(cells, sweeps, settings, args, model.name, VERSION, png.name)
    return write_result("peers", "Peer benchmark: aegen against Seldon MLServer", body, details, args.out_dir)


def parser() -> argparse.ArgumentParser:
    p = load_parser(__doc__, duration=5.0, warmup=1.0, rounds_help="alternating rounds; the best per side counts")
    p.add_argument("--sizes", type=lambda s: tuple(int(x) for x in s.split(",")), default=SIZES,
                   help="samples per request, comma-separated (default 1,64,1024,8192)")
    p.add_argument("--in-flight", type=lambda s: tuple(int(x) for x in s.split(",")), default=IN_FLIGHT,
                   help="calls in flight, comma-separated (default 1,16,64)")
    p.add_argument("--perf-sizes", type=lambda s: tuple(int(x) for x in s.split(",")), default=(1, 1024),
                   help="samples per request of the perf_analyzer sweeps (default 1,1024)")
    p.add_argument("--no-perf-analyzer", action="store_true", help="skip the perf_analyzer sweeps")
    p.add_argument("--before", help="also serve aegen as of this commit (OIP side), for a before/after per cell")
    p.add_argument("--quick", action="store_true", help="two MLServer settings only (to check that it runs)")
    return p


def main(argv: list[str] | None = None) -> int:
    return report_or_fail("bench.peers", lambda: run(parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
