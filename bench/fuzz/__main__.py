"""The long fuzz run (`make fuzz`): --inputs per protocol against a real server on 127.0.0.1, with the limits
of tests/robustness (64 samples a request, 1 MiB bodies, 8 KiB header blocks, a 2 s client timeout), then
health, readiness, the reference calls' bytes and resident memory compared with before the run.

    python -m bench.fuzz [--inputs 100000] [--seed 0] [--protocols grpc http] [--repository R]

Writes docs/robustness-fuzz.md (a table per protocol: inputs, statuses, violations, what changed).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from bench.common import ROOT, bench_model, machine_details, machine_markdown, markdown_table
from bench.fuzz import grpc_fuzz, http_fuzz
from bench.fuzz.checks import MODEL, compare, server_state
from client.local import free_port, wait_until_serving
from protos.atomic import atomic_write_text

BODY_LIMIT, HEADER_LIMIT, CLIENT_TIMEOUT = 1 << 20, 8192, 2
FLAGS = ["--max-samples-per-request", "64", "--max-samples-per-stream", "256", "--max-batch-size", "64",
         "--max-body-bytes", str(BODY_LIMIT), "--max-header-bytes", str(HEADER_LIMIT),
         "--client-timeout-seconds", str(CLIENT_TIMEOUT), "--intra-op-threads", "1",
         "--repository-poll-seconds", "0", "--log-level", "WARNING"]
RSS_BOUND = 200 << 20


@contextlib.contextmanager
def fuzz_server(repository: Path):
    port, http_port = free_port(), free_port()
    log = Path(tempfile.mkdtemp(prefix="aegen-fuzz-")) / "server.log"
    argv = [sys.executable, "-m", "server", "--repository", str(repository), "--host", "127.0.0.1", "--port",
            str(port), "--http-port", str(http_port), "--metrics-port", "0", "--device", "cpu", *FLAGS]
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        wait_until_serving(f"127.0.0.1:{port}", process, 120)
        yield f"127.0.0.1:{port}", f"http://127.0.0.1:{http_port}", process, log
    finally:
        process.terminate()
        process.wait(60)


def run_protocol(protocol: str, count: int, seed: int, target: str, url: str, pid: int) -> list[str]:
    before = server_state(target, url, pid)
    started = time.monotonic()
    with tqdm(total=count, desc=f"fuzz {protocol}", unit="input", mininterval=5) as bar:
        if protocol == "grpc":
            report = grpc_fuzz.run(target, count, seed, progress=bar.update)
            statuses = report.statuses()
        else:
            report = http_fuzz.run(url, count, seed, header_limit=HEADER_LIMIT, body_limit=BODY_LIMIT,
                                   progress=bar.update)
            statuses = report.statuses
    seconds = time.monotonic() - started
    after = server_state(target, url, pid)
    problems = compare(before, after, RSS_BOUND)
    shown = ", ".join(f"{k} {v:,}" for k, v in sorted(statuses.items(), key=lambda kv: -kv[1]))
    kinds = ", ".join(f"{k} {v:,}" for k, v in sorted(report.kinds.items(), key=lambda kv: -kv[1]))
    for violation in report.violations:
        print(f"VIOLATION {protocol}: {violation[:500]}", file=sys.stderr)
    return [protocol, f"{report.total:,}", f"{seconds:.0f}", shown, kinds, str(report.violation_count),
            f"{before.rss / 2**20:.0f} → {after.rss / 2**20:.0f}",
            "yes" if after.grpc_replies == before.grpc_replies and after.http_reply == before.http_reply else "NO",
            f"{after.health} / {after.ready}", "; ".join(problems) or "none"]


HEADER = ["protocol", "inputs", "seconds", "answers", "inputs by kind", "property violations",
          "server RSS MiB before → after", "reference bytes unchanged", "health / HTTP ready after",
          "problems"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--protocols", nargs="+", default=["http", "grpc"], choices=["grpc", "http"])
    parser.add_argument("--repository", help="a repository serving digits-vae (default: train and export one)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "robustness-fuzz.md")
    args = parser.parse_args(argv)
    repository = Path(args.repository) if args.repository else bench_model(None, MODEL, None).repository
    details = machine_details()
    with fuzz_server(repository) as (target, url, process, log):
        rows = [run_protocol(p, args.inputs, args.seed, target, url, process.pid) for p in args.protocols]
        errors = [line for line in log.read_text(errors="replace").splitlines() if "Traceback" in line]
    table = markdown_table(HEADER, rows)
    print(table)
    body = (f"# Fuzzing, measured (bench/fuzz, `make fuzz`)\n\nSeed {args.seed}, {args.inputs:,} inputs per "
            f"protocol, one server (flags: `{' '.join(FLAGS)}`).\n\n{table}\nTracebacks in the server log: "
            f"{len(errors)}.\n\n{machine_markdown(details)}")
    atomic_write_text(args.out, body)
    return 0 if all(r[5] == "0" and r[9] == "none" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
