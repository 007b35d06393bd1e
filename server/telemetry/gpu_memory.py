"""GPU memory in use as Prometheus gauges, read from the CUDA runtime onnxruntime loaded (server/core/cudart.py).

    aegen_gpu_memory_used_bytes{device="0"}    total - free, as cudaMemGetInfo reports it
    aegen_gpu_memory_total_bytes{device="0"}

Both describe the whole device (every process on it, ours and others), which is what decides whether the next
allocation fits. One process reads them on every scrape (a custom collector); worker processes cannot be
scraped themselves (the parent reads their metric files), so each refreshes a gauge every few seconds instead.

Only on CUDA. A metric that cannot be read never disturbs serving: no CUDA runtime loaded → one log line and
no metric; a call that fails → one log line and the metric disappears for good.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import GaugeMetricFamily

from server.core.cudart import CUDART_SONAMES, CudaRuntime

log = logging.getLogger("aegen.server.gpu_memory")

USED = "aegen_gpu_memory_used_bytes"
TOTAL = "aegen_gpu_memory_total_bytes"
_USED_HELP = "GPU memory in use on the device (all processes), from cudaMemGetInfo."
_TOTAL_HELP = "GPU memory of the device, from cudaMemGetInfo."
REFRESH_SECONDS = 5.0  # worker processes only


class GpuMemory:
    """(used, total) bytes of one device; after the first failure it logs once and reads nothing more."""

    def __init__(self, runtime: CudaRuntime, device: str = "0") -> None:
        self.runtime = runtime
        self.device = device
        self._broken = False

    @property
    def broken(self) -> bool:
        return self._broken

    def read(self) -> tuple[int, int] | None:
        if self._broken:
            return None
        try:
            free, total = self.runtime.memory()
        except Exception as exc:  # noqa: BLE001 - CudaError or a ctypes failure: the metric goes, serving stays
            self._broken = True
            log.warning("GPU memory metric off: cannot read it", extra={"error": str(exc)})
            return None
        return total - free, total


class GpuMemoryCollector:
    """One process: reads the device on every scrape."""

    def __init__(self, memory: GpuMemory) -> None:
        self.memory = memory

    def describe(self) -> Iterable[GaugeMetricFamily]:
        # Registration asks for the names; answering without a CUDA call keeps it side-effect free.
        return [GaugeMetricFamily(USED, _USED_HELP, labels=["device"]),
                GaugeMetricFamily(TOTAL, _TOTAL_HELP, labels=["device"])]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        reading = self.memory.read()
        if reading is None:
            return
        for family, value in zip(self.describe(), reading):
            family.add_metric([self.memory.device], float(value))
            yield family


class GpuMemoryGauges:
    """Worker processes: gauges (multiprocess mode "livemostrecent") refreshed by `refresh()` on a timer."""

    def __init__(self, memory: GpuMemory, registry: CollectorRegistry) -> None:
        self.memory = memory
        self._used = Gauge(USED, _USED_HELP, ["device"], multiprocess_mode="livemostrecent",
                           registry=registry).labels(memory.device)
        self._total = Gauge(TOTAL, _TOTAL_HELP, ["device"], multiprocess_mode="livemostrecent",
                            registry=registry).labels(memory.device)

    def refresh(self) -> bool:
        """Read once; False once the metric is off (then stop calling)."""
        self.publish(self.memory.read())
        return not self.memory.broken

    def publish(self, reading: tuple[int, int] | None) -> None:
        if reading is None:
            # A worker's metric file cannot forget a value: NaN says "unknown" instead of a stale figure.
            reading = (float("nan"), float("nan"))
        self._used.set(reading[0])
        self._total.set(reading[1])


def gpu_memory_metrics(registry: CollectorRegistry, *, multiprocess: bool,
                       find_runtime: Callable[[], CudaRuntime | None] = CudaRuntime.find_loaded
                       ) -> GpuMemoryCollector | GpuMemoryGauges | None:
    """Register the GPU memory metrics in `registry`; None (and one log line) without a loaded CUDA runtime.

    Call it after the CUDA sessions exist, so the runtime is loaded. With `multiprocess` the caller must call
    `refresh()` every REFRESH_SECONDS."""
    runtime = find_runtime()
    if runtime is None:
        log.warning("GPU memory metric off: no CUDA runtime library is loaded in this process",
                    extra={"looked_for": list(CUDART_SONAMES)})
        return None
    memory = GpuMemory(runtime)
    reading = memory.read()
    if reading is None:  # logged; creating the gauges now would publish zeros
        return None
    log.info("GPU memory metric on", extra={"library": runtime.name})
    if multiprocess:
        gauges = GpuMemoryGauges(memory, registry)
        gauges.publish(reading)
        return gauges
    collector = GpuMemoryCollector(memory)
    registry.register(collector)
    return collector
