"""aegen-loadtest: drive GenerateSamples on a target and report throughput and latency per load level.

The project's ghz / perf_analyzer. Two ways to apply load:

    closed loop  --concurrency 1,4,16,64,256   a fixed number of calls in flight, one level after another
    open loop    --rate 200,400                 Poisson arrivals at R requests/s, whatever the latency

Each level runs a --warmup (not measured), then a bounded --duration or --requests count, and always
stops by itself: every level has a hard cap of --max-level-time seconds, every call a deadline.
Open-loop latency is measured from each request's scheduled arrival, so a slow server cannot hide
its queueing by slowing the client down (no coordinated omission).

Per level it reports requests/s, samples/s, MB/s (response payload), latency p50/p90/p95/p99/max,
errors by gRPC status code, and, given --metrics-url, the server's own split of a request's time
between queue wait and inference (deltas of the aegen_queue_wait_seconds and
aegen_inference_duration_seconds histograms over the measured window). Results go to --out DIR as
loadtest.json, loadtest.csv and loadtest.png (throughput against p99 latency), and to stdout as a
Markdown table.

One Python client is easily the bottleneck on a small machine: --channels spreads calls over several
HTTP/2 connections and --processes over several client processes (each with its share of the
concurrency or rate). A server on the same 2 cores as its client competes with it for CPU.

This module ships in the serving image: numpy, grpcio, protobuf and prometheus-client only
(matplotlib, for the PNG, is imported lazily).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import csv
import dataclasses
import io
import json
import math
import multiprocessing
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from protos.aegen.v1 import generator_pb2

METHOD = "/aegen.v1.GeneratorService/GenerateSamples"
QUEUE_WAIT_METRIC = "aegen_queue_wait_seconds"
INFERENCE_METRIC = "aegen_inference_duration_seconds"
BATCH_SIZE_METRIC = "aegen_batch_size_samples"  # optional: mean samples per decoded batch
DTYPES = {"uint8": generator_pb2.DTYPE_UINT8, "float32": generator_pb2.DTYPE_FLOAT32}
SAMPLERS = {
    "standard-normal": generator_pb2.SAMPLER_STANDARD_NORMAL,
    "gaussian": generator_pb2.SAMPLER_GAUSSIAN,
    "mixture": generator_pb2.SAMPLER_MIXTURE,
}
PERCENTILES = (50, 90, 95, 99)
# Large enough for 8192 float32 28×28 images (25.7 MB) with room to spare.
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
ENV_PREFIX = "AEGEN_LOADTEST_"
CLIENT_OVERLOADED = "CLIENT_OVERLOADED"  # open loop: an arrival found --max-in-flight calls already out


class LoadTestError(Exception):
    """The load test cannot run: bad configuration, unreachable target, or a target that refuses the
    request outright. The message says which."""


@dataclass(frozen=True)
class LoadTestConfig:
    """One run: where to send what, at which load levels, for how long, and where to write results."""

    target: str = "127.0.0.1:50051"
    model: str = "default"
    num_samples: int = 1
    dtype: str = "uint8"
    sampler: str = "standard-normal"
    seed: int | None = None  # request i gets seed + i; None lets the server draw
    concurrency: tuple[int, ...] = (1, 4, 16, 64, 256)
    rate: tuple[float, ...] = ()  # non-empty: open loop at these request rates
    duration: float = 10.0  # seconds measured per level (unless requests is set)
    requests: int | None = None  # measured calls per level instead of a duration
    warmup: float = 2.0  # seconds per level before measuring
    max_level_time: float = 300.0  # hard cap per level, warm-up included
    call_timeout: float = 30.0  # deadline of each call
    connect_timeout: float = 5.0
    max_in_flight: int = 10000  # open loop: arrivals beyond this are counted as CLIENT_OVERLOADED
    channels: int = 1
    processes: int = 1
    tls: bool = False
    ca: str | None = None
    metrics_url: str | None = None
    out: str | None = None
    png: bool = True

    def __post_init__(self) -> None:
        problems = [
            (self.num_samples >= 1, f"--num-samples must be >= 1, got {self.num_samples}"),
            (self.dtype in DTYPES, f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}"),
            (self.sampler in SAMPLERS, f"--sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}"),
            (bool(self.concurrency) or bool(self.rate), "give --concurrency levels or --rate levels"),
            (all(c >= 1 for c in self.concurrency), f"--concurrency levels must be >= 1, got {self.concurrency}"),
            (all(r > 0 and math.isfinite(r) for r in self.rate), f"--rate levels must be > 0, got {self.rate}"),
            (self.duration > 0 and math.isfinite(self.duration), f"--duration must be > 0, got {self.duration}"),
            (self.requests is None or self.requests >= 1, f"--requests must be >= 1, got {self.requests}"),
            (self.warmup >= 0, f"--warmup must be >= 0, got {self.warmup}"),
            (self.max_level_time > self.warmup + (self.duration if self.requests is None else 0),
             f"--max-level-time ({self.max_level_time:g} s) must exceed --warmup plus --duration"),
            (self.call_timeout > 0, f"--call-timeout must be > 0, got {self.call_timeout}"),
            (self.connect_timeout > 0, f"--connect-timeout must be > 0, got {self.connect_timeout}"),
            (self.max_in_flight >= 1, f"--max-in-flight must be >= 1, got {self.max_in_flight}"),
            (self.channels >= 1, f"--channels must be >= 1, got {self.channels}"),
            (1 <= self.processes <= 64, f"--processes must be in 1..64, got {self.processes}"),
            (self.seed is None or 0 <= self.seed < 2**64, f"--seed must be in 0..2^64-1, got {self.seed}"),
            (self.ca is None or Path(self.ca).is_file(), f"--ca {self.ca}: no such file"),
        ]
        for ok, message in problems:
            if not ok:
                raise LoadTestError(message)

    @property
    def open_loop(self) -> bool:
        return bool(self.rate)

    @property
    def levels(self) -> tuple[float, ...]:
        return tuple(self.rate) if self.open_loop else tuple(float(c) for c in self.concurrency)


# --------------------------------------------------------------------------------------------------
# Server metrics: histogram sums and counts from the Prometheus exposition


@dataclass(frozen=True)
class HistogramTotals:
    """A histogram's _sum and _count, added up over all its label sets."""

    total: float = 0.0
    count: float = 0.0


