"""Benchmark b: small requests. N = 1 at 1 … 256 calls in flight against the real server and against
bench/echo_server.py (same framework, same response size, no inference): the framework's own ceiling.

Targets: >= 0.7 of echo's calls/s at 64 in flight; p50 at 1 in flight <= 1.5x echo's.

    python -m bench.small_requests [--repository R --model M] [--duration 5]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from bench.common import (
    Served,
    bench_model,
    fmt,
    load,
    load_parser,
    machine_details,
    markdown_table,
    serve_echo,
    serve_model,
    write_result,
)
from client.loadtest import LevelResult, LoadTestConfig, LoadTestReport

LEVELS = (1, 4, 16, 64, 256)
ECHO = "echo"
DEFAULT = "aegen server, defaults (dynamic batching, adaptive queue delay)"
NO_DELAY = "aegen server, --max-queue-delay-us 2000"


def _plot(echo: LoadTestReport, served: LoadTestReport, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    for report, label, colour in ((echo, "echo (no inference)", "tab:blue"), (served, "aegen server", "tab:orange")):
        xs = [r.concurrency for r in report.levels]
        ax1.plot(xs, [r.requests_per_s for r in report.levels], "o-", color=colour, label=label)
        ax2.plot(xs, [r.latency_ms["p50"] for r in report.levels], "o-", color=colour, label=f"{label} p50")
        ax2.plot(xs, [r.latency_ms["p99"] for r in report.levels], "x--", color=colour, label=f"{label} p99")
    for ax, ylabel in ((ax1, "calls/s (N = 1)"), (ax2, "latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("calls in flight")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    ax2.set_yscale("log")
    fig.suptitle("Small requests: aegen server vs echo, client and server on the same machine", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _best(levels: list[LevelResult]) -> LevelResult:
    """The round with the most calls/s: others' work on the machine only ever slows a round down."""
    return max(levels, key=lambda r: r.requests_per_s)


def _measure(args: argparse.Namespace, model_name: str, servers: dict[str, Served]) -> dict[str, LoadTestReport]:
    """Level by level, rounds alternate between the servers (side by side), so that all see the same machine."""
    best: dict[str, list[LevelResult]] = {name: [] for name in servers}
    for level in LEVELS:
        rounds: dict[str, list[LevelResult]] = {name: [] for name in servers}
        for _ in range(args.rounds):
            for name, served in servers.items():
                rounds[name] += load(served.target, concurrency=(level,), duration=args.duration,
                                     warmup=args.warmup, model="echo" if name == ECHO else model_name,
                                     metrics_url=served.metrics_url).levels
        for name in servers:
            best[name].append(_best(rounds[name]))
    return {name: LoadTestReport(LoadTestConfig(concurrency=LEVELS), levels) for name, levels in best.items()}


def _table(echo: LoadTestReport, served: LoadTestReport) -> str:
    rows = []
    for e, s in zip(echo.levels, served.levels):
        split = s.server or {}
        rows.append([s.concurrency, fmt(e.requests_per_s), fmt(s.requests_per_s),
                     fmt(s.requests_per_s / e.requests_per_s, 2),
                     fmt(e.latency_ms["p50"], 2), fmt(s.latency_ms["p50"], 2),
                     fmt(s.latency_ms["p50"] / e.latency_ms["p50"], 2),
                     fmt(e.latency_ms["p99"], 2), fmt(s.latency_ms["p99"], 2),
                     fmt(split.get("queue_wait_mean_ms", float("nan")), 2),
                     fmt(split.get("inference_mean_ms", float("nan")), 2),
                     sum(e.errors.values()) + sum(s.errors.values())])
    return markdown_table(
        ["in flight", "echo calls/s", "server calls/s", "server/echo", "echo p50 ms", "server p50 ms",
         "p50 ratio", "echo p99 ms", "server p99 ms", "server queue wait ms", "server inference ms", "errors"],
        rows)


def _verdict(echo: LoadTestReport, served: LoadTestReport) -> str:
    at64 = next(s.requests_per_s / e.requests_per_s for e, s in zip(echo.levels, served.levels) if s.concurrency == 64)
    p50_1 = served.levels[0].latency_ms["p50"] / echo.levels[0].latency_ms["p50"]
    return (f"- calls/s at 64 in flight: {at64:.2f} of echo's (target >= 0.70: {'met' if at64 >= 0.7 else 'missed'})\n"
            f"- p50 at 1 in flight: {p50_1:.2f}x echo's (target <= 1.5x: {'met' if p50_1 <= 1.5 else 'missed'})\n")


def run(args: argparse.Namespace) -> Path:
    details = machine_details()
    model = bench_model(args.repository, args.model, args.checkpoint)
    with contextlib.ExitStack() as stack:
        servers = {ECHO: stack.enter_context(serve_echo()),
                   DEFAULT: stack.enter_context(serve_model(model.repository)),
                   NO_DELAY: stack.enter_context(serve_model(model.repository, ["--max-queue-delay-us", "2000"]))}
        reports = _measure(args, model.name, servers)
    echo = reports[ECHO]
    png = args.out_dir / "small_requests.png"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    _plot(echo, reports[DEFAULT], png)
    body = (f"Closed loop, N = 1 uint8, {args.duration:g} s per level after {args.warmup:g} s warm-up; the servers "
            f"run side by side and, level by level, {args.rounds} rounds alternate between them (the best round "
            f"of each counts: others' work on the machine only slows a round down). One client process "
            f"(grpc.aio, one channel) on the same 2 cores as the servers. Model `{model.name}`.\n\n"
            f"## {DEFAULT}\n\n{_table(echo, reports[DEFAULT])}\n{_verdict(echo, reports[DEFAULT])}\n"
            f"![calls/s and latency against calls in flight]({png.name})\n\n"
            f"## {NO_DELAY}\n\nThe same server told to let each batch wait up to 2 ms for company "
            f"(`--max-queue-delay-us 2000`).\n\n"
            f"{_table(echo, reports[NO_DELAY])}\n{_verdict(echo, reports[NO_DELAY])}")
    return write_result("small_requests", "Benchmark b: small requests against the echo ceiling", body, details,
                        args.out_dir)


def parser() -> argparse.ArgumentParser:
    return load_parser(__doc__, duration=5.0, warmup=1.0,
                       rounds_help="alternating rounds; the best per level counts")


def main(argv: list[str] | None = None) -> int:
    run(parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
