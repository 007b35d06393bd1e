"""What the server may import: no torch anywhere (the serving image carries none), and in server/core/ no
transport at all (no grpc, no generated stubs, no HTTP framework, no prometheus_client)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TRANSPORTS = ("grpc", "grpc_health", "grpc_reflection", "google", "prometheus_client", "starlette", "fastapi",
              "uvicorn", "h11", "httptools", "anyio")


def _imported_by(packages: list[str]) -> set[str]:
    """Every module in sys.modules after importing each module of `packages` in a fresh interpreter."""
    code = ("import importlib, pkgutil, sys\n"
            f"for name in {packages!r}:\n"
            "    package = importlib.import_module(name)\n"
            "    for info in pkgutil.walk_packages(package.__path__, name + '.'):\n"
            "        if not info.name.endswith('__main__'):\n"
            "            importlib.import_module(info.name)\n"
            "print('\\n'.join(sorted(sys.modules)))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=False, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def test_no_server_module_imports_torch_onnx_or_training_code():
    modules = _imported_by(["server"])
    assert "server.protocols.aegen_v1.servicer" in modules and "server.core.dataplane" in modules
    bad = sorted(m for m in modules if m.split(".")[0] in ("torch", "training", "onnx", "onnxscript")
                 or m in ("export.cli", "export.onnx_graphs", "export.exporter"))
    assert bad == [], f"server imports {bad}"


def test_the_core_imports_no_transport_no_stubs_and_no_metrics_library():
    modules = _imported_by(["server.core"])
    assert "server.core.batcher" in modules and "onnxruntime" in modules  # the walk really imported the core
    bad = sorted(m for m in modules if m.split(".")[0] in TRANSPORTS or m.endswith(("_pb2", "_pb2_grpc"))
                 or m.startswith(("server.protocols", "server.telemetry", "server.app", "client")))
    assert bad == [], f"server/core imports {bad}"


def test_python_dash_m_server_runs_from_a_checkout():
    result = subprocess.run([sys.executable, "-m", "server", "--help"], cwd=ROOT, check=False, capture_output=True,
                            text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 0 and "AEGEN_REPOSITORY" in result.stdout, result.stderr
