"""Shared fixtures live in tests/plugins/, one module per stage, so each stage's fixtures build on the
previous stage's real output (a trained checkpoint → an exported repository → a running server)."""

import os

# Two cores on CI: keep torch and onnxruntime from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "1")

pytest_plugins = [
    "tests.plugins.checkpoints",
    "tests.plugins.repository",
    "tests.plugins.server",
    "tests.plugins.perf_analyzer",  # NVIDIA perf_analyzer, installed by `make tools`
]
