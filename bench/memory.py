"""Benchmark d: memory under load. The server's resident set size (VmRSS from /proc/<pid>/status) sampled
while `aegen-loadtest` keeps it busy for 60 s; after the warm-up it should stay flat (growth < 5 %).

    python -m bench.memory [--repository R --model M] [--duration 60] [--warmup 10]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

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

SAMPLE_EVERY_S = 0.5


def rss_bytes(pid: int) -> int:
    """VmRSS of a process, in bytes; 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


class RssSampler(threading.Thread):
    """Samples a process's RSS every SAMPLE_EVERY_S seconds until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[tuple[float, int]] = []
        self.stop = threading.Event()
        self.start_time = time.monotonic()

    def run(self) -> None:
        while not self.stop.is_set():
            self.samples.append((time.monotonic() - self.start_time, rss_bytes(self.pid)))
            self.stop.wait(SAMPLE_EVERY_S)


def _plot(sampler: RssSampler, warmup: float, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=120)
    ax.plot([t for t, _ in sampler.samples], [r / 2**20 for _, r in sampler.samples])
    ax.axvline(warmup, color="grey", linestyle="--", label="end of warm-up")
    ax.set_xlabel("seconds since the load started")
    ax.set_ylabel("server RSS (MiB)")
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run(args: argparse.Namespace) -> Path:
    details = machine_details()
    model = bench_model(args.repository, args.model, args.checkpoint)
    rows, verdicts = [], []
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for n, dtype, in_flight in ((args.num_samples, "uint8", args.concurrency), (args.num_samples, "float32",
                                                                                 args.concurrency)):
        with serve_model(model.repository) as server:
            idle = rss_bytes(server.pid)
            sampler = RssSampler(server.pid)
            sampler.start()
            try:
                (level,) = load(server.target, num_samples=n, dtype=dtype, concurrency=(in_flight,),
                                duration=args.duration, warmup=args.warmup, model=model.name).levels
            finally:
                sampler.stop.set()
                sampler.join()
        after_warmup = [r for t, r in sampler.samples if t >= args.warmup]
        start_rss = after_warmup[0]
        last = after_warmup[-max(1, len(after_warmup) // 10):]  # the last tenth, against sampling noise
        end_rss = sum(last) / len(last)
        growth = (end_rss - start_rss) / start_rss
        peak = max(after_warmup)
        png = args.out_dir / f"memory_{dtype}.png"
        _plot(sampler, args.warmup, png, f"server RSS under load: N={n} {dtype}, {in_flight} in flight, "
                                          f"{fmt(level.samples_per_s)} samples/s")
        rows.append([f"N={n} {dtype}, {in_flight} in flight", fmt(level.samples_per_s), fmt(idle / 2**20, 1),
                     fmt(start_rss / 2**20, 1), fmt(end_rss / 2**20, 1), fmt(peak / 2**20, 1),
                     f"{100 * growth:+.2f} %", sum(level.errors.values()), f"![]({png.name})"])
        verdicts.append(f"- N={n} {dtype}: RSS growth after warm-up {100 * growth:+.2f} % (target < 5 %: "
                        f"{'met' if growth < 0.05 else 'missed'})")
    table = markdown_table(["load", "samples/s", "idle RSS MiB", "RSS after warm-up MiB",
                            "RSS at end MiB (last 10 %)", "peak MiB", "growth", "errors", "curve"], rows)
    body = (f"One fresh server per row; `aegen-loadtest` closed loop for {args.warmup:g} s warm-up + "
            f"{args.duration:g} s; VmRSS read from /proc/<pid>/status every {SAMPLE_EVERY_S:g} s. Growth = "
            f"(mean of the last tenth − first sample after warm-up) / first sample after warm-up. "
            f"Model `{model.name}`.\n\n{table}\n" + "\n".join(verdicts) + "\n")
    return write_result("memory", "Benchmark d: server memory under sustained load", body, details, args.out_dir)


def parser() -> argparse.ArgumentParser:
    p = load_parser(__doc__, duration=60.0, warmup=10.0,
                    duration_help="seconds of sustained load after the warm-up")
    p.add_argument("-n", "--num-samples", type=int, default=256)
    p.add_argument("--concurrency", type=int, default=16)
    return p


def main(argv: list[str] | None = None) -> int:
    run(parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
