"""/metrics: the counters and histograms move as calls are answered, and promtool accepts the exposition."""

from __future__ import annotations

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from client.client import AegenClient
from tests.plugins.server import promtool_check_metrics

VAE = "digits-vae"


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_counters_and_histograms_move_with_calls(aegen_server):
    before = _samples(aegen_server.metrics_text())
    with AegenClient(aegen_server.target, timeout=30) as client:
        for _ in range(3):
            client.generate(VAE, 50, seed=1)
        with pytest.raises(grpc.RpcError):
            client.generate(VAE, 0)
        with pytest.raises(grpc.RpcError):
            client.generate("no-such-model", 1)
    after = _samples(aegen_server.metrics_text())

    def delta(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    ok = {"protocol": "aegen_v1", "method": "GenerateSamples", "model": VAE, "code": "OK"}
    assert delta("aegen_requests_total", **ok) == 3
    assert delta("aegen_request_duration_seconds_count", **ok) == 3
    assert delta("aegen_request_duration_seconds_bucket", **ok, le="+Inf") == 3
    assert delta("aegen_requests_total", **{**ok, "code": "INVALID_ARGUMENT"}) == 1
    # An unknown model name is not a label value: clients cannot grow the label set.
    assert delta("aegen_requests_total", **{**ok, "model": "", "code": "NOT_FOUND"}) == 1
    assert delta("aegen_samples_generated_total", model=VAE) == 150
    assert delta("aegen_batch_size_samples_sum", model=VAE) == 150
    assert delta("aegen_batch_size_samples_bucket", model=VAE, le="32.0") == 0
    assert delta("aegen_batch_size_samples_bucket", model=VAE, le="64.0") == 3
    assert delta("aegen_queue_wait_seconds_count", model=VAE, device="cpu") == 3
    assert delta("aegen_inference_duration_seconds_count", model=VAE, device="cpu") == 3
    assert _value(after, "aegen_queue_depth_samples", model=VAE) == 0
    assert _value(after, "aegen_requests_in_flight") == 0


def test_model_info_metric_names_version_device_and_provider(aegen_server):
    infos = [s for f in text_string_to_metric_families(aegen_server.metrics_text()) for s in f.samples
             if s.name == "aegen_model_info"]
    assert {s.labels["name"] for s in infos} == {"digits-vae", "digits-ae"}
    assert all(s.labels["execution_provider"] == "CPUExecutionProvider" and s.labels["device"] == "cpu"
               and s.labels["version"].isdigit() and s.value == 1 for s in infos)


def test_promtool_accepts_the_metrics(aegen_server):
    with AegenClient(aegen_server.target, timeout=30) as client:
        client.generate(VAE, 3)
    promtool_check_metrics(aegen_server.metrics_text())