def parse_histograms(exposition: str, names: Sequence[str]) -> dict[str, HistogramTotals]:
    """Sum the _sum and _count samples of each named histogram over every label set."""
    totals = {name: [0.0, 0.0] for name in names}
    for family in text_string_to_metric_families(exposition):
        if family.name not in totals:
            continue
        for sample in family.samples:
            if sample.name == family.name + "_sum":
                totals[family.name][0] += sample.value
            elif sample.name == family.name + "_count":
                totals[family.name][1] += sample.value
    return {name: HistogramTotals(*values) for name, values in totals.items()}


def scrape_histograms(url: str, names: Sequence[str], timeout: float = 5.0) -> dict[str, HistogramTotals]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            text = response.read().decode("utf-8")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise LoadTestError(f"cannot read metrics from {url}: {exc}") from None
    return parse_histograms(text, names)


def server_split(before: dict[str, HistogramTotals] | None,
                 after: dict[str, HistogramTotals] | None) -> dict[str, float] | None:
    """Mean queue wait and mean inference time over the window, from histogram deltas."""
    if before is None or after is None:
        return None
    split: dict[str, float] = {}
    for key, name in (("queue_wait", QUEUE_WAIT_METRIC), ("inference", INFERENCE_METRIC)):
        count = after[name].count - before[name].count
        total = after[name].total - before[name].total
        split[f"{key}_count"] = count
        split[f"{key}_mean_ms"] = 1000.0 * total / count if count > 0 else float("nan")
        split[f"{key}_total_s"] = total
    busy = split["queue_wait_total_s"] + split["inference_total_s"]
    split["queue_wait_share"] = split["queue_wait_total_s"] / busy if busy > 0 else float("nan")
    # Each request's queue wait is observed once and each batch's inference once: their ratio is the
    # number of requests a batch served.
    batches = split["inference_count"]
    split["requests_per_batch"] = split["queue_wait_count"] / batches if batches > 0 else float("nan")
    if BATCH_SIZE_METRIC in after and BATCH_SIZE_METRIC in before:
        count = after[BATCH_SIZE_METRIC].count - before[BATCH_SIZE_METRIC].count
        total = after[BATCH_SIZE_METRIC].total - before[BATCH_SIZE_METRIC].total
        split["batch_mean_samples"] = total / count if count > 0 else float("nan")
    return split


