"""Benchmark a: ceiling vs service. In-process onnxruntime decoding (N(0, I) seeds drawn with numpy, then
the decoder graph; samples/s) against GenerateSamples end to end at the same N, uint8 and float32.
The ratio service / ceiling is what serving costs. Target on a 2-core CPU: >= 0.8 at N >= 1024 uint8.

    python -m bench.ceiling_vs_service [--repository R --model M] [--duration 4]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench.common import (
    bench_model,
    fmt,
    load,
    load_parser,
    machine_details,
    markdown_table,
    serve_model,
    write_result,
)
from export.repository import DECODER_INPUT, load_version

SIZES = (1, 64, 1024, 8192)
DTYPES = ("uint8", "float32")
GRAPHS = {"uint8": "decoder_uint8", "float32": "decoder"}
# The service gets a few calls in flight so that transfer and decoding can overlap; the best level counts.
IN_FLIGHT = {1: (1, 16, 64), 64: (1, 4, 16), 1024: (1, 2, 4), 8192: (1, 2)}


def ceiling(repository: Path, model: str, dtype: str, n: int, min_seconds: float) -> float:
    """Samples/s of seeds + decoder in this process, with the server's session options."""
    version = load_version(repository, model)
    options = ort.SessionOptions()
    options.inter_op_num_threads = 1  # as the server's runner sets it; intra-op threads: onnxruntime's default
    session = ort.InferenceSession(str(version.graph_path(GRAPHS[dtype])), options,
                                   providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    latent_dim = version.manifest.latent_dim
    out = np.empty((n, *version.manifest.image_shape), dtype=np.dtype(dtype))
    output_name = session.get_outputs()[0].name

    def once() -> None:
        # As the server decodes: IO binding straight into a preallocated output array.
        binding = session.io_binding()
        binding.bind_cpu_input(DECODER_INPUT, rng.standard_normal((n, latent_dim), dtype=np.float32))
        binding.bind_output(output_name, "cpu", 0, out.dtype, out.shape, out.ctypes.data)
        session.run_with_iobinding(binding)

    for _ in range(3):
        once()
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < min_seconds or calls < 5:
        once()
        calls += 1
    return calls * n / elapsed


def run(args: argparse.Namespace) -> Path:
    details = machine_details()
    model = bench_model(args.repository, args.model, args.checkpoint)
    rows, verdicts, ceilings = [], [], {}
    with serve_model(model.repository) as server:
        for dtype in DTYPES:
            for n in SIZES:
                # Measured right before its service cell, so both see the same machine (others share it).
                ceilings[(dtype, n)] = ceiling(model.repository, model.name, dtype, n, args.duration)
                print(f"  ceiling {dtype} N={n}: {ceilings[(dtype, n)]:,.0f} samples/s", file=sys.stderr)
                report = load(server.target, num_samples=n, dtype=dtype, concurrency=IN_FLIGHT[n],
                              duration=args.duration, warmup=args.warmup, model=model.name,
                              metrics_url=server.metrics_url)
                best = max(report.levels, key=lambda r: r.samples_per_s)
                ratio = best.samples_per_s / ceilings[(dtype, n)]
                split = best.server or {}
                rows.append([n, dtype, fmt(ceilings[(dtype, n)]), fmt(best.samples_per_s), fmt(ratio, 2),
                             best.concurrency, fmt(best.mb_per_s, 1), fmt(best.latency_ms["p50"], 2),
                             fmt(split.get("queue_wait_mean_ms", float("nan")), 2),
                             fmt(split.get("inference_mean_ms", float("nan")), 2),
                             sum(sum(r.errors.values()) for r in report.levels)])
                if dtype == "uint8" and n >= 1024:
                    verdicts.append(f"- N = {n} uint8: {ratio:.2f} of the ceiling (target >= 0.80: "
                                    f"{'met' if ratio >= 0.8 else 'missed'})")
    table = markdown_table(["N", "dtype", "in-process samples/s", "service samples/s", "service/ceiling",
                            "best in flight", "service MB/s", "p50 ms", "server queue wait ms",
                            "server inference ms (per batch)", "errors"], rows)
    body = (f"Ceiling: seeds drawn with numpy and the decoder run by onnxruntime (CPU provider, default "
            f"intra-op threads, IO binding into a preallocated output, as the server runs it) in one process, "
            f"repeated for {args.duration:g} s, measured just before the service at the same N (the server "
            f"idles meanwhile). Service: "
            f"`aegen-loadtest` closed loop, {args.duration:g} s per level after {args.warmup:g} s warm-up, "
            f"at a few calls in flight (the best level counts), server and client on the same 2 cores. "
            f"Model `{model.name}`.\n\n{table}\n" + "\n".join(verdicts) + "\n")
    return write_result("ceiling_vs_service", "Benchmark a: in-process ceiling vs the service", body, details,
                        args.out_dir)


def parser() -> argparse.ArgumentParser:
    return load_parser(__doc__, duration=4.0, warmup=1.0)


def main(argv: list[str] | None = None) -> int:
    run(parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
