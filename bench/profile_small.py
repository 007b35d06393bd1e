"""Where a server's time goes at N = 1 with 64 calls in flight: py-spy samples of the server process under
aegen-loadtest, summarised as the frames that hold the most samples (self and inclusive).

    python -m bench.profile_small [--repository R --model M] [--duration 8] [--gil] [--raw out.txt]

--gil keeps only the samples of threads holding the GIL: the Python work that competes for the one
interpreter lock, which is what limits calls/s here. Needs py-spy (pip install py-spy; root, or ptrace
permission for the server process).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import BenchError, add_model_arguments, bench_model, load, report_or_fail, serve_model
from protos.cli import OneLineParser


def _frame(text: str) -> str:
    """'func (path/to/file.py:123)' → 'func (file.py)'."""
    name, _, where = text.partition(" (")
    return f"{name} ({where.split(':')[0].split('/')[-1]})" if where else name


def summarise(raw: Path, top: int = 25) -> str:
    """py-spy's raw (collapsed) output: one stack per line, frames ';'-separated, then a sample count."""
    own, inclusive, total = collections.Counter(), collections.Counter(), 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_frame(f) for f in stack.split(";")]
        total += int(count)
        own[frames[-1]] += int(count)
        for frame in set(frames):
            inclusive[frame] += int(count)
    if not total:
        return "no samples\n"

    def table(counter: collections.Counter) -> str:
        return "\n".join(f"| {c / total:.1%} | `{f}` |" for f, c in counter.most_common(top))

    return (f"{total} samples.\n\n| self | frame |\n|---|---|\n{table(own)}\n\n"
            f"| inclusive | frame |\n|---|---|\n{table(inclusive)}\n")


def profile(args: argparse.Namespace) -> str:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        raise BenchError("py-spy is not installed (pip install py-spy)")
    model = bench_model(args.repository, args.model, args.checkpoint)
    raw = Path(args.raw) if args.raw else Path(tempfile.mkdtemp(prefix="aegen-profile-")) / "profile.txt"
    with serve_model(model.repository, args.server_flag) as served:
        record = [spy, "record", "-p", str(served.pid), "-d", str(int(args.duration)), "-r", "200", "-f", "raw",
                  "-o", str(raw), "--nonblocking", *(["--gil"] if args.gil else [])]

        def sample() -> None:
            time.sleep(args.warmup + 0.5)  # past the load test's warm-up
            subprocess.run(record, capture_output=True, timeout=args.duration + 60, check=False)

        sampler = threading.Thread(target=sample)
        sampler.start()
        report = load(served.target, concurrency=(64,), duration=args.duration + 2, warmup=args.warmup,
                      model=model.name, metrics_url=served.metrics_url)
        sampler.join()
    level = report.levels[0]
    if not raw.exists():
        raise BenchError("py-spy wrote nothing (is ptrace allowed?)")
    return (f"N = 1, 64 in flight: {level.requests_per_s:,.0f} calls/s, p50 {level.latency_ms['p50']:.2f} ms, "
            f"{(level.server or {}).get('batch_mean_samples', float('nan')):.1f} samples per batch; "
            f"py-spy {'--gil ' if args.gil else ''}at 200 Hz for {args.duration:g} s.\n\n{summarise(raw)}")


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(p)
    p.add_argument("--duration", type=float, default=8.0, help="seconds sampled")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--gil", action="store_true", help="only samples holding the GIL")
    p.add_argument("--raw", help="keep py-spy's raw output here")
    p.add_argument("--server-flag", action="append", default=[], help="a flag for the server (repeatable)")
    return report_or_fail("bench.profile_small", lambda: profile(p.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