# --------------------------------------------------------------------------------------------------
# One level, in one process


@dataclass(frozen=True)
class LevelSpec:
    """What one client process does for one level (its share of the load)."""

    config: LoadTestConfig
    concurrency: int  # closed loop: calls in flight; open loop: 0
    rate: float  # open loop: requests/s; closed loop: 0
    requests: int | None  # this process's share of --requests
    seed_offset: int  # keeps seeds distinct across processes
    start_at: float  # wall-clock time.time() at which to start, so processes start together


@dataclass
class LevelRaw:
    """What one process measured: per-call latencies inside the window and the counters."""

    latencies: np.ndarray  # seconds, successful calls completed inside the window
    ok: int = 0
    payload_bytes: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    window_s: float = 0.0
    first_error: str = ""


def _channel(config: LoadTestConfig, index: int) -> grpc.aio.Channel:
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        # Without a local subchannel pool, channels to one target share one TCP connection.
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.primary_user_agent", f"aegen-loadtest/{index}"),
    ]
    if config.tls or config.ca:
        root = Path(config.ca).read_bytes() if config.ca else None
        return grpc.aio.secure_channel(config.target, grpc.ssl_channel_credentials(root), options=options)
    return grpc.aio.insecure_channel(config.target, options=options)


def _request_factory(config: LoadTestConfig, seed_offset: int) -> Callable[[], bytes]:
    base = generator_pb2.GenerateSamplesRequest(
        model_name=config.model, num_samples=config.num_samples,
        sampler=SAMPLERS[config.sampler], output_dtype=DTYPES[config.dtype])
    if config.seed is None:
        fixed = base.SerializeToString()
        return lambda: fixed
    counter = iter(range(seed_offset, 2**62))

    def make() -> bytes:
        base.seed = (config.seed + next(counter)) % 2**64
        return base.SerializeToString()
    return make


class _Recorder:
    """Collects calls that complete inside the measured window [start, end]."""

    def __init__(self, window_start: float, wanted: int | None) -> None:
        self.window_start = window_start
        self.window_end = math.inf
        self.wanted = wanted
        self.latencies: list[float] = []
        self.ok = 0
        self.payload_bytes = 0
        self.errors: dict[str, int] = {}
        self.first_error = ""
        self.done = asyncio.Event()

    def record(self, started: float, finished: float, code: str, nbytes: int, detail: str = "") -> None:
        if not self.window_start <= finished <= self.window_end:
            return
        if code == "OK":
            self.ok += 1
            self.payload_bytes += nbytes
            self.latencies.append(finished - started)
        else:
            self.errors[code] = self.errors.get(code, 0) + 1
            self.first_error = self.first_error or f"{code}: {detail}"
        if self.wanted is not None and self.ok + sum(self.errors.values()) >= self.wanted:
            self.window_end = finished
            self.done.set()


async def _one_call(call: Any, request: bytes, timeout: float, expected_bytes: int,
                    started: float, recorder: _Recorder) -> None:
    try:
        raw = await call(request, timeout=timeout)
    except grpc.aio.AioRpcError as exc:
        recorder.record(started, time.perf_counter(), exc.code().name, 0, exc.details() or "")
        return
    # The response is left unparsed (parsing 6 MB per call would load the client, not the server);
    # a reply shorter than its images is still caught.
    code = "OK" if len(raw) >= expected_bytes else "SHORT_RESPONSE"
    recorder.record(started, time.perf_counter(), code, len(raw), f"{len(raw)} < {expected_bytes} bytes")


async def _closed_loop(calls: list[Any], spec: LevelSpec, make_request: Callable[[], bytes],
                       expected_bytes: int, recorder: _Recorder, stop: asyncio.Event) -> None:
    timeout = spec.config.call_timeout

    async def worker(index: int) -> None:
        call = calls[index % len(calls)]
        while not stop.is_set():
            await _one_call(call, make_request(), timeout, expected_bytes, time.perf_counter(), recorder)

    await asyncio.gather(*(worker(i) for i in range(spec.concurrency)))


