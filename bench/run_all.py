"""Run every benchmark in turn (a: ceiling vs service, b: small requests, c: batching, d: memory,
e: training and export, f: the Open Inference Protocol, g: the int8 decoder, h: the server's own work per
call) and write their tables under docs/benchmarks/. `make bench` runs this; the peer benchmark against
MLServer is `make bench-peers`.

    python -m bench.run_all [--repository R --model M --checkpoint C] [--only a,b] [--quick]

--quick shortens every measurement (to check that the benchmarks run, not to quote their numbers).
The benchmarks share the machine's cores with their own client: run them on an otherwise quiet machine.
"""

from __future__ import annotations

import argparse
import sys
import time

from bench import batching, ceiling_vs_service, int8, memory, oip, per_call, small_requests, train_export
from bench.common import RESULTS_DIR, BenchError, add_model_arguments, bench_model

BENCHMARKS = {
    "a": ceiling_vs_service,
    "b": small_requests,
    "c": batching,
    "d": memory,
    "e": train_export,
    "f": oip,
    "g": int8,
    "h": per_call,
}
QUICK = {"a": ["--duration", "1", "--warmup", "0.3"], "b": ["--duration", "1", "--warmup", "0.3", "--rounds", "1"],
         "c": ["--duration", "1", "--warmup", "0.3", "--rounds", "1"], "d": ["--duration", "5", "--warmup", "2"],
         "e": ["--limit", "1000"], "f": ["--duration", "1", "--warmup", "0.3", "--rounds", "1"],
         "g": ["--duration", "1", "--warmup", "0.3", "--rounds", "1", "--samples", "1000"],
         "h": ["--seconds", "0.5", "--rounds", "1", "--alternations", "1"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(p)
    p.add_argument("--only", default="a,b,c,d,e,f,g,h", help="comma-separated benchmark letters")
    p.add_argument("--quick", action="store_true", help="short measurements, to check the benchmarks run")
    p.add_argument("--out-dir", default=str(RESULTS_DIR), help="where the tables go (default docs/benchmarks)")
    args = p.parse_args(argv)
    letters = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = [x for x in letters if x not in BENCHMARKS]
    if unknown:
        print(f"run_all: error: unknown benchmark(s) {unknown}; choose from {','.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    try:
        # Train and export the shared model once, up front, so that no benchmark's numbers include it.
        model = bench_model(args.repository, args.model, args.checkpoint)
        shared = ["--repository", str(model.repository), "--model", model.name]
        if model.checkpoint:
            shared += ["--checkpoint", str(model.checkpoint)]
        for letter in letters:
            module = BENCHMARKS[letter]
            extra = (QUICK[letter] if args.quick else []) + (shared if letter != "e" else [])
            extra += ["--out-dir", args.out_dir]
            start = time.perf_counter()
            print(f"== benchmark {letter}: {module.__name__}", file=sys.stderr, flush=True)
            path = module.run(module.parser().parse_args(extra))
            print(f"== benchmark {letter} wrote {path} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    except BenchError as exc:
        print(f"run_all: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
