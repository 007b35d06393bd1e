"""Prometheus metrics of the server, in their own registry, exposed on their own HTTP port at /metrics.

Names and units follow Prometheus conventions (base units, `_total` counters, `_info` for the per-model
information). The `model` label is a loaded model's name, or "" when the request named no loaded model, so
clients cannot grow the label set without bound.

With --workers > 1 every worker process writes its metrics to files in PROMETHEUS_MULTIPROC_DIR
(prometheus-client's multiprocess mode, chosen when prometheus_client is first imported) and the parent
serves their sum (`serve_multiprocess`). Gauges say how to combine workers: queue depth and calls in flight
add up over live workers; `aegen_model_info` keeps one series per worker (a `pid` label).

The per-call metrics (calls in flight and answered, their durations, samples generated, the batch queue and
batches) are on every call's path: in one process they are plain numbers in `_Store` families, updated on the
event loop and rendered by a collector at scrape time (prometheus-client's own counters take a lock and check
their state on every update: a sixth of a one-sample call's own work). Workers write them through
prometheus-client's multiprocess values, as the parent reads those files.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.utils import floatToGoString

_LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
                    30.0)
_BATCH_BUCKETS = tuple(float(1 << i) for i in range(17))  # 1 .. 65536 samples


MODEL_INFO = "aegen_model_info"


class ServerMetrics:
    def __init__(self, multiprocess: bool = False) -> None:
        self.multiprocess = multiprocess
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # The per-call families: a _Store in one process, prometheus-client's (multiprocess) metrics in a worker.
        # Either way `.labels(...)` gives a child with inc/dec/observe.
        hot = _PrometheusFamilies(r) if multiprocess else _Store(r)
        self.request_duration = hot.histogram(
            "aegen_request_duration_seconds", "Time from a call's arrival to its answer, by method and status.",
            ["protocol", "method", "model", "code"], _LATENCY_BUCKETS)
        self.requests = hot.counter(
            "aegen_requests", "Calls answered, by protocol, method and status code.",
            ["protocol", "method", "model", "code"])
        self.samples_generated_total = hot.counter(
            "aegen_samples_generated", "Images decoded from latent seeds and returned.", ["model"])
        self.queue_wait = hot.histogram(
            "aegen_queue_wait_seconds", "Time a request waited in the batch queue before its first batch.",
            ["model", "device"], _LATENCY_BUCKETS)
        self.inference_duration = hot.histogram(
            "aegen_inference_duration_seconds", "Time to draw the latents of and decode one batch.",
            ["model", "device"], _LATENCY_BUCKETS)
        self.batch_size = hot.histogram(
            "aegen_batch_size_samples", "Samples per decoded batch.", ["model"], _BATCH_BUCKETS)
        self.queue_depth = hot.gauge("aegen_queue_depth_samples", "Samples waiting in the batch queues.", ["model"])
        self.in_flight = hot.gauge("aegen_requests_in_flight", "Calls being handled now.", [])
        self._in_flight = self.in_flight.labels()
        # An info metric (value 1, the facts in labels) as a gauge: multiprocess mode has no Info type.
        self.model = Gauge(
            MODEL_INFO, "A loaded model version and where it runs.",
            ["name", "version", "device", "execution_provider"], multiprocess_mode="liveall", registry=r)
        self._model_labels: dict[tuple[str, str], tuple[str, str, str, str]] = {}
        self._request_children: dict[tuple[str, str, str, str], tuple] = {}
        self._generated: dict[str, Counter] = {}

    def observe_request(self, protocol: str, method: str, model: str, code: str, seconds: float) -> None:
        key = (protocol, method, model, code)
        children = self._request_children.get(key)
        if children is None:  # labels() takes a lock and hashes; do it once per label set
            children = (self.request_duration.labels(*key), self.requests.labels(*key))
            self._request_children[key] = children
        children[0].observe(seconds)
        children[1].inc()

    def calls(self, protocol: str) -> ProtocolCalls:
        """The per-call observer of one protocol adapter (protocol: aegen_v1, oip_grpc, oip_http)."""
        return ProtocolCalls(self, protocol)

    # ModelObserver (server/core/models.py)
    def samples_generated(self, model: str, n: int) -> None:
        counter = self._generated.get(model)
        if counter is None:
            counter = self._generated[model] = self.samples_generated_total.labels(model)
        counter.inc(n)

    def model_loaded(self, name: str, version: int, device: str, execution_provider: str) -> None:
        labels = (name, str(version), device, execution_provider)
        self._model_labels[(name, str(version))] = labels
        self.model.labels(*labels).set(1)

    def model_unloaded(self, name: str, version: int) -> None:
        labels = self._model_labels.pop((name, str(version)), None)
        if labels is None:
            return
        if self.multiprocess:
            # A worker's metric file cannot forget a series: 0 marks it retired, and the parent drops it.
            self.model.labels(*labels).set(0)
        else:
            self.model.remove(*labels)

    def batch_observer(self, model: str, device: str) -> BatchMetrics:
        return BatchMetrics(self, model, device)

    def serve(self, host: str, port: int):
        """Start the /metrics HTTP server on a daemon thread; returns the http server (call shutdown())."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server