async def _open_loop(calls: list[Any], spec: LevelSpec, make_request: Callable[[], bytes],
                     expected_bytes: int, recorder: _Recorder, stop: asyncio.Event) -> None:
    rng = np.random.default_rng(spec.seed_offset)
    timeout = spec.config.call_timeout
    in_flight: set[asyncio.Task] = set()
    scheduled = time.perf_counter()
    index = 0
    while not stop.is_set():
        scheduled += rng.exponential(1.0 / spec.rate)  # Poisson arrivals: exponential gaps
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if stop.is_set():
            break
        if len(in_flight) >= spec.config.max_in_flight:
            recorder.record(scheduled, time.perf_counter(), CLIENT_OVERLOADED, 0, "--max-in-flight reached")
            continue
        task = asyncio.create_task(_one_call(calls[index % len(calls)], make_request(), timeout,
                                             expected_bytes, scheduled, recorder))
        index += 1
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    if in_flight:
        await asyncio.wait(in_flight, timeout=timeout + 1.0)


async def _run_level_async(spec: LevelSpec, expected_bytes: int) -> LevelRaw:
    config = spec.config
    channels = [_channel(config, i) for i in range(config.channels)]
    try:
        calls = [ch.unary_unary(METHOD) for ch in channels]  # bytes in, bytes out
        now_wall, now_perf = time.time(), time.perf_counter()
        start = now_perf + max(0.0, spec.start_at - now_wall)
        await asyncio.sleep(max(0.0, start - time.perf_counter()))
        recorder = _Recorder(start + config.warmup, spec.requests)
        deadline = start + config.max_level_time
        if spec.requests is None:
            recorder.window_end = min(recorder.window_start + config.duration, deadline)
        stop = asyncio.Event()
        loop = _open_loop if config.open_loop else _closed_loop
        driver = asyncio.create_task(loop(calls, spec, _request_factory(config, spec.seed_offset),
                                          expected_bytes, recorder, stop))
        if spec.requests is None:
            await asyncio.sleep(max(0.0, recorder.window_end - time.perf_counter()))
        else:
            try:
                await asyncio.wait_for(recorder.done.wait(), max(0.0, deadline - time.perf_counter()))
            except TimeoutError:
                recorder.window_end = time.perf_counter()  # hard cap: report what was measured
        stop.set()
        # Calls still in flight finish (or hit their deadline) but land outside the window.
        try:
            await asyncio.wait_for(driver, max(1.0, deadline - time.perf_counter()))
        except TimeoutError:
            pass
        window = min(recorder.window_end, time.perf_counter()) - recorder.window_start
        return LevelRaw(np.asarray(recorder.latencies, dtype=np.float64), recorder.ok, recorder.payload_bytes,
                        recorder.errors, max(window, 0.0), recorder.first_error)
    finally:
        await asyncio.gather(*(ch.close() for ch in channels), return_exceptions=True)


def _run_level_in_process(spec: LevelSpec, expected_bytes: int) -> LevelRaw:
    """Entry point of a client process (picklable, module level)."""
    return asyncio.run(_run_level_async(spec, expected_bytes))


# --------------------------------------------------------------------------------------------------
# Levels across processes, with the server's metrics around the measured window


@dataclass
class LevelResult:
    """One load level's figures, as written to JSON and CSV."""

    mode: str  # "closed" | "open"
    concurrency: int | None
    rate: float | None
    duration_s: float
    requests: int  # completed calls inside the window, errors included
    ok: int
    errors: dict[str, int]
    requests_per_s: float
    samples_per_s: float
    mb_per_s: float
    latency_ms: dict[str, float]
    server: dict[str, float] | None = None
    first_error: str = ""

    def flat(self) -> dict[str, Any]:
        row: dict[str, Any] = {k: v for k, v in dataclasses.asdict(self).items()
                               if k not in ("latency_ms", "errors", "server", "first_error")}
        row.update({f"latency_{k}_ms": v for k, v in self.latency_ms.items()})
        row["errors"] = ";".join(f"{k}={v}" for k, v in sorted(self.errors.items()))
        for key in ("queue_wait_mean_ms", "inference_mean_ms", "queue_wait_share", "inference_count",
                    "requests_per_batch", "batch_mean_samples"):
            row[f"server_{key}"] = (self.server or {}).get(key, "")
        return row


