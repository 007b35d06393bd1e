"""The serving image carries no torch: no server module may import it, even indirectly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULES = ["server", "server.app", "server.servicer", "server.batcher", "server.runner", "server.models",
           "server.metrics", "server.config", "server.client", "server.sample_cli", "export.repository"]


def test_server_modules_import_no_torch_and_no_training_code():
    code = ("import importlib, sys\n"
            f"for m in {MODULES!r}: importlib.import_module(m)\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'training', 'onnx', 'onnxscript')"
            " or m in ('export.cli', 'export.onnx_graphs'))\n"
            "print(','.join(bad))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"server imports {result.stdout.strip()}"


def test_python_dash_m_server_runs_from_a_checkout():
    result = subprocess.run([sys.executable, "-m", "server", "--help"], cwd=ROOT, check=False, capture_output=True, text=True,
                            timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 0 and "AEGEN_REPOSITORY" in result.stdout, result.stderr
