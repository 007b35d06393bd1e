"""NVIDIA perf_analyzer for the tests: the `perf_analyzer` fixture (it skips when `make tools` has not
installed the tool) and its `run(...)`; bench/perf_analyzer.py knows where the binary is and what it needs."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

import pytest

from bench.perf_analyzer import perf_analyzer_command


@dataclass(frozen=True)
class PerfAnalyzer:
    """perf_analyzer, ready to run: `argv` is the command prefix, `env` its environment."""

    argv: list[str]
    env: dict[str, str]

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """perf_analyzer with `args`, output captured as text; a non-zero exit is returned, not raised."""
        return subprocess.run([*self.argv, *args], env=self.env, check=False, capture_output=True, text=True,
                              timeout=timeout)


@pytest.fixture(scope="session")
def perf_analyzer() -> PerfAnalyzer:
    """The installed perf_analyzer; skips the test when `make tools` has not installed it."""
    try:
        argv, env = perf_analyzer_command()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    return PerfAnalyzer(argv, env)