def _split_evenly(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _level_specs(config: LoadTestConfig, level: float, start_at: float) -> list[LevelSpec]:
    p = config.processes
    if config.open_loop:
        shares = [(0, level / p)] * p
    else:
        shares = [(c, 0.0) for c in _split_evenly(int(level), p) if c > 0]
    requests = _split_evenly(config.requests, len(shares)) if config.requests else [None] * len(shares)
    # Seeds stay distinct across processes: each process counts from its own offset.
    return [LevelSpec(config, c, r, n, i * 2**40, start_at)
            for i, ((c, r), n) in enumerate(zip(shares, requests))]


def _merge(raws: list[LevelRaw]) -> LevelRaw:
    errors: dict[str, int] = {}
    for raw in raws:
        for code, n in raw.errors.items():
            errors[code] = errors.get(code, 0) + n
    return LevelRaw(np.concatenate([r.latencies for r in raws]) if raws else np.zeros(0),
                    sum(r.ok for r in raws), sum(r.payload_bytes for r in raws), errors,
                    max((r.window_s for r in raws), default=0.0),
                    next((r.first_error for r in raws if r.first_error), ""))


def summarize(config: LoadTestConfig, level: float, raw: LevelRaw,
              split: dict[str, float] | None) -> LevelResult:
    window = raw.window_s if raw.window_s > 0 else float("nan")
    if raw.latencies.size:
        ms = raw.latencies * 1000.0
        latency = {f"p{p}": float(np.percentile(ms, p)) for p in PERCENTILES}
        latency.update(mean=float(ms.mean()), max=float(ms.max()))
    else:
        latency = {**{f"p{p}": float("nan") for p in PERCENTILES}, "mean": float("nan"), "max": float("nan")}
    completed = raw.ok + sum(raw.errors.values())
    return LevelResult(
        mode="open" if config.open_loop else "closed",
        concurrency=None if config.open_loop else int(level),
        rate=level if config.open_loop else None,
        duration_s=raw.window_s, requests=completed, ok=raw.ok, errors=dict(sorted(raw.errors.items())),
        requests_per_s=raw.ok / window, samples_per_s=raw.ok * config.num_samples / window,
        mb_per_s=raw.payload_bytes / 1e6 / window, latency_ms=latency, server=split,
        first_error=raw.first_error)


class _MetricsWindow:
    """Scrapes the server's histograms at the start and the end of a level's measured window."""

    def __init__(self, config: LoadTestConfig) -> None:
        self.url = config.metrics_url
        self.before: dict[str, HistogramTotals] | None = None
        self.after: dict[str, HistogramTotals] | None = None

    def scrape(self) -> dict[str, HistogramTotals] | None:
        if self.url is None:
            return None
        return scrape_histograms(self.url, (QUEUE_WAIT_METRIC, INFERENCE_METRIC, BATCH_SIZE_METRIC))


def _run_level(config: LoadTestConfig, level: float, pool: concurrent.futures.Executor | None,
               expected_bytes: int) -> LevelResult:
    # Processes need a moment to start their event loop and channels; they then begin together.
    start_at = time.time() + (1.0 if pool is not None else 0.05)
    specs = _level_specs(config, level, start_at)
    metrics = _MetricsWindow(config)
    # One process: the client's event loop runs in a thread, so that this thread can scrape on time.
    executor = pool or concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="aegen-loadtest")
    try:
        return _measure(config, level, executor, specs, expected_bytes, metrics)
    finally:
        if pool is None:
            executor.shutdown(wait=True)


