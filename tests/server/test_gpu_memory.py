"""GPU memory gauges: the arithmetic over cudaMemGetInfo, and their absence when the CUDA runtime is not there.

No GPU here: a fake cudaMemGetInfo stands in at the ctypes boundary (same signature: two size_t pointers in,
a cudaError_t out); everything above it is the server's real code and a real Prometheus exposition.
"""

from __future__ import annotations

import ctypes
import logging
import math
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from server.core.cudart import CudaRuntime
from server.telemetry.gpu_memory import TOTAL, USED, gpu_memory_metrics

GIB = 1 << 30


def fake_mem_get_info(readings: list[tuple[int, int, int]]):
    """cudaMemGetInfo answering (code, free, total) from `readings` in turn."""

    def mem_get_info(free, total) -> int:
        code, free_bytes, total_bytes = readings.pop(0)
        free.contents.value, total.contents.value = free_bytes, total_bytes
        return code

    return mem_get_info


def exposed(registry: CollectorRegistry) -> dict[str, float]:
    families = text_string_to_metric_families(generate_latest(registry).decode())
    return {f"{s.name}{{device={s.labels.get('device')}}}": s.value for f in families for s in f.samples}


def test_used_bytes_is_total_minus_free_read_at_every_scrape():
    readings = [(0, 3 * GIB, 80 * GIB), (0, 2 * GIB, 80 * GIB)]
    registry = CollectorRegistry()
    # One reading at installation (to check it works), then one per scrape.
    runtime = CudaRuntime(fake_mem_get_info([(0, 4 * GIB, 80 * GIB), *readings]))
    assert gpu_memory_metrics(registry, multiprocess=False, find_runtime=lambda: runtime) is not None
    assert exposed(registry) == {f"{USED}{{device=0}}": 77 * GIB, f"{TOTAL}{{device=0}}": 80 * GIB}
    assert exposed(registry) == {f"{USED}{{device=0}}": 78 * GIB, f"{TOTAL}{{device=0}}": 80 * GIB}


def test_worker_gauges_hold_the_last_refresh():
    registry = CollectorRegistry()
    runtime = CudaRuntime(fake_mem_get_info([(0, 10 * GIB, 16 * GIB), (0, 1 * GIB, 16 * GIB)]))
    gauges = gpu_memory_metrics(registry, multiprocess=True, find_runtime=lambda: runtime)
    assert exposed(registry)[f"{USED}{{device=0}}"] == 6 * GIB
    assert gauges.refresh() is True
    assert exposed(registry) == {f"{USED}{{device=0}}": 15 * GIB, f"{TOTAL}{{device=0}}": 16 * GIB}


def test_no_cuda_runtime_loaded_means_no_metric_and_one_log_line(caplog):
    registry = CollectorRegistry()
    with caplog.at_level(logging.INFO, logger="aegen.server.gpu_memory"):
        found = gpu_memory_metrics(registry, multiprocess=False,
                                   find_runtime=lambda: CudaRuntime.find_loaded(["libcudart.so.999"]))
    assert found is None
    assert exposed(registry) == {}
    assert [r.getMessage() for r in caplog.records] == [
        "GPU memory metric off: no CUDA runtime library is loaded in this process"]


def test_the_real_lookup_finds_no_cuda_runtime_in_a_cpu_process():
    # This process loaded onnxruntime (CPU build) and numpy, but no libcudart: nothing may be loaded for us.
    import onnxruntime  # noqa: F401

    assert CudaRuntime.find_loaded() is None
    assert "libcudart" not in Path("/proc/self/maps").read_text()


def test_a_failing_read_logs_once_and_the_metric_disappears_while_scrapes_keep_working(caplog):
    registry = CollectorRegistry()
    runtime = CudaRuntime(fake_mem_get_info([(0, 1 * GIB, 8 * GIB), (2, 0, 0), (0, 1 * GIB, 8 * GIB)]))
    with caplog.at_level(logging.WARNING, logger="aegen.server.gpu_memory"):
        gpu_memory_metrics(registry, multiprocess=False, find_runtime=lambda: runtime)
        for _ in range(3):
            assert exposed(registry) == {}
    assert len(caplog.records) == 1 and "cudaError 2" in caplog.records[0].error


def test_a_worker_whose_read_fails_publishes_nan_not_a_stale_value(caplog):
    registry = CollectorRegistry()
    runtime = CudaRuntime(fake_mem_get_info([(0, 1 * GIB, 8 * GIB), (700, 0, 0)]))
    gauges = gpu_memory_metrics(registry, multiprocess=True, find_runtime=lambda: runtime)
    with caplog.at_level(logging.WARNING, logger="aegen.server.gpu_memory"):
        assert gauges.refresh() is False
    assert all(math.isnan(v) for v in exposed(registry).values()) and len(exposed(registry)) == 2
    assert len(caplog.records) == 1


def test_copy_to_host_passes_addresses_and_size_to_cuda_memcpy():
    source = (ctypes.c_uint8 * 8)(*range(8))
    destination = (ctypes.c_uint8 * 8)()
    calls = []

    def memcpy(dst, src, count, kind) -> int:
        calls.append(kind)
        ctypes.memmove(dst, src, count)
        return 0

    CudaRuntime(fake_mem_get_info([]), memcpy).copy_to_host(
        ctypes.addressof(destination), ctypes.addressof(source), 5)
    assert list(destination) == [0, 1, 2, 3, 4, 0, 0, 0] and calls == [2]  # 2: cudaMemcpyDeviceToHost