class _WorkerMetricsCollector:
    """The workers' metric files, merged, less the info series of model versions a worker retired."""

    def __init__(self, directory: str) -> None:
        self._files = MultiProcessCollector(None, path=directory)

    def collect(self) -> Iterator:
        for family in self._files.collect():
            if family.name == MODEL_INFO:
                family.samples = [s for s in family.samples if s.value != 0]
            yield family


def serve_multiprocess(host: str, port: int, directory: str):
    """The parent's /metrics: every worker's metrics from `directory`; returns the http server."""
    registry = CollectorRegistry()
    registry.register(_WorkerMetricsCollector(directory))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server


class ProtocolCalls:
    """A protocol adapter's CallObserver (server/protocols/grpc_calls.py): calls in flight and answered."""

    def __init__(self, metrics: ServerMetrics, protocol: str) -> None:
        self._metrics, self.protocol = metrics, protocol

    def call_started(self) -> None:
        self._metrics._in_flight.inc()

    def call_finished(self, method: str, model: str, code: str, seconds: float) -> None:
        self._metrics._in_flight.dec()
        self._metrics.observe_request(self.protocol, method, model, code, seconds)


class BatchMetrics:
    """The batcher's observer for one model version (see batcher.BatchObserver)."""

    def __init__(self, metrics: ServerMetrics, model: str, device: str) -> None:
        self._queue_depth = metrics.queue_depth.labels(model)
        self._queue_wait = metrics.queue_wait.labels(model, device)
        self._inference = metrics.inference_duration.labels(model, device)
        self._batch_size = metrics.batch_size.labels(model)

    def queue_depth_changed(self, delta_samples: int) -> None:
        self._queue_depth.inc(delta_samples)

    def queue_waited(self, seconds: list[float]) -> None:
        observe = self._queue_wait.observe
        for wait in seconds:
            observe(wait)

    def batch_decoded(self, samples: int, seconds: float) -> None:
        self._batch_size.observe(samples)
        self._inference.observe(seconds)


# ---------------------------------------------------------------------------------- the per-call families


class _PrometheusFamilies:
    """prometheus-client's own metrics (a worker's: written to its multiprocess files)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def counter(self, name: str, documentation: str, labels: list[str]):
        return Counter(name, documentation, labels, registry=self._registry)

    def gauge(self, name: str, documentation: str, labels: list[str]):
        # livesum: queue depth and calls in flight add up over the live workers
        gauge = Gauge(name, documentation, labels, multiprocess_mode="livesum", registry=self._registry)
        return gauge if labels else _Unlabelled(gauge)

    def histogram(self, name: str, documentation: str, labels: list[str], buckets: tuple[float, ...]):
        return Histogram(name, documentation, labels, buckets=buckets, registry=self._registry)


class _Unlabelled:
    """An unlabelled prometheus-client metric, whose `.labels()` is itself (as a _Store family's is its child)."""

    def __init__(self, metric) -> None:
        self._metric = metric

    def labels(self):
        return self._metric


class _Value:
    """A counter's or gauge's value. Updated on the event loop only; read by the scrape thread."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount


class _Buckets:
    """A histogram's observations: a count per bucket (le: the first bound >= the value) and their sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value


class _Family:
    def __init__(self, kind: str, name: str, documentation: str, labels: list[str],
                 buckets: tuple[float, ...] | None = None) -> None:
        self.kind, self.name, self.documentation, self.label_names = kind, name, documentation, labels
        self.bounds = (*buckets, float("inf")) if buckets is not None else None
        self.children: dict[tuple[str, ...], _Value | _Buckets] = {}

    def labels(self, *values: str) -> _Value | _Buckets:
        child = self.children.get(values)
        if child is None:
            if len(values) != len(self.label_names):
                raise ValueError(f"{self.name} takes labels {self.label_names}, got {values}")
            child = self.children[values] = _Buckets(self.bounds) if self.bounds else _Value()
        return child

    def collect(self):
        # list(): the event loop may add a child while the scrape thread reads
        children = list(self.children.items())
        if self.kind == "histogram":
            family = HistogramMetricFamily(self.name, self.documentation, labels=self.label_names)
            for values, child in children:
                counts, total = list(child.counts), child.sum
                cumulative, buckets = 0, []
                for bound, count in zip(self.bounds, counts):
                    cumulative += count
                    buckets.append((floatToGoString(bound), cumulative))
                family.add_metric(list(values), buckets, total)
            return family
        kind = CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily
        family = kind(self.name, self.documentation, labels=self.label_names)
        for values, child in children:
            family.add_metric(list(values), child.value)
        return family


class _Store:
    """The per-call families of one process: plain numbers, rendered at scrape time."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._families: list[_Family] = []
        registry.register(self)

    def _add(self, family: _Family) -> _Family:
        self._families.append(family)
        return family

    def counter(self, name: str, documentation: str, labels: list[str]) -> _Family:
        return self._add(_Family("counter", name, documentation, labels))

    def gauge(self, name: str, documentation: str, labels: list[str]) -> _Family:
        family = self._add(_Family("gauge", name, documentation, labels))
        if not labels:
            family.labels()  # an unlabelled gauge is exposed from the start, at 0
        return family

    def histogram(self, name: str, documentation: str, labels: list[str], buckets: tuple[float, ...]) -> _Family:
        return self._add(_Family("histogram", name, documentation, labels, buckets))

    def collect(self) -> Iterator:
        for family in self._families:
            yield family.collect()
