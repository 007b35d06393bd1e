"""Prometheus metrics of the server, in their own registry, exposed on their own HTTP port at /metrics.

Names and units follow Prometheus conventions (base units, `_total` counters, `_info` for the per-model
information). The `model` label is a loaded model's name, or "" when the request named no loaded model, so
clients cannot grow the label set without bound.

With --workers > 1 every worker process writes its metrics to files in PROMETHEUS_MULTIPROC_DIR
(prometheus-client's multiprocess mode, chosen when prometheus_client is first imported) and the parent
serves their sum (`serve_multiprocess`). Gauges say how to combine workers: queue depth and calls in flight
add up over live workers; `aegen_model_info` keeps one series per worker (a `pid` label).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector

_LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
                    30.0)
_BATCH_BUCKETS = tuple(float(1 << i) for i in range(17))  # 1 .. 65536 samples


MODEL_INFO = "aegen_model_info"


class ServerMetrics:
    def __init__(self, multiprocess: bool = False) -> None:
        self.multiprocess = multiprocess
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.request_duration = Histogram(
            "aegen_request_duration_seconds", "Time from a call's arrival to its answer, by method and status.",
            ["protocol", "method", "model", "code"], buckets=_LATENCY_BUCKETS, registry=r)
        self.requests = Counter(
            "aegen_requests", "Calls answered, by protocol, method and status code.",
            ["protocol", "method", "model", "code"],
            registry=r)
        self.samples_generated_total = Counter(
            "aegen_samples_generated", "Images decoded from latent seeds and returned.", ["model"], registry=r)
        self.queue_wait = Histogram(
            "aegen_queue_wait_seconds", "Time a request waited in the batch queue before its first batch.",
            ["model", "device"], buckets=_LATENCY_BUCKETS, registry=r)
        self.inference_duration = Histogram(
            "aegen_inference_duration_seconds", "Time to draw the latents of and decode one batch.",
            ["model", "device"], buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram(
            "aegen_batch_size_samples", "Samples per decoded batch.", ["model"], buckets=_BATCH_BUCKETS,
            registry=r)
        self.queue_depth = Gauge(
            "aegen_queue_depth_samples", "Samples waiting in the batch queues.", ["model"],
            multiprocess_mode="livesum", registry=r)
        self.in_flight = Gauge("aegen_requests_in_flight", "Calls being handled now.",
                               multiprocess_mode="livesum", registry=r)
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
        self._metrics.in_flight.inc()

    def call_finished(self, method: str, model: str, code: str, seconds: float) -> None:
        self._metrics.in_flight.dec()
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

    def queue_waited(self, seconds: float) -> None:
        self._queue_wait.observe(seconds)

    def batch_decoded(self, samples: int, seconds: float) -> None:
        self._batch_size.observe(samples)
        self._inference.observe(seconds)
