"""What every aegen command line shares: one-line errors with exit code 2, and AEGEN_* environment variables.

This lives in `protos/` (the package of aegen's interfaces, carried by every image and importable by every
stage without breaking the one-way data flow) because a command line is an interface too: each `aegen-*`
command reports a bad flag, a bad file or an unreachable server as `PROG: error: MESSAGE` on stderr and
exits 2, never with a traceback, and each flag `--some-name` may also come from `AEGEN_SOME_NAME`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from typing import NoReturn

ENV_PREFIX = "AEGEN_"
USAGE_ERROR = 2


def env_var(name: str) -> str:
    """`max_batch_size` or `max-batch-size` → `AEGEN_MAX_BATCH_SIZE`."""
    return ENV_PREFIX + name.replace("-", "_").upper()


def env(name: str, default: str | None = None, environ: Mapping[str, str] | None = None) -> str | None:
    """The value of AEGEN_<NAME> (`name` may be a flag or field name, or the variable itself), else `default`."""
    environ = os.environ if environ is None else environ
    variable = name if name.startswith(ENV_PREFIX) else env_var(name)
    value = environ.get(variable)
    return default if value is None or value == "" else value


def fail(prog: str, message: object) -> int:
    """Print `prog: error: message` on stderr; returns the exit code to return from main()."""
    sys.stderr.write(f"{prog}: error: {message}\n")
    return USAGE_ERROR


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (`prog: error: ...`) and exit 2, without the usage block."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        raise SystemExit(fail(self.prog, message))