def _measure(config: LoadTestConfig, level: float, executor: concurrent.futures.Executor,
             specs: list[LevelSpec], expected_bytes: int, metrics: _MetricsWindow) -> LevelResult:
    start_at = specs[0].start_at
    futures = [executor.submit(_run_level_in_process, s, expected_bytes) for s in specs]
    _sleep_until(start_at + config.warmup, futures)
    metrics.before = metrics.scrape()
    if config.requests is None:
        _sleep_until(start_at + config.warmup + config.duration, futures)
    else:
        # With a request count the window ends when the last process reaches its share; the scrape
        # after it also sees the few calls that were still in flight then.
        concurrent.futures.wait(futures, timeout=config.max_level_time)
    metrics.after = metrics.scrape()
    raws = [f.result(timeout=config.max_level_time + config.call_timeout + 5.0) for f in futures]
    return summarize(config, level, _merge(raws), server_split(metrics.before, metrics.after))


def _sleep_until(wall: float, futures: list[concurrent.futures.Future]) -> None:
    """Sleep until `wall`, waking early if a client process has already failed."""
    remaining = wall - time.time()
    if remaining > 0:
        concurrent.futures.wait(futures, timeout=remaining, return_when=concurrent.futures.FIRST_EXCEPTION)
    for f in futures:
        if f.done() and f.exception() is not None:
            raise f.exception()  # type: ignore[misc]


# --------------------------------------------------------------------------------------------------
# Before the levels: is the target there, and does it accept this request?


async def _probe_async(config: LoadTestConfig) -> int:
    """Connect and make one real call; return the payload bytes of a good reply."""
    channel = _channel(config, 0)
    try:
        try:
            await asyncio.wait_for(channel.channel_ready(), config.connect_timeout)
        except TimeoutError:
            raise LoadTestError(f"cannot reach {config.target} within {config.connect_timeout:g} s "
                                "(is the server running? wrong --target or --tls?)") from None
        stub = channel.unary_unary(METHOD, request_serializer=generator_pb2.GenerateSamplesRequest.SerializeToString,
                                   response_deserializer=generator_pb2.GenerateSamplesResponse.FromString)
        request = generator_pb2.GenerateSamplesRequest(
            model_name=config.model, num_samples=config.num_samples, sampler=SAMPLERS[config.sampler],
            output_dtype=DTYPES[config.dtype])
        try:
            response = await stub(request, timeout=max(config.call_timeout, config.connect_timeout))
        except grpc.aio.AioRpcError as exc:
            raise LoadTestError(f"{config.target} refused the request: {exc.code().name}: {exc.details()}") from None
        expected = math.prod(response.shape) * (1 if config.dtype == "uint8" else 4)
        if len(response.samples) != expected or response.shape[:1] != [config.num_samples]:
            raise LoadTestError(f"{config.target} answered shape {list(response.shape)} with "
                                f"{len(response.samples)} bytes for {config.num_samples} {config.dtype} samples")
        return expected
    finally:
        await channel.close()


def probe(config: LoadTestConfig) -> int:
    return asyncio.run(_probe_async(config))


# --------------------------------------------------------------------------------------------------
# The whole run and its outputs


@dataclass
class LoadTestReport:
    config: LoadTestConfig
    levels: list[LevelResult]
    started: str = ""

    def to_json(self) -> str:
        body = {"config": dataclasses.asdict(self.config), "started": self.started,
                "levels": [dataclasses.asdict(level) for level in self.levels]}
        # NaN (no successful call, no metrics) becomes null: strict JSON readers refuse NaN.
        return json.dumps(_nan_to_none(body), indent=2, allow_nan=False) + "\n"

    def to_csv(self) -> str:
        rows = [level.flat() for level in self.levels]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["mode"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()

    def to_markdown(self) -> str:
        head = ("| level | req/s | samples/s | MB/s | p50 ms | p90 ms | p99 ms | max ms | errors "
                "| server queue ms | server infer ms |")
        lines = [head, "|" + "---|" * (head.count("|") - 1)]
        for r in self.levels:
            level = f"{r.concurrency} in flight" if r.mode == "closed" else f"{r.rate:g}/s open"
            errors = ", ".join(f"{k} {v}" for k, v in r.errors.items()) or "0"
            server = r.server or {}
            lat = r.latency_ms
            lines.append(
                f"| {level} | {r.requests_per_s:,.0f} | {r.samples_per_s:,.0f} | {r.mb_per_s:,.1f} "
                f"| {lat['p50']:.2f} | {lat['p90']:.2f} | {lat['p99']:.2f} | {lat['max']:.2f} | {errors} "
                f"| {_fmt(server.get('queue_wait_mean_ms'))} | {_fmt(server.get('inference_mean_ms'))} |")
        return "\n".join(lines) + "\n"

    @property
    def total_errors(self) -> int:
        return sum(sum(level.errors.values()) for level in self.levels)


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(v) for v in value]
    return value


