"""aegen-loadtest: drive GenerateSamples on a target and report throughput and latency per load level.

The project's ghz / perf_analyzer. Two ways to apply load:

    closed loop  --concurrency 1,4,16,64,256   a fixed number of calls in flight, one level after another
    open loop    --rate 200,400                 Poisson arrivals at R requests/s, whatever the latency

Each level runs a --warmup (not measured), then a bounded --duration or --requests count, and always
stops by itself: every level has a hard cap of --max-level-time seconds, every call a deadline.
Open-loop latency is measured from each request's scheduled arrival, so a slow server cannot hide
its queueing by slowing the client down (no coordinated omission). Without --model the calls go to the
model the server would default to for every client tool (its first VAE, else its first model), asked once
before the run.

Per level it reports requests/s, samples/s, MB/s (response payload), latency p50/p90/p95/p99/max,
errors by gRPC status code, and, given --metrics-url, the server's own split of a request's time
between queue wait and inference (deltas of the aegen_queue_wait_seconds and
aegen_inference_duration_seconds histograms over the measured window). Results go to --out DIR as
loadtest.json, loadtest.csv and loadtest.png (throughput against p99 latency), and to stdout as a
Markdown table.

One Python client is easily the bottleneck on a small machine: --channels spreads calls over several
HTTP/2 connections and --processes over several client processes (each with its share of the
concurrency or rate). A server on the same 2 cores as its client competes with it for CPU.

This package ships in the serving image: numpy, grpcio, protobuf and prometheus-client only
(matplotlib, for the PNG, is imported lazily). Its modules, by job: config.py (LoadTestConfig, flags and
AEGEN_LOADTEST_* variables), generate.py (the loops, processes and channels), scrape.py (the server's
/metrics), report.py (tables, JSON, CSV, plot), cli.py (main).
"""

from client.loadtest.cli import main
from client.loadtest.config import LoadTestConfig, LoadTestError, build_parser, config_from_args
from client.loadtest.generate import probe, resolve_model, run_load_test
from client.loadtest.report import LevelResult, LoadTestReport, summarize, write_outputs
from client.loadtest.scrape import (
    INFERENCE_METRIC,
    QUEUE_WAIT_METRIC,
    HistogramTotals,
    parse_histograms,
    scrape_histograms,
    server_split,
)

__all__ = [
    "INFERENCE_METRIC", "QUEUE_WAIT_METRIC", "HistogramTotals", "LevelResult", "LoadTestConfig", "LoadTestError",
    "LoadTestReport", "build_parser", "config_from_args", "main", "parse_histograms", "probe", "resolve_model",
    "run_load_test", "scrape_histograms", "server_split", "summarize", "write_outputs",
]
