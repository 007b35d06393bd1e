"""Where `make tools` put NVIDIA perf_analyzer, and the environment it needs to start (tests and benchmarks).

The binary (.tools/bin/perf_analyzer, from the tritonclient 2.50.0 wheel) loads libcudart.so.12 even
with no GPU; it comes from the nvidia-cuda-runtime-cu12 package in the project's venv, whose lib
directory goes on LD_LIBRARY_PATH. Libb64 comes from Debian (`libb64-0d`).

    argv, env = perf_analyzer_command()
    subprocess.run([*argv, "-m", "digits-vae", "-i", "grpc", "-u", target], env=env, ...)
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PERF_ANALYZER = ROOT / ".tools" / "bin" / "perf_analyzer"


def cuda_runtime_lib_dir() -> Path | None:
    """The lib directory of the installed nvidia-cuda-runtime-cu12 (holding libcudart.so.12), or None."""
    try:
        spec = importlib.util.find_spec("nvidia.cuda_runtime")
    except ModuleNotFoundError:  # no `nvidia` namespace package at all
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        lib = Path(location) / "lib"
        if (lib / "libcudart.so.12").exists():
            return lib
    return None


def perf_analyzer_command(environ: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """(argv prefix, environment) to run perf_analyzer: the binary's path, and `environ` (default: this
    process's) with the CUDA runtime's lib directory prepended to LD_LIBRARY_PATH.

    Raises FileNotFoundError, naming what is missing, when `make tools` has not installed it."""
    if not PERF_ANALYZER.exists():
        raise FileNotFoundError(f"{PERF_ANALYZER.relative_to(ROOT)} is not installed (run `make tools`)")
    lib = cuda_runtime_lib_dir()
    if lib is None:
        raise FileNotFoundError("nvidia-cuda-runtime-cu12 (libcudart.so.12) is not installed (run `make tools`)")
    env = dict(os.environ if environ is None else environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(lib), env.get("LD_LIBRARY_PATH", "")) if p)
    return [str(PERF_ANALYZER)], env