def _fmt(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.2f}"


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def plot_throughput_latency(report: LoadTestReport, path: Path) -> bool:
    """PNG of samples/s against p99 latency, one point per level. False if matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("aegen-loadtest: matplotlib is not installed, so no PNG was written "
              "(pip install matplotlib, or pass --no-png)", file=sys.stderr)
        return False
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    xs = [r.samples_per_s for r in report.levels]
    ys = [r.latency_ms["p99"] for r in report.levels]
    ax.plot(xs, ys, "o-")
    for r, x, y in zip(report.levels, xs, ys):
        ax.annotate(f"{r.concurrency}" if r.mode == "closed" else f"{r.rate:g}/s", (x, y),
                    textcoords="offset points", xytext=(4, 4), fontsize=8)
    cfg = report.config
    ax.set_xlabel("samples/s")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_yscale("log")
    loop = "open loop, labels = requests/s" if cfg.open_loop else "closed loop, labels = calls in flight"
    ax.set_title(f"{cfg.model} N={cfg.num_samples} {cfg.dtype} ({loop})", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    _atomic_write(path, buf.getvalue())
    return True


def write_outputs(report: LoadTestReport, out: str | Path) -> dict[str, Path]:
    out = Path(out)
    paths = {"json": out / "loadtest.json", "csv": out / "loadtest.csv"}
    _atomic_write(paths["json"], report.to_json().encode())
    _atomic_write(paths["csv"], report.to_csv().encode())
    if report.config.png and plot_throughput_latency(report, out / "loadtest.png"):
        paths["png"] = out / "loadtest.png"
    return paths


def run_load_test(config: LoadTestConfig, progress: Callable[[str], None] | None = None) -> LoadTestReport:
    """Probe the target, then run every level in turn. Raises LoadTestError if the target is
    unreachable or refuses the request; errors during the levels are counted, not raised."""
    expected_bytes = probe(config)
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    levels: list[LevelResult] = []
    pool = None
    if config.processes > 1:
        # spawn: a forked process would inherit the parent's gRPC state, which gRPC does not support.
        pool = concurrent.futures.ProcessPoolExecutor(config.processes,
                                                      mp_context=multiprocessing.get_context("spawn"))
    try:
        for level in config.levels:
            result = _run_level(config, level, pool, expected_bytes)
            levels.append(result)
            if progress:
                progress(_progress_line(result))
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return LoadTestReport(config, levels, started)


def _progress_line(r: LevelResult) -> str:
    level = f"{r.concurrency} in flight" if r.mode == "closed" else f"{r.rate:g} req/s"
    errors = sum(r.errors.values())
    return (f"{level}: {r.requests_per_s:,.0f} req/s, {r.samples_per_s:,.0f} samples/s, "
            f"p50 {r.latency_ms['p50']:.2f} ms, p99 {r.latency_ms['p99']:.2f} ms, {errors} errors")


# --------------------------------------------------------------------------------------------------
# CLI


class _OneLineParser(argparse.ArgumentParser):
    """Bad flags give one line on stderr and exit code 2, not the usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _float_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _env(name: str, default: Any) -> Any:
    return os.environ.get(ENV_PREFIX + name.upper(), default)


