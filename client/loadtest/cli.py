"""`aegen-loadtest`'s main(): flags → LoadTestConfig, the run, the Markdown table on stdout, files under --out,
and the exit code (0: no errors; 1: some calls failed; 2: cannot run, one line on stderr)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import client.loadtest
from client.loadtest.config import LoadTestError, config_from_args
from client.loadtest.generate import run_load_test
from client.loadtest.report import write_outputs
from protos.cli import fail

PROG = "aegen-loadtest"


def main(argv: Sequence[str] | None = None) -> int:
    config = config_from_args(argv, description=(client.loadtest.__doc__ or "").split("\n\n")[0])
    try:
        report = run_load_test(config, progress=lambda line: print(line, file=sys.stderr, flush=True))
    except LoadTestError as exc:
        return fail(PROG, exc)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    print(report.to_markdown(), end="")
    if config.out:
        for path in write_outputs(report, config.out).values():
            print(f"wrote {path}", file=sys.stderr)
    return 1 if report.total_errors else 0


if __name__ == "__main__":
    sys.exit(main())
