"""Benchmark g: the int8 decoder (aegen-export --int8) against float32, on CPU.

1. Agreement: the largest pixel difference between the int8 and the float32 graphs, and the digit judge's
   validity (training/evaluate.py, the shipped classifier) of each graph's images, on 10,000 seeds per
   sampler drawn as the export report draws them.
2. In-process speed: decode time of the uint8 graphs (fp32 vs int8) at N = 1 … 8192, 1 and 2 intra-op threads.
3. Served: one server with `--decoder-precision int8` and one without, side by side, rounds alternating,
   aegen-loadtest at N = 1024 and 8192, 16 in flight.

It exports the benchmark checkpoint once more with --int8 into runs/bench/repository-int8 (git-ignored).

    python -m bench.int8 [--checkpoint C] [--samples 10000] [--extra-model digits-vae=runs/demo-vae]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench.common import (
    MODEL_CACHE,
    PYTHON,
    BenchError,
    bench_model,
    fmt,
    load,
    load_parser,
    machine_details,
    markdown_table,
    report_or_fail,
    run_tool,
    serve_model,
    write_result,
)
from export.repository import load_version

SIZES = (1, 64, 1024, 8192)
SERVED = ((1024, 16), (8192, 16))


def int8_repository(checkpoint: Path, name: str) -> Path:
    repository = MODEL_CACHE / "repository-int8"
    if not (repository / name).is_dir():
        print(f"exporting {checkpoint} with --int8 into {repository} ...", file=sys.stderr, flush=True)
        run_tool([PYTHON, "-m", "export.cli", str(checkpoint), "--repository", str(repository), "--name", name,
                  "--int8", "--no-progress", "--quality-samples", "0"], "aegen-export --int8")
    return repository


def agreement(version, checkpoint: Path, samples: int, seed: int = 0) -> tuple[dict, dict]:
    """Per sampler: validity etc. of the fp32 and the int8 decoder's images; and their largest differences."""
    from export.exporter import _split, decode_sampler_seeds
    from training.checkpoint import load_model
    from training.evaluate import load_classifier, sample_metrics

    _, config = load_model(checkpoint)
    _, val_images = _split(config, None)
    samplers = version.load_samplers()
    classifier = load_classifier()
    decoded = {key: decode_sampler_seeds(version.graph_path(key).read_bytes(), samplers, samples, seed, 2)
               for key in ("decoder", "decoder_int8", "decoder_uint8", "decoder_int8_uint8")}
    quality, diffs = {}, {}
    for sampler, fp32 in decoded["decoder"].items():
        int8 = decoded["decoder_int8"][sampler]
        quality[sampler] = {key: sample_metrics(np.clip(decoded[key][sampler], 0, 1), val_images, classifier)
                            for key in ("decoder", "decoder_int8")}
        levels = np.abs(decoded["decoder_int8_uint8"][sampler].astype(np.int16) - decoded["decoder_uint8"][sampler])
        diffs[sampler] = {"max_abs": float(np.abs(int8 - fp32).max()), "max_levels": int(levels.max()),
                          "mean_abs": float(np.abs(int8 - fp32).mean()), "changed": float((levels > 0).mean())}
    return quality, diffs


