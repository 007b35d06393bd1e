"""The load itself: closed loops (a fixed number of calls in flight) and open loops (Poisson arrivals),
in one client process or several, over one or more channels; the probe before the levels, the model
default resolved once, and the run of every level with the server's metrics scraped around its window.

Calls go out as serialized bytes and replies come back unparsed, so the client spends its CPU on the
calls, not on protobuf.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import math
import multiprocessing
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import numpy as np

from client.client import AegenClient, NoModelsError
from client.loadtest.config import MAX_MESSAGE_BYTES, LoadTestConfig, LoadTestError
from client.loadtest.report import LevelRaw, LevelResult, LoadTestReport, merge, summarize
from client.loadtest.scrape import MetricsWindow
from protos.aegen.v1 import generator_pb2
from protos.aegen.v1.names import DTYPES, SAMPLERS
from protos.cli import run_async

METHOD = "/aegen.v1.GeneratorService/GenerateSamples"
CLIENT_OVERLOADED = "CLIENT_OVERLOADED"  # open loop: an arrival found --max-in-flight calls already out


@dataclass(frozen=True)
class LevelSpec:
    """What one client process does for one level (its share of the load)."""

    config: LoadTestConfig
    concurrency: int  # closed loop: calls in flight; open loop: 0
    rate: float  # open loop: requests/s; closed loop: 0
    requests: int | None  # this process's share of --requests
    seed_offset: int  # keeps seeds distinct across processes
    start_at: float  # wall-clock time.time() at which to start, so processes start together


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
    return run_async(_run_level_async(spec, expected_bytes))


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


def _run_level(config: LoadTestConfig, level: float, pool: concurrent.futures.Executor | None,
               expected_bytes: int) -> LevelResult:
    # Processes need a moment to start their event loop and channels; they then begin together.
    start_at = time.time() + (1.0 if pool is not None else 0.05)
    specs = _level_specs(config, level, start_at)
    metrics = MetricsWindow(config)
    # One process: the client's event loop runs in a thread, so that this thread can scrape on time.
    executor = pool or concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="aegen-loadtest")
    try:
        return _measure(config, level, executor, specs, expected_bytes, metrics)
    finally:
        if pool is None:
            executor.shutdown(wait=True)


def _measure(config: LoadTestConfig, level: float, executor: concurrent.futures.Executor,
             specs: list[LevelSpec], expected_bytes: int, metrics: MetricsWindow) -> LevelResult:
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
    return summarize(config, level, merge(raws), metrics.split())


def _sleep_until(wall: float, futures: list[concurrent.futures.Future]) -> None:
    """Sleep until `wall`, waking early if a client process has already failed."""
    remaining = wall - time.time()
    if remaining > 0:
        concurrent.futures.wait(futures, timeout=remaining, return_when=concurrent.futures.FIRST_EXCEPTION)
    for f in futures:
        if f.done() and f.exception() is not None:
            raise f.exception()  # type: ignore[misc]


async def _probe_async(config: LoadTestConfig) -> int:
    """Connect and make one real call; return the payload bytes of a good reply."""
    channel = _channel(config, 0)
    try:
        try:
            await asyncio.wait_for(channel.channel_ready(), config.connect_timeout)
        except TimeoutError:
            raise _unreachable(config) from None
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
    return run_async(_probe_async(config))


def _unreachable(config: LoadTestConfig) -> LoadTestError:
    return LoadTestError(f"cannot reach {config.target} within {config.connect_timeout:g} s "
                         "(is the server running? wrong --target or --tls?)")


def resolve_model(config: LoadTestConfig) -> LoadTestConfig:
    """Without --model, ask the server once, before any load, which model every call then names
    (AegenClient.default_model: its first VAE, else its first model)."""
    if config.model:
        return config
    root = Path(config.ca).read_bytes() if config.ca else None
    with AegenClient(config.target, tls=config.tls, root_certificates=root, timeout=config.connect_timeout) as client:
        try:
            grpc.channel_ready_future(client.channel).result(timeout=config.connect_timeout)
            model = client.default_model()
        except grpc.FutureTimeoutError:
            raise _unreachable(config) from None
        except grpc.RpcError as exc:
            raise LoadTestError(f"{config.target} refused ListModels: {exc.code().name}: {exc.details()}") from None
        except NoModelsError as exc:
            raise LoadTestError(f"{config.target}: {exc}") from None
    return dataclasses.replace(config, model=model)


def run_load_test(config: LoadTestConfig, progress: Callable[[str], None] | None = None) -> LoadTestReport:
    """Probe the target, then run every level in turn. Raises LoadTestError if the target is
    unreachable or refuses the request; errors during the levels are counted, not raised. The report's
    config names the model the calls went to."""
    config = resolve_model(config)
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
                progress(result.progress_line())
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return LoadTestReport(config, levels, started)


