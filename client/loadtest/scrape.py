"""The server's own view of a load level: its Prometheus histograms scraped before and after the measured
window, and their deltas as the split of a request's time between queue wait and inference."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from client.loadtest.config import LoadTestConfig, LoadTestError

QUEUE_WAIT_METRIC = "aegen_queue_wait_seconds"
INFERENCE_METRIC = "aegen_inference_duration_seconds"
BATCH_SIZE_METRIC = "aegen_batch_size_samples"  # optional: mean samples per decoded batch


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


class MetricsWindow:
    """Scrapes the server's histograms at the start and the end of a level's measured window."""

    def __init__(self, config: LoadTestConfig) -> None:
        self.url = config.metrics_url
        self.before: dict[str, HistogramTotals] | None = None
        self.after: dict[str, HistogramTotals] | None = None

    def scrape(self) -> dict[str, HistogramTotals] | None:
        if self.url is None:
            return None
        return scrape_histograms(self.url, (QUEUE_WAIT_METRIC, INFERENCE_METRIC, BATCH_SIZE_METRIC))

    def split(self) -> dict[str, float] | None:
        return server_split(self.before, self.after)