def decode_ms(path: Path, latent_dim: int, n: int, threads: int, repeats: int) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: np.random.default_rng(0).standard_normal((n, latent_dim)).astype(np.float32)}
    session.run(None, feed)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def model_sections(name: str, checkpoint: Path, samples: int) -> tuple[Path, str]:
    """Export `checkpoint` with --int8 (cached), then its agreement/validity and in-process speed tables."""
    repository = int8_repository(checkpoint, name)
    version = load_version(repository, name)
    d = version.manifest.latent_dim
    quality, diffs = agreement(version, checkpoint, samples)
    speed = []
    for n in SIZES:
        for threads in (1, 2):
            repeats = max(5, min(200, 20000 // n))
            fp32 = decode_ms(version.graph_path("decoder_uint8"), d, n, threads, repeats)
            int8 = decode_ms(version.graph_path("decoder_int8_uint8"), d, n, threads, repeats)
            speed.append([n, threads, f"{fp32:.3f}", f"{int8:.3f}", f"{fp32 / int8:.2f}×"])
    quality_rows = [[s, fmt(q["decoder"]["validity"], 3), fmt(q["decoder_int8"]["validity"], 3),
                     fmt(q["decoder"]["fcd"], 2), fmt(q["decoder_int8"]["fcd"], 2),
                     f"{diffs[s]['max_abs']:.4f}", diffs[s]["max_levels"], f"{diffs[s]['mean_abs']:.5f}",
                     f"{diffs[s]['changed']:.2%}"] for s, q in quality.items()]
    report = version.manifest.verification.get("decoder_int8", {})
    arch = version.manifest.training.get("config", {}).get("model", {}).get("arch", "?")
    text = "\n".join([
        f"## Model `{name}` ({arch} {version.manifest.kind}, latent {d}, from `{checkpoint}`)", "",
        (f"Export verification: max |int8 − fp32| = {report.get('max_abs_diff', float('nan')):.4f} "
         f"({report.get('max_grey_levels', '–')} grey levels) over {report.get('samples', '–')} latents."), "",
        f"### Agreement with float32 and validity, {samples:,} seeds per sampler", "",
        markdown_table(["sampler", "validity fp32", "validity int8", "FCD fp32", "FCD int8", "max |Δ| [0, 1]",
                        "max |Δ| grey levels (uint8)", "mean |Δ|", "uint8 pixels changed"], quality_rows), "",
        "### In-process decode time (uint8 graphs, median ms, onnxruntime without spinning)", "",
        markdown_table(["N", "intra-op threads", "fp32 ms", "int8 ms", "speed-up"], speed), ""])
    return repository, text


def run(args: argparse.Namespace) -> Path:
    details = machine_details()
    model = bench_model(args.repository, args.model, args.checkpoint)
    if model.checkpoint is None:
        raise BenchError("the int8 export needs the checkpoint: pass --checkpoint")
    repository, sections = model_sections(model.name, model.checkpoint, args.samples)
    for extra in args.extra_model:
        name, _, checkpoint = extra.partition("=")
        sections += "\n" + model_sections(name, Path(checkpoint), args.samples)[1]
    served = {"fp32": {}, "int8": {}}
    with contextlib.ExitStack() as stack:
        servers = {"fp32": stack.enter_context(serve_model(repository)),
                   "int8": stack.enter_context(serve_model(repository, ["--decoder-precision", "int8"]))}
        for n, in_flight in SERVED:
            for _ in range(args.rounds):
                for key, server in servers.items():
                    level = load(server.target, num_samples=n, concurrency=(in_flight,), duration=args.duration,
                                 warmup=args.warmup, model=model.name).levels[0]
                    served[key].setdefault((n, in_flight), []).append(level)
    served_rows = []
    for n, in_flight in SERVED:
        best = {k: max(served[k][(n, in_flight)], key=lambda r: r.samples_per_s) for k in served}
        served_rows.append([n, in_flight, fmt(best["fp32"].samples_per_s), fmt(best["int8"].samples_per_s),
                            f"{best['int8'].samples_per_s / best['fp32'].samples_per_s:.2f}×",
                            fmt(best["fp32"].latency_ms["p99"], 1), fmt(best["int8"].latency_ms["p99"], 1)])
    body = "\n".join([
        ("`aegen-export --int8` adds `decoder_int8` (`decoder.onnx` dynamically quantised by "
         "onnxruntime.quantization: int8 weights for every MatMul/Gemm, uint8 activations quantised per batch; "
         "convolutions stay float32) and `decoder_int8_uint8` (the same with the uint8 tail); "
         "`aegen-serve --decoder-precision int8` decodes with them. Validity: the shipped digit judge "
         "(training/evaluate.py) on each decoder's images of the same seeds, drawn as the export report draws them."),
        "", sections,
        f"## Served: model `{model.name}`, aegen.v1 uint8 (aegen-loadtest, {args.rounds} alternating rounds, best)",
        "",
        markdown_table(["N", "in flight", "fp32 samples/s", "int8 samples/s", "int8 / fp32", "fp32 p99 ms",
                        "int8 p99 ms"], served_rows), "",
        ("Dynamic quantisation picks the activations' scale from each batch's own range, so an int8 server's "
         "bytes for a seed depend (slightly) on what the seed was batched with: the same-seed-same-bytes "
         "guarantee holds for the float32 decoders only."),
    ])
    return write_result("int8", "Benchmark g: the int8 decoder against float32", body, details, args.out_dir)


def parser() -> argparse.ArgumentParser:
    p = load_parser(__doc__, duration=5.0, warmup=1.0, rounds_help="alternating rounds; the best counts")
    p.add_argument("--samples", type=int, default=10000, help="seeds per sampler for the validity check")
    p.add_argument("--extra-model", action="append", default=[], metavar="NAME=CHECKPOINT",
                   help="also measure this checkpoint's int8 export (agreement, validity, speed); repeatable")
    return p


def main(argv: list[str] | None = None) -> int:
    return report_or_fail("bench.int8", lambda: run(parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