def build_parser() -> argparse.ArgumentParser:
    d = LoadTestConfig()
    p = _OneLineParser(prog="aegen-loadtest", description=__doc__.split("\n\n")[0],
                       epilog=f"Every flag can also be set as an environment variable {ENV_PREFIX}<FLAG> "
                              "(e.g. AEGEN_LOADTEST_TARGET).")
    p.add_argument("--target", default=_env("target", d.target), help="host:port of the gRPC server")
    p.add_argument("--model", default=_env("model", d.model))
    p.add_argument("-n", "--num-samples", type=int, default=_env("num_samples", d.num_samples))
    p.add_argument("--dtype", choices=sorted(DTYPES), default=_env("dtype", d.dtype))
    p.add_argument("--sampler", choices=sorted(SAMPLERS), default=_env("sampler", d.sampler))
    p.add_argument("--seed", type=int, default=_env("seed", None),
                   help="request i gets seed + i (default: the server draws seeds)")
    p.add_argument("--concurrency", type=_int_list, default=_env("concurrency", "1,4,16,64,256"),
                   help="closed loop: calls in flight, comma-separated levels (default 1,4,16,64,256)")
    p.add_argument("--rate", type=_float_list, default=_env("rate", ""),
                   help="open loop: Poisson arrivals at these requests/s (replaces --concurrency)")
    p.add_argument("--duration", type=float, default=_env("duration", d.duration), help="seconds measured per level")
    p.add_argument("--requests", type=int, default=_env("requests", None),
                   help="measure this many calls per level instead of a duration")
    p.add_argument("--warmup", type=float, default=_env("warmup", d.warmup), help="unmeasured seconds per level")
    p.add_argument("--max-level-time", type=float, default=_env("max_level_time", d.max_level_time),
                   help="hard cap on one level's wall time, warm-up included")
    p.add_argument("--call-timeout", type=float, default=_env("call_timeout", d.call_timeout))
    p.add_argument("--connect-timeout", type=float, default=_env("connect_timeout", d.connect_timeout))
    p.add_argument("--max-in-flight", type=int, default=_env("max_in_flight", d.max_in_flight))
    p.add_argument("--channels", type=int, default=_env("channels", d.channels),
                   help="HTTP/2 connections per client process")
    p.add_argument("--processes", type=int, default=_env("processes", d.processes),
                   help="client processes sharing the load (one Python client saturates about one core)")
    p.add_argument("--tls", action="store_true",
                   default=str(_env("tls", "")).lower() in ("1", "true", "yes", "on"))
    p.add_argument("--ca", default=_env("ca", None), help="PEM root certificate (implies --tls)")
    p.add_argument("--metrics-url", default=_env("metrics_url", None),
                   help="the server's Prometheus endpoint, e.g. http://127.0.0.1:9100/metrics")
    p.add_argument("--out", default=_env("out", None), help="directory for loadtest.json, .csv and .png")
    p.add_argument("--no-png", dest="png", action="store_false")
    return p


def config_from_args(argv: Sequence[str] | None = None) -> LoadTestConfig:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Environment defaults arrive as strings and skip argparse's type conversion for lists.
    for name, convert in (("concurrency", _int_list), ("rate", _float_list)):
        if isinstance(getattr(args, name), str):
            try:
                setattr(args, name, convert(getattr(args, name)))
            except argparse.ArgumentTypeError as exc:
                parser.error(f"{ENV_PREFIX}{name.upper()}: {exc}")
    try:
        values = vars(args)
        for name, kind in (("num_samples", int), ("seed", int), ("requests", int), ("duration", float),
                           ("warmup", float), ("max_level_time", float), ("call_timeout", float),
                           ("connect_timeout", float), ("max_in_flight", int), ("channels", int),
                           ("processes", int)):
            if values[name] is not None:
                values[name] = kind(values[name])
        return LoadTestConfig(**values)
    except ValueError as exc:
        parser.error(f"bad value in the environment: {exc}")
    except LoadTestError as exc:
        parser.error(str(exc))
    raise AssertionError("unreachable")


def main(argv: Sequence[str] | None = None) -> int:
    config = config_from_args(argv)
    try:
        report = run_load_test(config, progress=lambda line: print(line, file=sys.stderr, flush=True))
    except LoadTestError as exc:
        print(f"aegen-loadtest: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("aegen-loadtest: interrupted", file=sys.stderr)
        return 130
    print(report.to_markdown(), end="")
    if config.out:
        for path in write_outputs(report, config.out).values():
            print(f"wrote {path}", file=sys.stderr)
    return 1 if report.total_errors else 0


if __name__ == "__main__":
    sys.exit(main())
